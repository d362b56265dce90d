"""The ``auto`` engine: ``autogram`` where it is the faster engine, ``loop`` elsewhere."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.engine.autogram import AutogramEngine, recorded_fraction
from bench.engine.base import GradientEngine
from bench.engine.loop import LoopEngine
from bench.engine.losses import TaskLosses, as_task_losses
from strategies.weighting.base import GradientWeighting, GramianWeighting

if TYPE_CHECKING:
    from bench.engine.step import StepContext, Timer

__all__ = ["AutoEngine"]


class AutoEngine(GradientEngine):
    """``autogram`` for a Gramian strategy (one batch per step) with at least
    ``min_tasks`` tasks on a model whose recorded Linear / Conv2d layers hold at least
    ``min_covered`` of the shared parameters; ``loop`` for everything else.

    The rule is fixed, not timed, so a trial's engine (and its rounding) never depends
    on the machine's load. The crossover was measured with ``make perf`` on issue 13's
    reference problem (hps MLP 100-256-256, batch 256, one CPU thread): ``loop`` is 7-19%
    faster at T = 2-4, the two are within 2% at T = 6, and ``autogram`` is 9-10% faster at
    T = 10 and 12-15% at T = 40 (its batched trunk backward and per-layer Gramian beat T
    separate backwards and J J^T)."""

    name = "auto"
    uses_features = True

    def __init__(self, min_tasks: int = 8, min_covered: float = 0.9) -> None:
        self.min_tasks = min_tasks
        self.min_covered = min_covered
        self.loop = LoopEngine()
        self.autogram = AutogramEngine()
        self._covered: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

    def prepare(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> None:
        # The layers are recorded during every forward; whether the record is used is
        # decided per step, once the strategy and the number of tasks are known.
        self.autogram.prepare(model, shared)

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        return self.loop.task_gradients(losses, params)

    def task_jacobian(self, losses: TaskLosses, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.loop.task_jacobian(losses, params)

    def choice(
        self, strategy: GradientWeighting, num_tasks: int, model: nn.Module,
        shared: Sequence[torch.Tensor],
    ) -> GradientEngine:
        """The engine this step runs on."""
        if (
            isinstance(strategy, GramianWeighting)
            and strategy.batches_per_step == 1
            and num_tasks >= self.min_tasks
            and self._mostly_recorded(model, shared)
        ):
            return self.autogram
        return self.loop

    def _mostly_recorded(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> bool:
        known = self._covered.get(model)
        if known is None:
            known = self._covered[model] = recorded_fraction(model, shared) >= self.min_covered
        return known

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        losses_per_batch = as_task_losses(losses_per_batch)
        engine = self.choice(strategy, len(losses_per_batch[0].raw), ctx.model, ctx.shared)
        engine.shared_gradients(losses_per_batch, strategy, ctx, timer)
