"""Single-task learning (STL): an independent network per task, nothing shared.

The reference every multi-task result is measured against (the single-task
baselines of e.g. Maninis et al., "Attentive Single-Tasking of Multiple Tasks",
CVPR 2019, https://arxiv.org/abs/1904.08918, where delta-m was introduced).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing.backbones import flat_dim, mlp
from strategies.sharing.base import BackboneSpec, SharingArchitecture


@SHARING.register("stl")
class SingleTask(SharingArchitecture):
    """Single-task networks: each task gets its own backbone and tower; no shared parameters."""

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        spec = backbone
        self.nets = nn.ModuleDict(
            {
                t.name: mlp(flat_dim(input_shape), spec.hidden + spec.tower, t.output_dim,
                            spec.dropout)
                for t in tasks
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: net(x) for name, net in self.nets.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.nets[task].parameters())
