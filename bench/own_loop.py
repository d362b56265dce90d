"""A weighting strategy in your own training loop (as torchjd's ``mtl_backward``).

:class:`MTLBackward` sets the gradients of one training step from the (T,) task losses
through the same engine as the harness (``bench.engine.apply_gradients``: the O(T)
per-task backward, the loss transforms, the heads' gradients, the architecture's
regularisation), and owns the strategy's lifecycle, which a plain loop gets wrong
silently otherwise:

- ``reset(T, device)`` on the first step (T and the device from the losses), or at
  construction with ``num_tasks=``;
- the strategy's own parameters (UW's log-variances, IMTL's loss scales) must be
  trained by ``optimizer``: a step raises when they are not in it (or adds them, with
  ``add_parameters=True``);
- strategies that want the losses after the update (FAMO) get them from
  :meth:`MTLBackward.after_step`; the next step raises when that call was missing;
- strategies that work per epoch (DWA, STCH: they override ``end_epoch``) need
  ``steps_per_epoch=N`` (end of epoch then runs by itself with the mean losses of those
  N steps) or ``steps_per_epoch="manual"`` and a call of :meth:`MTLBackward.end_epoch`
  after each epoch; without either, construction raises.

Usage::

    mtl = MTLBackward(get("famo"), model, optimizer, shared=model.trunk.parameters())
    for x, y in batches:
        optimizer.zero_grad()
        mtl.backward(torch.stack([loss_a(model(x)), loss_b(model(x))]))
        optimizer.step()
        if mtl.wants_post_step_losses:
            with torch.no_grad():
                mtl.after_step(torch.stack([...same losses, recomputed...]))

:func:`mtl_backward` is the one-call form: it keeps one :class:`MTLBackward` per
strategy object and returns it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from bench.assembly import require_engine, step_context
from bench.engine import ENGINES, HeadGradients, apply_gradients
from strategies.weighting.base import GradientWeighting, WeightingStrategy

__all__ = ["MTLBackward", "mtl_backward", "uses_epochs"]


def uses_epochs(strategy: WeightingStrategy) -> bool:
    """Whether the strategy does something at the end of an epoch (overrides
    ``end_epoch``): its weights never change without those calls."""
    return type(strategy).end_epoch is not WeightingStrategy.end_epoch


def _name(strategy: WeightingStrategy) -> str:
    return getattr(strategy, "registry_name", type(strategy).__name__)


class MTLBackward:
    """Sets ``.grad`` for one step of a weighting strategy in a user's training loop.

    ``model``: the network (its parameters that are not ``shared`` are the task-specific
    ones; its ``regularization()``, if any, is added as in the harness). ``shared``: the
    parameters all tasks use (default: ``model.shared_parameters()`` when the model has
    it; required for gradient-based strategies otherwise). ``optimizer``: the optimizer
    that steps the model; the strategy's own parameters must be in it. ``engine``: how
    gradient-based strategies get the per-task gradients (``loop``, ``vmap``,
    ``gramian``, ``autogram``, ``rep``; see ``bench.engine``). ``heads``: what trains
    the task-specific parameters under a gradient-based strategy (``StepContext.heads``).
    ``steps_per_epoch``: see the module docstring. ``num_tasks`` (with ``device``):
    reset the strategy now, so that :meth:`parameters` exist before the first step.

    Losses must be a (T,) tensor; ``torch.stack`` of the T scalar losses gives each
    task's backward its own head only (``bench.engine.loss_handles``). Call
    ``optimizer.zero_grad()`` before :meth:`backward`, as with ``loss.backward()``.
    """

    def __init__(
        self,
        strategy: WeightingStrategy,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        shared: Iterable[nn.Parameter] | None = None,
        engine: str = "loop",
        heads: HeadGradients = "method",
        steps_per_epoch: int | Literal["manual"] | None = None,
        add_parameters: bool = False,
        num_tasks: int | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine '{engine}'; known: {', '.join(sorted(ENGINES))}")
        if uses_epochs(strategy) and steps_per_epoch is None:
            raise ValueError(
                f"strategy '{_name(strategy)}' updates its weights at the end of each epoch: "
                "pass steps_per_epoch=N (end_epoch then runs after every N steps) or "
                "steps_per_epoch='manual' and call end_epoch() after each epoch"
            )
        if isinstance(steps_per_epoch, int) and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1 (got {steps_per_epoch})")
        if shared is None:
            getter = getattr(model, "shared_parameters", None)
            if callable(getter):
                shared = getter()
            elif isinstance(strategy, GradientWeighting):
                # Taking every parameter as shared would run the heads through the strategy.
                raise ValueError(f"strategy '{_name(strategy)}' works on the shared parameters' "
                                 "gradients: pass shared=<the parameters all tasks use>")
            else:
                shared = model.parameters()  # a loss-based strategy makes no distinction
        shared_list = [p for p in shared if p.requires_grad]
        self.strategy = strategy
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.add_parameters = add_parameters
        self.seed = seed
        self.ctx = step_context(model, strategy, ENGINES[engine](), optimizer, shared_list, heads)
        require_engine(self.ctx.engine, strategy, model)  # IncompatibleSpec, a ValueError
        if isinstance(strategy, GradientWeighting) and shared_list:
            # Engines that record the forward (autogram) must hook in before it.
            self.ctx.engine.prepare(model, shared_list)
        self.num_tasks: int | None = None
        self._steps = 0  # backward() calls since the last end of epoch
        self._loss_sum: torch.Tensor | None = None
        self._awaiting_post_step = False
        self._optimizer_steps = 0
        self._steps_at_backward = 0
        # Counts the optimizer's steps, so that after_step() can tell whether it ran.
        ref = weakref.ref(self)
        self._hook = optimizer.register_step_post_hook(
            lambda *_: _count_step(ref)
        )
        if num_tasks is not None:
            self.reset(num_tasks, torch.device(device) if device is not None else None)

    # ------------------------------------------------------------------ lifecycle

    def reset(self, num_tasks: int, device: torch.device | None = None) -> None:
        """Reset the strategy for ``num_tasks`` tasks on ``device`` (default: CPU) and
        forget the epoch and post-step bookkeeping. The first :meth:`backward` calls it."""
        self.strategy.reset(num_tasks, device or torch.device("cpu"), seed=self.seed)
        self.num_tasks = num_tasks
        self._steps = 0
        self._loss_sum = None
        self._awaiting_post_step = False

    def parameters(self) -> list[torch.Tensor]:
        """The strategy's own learnable parameters (after the reset); the optimizer must
        hold them (``optimizer.add_param_group({"params": mtl.parameters()})``)."""
        return list(self.strategy.parameters())

    @property
    def wants_post_step_losses(self) -> bool:
        """Whether :meth:`after_step` must follow each optimizer step (FAMO)."""
        return self.strategy.wants_post_step_losses

    @property
    def weights(self) -> torch.Tensor | None:
        """The (T,) task weights of the latest step, when the strategy has such weights."""
        return self.strategy.last_weights

    def _check_parameters(self) -> None:
        own = [p for p in self.strategy.parameters() if p.requires_grad]
        if not own:
            return
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [p for p in own if id(p) not in held]
        if not missing:
            return
        if self.add_parameters:
            self.optimizer.add_param_group({"params": missing})
            return
        raise RuntimeError(
            f"strategy '{_name(self.strategy)}' learns {len(missing)} parameter tensor(s) of "
            "its own that the optimizer does not hold, so its weights would never change: "
            "construct MTLBackward with num_tasks=T and then call "
            "optimizer.add_param_group({'params': mtl.parameters()}), or pass "
            "add_parameters=True"
        )

    # ------------------------------------------------------------------ per step

    def backward(
        self,
        losses: torch.Tensor | Sequence[torch.Tensor],
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Set ``.grad`` of the shared and task-specific parameters (and the strategy's
        own) from the (T,) task losses of one step.

        A strategy with ``batches_per_step = k > 1`` (SDMGrad, MoDo) takes a list of k
        (T,) loss vectors of independent minibatches. ``features``: the shared
        representation the task heads read (one tensor, or one per task); the batched
        engines (``vmap``, ``gramian``, ``autogram``) then run one backward through the
        trunk instead of one per task. Exact either way."""
        batches = [losses] if isinstance(losses, torch.Tensor) else list(losses)
        k = self.strategy.batches_per_step
        if len(batches) != k:
            raise ValueError(
                f"strategy '{_name(self.strategy)}' takes {k} loss vector(s) of independent "
                f"minibatches per step (got {len(batches)})"
            )
        first = batches[0]
        if first.dim() != 1 or not first.requires_grad:
            raise ValueError("losses must be a (T,) tensor with a graph, e.g. "
                             "torch.stack([loss_1, ..., loss_T])")
        if self._awaiting_post_step:
            raise RuntimeError(
                f"strategy '{_name(self.strategy)}' adapts from the losses after each update: "
                "call after_step(new_losses) after optimizer.step(), with the same batch's "
                "losses recomputed under torch.no_grad()"
            )
        if self.num_tasks is None:
            self.reset(len(first), first.device)
        elif len(first) != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} task losses (got {len(first)}); "
                             "call reset(T) to change the number of tasks")
        self._check_parameters()
        feats = None
        if features is not None:
            per_task = ([features] * len(first) if isinstance(features, torch.Tensor)
                        else list(features))
            feats = [per_task] + [None] * (len(batches) - 1)
        apply_gradients(batches, self.ctx, features=feats)
        self._after_backward(first.detach())

    def _after_backward(self, losses: torch.Tensor) -> None:
        self._awaiting_post_step = self.strategy.wants_post_step_losses
        self._steps_at_backward = self._optimizer_steps
        # Summed on the device: no host sync per step.
        self._loss_sum = losses.clone() if self._loss_sum is None else self._loss_sum + losses
        self._steps += 1
        if isinstance(self.steps_per_epoch, int) and self._steps == self.steps_per_epoch:
            self._end_epoch(None)

    def after_step(self, losses: torch.Tensor) -> None:
        """After ``optimizer.step()``: the (T,) losses of the same batch with the updated
        model (no graph needed). Required by strategies with ``wants_post_step_losses``
        (FAMO); a no-op for the others, so a loop may call it for every strategy."""
        if not self.strategy.wants_post_step_losses:
            return
        if not self._awaiting_post_step:
            raise RuntimeError("after_step() without a backward() since the last after_step()")
        if self._optimizer_steps == self._steps_at_backward:
            raise RuntimeError("after_step() before optimizer.step(): it takes the losses "
                               "of the updated model")
        self._awaiting_post_step = False
        with torch.no_grad():
            self.strategy.post_step(losses.detach())

    def end_epoch(self, mean_losses: torch.Tensor | None = None) -> None:
        """End of an epoch (with ``steps_per_epoch="manual"``): ``mean_losses`` are each
        task's (T,) mean training loss over the epoch; by default the mean of the losses
        :meth:`backward` saw since the last end of epoch."""
        if isinstance(self.steps_per_epoch, int):
            raise RuntimeError(f"end_epoch() runs by itself every {self.steps_per_epoch} "
                               "steps; pass steps_per_epoch='manual' to call it yourself")
        self._end_epoch(mean_losses)

    def _end_epoch(self, mean_losses: torch.Tensor | None) -> None:
        if mean_losses is None:
            if self._loss_sum is None:
                raise RuntimeError("end_epoch() before any backward(): no losses to average")
            mean_losses = self._loss_sum / self._steps
        self.strategy.end_epoch(mean_losses.detach())
        self._steps = 0
        self._loss_sum = None


def _count_step(ref: weakref.ref[MTLBackward]) -> None:
    owner = ref()
    if owner is not None:
        owner._optimizer_steps += 1


_BOUND: weakref.WeakKeyDictionary[WeightingStrategy, MTLBackward] = weakref.WeakKeyDictionary()


def mtl_backward(
    losses: torch.Tensor | Sequence[torch.Tensor],
    strategy: WeightingStrategy,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    **options: object,
) -> MTLBackward:
    """Set ``.grad`` for one step of ``strategy`` from the (T,) ``losses`` and return the
    strategy's :class:`MTLBackward` (created on the first call with ``options``, its
    keyword arguments; call its ``after_step`` / ``end_epoch`` as it requires)."""
    mtl = _BOUND.get(strategy)
    if mtl is None or mtl.ctx.model is not model or mtl.optimizer is not optimizer:
        mtl = MTLBackward(strategy, model, optimizer, **options)  # type: ignore[arg-type]
        _BOUND[strategy] = mtl
    mtl.backward(losses, features)
    return mtl
