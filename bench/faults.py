"""Fault-injection hook points, for the regression gate's own tests and
``scripts/measure_gate.py``; production code only calls them, and by default they do
nothing (nothing here reads the environment).

Hook points (methods of the installed :class:`FaultHooks`):

- :meth:`FaultHooks.wrap_step`: a speed cell (:class:`bench.speed.CellRunner`) asks
  once, when built, for a wrapper of its timed step; None (the default) times the plain
  step, with no extra call in the timed loop;
- :meth:`FaultHooks.metrics`: the gate's accuracy part passes each trial's metrics
  through it before comparing them with the reference;
- :meth:`FaultHooks.injected`: what is injected, recorded in speed records
  (``injected_slowdown``) and the gate's verdict; the gate refuses ``--update`` while
  anything is.

A test or script installs hooks with :func:`installed` (a context manager) or
:func:`install`. :class:`GateFaults` is the injection the gate is measured with: a
strategy's steps ``x`` slower (a busy wait of ``x`` times the step's own duration,
inside the timed step) and a strategy's metrics worse by a relative ``x`` (errors and
losses times ``1 + x``, accuracy and AUC times ``1 - x``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.tasks import HIGHER_IS_BETTER
from bench.timing import synchronize

__all__ = [
    "NO_FAULTS",
    "FaultHooks",
    "GateFaults",
    "current",
    "install",
    "installed",
    "parse_fractions",
]

#: Runs one step when called; what :meth:`FaultHooks.wrap_step` wrappers receive.
Step = Callable[[], None]
StepWrapper = Callable[[Step], None]
Metrics = dict[str, dict[str, dict[str, Any]]]


class FaultHooks:
    """No fault: every hook leaves things as they are. Subclass to inject one."""

    def wrap_step(self, strategy: str, device: torch.device) -> StepWrapper | None:
        """A wrapper that runs the timed step of a cell of ``strategy`` (None: none)."""
        return None

    def metrics(self, strategy: str, metrics: Metrics) -> Metrics:
        """A trial's ``{split: {task: {metric: value}}}`` as the gate should see it."""
        return metrics

    def injected(self) -> dict[str, dict[str, float]]:
        """What is injected: ``{"slowdown": {strategy: x}, "accuracy": {strategy: x}}``."""
        return {"slowdown": {}, "accuracy": {}}


NO_FAULTS = FaultHooks()
_current: FaultHooks = NO_FAULTS


def current() -> FaultHooks:
    """The installed hooks (:data:`NO_FAULTS` unless a test or script installed some)."""
    return _current


def install(hooks: FaultHooks | None) -> FaultHooks:
    """Install ``hooks`` (None: no fault); returns the hooks installed before."""
    global _current
    before, _current = _current, hooks or NO_FAULTS
    return before


@contextlib.contextmanager
def installed(hooks: FaultHooks) -> Iterator[FaultHooks]:
    """Run the block with ``hooks`` installed."""
    before = install(hooks)
    try:
        yield hooks
    finally:
        install(before)


def parse_fractions(text: str, what: str = "faults") -> dict[str, float]:
    """``"name:fraction[,name:fraction]"`` (fractions finite, >= 0) as a dict; a
    ValueError naming ``what`` otherwise. Empty text: no fault."""
    out: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, value = item.partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if not sep or not name.strip() or not math.isfinite(fraction) or fraction < 0:
            raise ValueError(f"{what}: expected 'strategy:fraction[,...]', got {text!r}")
        out[name.strip()] = fraction
    return out


def _spin(seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Busy wait until ``clock`` advanced by ``seconds`` (``time.sleep`` overshoots by tens
    of microseconds, and a busy CPU resembles slower code better than an idle one)."""
    deadline = clock() + seconds
    while clock() < deadline:
        pass


class GateFaults(FaultHooks):
    """Slow down some strategies' steps and worsen some strategies' metrics, each by
    a relative fraction (see the module docstring)."""

    def __init__(self, slowdown: dict[str, float] | None = None,
                 accuracy: dict[str, float] | None = None) -> None:
        self.slowdown = dict(slowdown or {})
        self.accuracy = dict(accuracy or {})

    def injected(self) -> dict[str, dict[str, float]]:
        return {"slowdown": dict(self.slowdown), "accuracy": dict(self.accuracy)}

    def wrap_step(self, strategy: str, device: torch.device) -> StepWrapper | None:
        fraction = self.slowdown.get(strategy, 0.0)
        if fraction <= 0:
            return None

        # On CPU the busy wait lasts fraction x the step's thread CPU time (so both the
        # wall-clock and the CPU-time timers see the step 1 + fraction times longer,
        # preempted or not); on accelerators, x its synchronised wall time.
        clock = time.thread_time if device.type == "cpu" else time.perf_counter

        def slow(step: Step) -> None:
            synchronize(device)
            start = clock()
            step()
            synchronize(device)
            _spin(fraction * (clock() - start), clock)

        return slow

    def metrics(self, strategy: str, metrics: Metrics) -> Metrics:
        fraction = self.accuracy.get(strategy)
        if not fraction:
            return metrics

        def bad(metric: str, value: Any) -> Any:
            if not isinstance(value, (int, float)):
                return value
            higher = HIGHER_IS_BETTER.get(metric, False)  # "loss": lower is better
            return value * (1.0 - fraction) if higher else value * (1.0 + fraction)

        return {
            split: {task: {m: bad(m, v) for m, v in per.items()}
                    for task, per in per_task.items()}
            for split, per_task in metrics.items()
        }
