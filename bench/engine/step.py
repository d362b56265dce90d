"""The training step: :func:`train_step` (forward, gradients, optimizer) and
:func:`apply_gradients`, which dispatches on what the strategy declares (see the
package docstring of :mod:`bench.engine`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import nn

from bench.engine.base import _zeros_if_none
from bench.engine.losses import TaskFeatures, TaskLosses
from strategies.weighting.base import GradientWeighting, WeightingStrategy

if TYPE_CHECKING:
    from bench.engine.base import GradientEngine

__all__ = [
    "HeadGradients",
    "NullTimer",
    "StepContext",
    "Timer",
    "apply_gradients",
    "head_gradients",
    "losses_follow_outputs",
    "task_parameter_split",
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
    """What one training step works on.

    ``heads`` decides the gradient of the task-specific parameters under gradient-based
    strategies: ``"own"`` (each task's parameters get the gradient of that task's own
    loss, as torchjd's ``mtl_backward``), ``"weighted"`` (of ``w_t L_t`` with the
    strategy's task weights, as the official Nash-MTL, FairGrad and ExcessMTL codes
    backpropagate ``sum_t w_t L_t``), or ``"method"`` (the strategy's declared
    ``head_gradients``)."""

    model: nn.Module
    strategy: WeightingStrategy
    engine: GradientEngine
    optimizer: torch.optim.Optimizer
    shared: list[nn.Parameter]
    task_specific: list[nn.Parameter]
    heads: HeadGradients = "method"
    #: ``task_specific`` split by task, in the order of the step's losses, when the
    #: architecture declares it (``task_parameters``): an engine may then give each
    #: task's parameters their gradient in that task's own backward. When not given,
    #: :func:`train_step` derives it from the model's task order once that order is seen
    #: to be the losses' order in the first step's graph.
    task_params: list[list[nn.Parameter]] | None = None
    task_order_checked: bool = field(default=False, init=False)


HeadGradients = Literal["method", "own", "weighted"]


def head_gradients(ctx: StepContext) -> Literal["own", "weighted"]:
    """How the task-specific parameters are trained under ``ctx`` (see StepContext)."""
    if ctx.heads == "method":
        return getattr(ctx.strategy, "head_gradients", "own")
    return ctx.heads


def apply_gradients(
    losses_per_batch: Sequence[torch.Tensor],
    ctx: StepContext,
    timer: Timer | None = None,
    features: Sequence[list[torch.Tensor] | None] | None = None,
) -> None:
    """Set ``.grad`` of every trainable parameter (model and strategy) for one step.

    ``losses_per_batch`` holds the (T,) task losses of each of the step's
    minibatches (one, unless the strategy declares ``batches_per_step``); ``features``
    optionally each batch's recorded tower inputs (see :class:`TaskFeatures`)."""
    timer = timer or NullTimer()
    strategy = ctx.strategy
    transformed = [strategy.transform_losses(losses) for losses in losses_per_batch]
    if not isinstance(strategy, GradientWeighting):
        strategy.combine(transformed[0]).backward()  # type: ignore[attr-defined]
        _add_regularization(ctx.model)
        timer.mark("backward")
        return
    features = features or [None] * len(losses_per_batch)
    heads_filled = False
    if ctx.shared:
        # One batch, own-loss heads: the engine may fill the heads' gradients on the way.
        fold = (ctx.task_params is not None and len(losses_per_batch) == 1
                and head_gradients(ctx) == "own")
        own_params = ([[p for p in ps if p.requires_grad] for ps in ctx.task_params]
                      if fold and ctx.task_params is not None else None)
        task_losses = [
            TaskLosses(raw, out, feats, elementwise=not strategy.transform_mixes_tasks,
                       own=own_params)
            for raw, out, feats in zip(losses_per_batch, transformed, features, strict=True)
        ]
        ctx.engine.shared_gradients(task_losses, strategy, ctx, timer)
        heads_filled = task_losses[0].own_filled
    specific = [] if heads_filled else ctx.task_specific
    own = [p for p in (*specific, *strategy.parameters()) if p.requires_grad]
    if own:
        # Task parameters only feed their own task's loss, so the gradient of the sum
        # gives each its own task's gradient; strategy parameters get theirs likewise.
        per_task = torch.stack(transformed).mean(0)
        # Without shared parameters no strategy weights exist: the method's default
        # falls back to each task's own gradient (an explicit "weighted" still raises).
        weighted = head_gradients(ctx) == "weighted" and (ctx.shared or ctx.heads == "weighted")
        if weighted and specific:
            heads = [p for p in specific if p.requires_grad]
            _set_grads(heads, (per_task * _task_weights(strategy)).sum(), retain=True)
            own = [p for p in strategy.parameters() if p.requires_grad]
        if own:
            _set_grads(own, per_task.sum())
    _add_regularization(ctx.model)
    timer.mark("backward")


def _set_grads(params: Sequence[torch.Tensor], loss: torch.Tensor, retain: bool = False) -> None:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    for p, g in zip(params, _zeros_if_none(grads, params), strict=True):
        p.grad = g


