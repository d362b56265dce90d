"""Single-task learning (STL): an independent network per task, nothing shared.

The reference every multi-task result is measured against (the single-task
baselines of e.g. Maninis et al., "Attentive Single-Tasking of Multiple Tasks",
CVPR 2019, https://arxiv.org/abs/1904.08918, where delta-m was introduced).

Each task gets its own backbone (MLP or CNN, see ``backbones.py``) and tower; all
parameters are task-specific and there is no shared representation.
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


@SHARING.register("stl")
class SingleTask(SharingArchitecture):
    """Single-task networks: each task gets its own backbone and tower; no shared parameters."""

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        rep_dim = output_dim(input_shape, backbone)
        self.nets = nn.ModuleDict(
            {
                t.name: nn.Sequential(build_backbone(input_shape, backbone),
                                      tower(rep_dim, backbone, t))
                for t in tasks
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: net(x) for name, net in self.nets.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.nets[task].parameters())
