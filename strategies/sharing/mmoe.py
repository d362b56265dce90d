"""Multi-gate Mixture-of-Experts (MMoE): shared experts, one softmax gate per task.

Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", KDD 2018, https://doi.org/10.1145/3219819.3220007.

Each of the ``num_experts`` experts is a full backbone (MLP or CNN, see
``backbones.py``) with output ``f_e(x)``. Task ``t`` has a gate
``g_t(x) = softmax(W_t x)`` (linear in the flattened input, as in the paper) and a
tower reading the mixture ``sum_e g_t(x)_e f_e(x)``.

Default ``num_experts = 8``: the expert count usually cited for the paper's
synthetic-data setup, and a power of two, so that ``dselect_k`` uses the same count
with no folded binary codes. MMoE then holds 8 backbones; use ``match_params`` for comparisons
at equal parameter count.

Shared parameters: the experts. Task-specific: the task's gate and tower.

Representation (``rep`` engine): the stacked expert outputs ``(B, num_experts, d)``.
MMoE has no single shared *mixture* (every task mixes the experts differently), but
every shared parameter reaches the losses only through the expert outputs, and all
gates/towers read that one tensor, so the representation-level Jacobian is well
defined: it is taken with respect to all expert outputs, not a per-task mixture.

Diagnostics: after ``reset_stats()``, evaluation forwards accumulate each task's mean
gate weight per expert; ``stats()`` returns ``{"expert_utilisation": {task: [w_e]}}``.
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


@SHARING.register("mmoe")
class MMoE(GatedArchitecture):
    """MMoE: backbone experts shared by all tasks, mixed by a per-task softmax gate.

    The representation (``rep`` engine) is the stacked expert outputs.
    """

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
        self.gates = nn.ModuleDict(
            {t.name: nn.Linear(flat_dim(input_shape), num_experts) for t in tasks}
        )
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rep = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, d)
        self.representation = rep
        flat = x.flatten(1)
        out = {}
        for name, gate in self.gates.items():
            weights = torch.softmax(gate(flat), dim=-1)
            if not self.training:
                self.meter.update(name, weights)
            out[name] = self.towers[name](mix(weights, rep))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.gates[task].parameters(), *self.towers[task].parameters()]
