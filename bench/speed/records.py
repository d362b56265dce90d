"""Speed records: :func:`make_record` (one :class:`~bench.records.SpeedRecord` per
measured cell), :func:`add_ratios`, and :class:`SpeedStore`, the one writer and reader
of ``DIR/speed/*.json``."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydantic

from bench.records import SpeedRecord, dumps
from bench.speed.cells import REFERENCE, SpeedCell
from bench.speed.runner import Measurement
from bench.store import atomic_write_text
from bench.timing import PHASES, summarize

__all__ = ["SpeedStore", "add_ratios", "load_records", "make_record", "phase_shares"]


def make_record(
    cell: SpeedCell,
    measurement: Measurement,
    *,
    machine: dict[str, Any],
    warmup: int,
    steps_per_repeat: int = 1,
    timer_kind: str = "",
    slowdown: float = 0.0,
) -> SpeedRecord:
    """The record of one cell (``ratio_to_ew`` is filled in by :func:`add_ratios`).

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
    return SpeedRecord.model_validate(record)


def phase_shares(measurement: Measurement, step_median_s: float) -> dict[str, float | None]:
    """Each phase's median as a share of the step's median (None for a 0 s step)."""
    return {p: statistics.median(measurement.phase_samples(p)) / step_median_s
            if step_median_s > 0 else None for p in PHASES}


def add_ratios(cells: Sequence[SpeedCell], records: Sequence[SpeedRecord]) -> list[SpeedRecord]:
    """The records with ``ratio_to_ew``: step median over that of the ``ew`` cell with the
    same architecture, T, batch size, width and device (None when there is none)."""
    reference = {
        c.reference_key: r.step["median_s"]
        for c, r in zip(cells, records, strict=True)
        if c.strategy.name == REFERENCE
    }
    out = []
    for c, r in zip(cells, records, strict=True):
        ref = reference.get(c.reference_key)
        out.append(r.model_copy(update={"ratio_to_ew": r.step["median_s"] / ref if ref else None}))
    return out


class SpeedStore:
    """The speed records of a run: ``FOLDER/<cell_id>.json``, each written atomically (a
    reader sees the old file or the whole new one) as :func:`bench.records.dumps` does."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, cell_id: str) -> Path:
        return self.folder / f"{cell_id}.json"

    def write(self, record: SpeedRecord) -> Path:
        path = self.path(record.cell_id)
        atomic_write_text(path, dumps(record))
        return path

    def records(self) -> list[SpeedRecord]:
        """Every speed record of the folder, validated (see :func:`load_records`)."""
        return load_records(self.folder)


def load_records(folder: str | Path) -> list[SpeedRecord]:
    """Every speed record in ``folder`` (``*.json`` of kind "speed", validated as
    :class:`SpeedRecord`; unreadable or invalid files and other kinds are skipped)."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not (isinstance(raw, dict) and raw.get("kind") == "speed" and "phases" in raw):
            continue
        try:
            records.append(SpeedRecord.model_validate(raw))
        except pydantic.ValidationError:
            continue
    return records
