"""``mtlbench speed``: time training steps by phase, per strategy x engine x architecture x
number of tasks x batch size x width, on synthetic data.

The sweep spec (file or preset, with ``--set`` overrides) gives the strategies
(``weighting``), the architectures (``sharing``), the model (``model.hidden``
at width ``hidden[0]``), the optimizer (``train``), the seed (``seeds[0]``) and
the input shape (that of ``datasets[0]``). The labels are synthetic: T
regression targets drawn from N(0, 1) for a fixed random batch, so any T works
and no dataset is trained on. The other axes come from the command line:

- ``--engines`` (default: every engine; loss-based strategies have no engine and
  get one cell with ``engine: null``; an engine that cannot serve a strategy on
  an architecture, see ``GradientEngine.check``, is skipped with a note);
- ``--tasks`` T (default: the number of tasks of ``datasets[0]``);
- ``--batch-sizes`` (default ``train.batch_size``);
- ``--widths`` (default ``model.hidden[0]``): width w scales every hidden layer by
  ``w / hidden[0]``, so the architecture's shape is kept.

Every cell is built first; then ``--warmup`` rounds and ``--repeats`` rounds run
the cells round-robin (one step of each cell per round, serially), so slow drift
of the machine hits every cell alike. A repeat sample is one step (or the mean of
``--steps`` consecutive steps). Per cell, one JSON record goes to
``DIR/speed/<cell-id>.json`` (atomically); see :func:`make_record` for the fields.

Phase split: every step is timed by phase (forward, jacobian, aggregate, backward,
optimizer, post_step; see :func:`bench.engine.train_step`). Besides the table of all
cells, the command prints the split per number of tasks: for each strategy, engine
and configuration, one row per T with each phase's median (ms and share of the step)
and the step's growth over the smallest T, so it shows where a step goes as T grows.
The same goes to ``DIR/speed/phases.md`` and, one row per cell and phase, to
``DIR/speed/phases.csv`` (both from every record in ``DIR/speed/``).

Timers (:mod:`bench.timing`): CUDA events with one synchronisation per step on
CUDA; ``perf_counter`` on CPU (or, with ``--cpu-clock thread``, the thread's CPU
time, for ``--threads 1`` on a busy machine); a synchronising ``perf_counter``
on MPS. All cells of a run live on the device at once.

Test-only fault injection (used by the regression gate's own tests and
``scripts/measure_gate.py``): ``MTLBENCH_INJECT_SLOWDOWN="pcgrad:0.3"`` makes
every step of strategy ``pcgrad`` 30% slower (a busy wait of 0.3 times the
step's own duration, inside the timed step); several as ``"a:0.3,b:0.1"``.
Injected records carry ``"injected_slowdown"``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from bench.config import Component, SweepSpec, load_spec
from bench.engine import ENGINES, StepContext, Timer, train_step
from bench.environment import resolve_device
from bench.errors import ConfigError
from bench.registry import suggest
from bench.store import atomic_write_json
from bench.tasks import Task
from bench.timing import (
    PHASES,
    MemoryProbe,
    PhaseTimer,
    StepTiming,
    machine_info,
    make_timer,
    summarize,
    synchronize,
)

__all__ = [
    "HELP",
    "INJECT_SLOWDOWN_ENV",
    "CellRunner",
    "Measurement",
    "SpeedCell",
    "add_arguments",
    "add_ratios",
    "build_cells",
    "injected_slowdowns",
    "interleave",
    "main",
    "make_record",
    "measure",
]

HELP = "time training steps by phase (strategy x engine x architecture x T x batch x width)"

INJECT_SLOWDOWN_ENV = "MTLBENCH_INJECT_SLOWDOWN"
REFERENCE = "ew"
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 3
BATCH_POOL = 4  # distinct synthetic batches per cell, cycled


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class SpeedCell:
    """One timed configuration. ``engine`` is None for loss-based strategies."""

    strategy: Component
    engine: str | None
    sharing: Component
    num_tasks: int
    batch_size: int
    width: int
    hidden: tuple[int, ...]
    tower: tuple[int, ...]
    dropout: float
    input_shape: tuple[int, ...]
    train: dict[str, Any]  # optimizer settings (optimizer, lr, weight_decay, momentum[, heads])
    device: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(),
            "engine": self.engine,
            "sharing": self.sharing.to_dict(),
            "num_tasks": self.num_tasks,
            "batch_size": self.batch_size,
            "width": self.width,
            "hidden": list(self.hidden),
            "tower": list(self.tower),
            "dropout": self.dropout,
            "input_shape": list(self.input_shape),
            "train": dict(self.train),
            "device": self.device,
            "seed": self.seed,
        }

    @property
    def id(self) -> str:
        return hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """``strategy[(non-default params)]/engine/sharing/T/B/W``."""
        defaults = _strategy_defaults(self.strategy.name)
        params = ",".join(f"{k}={v}" for k, v in sorted(self.strategy.params.items())
                          if defaults.get(k, object()) != v)
        name = f"{self.strategy.name}({params})" if params else self.strategy.name
        engine = self.engine or "-"
        return (f"{name}/{engine}/{self.sharing.name}/T{self.num_tasks}/B{self.batch_size}"
                f"/W{self.width}")

    @property
    def reference_key(self) -> tuple[Any, ...]:
        """Settings a cell shares with the ``ew`` cell it is compared with."""
        return (_canonical(self.sharing.to_dict()), self.num_tasks, self.batch_size, self.width,
                self.device)


def _strategy_defaults(name: str) -> dict[str, Any]:
    from strategies.weighting import WEIGHTING

    if name not in WEIGHTING:
        return {}
    return {h.name: h.default for h in WEIGHTING.hyperparameters(name)}


def scaled_hidden(hidden: Sequence[int], width: int) -> tuple[int, ...]:
    """``hidden`` scaled so that its first layer has ``width`` units."""
    return tuple(max(1, round(h * width / hidden[0])) for h in hidden)


def _input_shape(spec: SweepSpec) -> tuple[int, ...]:
    from bench import data

    ds = spec.datasets[0]
    return tuple(data.load(ds.name, **ds.params).input_shape)


def _default_tasks(spec: SweepSpec) -> int:
    from bench.grid import task_names

    return len(task_names(spec.datasets[0]))


def build_cells(
    spec: SweepSpec,
    *,
    engines: Sequence[str] | None = None,
    tasks: Sequence[int] | None = None,
    batch_sizes: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    device: str | None = None,
) -> tuple[list[SpeedCell], list[str]]:
    """The cells of ``spec`` x the given axes, and one note per skipped (incompatible) cell."""
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    engines = list(engines) if engines is not None else list(ENGINES)
    for name in engines:
        if name not in ENGINES:
            raise ConfigError(
                f"--engines: unknown engine '{name}'{suggest(name, list(ENGINES))}; "
                f"known: {', '.join(ENGINES)}"
            )
    model = spec.model
    if model.backbone != "mlp":
        raise ConfigError("speed: only the 'mlp' backbone is supported (model.backbone)")
    tasks = list(tasks) if tasks is not None else [_default_tasks(spec)]
    batch_sizes = list(batch_sizes) if batch_sizes is not None else [spec.train.batch_size]
    widths = list(widths) if widths is not None else [model.hidden[0]]
    train = spec.train.model_dump()
    optim = {k: train[k] for k in ("optimizer", "lr", "weight_decay", "momentum")}
    if train.get("heads", "method") != "method":  # as trials do (the default keeps cell ids)
        optim["heads"] = train["heads"]
    device_name = device or train["device"]
    input_shape = _input_shape(spec)
    cells: list[SpeedCell] = []
    notes: list[str] = []
    for strategy, sharing in itertools.product(spec.weighting, spec.sharing):
        strategy_cls = WEIGHTING.get(strategy.name)
        sharing_cls = SHARING.get(sharing.name)
        cell_engines: list[str | None]
        if strategy_cls.needs == "jacobian":
            cell_engines = []
            for name in engines:
                try:
                    ENGINES[name]().require_support(strategy_cls, sharing_cls)
                except ValueError as err:
                    notes.append(f"skipped {strategy.name} x {name} x {sharing.name}: {err}")
                    continue
                cell_engines.append(name)
        else:
            cell_engines = [None]
        for engine, t, b, w in itertools.product(cell_engines, tasks, batch_sizes, widths):
            cells.append(
                SpeedCell(
                    strategy=strategy, engine=engine, sharing=sharing, num_tasks=t,
                    batch_size=b, width=w, hidden=scaled_hidden(model.hidden, w),
                    tower=tuple(model.tower), dropout=model.dropout, input_shape=input_shape,
                    train=optim, device=device_name, seed=spec.seeds[0],
                )
            )
    return cells, notes


def injected_slowdowns(env: dict[str, str] | None = None) -> dict[str, float]:
    """Parse ``MTLBENCH_INJECT_SLOWDOWN`` (``"name:fraction[,name:fraction]"``)."""
    raw = (env if env is not None else os.environ).get(INJECT_SLOWDOWN_ENV, "").strip()
    out: dict[str, float] = {}
    if not raw:
        return out
    for item in raw.split(","):
        name, sep, value = item.strip().partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not name or fraction < 0:
            raise ConfigError(
                f"{INJECT_SLOWDOWN_ENV}: expected 'strategy:fraction[,...]', got {raw!r}"
            )
        out[name] = fraction
    return out


def _spin(seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Busy wait until ``clock`` advanced by ``seconds`` (``time.sleep`` overshoots by tens
    of microseconds, and a busy CPU resembles slower code better than an idle one)."""
    deadline = clock() + seconds
    while clock() < deadline:
        pass


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class Runner(Protocol):
    def step(self, timer: Timer) -> None: ...


