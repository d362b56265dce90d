"""Soft parameter sharing: one network per task, with an L2 penalty pulling the networks together.

Duong, Cohn, Bird & Cook, "Low Resource Dependency Parsing: Cross-lingual Parameter
Sharing in a Neural Network Parser", ACL 2015, https://aclanthology.org/P15-2139/.

Each task has its own backbone column (MLP or CNN, see ``backbones.py``) and tower,
exactly as in ``stl``. The columns are coupled only by the penalty

    R = l2 * sum_{t < s} sum_layers ||theta_t - theta_s||^2

over corresponding column weights and biases (the paper's two-task L2 distance,
summed over task pairs); the towers are not tied (their output sizes may differ).

The harness only sees task losses, and a penalty that is not a task must not be
weighted, normalised or Jacobian-projected by the weighting strategy, so ``R`` is
exposed through ``regularization()``, for the trainer to add to the objective (its
gradient added to the parameters' gradients after the strategy's direction). Until
``bench/engine/`` does so, ``soft`` trains like ``stl``.

Shared vs task-specific parameters: every parameter feeds one task's output only
(column t and tower t -> task t), so all are task-specific and
``shared_parameters()`` is empty; there is no shared representation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import pydantic
import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing._common import tower
from strategies.sharing.backbones import backbone as build_backbone
from strategies.sharing.backbones import output_dim
from strategies.sharing.base import BackboneSpec, SharingArchitecture


@SHARING.register("soft")
class SoftSharing(SharingArchitecture):
    """Soft parameter sharing: a backbone per task, tied by an L2 penalty between their weights.

    The penalty, ``l2`` x the summed squared differences, is returned by ``regularization()``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        l2: Annotated[float, pydantic.Field(ge=0.0)] = 1e-3,
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        self.l2 = l2
        self.columns = nn.ModuleDict({t.name: build_backbone(input_shape, backbone) for t in tasks})
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.towers[name](column(x)) for name, column in self.columns.items()}

    def regularization(self) -> torch.Tensor:
        """``l2 * sum_{t<s} ||theta_t - theta_s||^2`` over the columns' parameters."""
        columns = [list(c.parameters()) for c in self.columns.values()]
        total = torch.zeros((), device=next(self.parameters()).device)
        for i in range(len(columns)):
            for j in range(i + 1, len(columns)):
                for a, b in zip(columns[i], columns[j], strict=True):
                    total = total + (a - b).pow(2).sum()
        return self.l2 * total

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.columns[task].parameters(), *self.towers[task].parameters()]
