"""Gradient engines: turn the (T,) task losses into parameter gradients.

What a strategy needs decides the path (``strategy.needs``), never its name:

- ``losses``: backpropagate ``strategy.combine(losses)``;
- ``shared_jacobian``: the engine builds J, the (T, P) Jacobian of the task
  losses w.r.t. the shared parameters, the strategy aggregates it to a (P,)
  direction that becomes the shared parameters' gradient, and each task's own
  parameters get the gradient of that task's loss (as in torchjd's
  ``mtl_backward``).

Engines differ only in how J is computed, so their cost is an ablation axis:
``loop`` calls autograd once per task; ``batched`` does one vmapped backward
over the identity matrix of grad-outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from strategies.weighting.base import WeightingStrategy

__all__ = ["ENGINES", "BatchedEngine", "GradientEngine", "LoopEngine", "apply_gradients"]


class GradientEngine(ABC):
    """Computes the per-task Jacobian of the shared parameters."""

    @abstractmethod
    def jacobian(self, losses: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
        """(T, P) matrix: row t is the flattened gradient of ``losses[t]`` w.r.t. ``params``.

        Keeps the graph alive (the task parameters' gradients are taken after it)."""


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


class LoopEngine(GradientEngine):
    """One ``autograd.grad`` call per task."""

    def jacobian(self, losses: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
        rows = [
            _flat(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params)
            for loss in losses
        ]
        return torch.stack(rows)


class BatchedEngine(GradientEngine):
    """One batched (vmapped) backward pass for all tasks."""

    def jacobian(self, losses: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
        eye = torch.eye(losses.shape[0], device=losses.device, dtype=losses.dtype)
        grads = torch.autograd.grad(
            losses, params, grad_outputs=eye, retain_graph=True, allow_unused=True,
            is_grads_batched=True,
        )
        return torch.cat(
            [
                (g if g is not None else torch.zeros(len(losses), *p.shape, device=p.device,
                                                     dtype=p.dtype)).reshape(len(losses), -1)
                for g, p in zip(grads, params, strict=True)
            ],
            dim=1,
        )


ENGINES: dict[str, type[GradientEngine]] = {"loop": LoopEngine, "batched": BatchedEngine}


def apply_gradients(
    losses: torch.Tensor,
    strategy: WeightingStrategy,
    shared: Sequence[nn.Parameter],
    task_specific: Sequence[nn.Parameter],
    engine: GradientEngine,
) -> None:
    """Set ``.grad`` of every trainable parameter for one step, as ``strategy`` needs."""
    if strategy.needs == "losses":
        strategy.combine(losses).backward()  # type: ignore[attr-defined]
        return
    if shared:
        jac = engine.jacobian(losses, shared)
        direction = strategy.aggregate(jac)  # type: ignore[attr-defined]
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = direction[offset : offset + n].view_as(p)
            offset += n
    if task_specific:
        # Task parameters only feed their own task's loss, so this gives each its own gradient.
        grads = torch.autograd.grad(losses.sum(), task_specific, allow_unused=True)
        for p, g in zip(task_specific, grads, strict=True):
            p.grad = g if g is not None else torch.zeros_like(p)