class CellRunner:
    """A built cell: model, strategy, engine, optimizer and a fixed synthetic batch."""

    def __init__(self, cell: SpeedCell, slowdown: float = 0.0) -> None:
        from bench.spec import TrainSettings
        from bench.trial import _optimizer
        from strategies import sharing, weighting
        from strategies.sharing.base import BackboneSpec

        self.cell = cell
        self.device = resolve_device(cell.device)
        self.slowdown = slowdown
        torch.manual_seed(cell.seed)
        self.tasks = tuple(Task(f"t{i + 1}", "regression") for i in range(cell.num_tasks))
        backbone = BackboneSpec(hidden=cell.hidden, tower=cell.tower, dropout=cell.dropout)
        self.model = sharing.get(
            cell.sharing.name, cell.input_shape, self.tasks, backbone, **cell.sharing.params
        ).to(self.device)
        self.strategy = weighting.get(cell.strategy.name, **cell.strategy.params)
        self.strategy.reset(cell.num_tasks, self.device, seed=cell.seed)
        shared = self.model.shared_parameters()
        shared_ids = {id(p) for p in shared}
        self.ctx = StepContext(
            model=self.model,
            strategy=self.strategy,
            engine=ENGINES[cell.engine or "loop"](),
            optimizer=_optimizer([*self.model.parameters(), *self.strategy.parameters()],
                                 TrainSettings.model_validate(cell.train)),
            shared=shared,
            task_specific=[p for p in self.model.parameters() if id(p) not in shared_ids],
            heads=cell.train.get("heads", "method"),
        )
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
        if self.slowdown <= 0:
            train_step(self.ctx, batches, self.compute_losses, timer)
            return
        # Injected fault: on CPU the busy wait lasts slowdown x the step's thread CPU time
        # (so both the wall-clock and the CPU-time timers see the step 1 + slowdown times
        # longer, preempted or not); on accelerators, x its synchronised wall time.
        clock = time.thread_time if self.device.type == "cpu" else time.perf_counter
        synchronize(self.device)
        start = clock()
        train_step(self.ctx, batches, self.compute_losses, timer)
        synchronize(self.device)
        _spin(self.slowdown * (clock() - start), clock)

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
    slowdowns: dict[str, float] | None = None,
) -> list[Measurement]:
    """Build every cell, then time them interleaved. All cells must share one device."""
    if not cells:
        return []
    devices = {resolve_device(c.device) for c in cells}
    if len(devices) != 1:
        raise ValueError("all cells of one measurement must be on the same device")
    device = devices.pop()
    slowdowns = injected_slowdowns() if slowdowns is None else slowdowns
    runners = [CellRunner(c, slowdowns.get(c.strategy.name, 0.0)) for c in cells]
    probes = [MemoryProbe(device, resident=r.resident_bytes) for r in runners]
    timings = interleave(runners, make_timer(device, cpu_clock), repeats=repeats, warmup=warmup,
                         steps_per_repeat=steps_per_repeat, block_reduce=block_reduce,
                         probes=probes)
    return [Measurement(t, p.peak, p.kind) for t, p in zip(timings, probes, strict=True)]


