"""One-gate Mixture-of-Experts (OMoE): shared experts mixed by one gate for all tasks.

The ablation of Ma et al., "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018, https://doi.org/10.1145/3219819.3220007
(section 5, "OMoE"): the same experts and towers as MMoE, but a single softmax gate
``g(x) = softmax(W x)`` shared by every task, so all tasks read the same mixture.

Shared parameters: the experts and the gate. Task-specific: the towers.
Representation (``rep`` engine): the one shared mixture ``sum_e g(x)_e f_e(x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import pydantic
import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing._common import GatedArchitecture, mix, tower
from strategies.sharing.backbones import backbone as build_backbone
from strategies.sharing.backbones import flat_dim, output_dim
from strategies.sharing.base import BackboneSpec


@SHARING.register("omoe")
class OMoE(GatedArchitecture):
    """OMoE: backbone experts mixed by one softmax gate shared by all tasks (MMoE's ablation)."""

    has_representation = True

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        num_experts: Annotated[int, pydantic.Field(ge=1)] = 8,
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        self.experts = nn.ModuleList(
            [build_backbone(input_shape, backbone) for _ in range(num_experts)]
        )
        self.gate = nn.Linear(flat_dim(input_shape), num_experts)
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, d)
        weights = torch.softmax(self.gate(x.flatten(1)), dim=-1)
        if not self.training:
            for t in self.tasks:  # one gate: every task uses the same experts
                self.meter.update(t.name, weights)
        rep = mix(weights, experts)
        self.representation = rep
        return {name: tower_(rep) for name, tower_ in self.towers.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.experts.parameters(), *self.gate.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.towers[task].parameters())
