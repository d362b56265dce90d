"""The training step and its gradient engines.

What a strategy declares decides the path, never its name:

- loss-based (``needs == "losses"``): backpropagate ``strategy.combine(losses)``;
- gradient-based (``needs == "jacobian"``): an engine computes the per-task
  Jacobian J of the shared parameters (or of the shared representation), the
  strategy maps it to a direction that becomes the shared parameters' gradient,
  and each task's own parameters get the gradient of that task's loss (as in
  torchjd's ``mtl_backward``).

Engines differ in how J is obtained, so their cost is an ablation axis:

- ``loop``: one ``autograd.grad`` call per task;
- ``vmap``: one batched (vmapped) backward over the identity grad-outputs;
- ``gramian``: the batched backward, but per parameter tensor; only the (T, T)
  Gramian is reduced and the direction is ``sum_t w_t J_t`` per tensor, so no
  (T, P) matrix is ever concatenated (``GramianWeighting`` strategies only);
- ``rep``: J of the shared representation (MGDA-UB style, approximate, cheap);
  the direction is backpropagated through the shared trunk. Only for strategies
  declaring ``supports_rep`` on architectures exposing a representation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from strategies.weighting.base import GradientWeighting, GramianWeighting, WeightingStrategy

__all__ = [
    "ENGINES",
    "GradientEngine",
    "NullTimer",
    "StepContext",
    "Timer",
    "apply_gradients",
    "train_step",
]


class Timer(Protocol):
    """Receives phase boundaries: ``mark(name)`` closes the phase called ``name``."""

    def mark(self, name: str) -> None: ...


class NullTimer:
    """Timer that records nothing (the default: no overhead in ordinary trials)."""

    def mark(self, name: str) -> None:
        pass


@dataclass
class StepContext:
    """What one training step works on."""

    model: nn.Module
    strategy: WeightingStrategy
    engine: GradientEngine
    optimizer: torch.optim.Optimizer
    shared: list[nn.Parameter]
    task_specific: list[nn.Parameter]


def _zeros_if_none(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


class GradientEngine(ABC):
    """Produces the shared parameters' gradients of a gradient-based strategy."""

    name: str = ""

    def check(  # noqa: B027 (most engines serve every strategy)
        self, strategy: type[WeightingStrategy], model: type[nn.Module]
    ) -> None:
        """Raise ``ValueError`` if this engine cannot serve the strategy class on the
        architecture class (checked when the grid is built, before anything runs)."""

    @abstractmethod
    def jacobian(self, losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(T, P): row t is the flattened gradient of ``losses[t]`` w.r.t. ``params``.
        Keeps the graph alive."""

    def shared_gradients(
        self,
        losses_per_batch: Sequence[torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        """Set ``.grad`` of the shared parameters from the strategy's direction."""
        jacobians = [self.jacobian(losses, ctx.shared) for losses in losses_per_batch]
        timer.mark("jacobian")
        detached = [losses.detach() for losses in losses_per_batch]
        if len(jacobians) == 1:
            direction = strategy.aggregate(jacobians[0], detached[0])
        else:
            direction = strategy.aggregate_batches(jacobians, detached)
        timer.mark("aggregate")
        offset = 0
        for p in ctx.shared:
            n = p.numel()
            p.grad = direction[offset : offset + n].view_as(p).to(p.dtype)
            offset += n


class LoopEngine(GradientEngine):
    """One ``autograd.grad`` call per task."""

    name = "loop"

    def jacobian(self, losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        rows = []
        for loss in losses:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([g.reshape(-1) for g in _zeros_if_none(grads, params)]))
        return torch.stack(rows)


def _batched_grads(losses: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per parameter tensor, the (T, *shape) stack of per-task gradients (one vmapped pass)."""
    eye = torch.eye(losses.shape[0], device=losses.device, dtype=losses.dtype)
    grads = torch.autograd.grad(
        losses, params, grad_outputs=eye, retain_graph=True, allow_unused=True,
        is_grads_batched=True,
    )
    return [
        g if g is not None else torch.zeros(len(losses), *p.shape, device=p.device, dtype=p.dtype)
        for g, p in zip(grads, params, strict=True)
    ]


class VmapEngine(GradientEngine):
    """One batched (vmapped) backward for all tasks."""

    name = "vmap"

    def jacobian(self, losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(len(losses), -1) for g in _batched_grads(losses, params)], 1)


class GramianEngine(VmapEngine):
    """Batched backward reduced straight to the Gramian; J is never concatenated."""

    name = "gramian"

    def check(self, strategy: type[WeightingStrategy], model: type[nn.Module]) -> None:
        if not issubclass(strategy, GramianWeighting) or strategy.batches_per_step != 1:
            raise ValueError(
                f"engine 'gramian' needs a strategy whose direction is weights(J J^T) @ J; "
                f"'{getattr(strategy, 'registry_name', strategy.__name__)}' is not one "
                "(use engine 'loop' or 'vmap')"
            )

    def shared_gradients(
        self,
        losses_per_batch: Sequence[torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        assert isinstance(strategy, GramianWeighting)
        losses = losses_per_batch[0]
        per_param = _batched_grads(losses, ctx.shared)
        flat = [g.reshape(len(losses), -1) for g in per_param]
        gramian = sum(f @ f.T for f in flat)
        timer.mark("jacobian")
        weights = strategy.weights(gramian, losses.detach())
        strategy.last_weights = weights
        timer.mark("aggregate")
        for p, g in zip(ctx.shared, per_param, strict=True):
            p.grad = torch.tensordot(weights.to(g.dtype), g, dims=1)


class RepEngine(GradientEngine):
    """Jacobian w.r.t. the shared representation (MGDA-UB, Sener & Koltun 2018)."""

    name = "rep"

    def check(self, strategy: type[WeightingStrategy], model: type[nn.Module]) -> None:
        name = getattr(strategy, "registry_name", strategy.__name__)
        if not strategy.supports_rep:
            raise ValueError(f"engine 'rep' is not defined for strategy '{name}'")
        if not getattr(model, "has_representation", False):
            raise ValueError(
                f"engine 'rep' needs an architecture with one shared representation; "
                f"'{getattr(model, 'registry_name', model.__name__)}' has none"
            )

    def jacobian(self, losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return VmapEngine.jacobian(self, losses, params)

    def shared_gradients(
        self,
        losses_per_batch: Sequence[torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        rep = ctx.model.representation  # type: ignore[attr-defined]
        losses = losses_per_batch[0]
        jac = self.jacobian(losses, [rep])
        timer.mark("jacobian")
        direction = strategy.aggregate(jac, losses.detach())
        timer.mark("aggregate")
        grads = torch.autograd.grad(rep, ctx.shared, grad_outputs=direction.view_as(rep),
                                    retain_graph=True, allow_unused=True)
        for p, g in zip(ctx.shared, _zeros_if_none(grads, ctx.shared), strict=True):
            p.grad = g


ENGINES: dict[str, type[GradientEngine]] = {
    e.name: e for e in (LoopEngine, VmapEngine, GramianEngine, RepEngine)
}


def apply_gradients(
    losses_per_batch: Sequence[torch.Tensor],
    ctx: StepContext,
    timer: Timer | None = None,
) -> None:
    """Set ``.grad`` of every trainable parameter (model and strategy) for one step.

    ``losses_per_batch`` holds the (T,) task losses of each of the step's
    minibatches (one, unless the strategy declares ``batches_per_step``)."""
    timer = timer or NullTimer()
    strategy = ctx.strategy
    transformed = [strategy.transform_losses(losses) for losses in losses_per_batch]
    if not isinstance(strategy, GradientWeighting):
        strategy.combine(transformed[0]).backward()  # type: ignore[attr-defined]
        _add_regularization(ctx.model)
        timer.mark("backward")
        return
    if ctx.shared:
        ctx.engine.shared_gradients(transformed, strategy, ctx, timer)
    own = [p for p in (*ctx.task_specific, *strategy.parameters()) if p.requires_grad]
    if own:
        # Task parameters only feed their own task's loss, so the gradient of the sum
        # gives each its own task's gradient; strategy parameters get theirs likewise.
        total = torch.stack(transformed).mean(0).sum()
        grads = torch.autograd.grad(total, own, allow_unused=True)
        for p, g in zip(own, _zeros_if_none(grads, own), strict=True):
            p.grad = g
    _add_regularization(ctx.model)
    timer.mark("backward")


def _add_regularization(model: nn.Module) -> None:
    """Add the architecture's own penalty (e.g. soft sharing's L2 between columns) to the
    gradients the strategy produced; the strategy never weights or projects it."""
    reg = getattr(model, "regularization", None)
    penalty = reg() if reg is not None else None
    if penalty is not None and penalty.requires_grad:
        penalty.backward()  # accumulates into .grad


def train_step(
    ctx: StepContext,
    batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    compute_losses: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor],
    timer: Timer | None = None,
) -> torch.Tensor:
    """One optimisation step on ``batches`` (one per ``strategy.batches_per_step``).

    Returns the (T,) detached losses of the first batch. Phases reported to
    ``timer``: forward, jacobian, aggregate, backward, optimizer (and post_step)."""
    timer = timer or NullTimer()
    losses_per_batch = []
    for x, y in batches:
        out = ctx.model(x)
        losses_per_batch.append(compute_losses(out, y))
    timer.mark("forward")
    ctx.optimizer.zero_grad(set_to_none=True)
    apply_gradients(losses_per_batch, ctx, timer)
    ctx.optimizer.step()
    timer.mark("optimizer")
    if ctx.strategy.wants_post_step_losses:
        with torch.no_grad():
            x, y = batches[0]
            ctx.strategy.post_step(compute_losses(ctx.model(x), y))
        timer.mark("post_step")
    return losses_per_batch[0].detach()