def make_record(
    cell: SpeedCell,
    measurement: Measurement,
    *,
    machine: dict[str, Any],
    warmup: int,
    steps_per_repeat: int = 1,
    timer_kind: str = "",
    slowdown: float = 0.0,
) -> dict[str, Any]:
    """The JSON record of one cell (``ratio_to_ew`` is filled in by :func:`add_ratios`).

    Fields (seconds unless named otherwise): ``kind`` ("speed"), ``cell_id``, ``label``,
    ``strategy`` (+ ``strategy_params``), ``engine`` (null for loss-based strategies),
    ``sharing`` (+ ``sharing_params``), ``num_tasks``, ``batch_size``, ``width`` (first
    hidden layer; ``hidden`` has all), ``input_shape``, ``train`` (optimizer settings),
    ``seed``, ``device``, ``repeats``, ``warmup``, ``steps_per_repeat``, ``timer`` (the
    clock), ``phases`` ({phase: {median_s, iqr_s}} for every phase of
    :data:`bench.timing.PHASES`, 0 where the strategy has no such phase), ``phase_share``
    ({phase: its median / the step's median}; the shares need not add up to exactly 1,
    being ratios of medians), ``step``
    ({median_s, iqr_s, samples_s: the raw per-repeat step seconds}), ``samples_per_s``
    (batch size / median step; one step consumes ``batches_per_step`` batches but, as in
    trials, counts one batch), ``peak_memory_bytes`` and ``peak_memory_kind``
    (see :class:`bench.timing.MemoryProbe`), ``ratio_to_ew``, ``machine``
    (:func:`bench.timing.machine_info`), ``created_at``, and ``injected_slowdown`` when a
    fault was injected.
    """
    steps = measurement.step_samples
    step = summarize(steps)
    record: dict[str, Any] = {
        "kind": "speed",
        "cell_id": cell.id,
        "label": cell.label,
        "strategy": cell.strategy.name,
        "strategy_params": dict(cell.strategy.params),
        "engine": cell.engine,
        "sharing": cell.sharing.name,
        "sharing_params": dict(cell.sharing.params),
        "num_tasks": cell.num_tasks,
        "batch_size": cell.batch_size,
        "width": cell.width,
        "hidden": list(cell.hidden),
        "input_shape": list(cell.input_shape),
        "train": dict(cell.train),
        "seed": cell.seed,
        "device": cell.device,
        "repeats": len(steps),
        "warmup": warmup,
        "steps_per_repeat": steps_per_repeat,
        "timer": timer_kind,
        "phases": {p: summarize(measurement.phase_samples(p)) for p in PHASES},
        "phase_share": phase_shares(measurement, step["median_s"]),
        "step": {**step, "samples_s": steps},
        "samples_per_s": cell.batch_size / step["median_s"] if step["median_s"] > 0 else None,
        "peak_memory_bytes": measurement.peak_memory_bytes,
        "peak_memory_kind": measurement.memory_kind,
        "ratio_to_ew": None,
        "machine": machine,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    if slowdown:
        record["injected_slowdown"] = slowdown
    return record


def phase_shares(measurement: Measurement, step_median_s: float) -> dict[str, float | None]:
    """Each phase's median as a share of the step's median (None for a 0 s step)."""
    return {p: statistics.median(measurement.phase_samples(p)) / step_median_s
            if step_median_s > 0 else None for p in PHASES}


def add_ratios(cells: Sequence[SpeedCell], records: Sequence[dict[str, Any]]) -> None:
    """Set ``ratio_to_ew``: step median over that of the ``ew`` cell with the same
    architecture, T, batch size, width and device (None when there is none)."""
    reference = {
        c.reference_key: r["step"]["median_s"]
        for c, r in zip(cells, records, strict=True)
        if c.strategy.name == REFERENCE
    }
    for c, r in zip(cells, records, strict=True):
        ref = reference.get(c.reference_key)
        r["ratio_to_ew"] = r["step"]["median_s"] / ref if ref else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _order(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records grouped by configuration (strategy, engine, architecture, batch, width,
    device), T growing within each group; groups in first-seen order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_split_key(r), []).append(r)
    return [r for rs in groups.values() for r in sorted(rs, key=lambda r: r["num_tasks"])]


def _split_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["strategy"], _canonical(r.get("strategy_params", {})), r["engine"] or "-",
            r["sharing"], _canonical(r.get("sharing_params", {})), r["batch_size"],
            r["width"], r["device"])


