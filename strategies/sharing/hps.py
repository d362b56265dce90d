"""Hard parameter sharing (shared-bottom): one shared backbone, one tower per task.

Caruana, "Multitask Learning", Machine Learning 28, 1997,
https://doi.org/10.1023/A:1007379606734.

Parameters: the backbone (MLP or CNN, see ``backbones.py``) is shared; each task's
tower (``tower`` widths, then the output layer) is task-specific. The representation
for the ``rep`` engine is the backbone's (flattened) output, which every tower reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing._common import tower
from strategies.sharing.backbones import backbone as build_backbone
from strategies.sharing.backbones import output_dim
from strategies.sharing.base import BackboneSpec, SharingArchitecture


@SHARING.register("hps")
class HardParameterSharing(SharingArchitecture):
    """Hard parameter sharing: one shared backbone and one tower per task.

    The representation (``rep`` engine) is the backbone's output.
    """

    has_representation = True

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        self.backbone = build_backbone(input_shape, backbone)
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rep = self.backbone(x)
        self.representation = rep
        return {name: head(rep) for name, head in self.towers.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.towers[task].parameters())
