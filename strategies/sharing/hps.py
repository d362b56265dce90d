"""Hard parameter sharing (shared-bottom): one shared backbone, one tower per task.

Caruana, "Multitask Learning", Machine Learning 28, 1997,
https://doi.org/10.1023/A:1007379606734.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing.backbones import flat_dim, mlp
from strategies.sharing.base import BackboneSpec, SharingArchitecture


@SHARING.register("hps")
class HardParameterSharing(SharingArchitecture):
    """Hard parameter sharing: shared MLP backbone, per-task towers; the representation is
    the backbone's output."""

    has_representation = True

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        spec = backbone
        self.backbone = mlp(flat_dim(input_shape), spec.hidden, dropout=spec.dropout)
        rep_dim = spec.hidden[-1] if spec.hidden else flat_dim(input_shape)
        self.towers = nn.ModuleDict(
            {t.name: mlp(rep_dim, spec.tower, t.output_dim, spec.dropout) for t in tasks}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rep = self.backbone(x)
        self.representation = rep
        return {name: tower(rep) for name, tower in self.towers.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.towers[task].parameters())
