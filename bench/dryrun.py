"""``mtlbench run --dry-run``: what a sweep would run and about how long it would take,
without writing anything.

The estimate (documented in the README):

    estimate = sum over trials of (epochs x steps per epoch x step time) / concurrent trials

- steps per epoch: ceil(training samples / batch size) of the trial's dataset (for a
  multi-input dataset, of all its tasks' samples together);
- step time: measured here, on this machine, for each distinct (input shape, number of
  tasks, sharing with its matched widths, weighting) of the sweep: ``STEPS`` training steps
  after ``WARMUP`` on synthetic batches of the trial's batch size (``bench.speed``'s cell
  runner: the step built by ``bench.assembly.build_step`` as in trials, one intra-op thread
  as trials use), the median kept; a strategy its engine cannot serve costs nothing (the
  trial stops at once with an error);
- concurrent trials: the process executor's, one per core // ``train.threads`` (or
  ``--workers``).

Left out: data loading, evaluation each epoch, probes, process start-up and machine load,
so a real run takes longer (the README gives the measured ratio for the default preset).
Only the MLP backbone on labelled data can be timed this way; with another backbone, or
objective tasks (toy landscapes), the count is printed without an estimate.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from typing import Any

import tomllib

from bench import data
from bench.assembly import IncompatibleSpec
from bench.config import Component, SweepSpec, load_spec, preset_names
from bench.engine import ENGINES
from bench.errors import ConfigError
from bench.grid import expand
from bench.spec import TrialSpec
from bench.speed import CellRunner, SpeedCell, torch_threads
from bench.timing import make_timer
from strategies.weighting import WEIGHTING

__all__ = ["STEPS", "WARMUP", "estimate", "preset_rows", "summary"]

STEPS = 5
WARMUP = 2


def _steps_per_epoch(spec: TrialSpec) -> int:

    ds: Any = data.load(spec.dataset.name, **spec.dataset.params)
    train = ds.train
    # Multi-input: one Split per task, all read in an epoch.
    n = sum(len(s) for s in train.values()) if isinstance(train, dict) else len(train)
    return max(1, math.ceil(n / spec.train.batch_size))


def _cell_key(spec: TrialSpec, shape: tuple[int, ...], tasks: int) -> str:
    import json

    return json.dumps([shape, tasks, spec.sharing.to_dict(), spec.weighting.to_dict(),
                       spec.model.to_dict(),
                       {k: v for k, v in spec.train.to_dict().items() if k != "epochs"}],
                      sort_keys=True, default=str)


def _time_step(spec: TrialSpec, shape: tuple[int, ...], tasks: int) -> float:
    """Median seconds per training step of ``spec``'s model and strategy on synthetic
    batches (0 when the engine cannot serve the strategy: the trial fails at once)."""
    import torch


    train = spec.train
    optim = {k: getattr(train, k) for k in ("optimizer", "lr", "weight_decay", "momentum")}
    needs_jacobian = WEIGHTING.get(spec.weighting.name).needs == "jacobian"
    engine = train.engine if needs_jacobian else None
    if engine is not None and engine not in ENGINES:
        engine = "loop"
    hidden = tuple(spec.model.hidden)
    cell = SpeedCell(
        strategy=spec.weighting, engine=engine, sharing=spec.sharing, num_tasks=tasks,
        batch_size=train.batch_size, width=hidden[0], hidden=hidden,
        tower=tuple(spec.model.tower), dropout=spec.model.dropout,
        input_shape=shape, train=optim, device="cpu", seed=spec.seed,
    )
    with torch_threads(train.threads):
        try:
            runner = CellRunner(cell)
        except IncompatibleSpec:
            return 0.0
        timer = make_timer(torch.device("cpu"), "wall")
        times = []
        for i in range(WARMUP + STEPS):
            start = time.perf_counter()
            timer.start()
            runner.step(timer)
            timer.stop()
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def estimate(specs: Sequence[TrialSpec], workers: int) -> float | None:
    """Estimated wall seconds of ``specs`` on ``workers`` concurrent trials (see the module
    docstring); None when a trial cannot be timed on synthetic batches: a backbone other
    than the MLP, or objective tasks (toy landscapes, whose step is a point's move)."""
    if any(s.model.backbone != "mlp" for s in specs):
        return None
    cost: dict[str, float] = {}
    total = 0.0
    for spec in specs:
        ds: Any = data.load(spec.dataset.name, **spec.dataset.params)
        if not hasattr(ds, "input_shape") or getattr(ds, "tasks", None) is None:
            return None
        if any(t.kind == "objective" for t in ds.tasks):
            return None
        shape = tuple(ds.input_shape)
        tasks = len(spec.tasks) if spec.tasks else len(ds.tasks)
        key = _cell_key(spec, shape, tasks)
        if key not in cost:
            cost[key] = _time_step(spec, shape, tasks)
        total += spec.train.epochs * _steps_per_epoch(spec) * cost[key]
    return total / max(1, workers)


def _count(specs: Sequence[TrialSpec]) -> tuple[int, int]:
    base = sum(s.is_baseline for s in specs)
    return len(specs) - base, base


def _name(c: Component) -> str:
    return c.name if not c.params else f"{c.name}({len(c.params)} settings)"


def summary(spec: SweepSpec, specs: Sequence[TrialSpec], workers: int,
            *, timed: bool = True) -> str:
    """The text ``run --dry-run`` prints."""
    mtl, base = _count(specs)
    lines = [f"sweep '{spec.name}': {len(specs)} trials ({mtl} multi-task, {base} single-task "
             "baselines)"]
    per = Counter(s.dataset.name for s in specs)
    lines.append("  per dataset: " + ", ".join(f"{n} {k}" for k, n in per.items()))
    lines.append(f"  {len(spec.sharing)} sharing x {len(spec.weighting)} weighting x "
                 f"{len(spec.seeds)} seeds; {workers} trials at once")
    if timed:
        start = time.perf_counter()
        seconds = estimate(specs, workers)
        took = time.perf_counter() - start
        if seconds is None:
            lines.append("  time estimate: none (only MLP backbones on labelled data can be "
                         "timed on synthetic batches)")
        else:
            lines.append(
                f"  time estimate: {seconds / 60:.1f} min ({seconds:.0f} s) of training steps "
                "(epochs x steps per epoch x step time measured here on synthetic batches, / "
                "trials at once); data loading, evaluation, probes and start-up come on top "
                f"[timed in {took:.1f} s]")
    lines.append("nothing written (dry run)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def preset_rows() -> list[list[str]]:
    """Per packaged preset: name, description, trial count (multi-task + baselines) and the
    run time measured when the preset was last changed (its ``measured_run_s`` and
    ``measured_on`` keys)."""
    rows = []
    for name in preset_names():
        raw = tomllib.loads((resources.files("bench") / "presets" / f"{name}.toml")
                            .read_text("utf-8"))
        try:
            specs = expand(load_spec(preset=name))
            mtl, base = _count(specs)
            count = f"{len(specs)} ({mtl} + {base} baselines)"
        except ConfigError as err:  # e.g. a dataset that is not installed
            why = ("a dataset is not installed: mtlbench list datasets"
                   if "install" in str(err) else str(err)[:80])
            count = f"— ({why})"
        measured = raw.get("measured_run_s")
        when = (f"{_duration(float(measured))}: {raw.get('measured_on', '')}".rstrip(": ")
                if measured is not None else "not measured")
        rows.append([name, str(raw.get("description", "")), count, when])
    return rows
