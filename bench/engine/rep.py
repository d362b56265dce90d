"""The ``rep`` engine: the Jacobian w.r.t. the shared representation (approximate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.engine.base import GradientEngine, _zeros_if_none
from bench.engine.loop import LoopEngine
from bench.engine.losses import TaskLosses, as_task_losses
from strategies.weighting.base import GradientWeighting, WeightingStrategy

if TYPE_CHECKING:
    from bench.engine.step import StepContext, Timer

__all__ = ["RepEngine"]


class RepEngine(GradientEngine):
    """Jacobian w.r.t. the shared representation (MGDA-UB, Sener & Koltun 2018)."""

    name = "rep"

    def require_support(
        self, strategy: type[WeightingStrategy], model: type[nn.Module]
    ) -> None:
        name = getattr(strategy, "registry_name", strategy.__name__)
        if not strategy.supports_rep:
            raise ValueError(f"engine 'rep' is not defined for strategy '{name}'")
        if not getattr(model, "has_representation", False):
            raise ValueError(
                f"engine 'rep' needs an architecture with one shared representation; "
                f"'{getattr(model, 'registry_name', model.__name__)}' has none"
            )

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        return LoopEngine.task_gradients(self, losses, params)  # type: ignore[arg-type]

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        rep = ctx.model.representation  # type: ignore[attr-defined]
        losses = as_task_losses(losses_per_batch)[0]
        (jac,) = self.task_gradients(losses, [rep])
        jac = jac.reshape(len(losses.raw), -1)
        timer.mark("jacobian")
        direction = strategy.aggregate(jac, losses.transformed.detach())
        timer.mark("aggregate")
        grads = torch.autograd.grad(rep, ctx.shared, grad_outputs=direction.view_as(rep),
                                    retain_graph=True, allow_unused=True)
        for p, g in zip(ctx.shared, _zeros_if_none(grads, ctx.shared), strict=True):
            p.grad = g
