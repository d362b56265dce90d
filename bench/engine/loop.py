"""The ``loop`` engine: one ``autograd.grad`` call per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.engine.base import GradientEngine, _grad, _mix_rows, _zeros_if_none
from bench.engine.losses import TaskLosses

__all__ = ["LoopEngine"]


class LoopEngine(GradientEngine):
    """One ``autograd.grad`` call per task, each through that task's head only."""

    name = "loop"

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        rows = [
            _zeros_if_none(_grad(handle, params, scale), params)
            for handle, scale in zip(losses.handles, losses.scales, strict=True)
        ]
        per_param = [torch.stack(gs) for gs in zip(*rows, strict=True)]
        if losses.mixing is not None:
            per_param = [_mix_rows(losses, g) for g in per_param]
        return per_param

    def task_jacobian(self, losses: TaskLosses, params: Sequence[torch.Tensor]) -> torch.Tensor:
        # Each task's gradients are copied once, straight into their row of J.
        first = params[0]
        jac = torch.empty(len(losses.handles), sum(p.numel() for p in params),
                          dtype=first.dtype, device=first.device)
        for task, (row, handle, scale) in enumerate(
            zip(jac, losses.handles, losses.scales, strict=True)
        ):
            # The task's own parameters ride along: their gradient costs no extra traversal.
            own = losses.own_of(task)
            grads = _grad(handle, [*params, *own], scale)
            torch.cat([g.reshape(-1) for g in _zeros_if_none(grads[: len(params)], params)],
                      out=row)
            losses.set_own_grads(task, grads[len(params):])
        losses.own_filled = losses.folds_own
        return losses.mix(jac)
