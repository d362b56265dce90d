"""The abstract :class:`GradientEngine` and the helpers its engines share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from bench.engine.losses import LossHandle, TaskLosses, as_task_losses
from strategies.weighting.base import GradientWeighting, WeightingStrategy

if TYPE_CHECKING:
    from bench.engine.step import StepContext, Timer

__all__ = ["GradientEngine"]


def _zeros_if_none(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``grads`` with each missing (unused) gradient replaced by zeros like its param."""
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


def _grad(
    handle: LossHandle, inputs: Sequence[torch.Tensor], scale: torch.Tensor
) -> list[torch.Tensor | None]:
    """Gradient of one task loss (``scale`` seeds it), keeping the graph alive."""
    return list(torch.autograd.grad(handle, inputs, grad_outputs=scale, retain_graph=True,
                                    allow_unused=True))


def _mix_rows(losses: TaskLosses, g: torch.Tensor) -> torch.Tensor:
    """(T, *shape) per-task gradients of the raw losses -> of the transformed ones."""
    return losses.mix(g.reshape(len(g), -1)).reshape(g.shape)


class GradientEngine(ABC):
    """Produces the shared parameters' gradients of a gradient-based strategy."""

    name: str = ""
    #: Whether the engine uses the recorded tower inputs (``TaskFeatures``).
    uses_features: ClassVar[bool] = False

    def require_support(  # noqa: B027 (most engines serve every strategy)
        self, strategy: type[WeightingStrategy], model: type[nn.Module]
    ) -> None:
        """Raise ``ValueError`` if this engine cannot serve the strategy class on the
        architecture class (checked when the grid is built, before anything runs)."""

    def check(self, strategy: type[WeightingStrategy], model: type[nn.Module]) -> None:
        """Deprecated name of :meth:`require_support`, kept because the read-only
        ``shared/tools/peer_speed.py`` still calls ``engine.check``; do not override."""
        self.require_support(strategy, model)

    def prepare(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> None:  # noqa: B027
        """Called by :func:`train_step` before the step's forward passes (gradient-based
        strategies only): an engine that records the forward installs its hooks here."""

    @abstractmethod
    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per parameter tensor, the (T, *shape) stack of the T tasks' gradients of the
        transformed losses. Keeps the graph alive."""

    def jacobian(self, losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(T, P): row t is the flattened gradient of ``losses[t]`` w.r.t. ``params``."""
        return self.task_jacobian(TaskLosses(losses, losses), params)

    def task_jacobian(self, losses: TaskLosses, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(T, P) Jacobian of the transformed losses w.r.t. ``params`` (flattened, in order)."""
        per_param = self.task_gradients(losses, params)
        return torch.cat([g.reshape(len(losses.raw), -1) for g in per_param], 1)

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        """Set ``.grad`` of the shared parameters from the strategy's direction."""
        losses_per_batch = as_task_losses(losses_per_batch)
        jacobians = []
        for losses in losses_per_batch:
            jacobians.append(self.task_jacobian(losses, ctx.shared))
        timer.mark("jacobian")
        detached = [losses.transformed.detach() for losses in losses_per_batch]
        if len(jacobians) == 1:
            direction = strategy.aggregate(jacobians[0], detached[0])
        else:
            direction = strategy.aggregate_batches(jacobians, detached)
        timer.mark("aggregate")
        offset = 0
        for p in ctx.shared:
            n = p.numel()
            p.grad = direction[offset : offset + n].view_as(p).to(p.dtype).detach()
            offset += n
