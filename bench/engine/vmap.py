"""The batched engines: ``vmap`` (J by one vmapped backward) and ``gramian`` (the same
backward reduced per parameter tensor to the (T, T) Gramian, J never concatenated)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.engine.base import GradientEngine, _grad, _mix_rows, _zeros_if_none
from bench.engine.losses import LossHandle, TaskLosses, as_task_losses
from strategies.weighting.base import GradientWeighting, GramianWeighting, WeightingStrategy

if TYPE_CHECKING:
    from bench.engine.step import StepContext, Timer

__all__ = ["GramianEngine", "VmapEngine"]


def _batched_grads(
    outputs: Sequence[LossHandle | torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    num_tasks: int,
) -> list[torch.Tensor]:
    """Per parameter tensor, the (T, *shape) stack of per-task gradients (one vmapped
    backward; ``grad_outputs`` are batched over tasks)."""
    grads = torch.autograd.grad(
        outputs, params, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True,
        is_grads_batched=True,
    )
    return [
        g if g is not None else torch.zeros(num_tasks, *p.shape, device=p.device, dtype=p.dtype)
        for g, p in zip(grads, params, strict=True)
    ]


class VmapEngine(GradientEngine):
    """Batched (vmapped) backward for all tasks.

    With the towers' inputs recorded (every built-in architecture), each task's loss is
    first differentiated w.r.t. its own feature (T small backwards, one tower each), then
    one batched backward carries the T feature gradients through the shared trunk.
    Otherwise one batched backward from the losses (every head sees all T seeds)."""

    name = "vmap"
    uses_features = True

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        num_tasks = len(losses.raw)
        if losses.features is not None:
            outputs, seeds = _feature_seeds(losses)
        else:
            outputs = losses.handles
            eye = torch.eye(num_tasks, dtype=losses.raw.dtype, device=losses.raw.device)
            seeds = [eye[t] * scale for t, scale in enumerate(losses.scales)]
        per_param = _batched_grads(outputs, seeds, params, num_tasks)
        if losses.mixing is not None:
            per_param = [_mix_rows(losses, g) for g in per_param]
        return per_param


def _feature_seeds(losses: TaskLosses) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Unique task features and their (T, *shape) batched seeds: seed row t is the
    gradient of task t's loss w.r.t. the feature (zero rows for the other tasks)."""
    assert losses.features is not None
    num_tasks = len(losses.features)
    unique: dict[int, int] = {}
    outputs: list[torch.Tensor] = []
    rows: list[list[tuple[int, torch.Tensor]]] = []
    for t, (handle, scale, feature) in enumerate(
        zip(losses.handles, losses.scales, losses.features, strict=True)
    ):
        own = losses.own_of(t)
        grads = _grad(handle, [feature, *own], scale)
        (g,) = _zeros_if_none(grads[:1], [feature])
        losses.set_own_grads(t, grads[1:])
        k = unique.setdefault(id(feature), len(outputs))
        if k == len(outputs):
            outputs.append(feature)
            rows.append([])
        rows[k].append((t, g))
    seeds = []
    for feature, grads in zip(outputs, rows, strict=True):
        if len(grads) == num_tasks:  # one feature read by every task (hps): no zero rows
            seeds.append(torch.stack([g for _, g in grads]))
            continue
        seed = feature.new_zeros(num_tasks, *feature.shape)
        for t, g in grads:
            seed[t] = g
        seeds.append(seed)
    losses.own_filled = losses.folds_own
    return outputs, seeds


class GramianEngine(VmapEngine):
    """Batched backward reduced straight to the Gramian; J is never concatenated."""

    name = "gramian"

    def require_support(
        self, strategy: type[WeightingStrategy], model: type[nn.Module]
    ) -> None:
        if not issubclass(strategy, GramianWeighting) or strategy.batches_per_step != 1:
            raise ValueError(
                f"engine '{self.name}' needs a strategy whose direction is weights(J J^T) @ J; "
                f"'{getattr(strategy, 'registry_name', strategy.__name__)}' is not one "
                "(use engine 'loop' or 'vmap')"
            )

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        assert isinstance(strategy, GramianWeighting)
        losses = as_task_losses(losses_per_batch)[0]
        per_param = self.task_gradients(losses, ctx.shared)
        num_tasks = len(losses.raw)
        wide = torch.promote_types(per_param[0].dtype, torch.float32) if per_param else None
        flat = [g.reshape(num_tasks, -1).to(wide) for g in per_param]
        gramian = sum(f @ f.T for f in flat)
        weights = _gramian_weights(strategy, gramian, losses, timer)
        for p, g in zip(ctx.shared, per_param, strict=True):
            p.grad = torch.tensordot(weights.to(g.dtype), g, dims=1)


def _gramian_weights(
    strategy: GramianWeighting, gramian: torch.Tensor, losses: TaskLosses, timer: Timer
) -> torch.Tensor:
    """The strategy's (detached) task weights of ``gramian``, also kept as its
    ``last_weights``; closes the ``jacobian`` and ``aggregate`` phases (the Gramian
    engines' common tail)."""
    timer.mark("jacobian")
    weights = strategy.weights(gramian, losses.transformed.detach()).detach()
    strategy.last_weights = weights
    timer.mark("aggregate")
    return weights