def _task_weights(strategy: WeightingStrategy) -> torch.Tensor:
    weights = strategy.last_weights
    if weights is None:
        name = getattr(strategy, "registry_name", type(strategy).__name__)
        raise ValueError(f"heads = 'weighted' needs task weights, and strategy '{name}' "
                         "has none (use heads = 'own')")
    return weights.detach()


def _add_regularization(model: nn.Module) -> None:
    """Add the architecture's own penalty (e.g. soft sharing's L2 between columns) to the
    gradients the strategy produced; the strategy never weights or projects it."""
    reg = getattr(model, "regularization", None)
    penalty = reg() if reg is not None else None
    if penalty is not None and penalty.requires_grad:
        penalty.backward()  # accumulates into .grad


def task_parameter_split(
    model: nn.Module, tasks: Sequence[str], task_specific: Sequence[nn.Parameter]
) -> list[list[nn.Parameter]] | None:
    """``task_specific`` as the architecture's ``task_parameters(task)`` per task of
    ``tasks``, or None unless those lists are disjoint and together are exactly
    ``task_specific`` (then each task's parameters feed that task's loss only)."""
    split_of = getattr(model, "task_parameters", None)
    if split_of is None:
        return None
    split = [list(split_of(name)) for name in tasks]
    ids = [id(p) for ps in split for p in ps]
    if len(ids) != len(set(ids)) or set(ids) != {id(p) for p in task_specific}:
        return None
    return split


#: Autograd nodes a task loss's graph may have before its task's output (the check
#: gives up beyond it, and the heads then get one backward of their own).
_ORDER_CHECK_NODES = 256


def losses_follow_outputs(
    losses: torch.Tensor, outputs: dict[str, torch.Tensor], names: Sequence[str]
) -> bool:
    """Whether loss ``t`` of the (T,) stack ``losses`` is computed from
    ``outputs[names[t]]`` and from no other output, as seen in the autograd graph (a walk
    from each stacked loss back to the first output nodes it meets; a loss that meets
    none, such as a constant, counts for nothing either way, but one must match)."""
    fn = losses.grad_fn
    if losses.dim() != 1 or fn is None or type(fn).__name__ != "StackBackward0" or \
            len(fn.next_functions) != len(names):
        return False
    output_nodes = {out.grad_fn: name for name, out in outputs.items()
                    if isinstance(out, torch.Tensor) and out.grad_fn is not None}
    matched = False
    for (start, _), name in zip(fn.next_functions, names, strict=True):
        stack, seen, reached = [start], set(), set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if len(seen) > _ORDER_CHECK_NODES:
                return False
            if node in output_nodes:
                reached.add(output_nodes[node])
                continue
            stack.extend(next_node for next_node, _ in node.next_functions)
        if reached - {name}:
            return False
        matched = matched or name in reached
    return matched


def _check_task_order(
    ctx: StepContext, outputs: dict[str, torch.Tensor], losses: torch.Tensor
) -> None:
    """Once per context: adopt the model's task order for ``ctx.task_params`` if this
    step's graph shows the losses follow it (see :attr:`StepContext.task_params`)."""
    ctx.task_order_checked = True
    tasks = getattr(ctx.model, "tasks", None)
    if not isinstance(outputs, dict) or not tasks:
        return
    names = [getattr(task, "name", task) for task in tasks]
    if list(outputs) == names and losses_follow_outputs(losses, outputs, names):
        ctx.task_params = task_parameter_split(ctx.model, names, ctx.task_specific)


_TAPS: weakref.WeakKeyDictionary[nn.Module, TaskFeatures] = weakref.WeakKeyDictionary()


def _task_features(ctx: StepContext) -> TaskFeatures | None:
    """The model's tower-input recorder, installed on first use by an engine that uses it."""
    if not (isinstance(ctx.strategy, GradientWeighting) and ctx.engine.uses_features):
        return None
    tap = _TAPS.get(ctx.model)
    if tap is None:
        tap = _TAPS[ctx.model] = TaskFeatures(ctx.model, ctx.shared)
    return tap


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
    tap = _task_features(ctx)
    if isinstance(ctx.strategy, GradientWeighting) and ctx.shared:
        ctx.engine.prepare(ctx.model, ctx.shared)
    losses_per_batch, features = [], []
    for x, y in batches:
        out = ctx.model(x)
        losses_per_batch.append(compute_losses(out, y))
        features.append(tap.of(out) if tap is not None else None)
        if ctx.task_params is None and not ctx.task_order_checked and ctx.shared and \
                isinstance(ctx.strategy, GradientWeighting):
            _check_task_order(ctx, out, losses_per_batch[-1])
    timer.mark("forward")
    ctx.optimizer.zero_grad(set_to_none=True)
    apply_gradients(losses_per_batch, ctx, timer, features)
    ctx.optimizer.step()
    timer.mark("optimizer")
    if ctx.strategy.wants_post_step_losses:
        with torch.no_grad():
            x, y = batches[0]
            ctx.strategy.post_step(compute_losses(ctx.model(x), y))
        timer.mark("post_step")
    return losses_per_batch[0].detach()