def table(records: Sequence[dict[str, Any]]) -> str:
    from tabulate import tabulate

    rows = []
    for r in _order(records):
        mem = r["peak_memory_bytes"]
        rows.append([
            r["strategy"], r["engine"] or "-", r["sharing"], r["num_tasks"], r["batch_size"],
            r["width"], *(_ms(r["phases"][p]["median_s"]) for p in PHASES),
            _ms(r["step"]["median_s"]), _ms(r["step"]["iqr_s"]),
            f"{r['samples_per_s']:.0f}" if r["samples_per_s"] else "-",
            f"{r['ratio_to_ew']:.2f}" if r["ratio_to_ew"] is not None else "-",
            f"{mem / 2**20:.1f}" if mem is not None else "-",
        ])
    headers = ["strategy", "engine", "sharing", "T", "batch", "width",
               *(f"{p} ms" for p in PHASES), "step ms", "IQR ms", "samples/s", "x ew",
               "peak MiB"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def split_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The phase split per T: one row per record, grouped as :func:`_order` does, with
    each phase's median (s) and share of the step's median, the step's median and its
    growth over the same configuration's smallest T (``step_vs_min_t``)."""
    rows = []
    first: dict[tuple[Any, ...], float] = {}
    for r in _order(records):
        step = r["step"]["median_s"]
        key = _split_key(r)
        base = first.setdefault(key, step)
        row: dict[str, Any] = {
            "strategy": r["strategy"], "engine": r["engine"], "sharing": r["sharing"],
            "num_tasks": r["num_tasks"], "batch_size": r["batch_size"], "width": r["width"],
            "device": r["device"], "cell_id": r.get("cell_id"),
        }
        for p in PHASES:
            median = r["phases"][p]["median_s"]
            row[f"{p}_s"] = median
            row[f"{p}_share"] = median / step if step > 0 else None
        row["step_s"] = step
        row["step_vs_min_t"] = step / base if base > 0 else None
        rows.append(row)
    return rows


def split_table(records: Sequence[dict[str, Any]], fmt: str = "simple") -> str:
    """Where each step goes as T grows: per configuration, one row per T with every
    phase's median in ms and its share of the step (phases that are 0 everywhere are
    left out), the step in ms and its growth over the smallest T."""
    from tabulate import tabulate

    rows = split_rows(records)
    shown = [p for p in PHASES if any(row[f"{p}_s"] > 0 for row in rows)]

    def cell(row: dict[str, Any], p: str) -> str:
        share = row[f"{p}_share"]
        return _ms(row[f"{p}_s"]) + (f" ({share:.0%})" if share is not None else "")

    body = [[row["strategy"], row["engine"] or "-", row["sharing"], row["batch_size"],
             row["width"], row["num_tasks"], *(cell(row, p) for p in shown),
             _ms(row["step_s"]),
             f"{row['step_vs_min_t']:.2f}" if row["step_vs_min_t"] is not None else "-"]
            for row in rows]
    headers = ["strategy", "engine", "sharing", "batch", "width", "T",
               *(f"{p} ms (share)" for p in shown), "step ms", "x smallest T"]
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every speed record in ``folder`` (``*.json`` of kind "speed"; unreadable files and
    other kinds are skipped)."""
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("kind") == "speed" and "phases" in rec:
            records.append(rec)
    return records


def write_split(folder: Path) -> tuple[Path, Path]:
    """``phases.csv`` (one row per record and phase) and ``phases.md`` (the split table)
    from every record in ``folder``, written atomically."""
    import csv
    import io

    from bench.store import atomic_write_text

    records = sorted(load_records(folder), key=lambda r: (_split_key(r), r["num_tasks"]))
    rows = split_rows(records)
    buf = io.StringIO()
    fields = ["cell_id", "strategy", "engine", "sharing", "num_tasks", "batch_size", "width",
              "device", "phase", "median_s", "share_of_step", "step_median_s",
              "step_vs_min_t"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        for p in PHASES:
            writer.writerow({
                **{k: row[k] for k in ("cell_id", "strategy", "engine", "sharing",
                                       "num_tasks", "batch_size", "width", "device")},
                "phase": p, "median_s": row[f"{p}_s"], "share_of_step": row[f"{p}_share"],
                "step_median_s": row["step_s"], "step_vs_min_t": row["step_vs_min_t"],
            })
    csv_path, md_path = folder / "phases.csv", folder / "phases.md"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(md_path, "Phase split per T (median ms and share of the step's "
                      "median)\n\n" + split_table(records, "github") + "\n")
    return csv_path, md_path


def with_all_strategies(spec: SweepSpec) -> SweepSpec:
    """``spec`` with every registered strategy (default hyperparameters) as its weighting axis."""
    from strategies.weighting import WEIGHTING

    axis = tuple(Component(n, WEIGHTING.resolve(n, {})) for n in WEIGHTING.names())
    return dataclasses.replace(spec, weighting=axis)


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers (an argparse type: errors name the option)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 2,4,8, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="sweep TOML file (strategies, architectures, "
                        "model, optimizer)")
    parser.add_argument("--preset", help="packaged preset (default: 'speed' without a file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec key, e.g. model.hidden=[64]")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"],
                        help="device (default: the spec's train.device)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed rounds (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed rounds first (default {DEFAULT_WARMUP})")
    parser.add_argument("--steps", type=int, default=1,
                        help="consecutive steps per cell and round; a sample is their mean")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads while timing (default: torch's default); "
                        "1 is steadier on a busy machine")
    parser.add_argument("--cpu-clock", choices=["wall", "thread"], default="wall",
                        help="CPU timer: wall clock (perf_counter, default) or the thread's CPU "
                        "time (ignores preemption by other processes; use with --threads 1)")
    parser.add_argument("--engines", type=_name_list,
                        help=f"comma-separated engines (default: all: {', '.join(ENGINES)})")
    parser.add_argument("--tasks", type=int_list,
                        help="numbers of tasks T, e.g. 2,4,8,16,32,64")
    parser.add_argument("--batch-sizes", type=int_list,
                        help="batch sizes (default: train.batch_size)")
    parser.add_argument("--widths", type=int_list,
                        help="first hidden layer widths (default: model.hidden[0])")
    parser.add_argument("--all-strategies", action="store_true",
                        help="time every registered strategy (defaults) instead of the spec's")
    parser.add_argument("--out", help="output directory; records go to OUT/speed/ "
                        "(default: results/<sweep name>)")


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], Path]:
    """Measure what ``args`` asks for, write the records; returns them, the notes and the
    records' folder."""
    if args.repeats < 1:
        raise ConfigError("--repeats: must be at least 1")
    if args.warmup < 0:
        raise ConfigError("--warmup: must be at least 0")
    if args.steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads: must be at least 1")
    preset = args.preset if args.preset or args.spec else "speed"
    spec = load_spec(args.spec, preset=preset, overrides=args.overrides)
    if args.all_strategies:
        spec = with_all_strategies(spec)
    device_name = args.device or spec.train.device
    try:
        device = resolve_device(device_name)
    except RuntimeError as err:
        raise ConfigError(f"--device: {err}") from None
    cells, notes = build_cells(
        spec, engines=args.engines, tasks=args.tasks, batch_sizes=args.batch_sizes,
        widths=args.widths, device=str(device),
    )
    if not cells:
        raise ConfigError("speed: no compatible cell to time (" + "; ".join(notes) + ")")
    slowdowns = injected_slowdowns()
    if slowdowns:
        print(f"warning: {INJECT_SLOWDOWN_ENV} injects slowdowns {slowdowns}", file=sys.stderr)
    with torch_threads(args.threads):
        measurements = measure(cells, repeats=args.repeats, warmup=args.warmup,
                               steps_per_repeat=args.steps, cpu_clock=args.cpu_clock,
                               slowdowns=slowdowns)
        machine = machine_info(device)
    timer_kind = make_timer(device, args.cpu_clock).kind
    records = [
        make_record(c, m, machine=machine, warmup=args.warmup, steps_per_repeat=args.steps,
                    timer_kind=timer_kind, slowdown=slowdowns.get(c.strategy.name, 0.0))
        for c, m in zip(cells, measurements, strict=True)
    ]
    add_ratios(cells, records)
    out = (Path(args.out) if args.out else Path("results") / spec.name) / "speed"
    for record in records:
        atomic_write_json(out / f"{record['cell_id']}.json", record)
    return records, notes, out


def main(args: argparse.Namespace) -> int:
    records, notes, out = run(args)
    print(table(records))
    print("\nPhase split per T (median ms and share of the step's median):\n")
    print(split_table(records))
    for note in notes:
        print(f"note: {note}")
    csv_path, md_path = write_split(out)
    print(f"{len(records)} cells x {args.repeats} repeats -> {out} "
          f"(phase split: {csv_path.name}, {md_path.name})")
    return 0
