"""DSelect-k: shared experts mixed by differentiable, sparse top-k gates, one per task.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task
Learning", NeurIPS 2021, https://arxiv.org/abs/2106.03760 (reference code:
https://github.com/google-research/google-research/tree/master/dselect_k_moe).

Like MMoE (``mmoe.py``), ``num_experts`` full backbones are shared and each task has
a gate and a tower; the gate is DSelect-k's per-example gate instead of a softmax.
With ``m = ceil(log2 n)`` bits for ``n`` experts, a *single-expert selector* turns
``m`` logits ``z`` into a distribution over the ``2^m`` binary codes,

    r(z)_l = prod_i ( S(z_i) if bit i of l is 1 else 1 - S(z_i) ),

with the smooth-step ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2`` and
``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2`` in between. Task t has ``k`` selectors
whose logits are linear in the input, ``z^(i)(x) = W_i x``, and selector weights
``alpha(x) = softmax(V x)``; its expert weights are ``q(x) = sum_i alpha_i(x) r(z^(i)(x))``.
Once the ``z`` leave ``(-gamma/2, gamma/2)`` each selector is one-hot, so at most ``k``
experts get non-zero weight, and the whole gate is differentiable (``gamma`` is the
width of the smooth region; reference default 1). Initialisation as in the reference
code: ``z`` weights and biases uniform in ``+-gamma/100`` (all selectors start near
uniform), selector-weight logits uniform in ``+-0.05``.

Non-power-of-two ``n``: the reference code lets codes ``>= n`` hold mass and adds the
penalty ``1 / sum(reachable weights)``, which needs a trainer hook. Here the mass of
code ``l >= n`` is folded onto expert ``l - n`` instead, so the weights always sum to 1
and no extra loss is needed (a few experts are reachable through two codes). The
default ``num_experts = 8`` is a power of two and nothing is folded.

Entropy regularisation (optional, ``entropy_reg > 0``): the reference code can add
``entropy_reg * entropy(r)`` of every single-expert selector to the loss to make the
selectors converge to one-hot sooner. ``regularization()`` returns that term for the
latest training forward (mean over the batch, summed over tasks and selectors); it
only takes effect where the trainer adds ``model.regularization()`` to the objective
(not yet the case in ``bench/engine/``), so it defaults to 0 (off).

Shared parameters: the experts; task-specific: the task's gate and tower. As for
MMoE, the representation (``rep`` engine) is the stacked expert outputs
``(B, num_experts, d)``. Diagnostics as for MMoE: ``stats()`` gives
``{"expert_utilisation": {task: [mean weight of each expert]}}``.
"""

from __future__ import annotations

import math
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

EPSILON = 1e-6  # inside the log of the entropy, as in the reference code


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Cubic smooth-step: 0 below -gamma/2, 1 above gamma/2, C^1 in between."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, 0.0, torch.where(t >= gamma / 2, 1.0, cubic))


class DSelectKGate(nn.Module):
    """Per-example DSelect-k gate: ``(B, in_features) -> (B, num_experts)`` weights."""

    def __init__(self, in_features: int, num_experts: int, k: int, gamma: float) -> None:
        super().__init__()
        self.num_experts, self.k, self.gamma = num_experts, k, gamma
        self.bits = max(1, math.ceil(math.log2(num_experts)))
        self.z = nn.Linear(in_features, k * self.bits)
        self.w = nn.Linear(in_features, k)
        with torch.no_grad():
            for p in self.z.parameters():
                p.uniform_(-gamma / 100, gamma / 100)
            for p in self.w.parameters():
                p.uniform_(-0.05, 0.05)
        codes = 1 << self.bits
        # codes[l, i]: bit i (most significant first) of code l.
        bits = [[(code >> (self.bits - 1 - i)) & 1 for i in range(self.bits)]
                for code in range(codes)]
        self.register_buffer("codes", torch.tensor(bits, dtype=torch.bool), persistent=False)
        # fold[l, e] = 1 where code l selects expert e (code l >= n folds onto l - n).
        fold = [[float(code % num_experts == e) for e in range(num_experts)]
                for code in range(codes)]
        self.register_buffer("fold", torch.tensor(fold), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert weights (B, n) and the selectors' code distributions (B, k, 2^m)."""
        s = smooth_step(self.z(x).view(-1, self.k, 1, self.bits), self.gamma)
        selectors = torch.where(self.codes, s, 1 - s).prod(-1)  # (B, k, 2^m)
        alpha = torch.softmax(self.w(x), dim=-1)  # (B, k)
        code_weights = (alpha.unsqueeze(-1) * selectors).sum(1)  # (B, 2^m)
        return code_weights @ self.fold, selectors


@SHARING.register("dselect_k")
class DSelectK(GatedArchitecture):
    """DSelect-k: shared backbone experts mixed by per-task differentiable sparse top-k gates.

    Gates use DSelect-k's binary encoding with a smooth-step of width ``gamma``; the
    representation (``rep`` engine) is the stacked expert outputs.
    """

    has_representation = True

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        num_experts: Annotated[int, pydantic.Field(ge=2)] = 8,
        k: Annotated[int, pydantic.Field(ge=1)] = 2,
        gamma: Annotated[float, pydantic.Field(gt=0.0)] = 1.0,
        entropy_reg: Annotated[float, pydantic.Field(ge=0.0)] = 0.0,
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        if k > num_experts:
            raise ValueError(f"dselect_k: k={k} exceeds num_experts={num_experts}")
        self.entropy_reg = entropy_reg
        self.experts = nn.ModuleList(
            [build_backbone(input_shape, backbone) for _ in range(num_experts)]
        )
        self.gates = nn.ModuleDict(
            {t.name: DSelectKGate(flat_dim(input_shape), num_experts, k, gamma) for t in tasks}
        )
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})
        self._selectors: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rep = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, d)
        self.representation = rep
        flat = x.flatten(1)
        self._selectors = []
        out = {}
        for name, gate in self.gates.items():
            weights, selectors = gate(flat)
            if not self.training:
                self.meter.update(name, weights)
            elif self.entropy_reg > 0:
                self._selectors.append(selectors)
            out[name] = self.towers[name](mix(weights, rep))
        return out

    def regularization(self) -> torch.Tensor:
        """``entropy_reg`` x the selectors' entropy in the latest training forward (0 if off)."""
        if self.entropy_reg == 0 or not self._selectors:
            return torch.zeros((), device=next(self.parameters()).device)
        entropy = sum(-(r * torch.log(r + EPSILON)).sum((1, 2)).mean() for r in self._selectors)
        return self.entropy_reg * entropy

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.gates[task].parameters(), *self.towers[task].parameters()]
