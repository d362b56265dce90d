"""The gate's accuracy part: run the plan's trials through the executors into a run
store (inline, one CPU thread: deterministic on a given CPU and torch build) and
compare every number of their metrics with the reference's."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import faults
from bench.executors import ExecutorOptions, run_specs
from bench.gate.plan import DEFAULTS
from bench.grid import TrialSpec
from bench.store import RunStore

__all__ = ["compare_accuracy", "run_accuracy"]


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= rtol * abs(b) + atol
    return a == b


def _flatten(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{split: {task: {metric: v}}}`` -> ``{"split/task/metric": v}``."""
    return {
        f"{split}/{task}/{metric}": value
        for split, per_task in metrics.items()
        for task, per_metric in per_task.items()
        for metric, value in per_metric.items()
    }


def compare_accuracy(
    reference: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    *,
    rtol: float = DEFAULTS["rtol"],
    atol: float = DEFAULTS["atol"],
) -> list[list[Any]]:
    """Rows ``[item, reference, current, change]`` for every trial status or metric that
    differs. Both sides map a trial key -> ``{"status", "metrics", ...}``."""
    rows: list[list[Any]] = []
    for label, base in reference.items():
        cur = current.get(label)
        if cur is None:
            rows.append([f"{label}: trial", "present", "missing", ""])
            continue
        if base.get("status") != cur.get("status"):
            rows.append([f"{label}: status", base.get("status"), cur.get("status"), ""])
            continue
        base_m, cur_m = _flatten(base.get("metrics") or {}), _flatten(cur.get("metrics") or {})
        for key in sorted(base_m.keys() | cur_m.keys()):
            b, c = base_m.get(key), cur_m.get(key)
            if key not in cur_m or key not in base_m or not _close(c, b, rtol, atol):
                change = ""
                if isinstance(b, (int, float)) and isinstance(c, (int, float)) and b:
                    change = f"{(c - b) / abs(b):+.3g}"
                rows.append([f"{label}: {key}", b, c, change])
    for label in sorted(current.keys() - reference.keys()):
        rows.append([f"{label}: trial", "missing", "present", ""])
    return rows


def run_accuracy(plan: dict[str, TrialSpec], *, quiet: bool = False,
                 run_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Run every trial of ``plan`` (:func:`bench.gate.plan.accuracy_plan`) with the inline
    executor into a :class:`~bench.store.RunStore` in ``run_dir`` (default: a temporary
    directory, removed afterwards; records already in ``run_dir`` are reused); trial key
    -> id, status, error, metrics (as the installed :mod:`bench.faults` hooks show them)."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="mtlbench-check-") as tmp:
            return run_accuracy(plan, quiet=quiet, run_dir=tmp)

    store = RunStore(run_dir)
    specs = list({trial.id: trial for trial in plan.values()}.values())
    run_specs(specs, store, ExecutorOptions(kind="inline"), progress=False)
    hooks = faults.current()
    out: dict[str, dict[str, Any]] = {}
    for key, trial in plan.items():
        record = store.read(trial.id)
        metrics = record.metrics if record.ok else None
        if metrics is not None:
            metrics = hooks.metrics(trial.weighting.name, metrics)
        out[key] = {"id": trial.id, "status": record.status, "error": record.error,
                    "metrics": metrics}
        if not record.ok and not quiet:
            print(f"note: trial {key}: {record.status}: {record.error}", file=sys.stderr)
    return out
