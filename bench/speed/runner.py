"""Timing speed cells: :class:`CellRunner` (a built cell and its synthetic batches) and
:func:`measure` (build every cell, then time them round-robin).

Cells run in this process, one after another, never in parallel or through the
executors: their timings are compared with each other (ratios to ``ew``), so they must
share one machine, one device and one thread setting, and be interleaved in time so
that slow drift of the machine hits every cell alike.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench import faults
from bench.assembly import build_step
from bench.engine import Timer
from bench.environment import resolve_device
from bench.spec import ModelSettings, TrainSettings
from bench.speed.cells import SpeedCell
from bench.tasks import Task
from bench.timing import MemoryProbe, PhaseTimer, StepTiming, make_timer

__all__ = [
    "BATCH_POOL",
    "CellRunner",
    "Measurement",
    "Runner",
    "interleave",
    "measure",
    "reduce_block",
    "torch_threads",
]

BATCH_POOL = 4  # distinct synthetic batches per cell, cycled


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class Runner(Protocol):
    def step(self, timer: Timer) -> None: ...


class CellRunner:
    """A built cell (:func:`bench.assembly.build_step`: model, strategy, engine, optimizer)
    and a few fixed synthetic batches. The installed fault hooks
    (:func:`bench.faults.current`) may wrap its step; by default nothing does."""

    def __init__(self, cell: SpeedCell) -> None:
        self.cell = cell
        self.device = resolve_device(cell.device)
        self.tasks = tuple(Task(f"t{i + 1}", "regression") for i in range(cell.num_tasks))
        model = ModelSettings(hidden=list(cell.hidden), tower=list(cell.tower),
                              dropout=cell.dropout)
        train = TrainSettings.model_validate({**cell.train, "engine": cell.engine or "loop"})
        self.built = build_step(cell.sharing, cell.strategy, self.tasks, cell.input_shape,
                                model, train, self.device, cell.seed)
        self.model, self.strategy, self.ctx = self.built.model, self.built.strategy, self.built.ctx
        # A few fixed batches, cycled: the data never leave the device in the timed loop,
        # and the model does not overfit one batch (some solvers' cost depends on the state).
        gen = torch.Generator().manual_seed(cell.seed)
        self.pool: list[list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = []
        for _ in range(BATCH_POOL):
            batches = []
            for _ in range(self.strategy.batches_per_step):
                x = torch.randn(cell.batch_size, *cell.input_shape, generator=gen)
                y = {t.name: torch.randn(cell.batch_size, generator=gen) for t in self.tasks}
                batches.append((x.to(self.device), {k: v.to(self.device) for k, v in y.items()}))
            self.pool.append(batches)
        self.steps = 0
        self._wrap = faults.current().wrap_step(cell.strategy.name, self.device)

    @property
    def batches(self) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The batches of the next step."""
        return self.pool[self.steps % len(self.pool)]

    def compute_losses(
        self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return torch.stack([t.loss(out[t.name], y[t.name]) for t in self.tasks])

    def step(self, timer: Timer) -> None:
        batches = self.batches
        self.steps += 1
        if self._wrap is None:
            self.built.step(batches, self.compute_losses, timer)
        else:
            self._wrap(lambda: self.built.step(batches, self.compute_losses, timer))

    def resident_bytes(self) -> int:
        """Bytes of the cell's own live tensors: parameters, gradients, optimizer state, data."""
        params = [*self.model.parameters(), *self.strategy.parameters()]
        grads = [p.grad for p in params if p.grad is not None]
        state = [v for s in self.ctx.optimizer.state.values() for v in s.values()]
        data = [t for batches in self.pool for x, y in batches for t in (x, *y.values())]
        return _tensor_bytes(params) + _tensor_bytes(grads) + _tensor_bytes(state) + \
            _tensor_bytes(data)


@dataclass
class Measurement:
    """Raw timings of one cell: one ``StepTiming`` per repeat, and its peak memory."""

    timings: list[StepTiming]
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None

    @property
    def step_samples(self) -> list[float]:
        return [t.step for t in self.timings]

    def phase_samples(self, phase: str) -> list[float]:
        return [t.phases.get(phase, 0.0) for t in self.timings]


def reduce_block(timings: Sequence[StepTiming], how: str = "mean") -> StepTiming:
    """One timing from consecutive steps: their ``mean``, ``median`` or ``min``, taken per
    phase and for the step independently (so with ``min``/``median`` the phases need not add
    up to the step)."""
    if len(timings) == 1:
        return timings[0]
    fn = {"mean": statistics.fmean, "median": statistics.median, "min": min}[how]
    names = {name for t in timings for name in t.phases}
    return StepTiming(
        {name: fn([t.phases.get(name, 0.0) for t in timings]) for name in sorted(names)},
        fn([t.step for t in timings]),
    )


def interleave(
    runners: Sequence[Runner],
    timer: PhaseTimer,
    *,
    repeats: int,
    warmup: int = 0,
    steps_per_repeat: int = 1,
    block_reduce: str = "mean",
    probes: Sequence[MemoryProbe | None] | None = None,
) -> list[list[StepTiming]]:
    """Run ``warmup`` then ``repeats`` rounds; each round runs every runner in turn
    (``steps_per_repeat`` consecutive steps each). Returns, per runner, one timing per
    repeat (its consecutive steps reduced by ``block_reduce``); warm-up rounds are timed
    and dropped."""
    if repeats < 1 or warmup < 0 or steps_per_repeat < 1:
        raise ValueError("repeats and steps_per_repeat must be >= 1, warmup >= 0")
    probes = list(probes) if probes is not None else [None] * len(runners)
    results: list[list[StepTiming]] = [[] for _ in runners]
    for round_index in range(warmup + repeats):
        measured = round_index >= warmup
        for i, runner in enumerate(runners):
            block = []
            for _ in range(steps_per_repeat):
                probe = probes[i] if measured else None
                if probe is not None:
                    probe.before_step()
                timer.start()
                runner.step(timer)
                block.append(timer.stop())
                if probe is not None:
                    probe.after_step()
            if measured:
                results[i].append(reduce_block(block, block_reduce))
    return results


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (unchanged for None)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(
    cells: Sequence[SpeedCell],
    *,
    repeats: int,
    warmup: int,
    steps_per_repeat: int = 1,
    block_reduce: str = "mean",
    cpu_clock: str = "wall",
) -> list[Measurement]:
    """Build every cell, then time them interleaved. All cells must share one device."""
    if not cells:
        return []
    devices = {resolve_device(c.device) for c in cells}
    if len(devices) != 1:
        raise ValueError("all cells of one measurement must be on the same device")
    device = devices.pop()
    runners = [CellRunner(c) for c in cells]
    probes = [MemoryProbe(device, resident=r.resident_bytes) for r in runners]
    timings = interleave(runners, make_timer(device, cpu_clock), repeats=repeats, warmup=warmup,
                         steps_per_repeat=steps_per_repeat, block_reduce=block_reduce,
                         probes=probes)
    return [Measurement(t, p.peak, p.kind) for t, p in zip(timings, probes, strict=True)]
