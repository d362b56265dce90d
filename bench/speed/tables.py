"""The speed command's tables: every cell (:func:`table`), and the phase split per number
of tasks (:func:`split_rows`, :func:`split_table`, written by :func:`write_split`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.records import SpeedRecord
from bench.spec import canonical_json
from bench.speed.records import load_records
from bench.store import atomic_write_text
from bench.timing import PHASES

__all__ = ["split_rows", "split_table", "table", "write_split"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _order(records: Sequence[SpeedRecord]) -> list[SpeedRecord]:
    """Records grouped by configuration (strategy, engine, architecture, batch, width,
    device), T growing within each group; groups in first-seen order."""
    groups: dict[tuple[Any, ...], list[SpeedRecord]] = {}
    for r in records:
        groups.setdefault(_split_key(r), []).append(r)
    return [r for rs in groups.values() for r in sorted(rs, key=lambda r: r.num_tasks)]


def _split_key(r: SpeedRecord) -> tuple[Any, ...]:
    return (r.strategy, canonical_json(r.strategy_params), r.engine or "-", r.sharing,
            canonical_json(r.sharing_params), r.batch_size, r.width, r.device)


def table(records: Sequence[SpeedRecord]) -> str:
    from tabulate import tabulate

    rows = []
    for r in _order(records):
        mem = r.peak_memory_bytes
        rows.append([
            r.strategy, r.engine or "-", r.sharing, r.num_tasks, r.batch_size, r.width,
            *(_ms(r.phases[p]["median_s"]) for p in PHASES),
            _ms(r.step["median_s"]), _ms(r.step["iqr_s"]),
            f"{r.samples_per_s:.0f}" if r.samples_per_s else "-",
            f"{r.ratio_to_ew:.2f}" if r.ratio_to_ew is not None else "-",
            f"{mem / 2**20:.1f}" if mem is not None else "-",
        ])
    headers = ["strategy", "engine", "sharing", "T", "batch", "width",
               *(f"{p} ms" for p in PHASES), "step ms", "IQR ms", "samples/s", "x ew",
               "peak MiB"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def split_rows(records: Sequence[SpeedRecord]) -> list[dict[str, Any]]:
    """The phase split per T: one row per record, grouped as :func:`_order` does, with
    each phase's median (s) and share of the step's median, the step's median and its
    growth over the same configuration's smallest T (``step_vs_min_t``)."""
    rows = []
    first: dict[tuple[Any, ...], float] = {}
    for r in _order(records):
        step = r.step["median_s"]
        key = _split_key(r)
        base = first.setdefault(key, step)
        row: dict[str, Any] = {
            "strategy": r.strategy, "engine": r.engine, "sharing": r.sharing,
            "num_tasks": r.num_tasks, "batch_size": r.batch_size, "width": r.width,
            "device": r.device, "cell_id": r.cell_id,
        }
        for p in PHASES:
            median = r.phases[p]["median_s"]
            row[f"{p}_s"] = median
            row[f"{p}_share"] = median / step if step > 0 else None
        row["step_s"] = step
        row["step_vs_min_t"] = step / base if base > 0 else None
        rows.append(row)
    return rows


def split_table(records: Sequence[SpeedRecord], fmt: str = "simple") -> str:
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


def write_split(folder: Path) -> tuple[Path, Path]:
    """``phases.csv`` (one row per record and phase) and ``phases.md`` (the split table)
    from every record in ``folder``, written atomically."""
    records = sorted(load_records(folder), key=lambda r: (_split_key(r), r.num_tasks))
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
