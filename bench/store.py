"""Store: a run directory of JSON trial records, written atomically, plus a manifest.

Layout::

    results/<run>/manifest.json       the sweep (resolved) and its trial ids
    results/<run>/trials/<id>.json    one record per finished trial

A record only ever appears complete: it is written to a temporary file in the
same directory, flushed to disk, then renamed over its final name. A trial
whose record exists is finished, so rerunning a sweep skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import ConfigError

__all__ = ["RunStore", "atomic_write_json", "atomic_write_text", "load"]

MANIFEST = "manifest.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name lets a later run remove what a killed writer left.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Trial records of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        self.trials_dir = self.root / "trials"

    def record_path(self, trial_id: str) -> Path:
        return self.trials_dir / f"{trial_id}.json"

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files of writers that died mid-write (SIGKILL); returns how many."""
        removed = 0
        for tmp in self.trials_dir.glob(".*.tmp") if self.trials_dir.is_dir() else []:
            try:
                pid = int(tmp.name.split(".")[-3])
            except (ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def has(self, trial_id: str) -> bool:
        return self.record_path(trial_id).is_file()

    def status(self, trial_id: str) -> str | None:
        """Status of a finished trial, or None when it has no (readable) record."""
        try:
            return self.read(trial_id).get("status")
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def claim(self, trial_id: str) -> Iterator[bool]:
        """Hold an exclusive lock on ``trial_id`` while it runs; yields False when another
        process (e.g. a second ``mtlbench run`` on the same directory) holds it.

        The lock is an ``flock`` on ``locks/<id>.lock``: the kernel releases it when
        its holder dies, so a killed sweep never leaves a trial locked."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{trial_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def write(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.record_path(record["id"]), record)

    def read(self, trial_id: str) -> dict[str, Any]:
        return json.loads(self.record_path(trial_id).read_text("utf-8"))

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.trials_dir.glob("*.json")):
            yield json.loads(path.read_text("utf-8"))

    def manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST
        return json.loads(path.read_text("utf-8")) if path.is_file() else None

    def check_compatible(self, sweep: dict[str, Any]) -> None:
        """Refuse a run directory made by a different sweep (before anything is written)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root}: exists and is not a directory")
        existing = self.manifest()
        if existing is not None and existing.get("sweep") != sweep:
            before = existing.get("sweep") or {}
            changed = sorted(k for k in {*before, *sweep} if before.get(k) != sweep.get(k))
            what = (f"a different sweep ('{before.get('name')}')" if "name" in changed else
                    f"sweep '{before.get('name')}' with other {', '.join(changed)}")
            raise ConfigError(f"{self.root}: run directory holds {what}; choose another --out")

    def write_manifest(self, sweep: dict[str, Any], trial_ids: list[str]) -> None:
        atomic_write_json(self.root / MANIFEST, {"sweep": sweep, "trials": trial_ids})


def _label(component: dict[str, Any], registry_defaults: dict[str, Any] | None) -> str:
    """``name`` plus the hyperparameters that differ from their defaults."""
    params = component["params"]
    if registry_defaults is not None:
        params = {k: v for k, v in params.items() if registry_defaults.get(k, object()) != v}
    if not params:
        return component["name"]
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{component['name']}({inner})"


def _defaults(kind: str, name: str) -> dict[str, Any] | None:
    from bench.data import DATASETS
    from bench.sampling import SAMPLING
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    registry = {"dataset": DATASETS, "sharing": SHARING, "weighting": WEIGHTING,
                "sampling": SAMPLING}[kind]
    if name not in registry:
        return None
    return {h.name: h.default for h in registry.hyperparameters(name)}


COLUMNS = [
    "trial_id", "dataset", "sharing", "weighting", "seed", "baseline_task", "baseline_id",
    "status",
    "task", "split", "metric", "value", "wall_s", "step_s", "parameters",
    "trial_s", "step_spread", "best_epoch", "epochs",
]


def _varying_train_keys(records: list[dict[str, Any]]) -> list[str]:
    """Training settings that differ between the run's trials (a ``train_grid`` axis)."""
    values: dict[str, set[str]] = {}
    for rec in records:
        for key, value in rec["spec"]["train"].items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return sorted(k for k, v in values.items() if len(v) > 1)


def weighting_label(spec: dict[str, Any], varying_train: Sequence[str] = ()) -> str:
    """The weighting label of a trial, with what else varies in the sweep's training
    recipe after `` @``: the task-sampling policy (multi-input data) and the
    ``train_grid`` values, e.g. ``ew @proportional`` or ``ls(weights=[1, 0]) @lr=0.01``."""
    label = _label(spec["weighting"], _defaults("weighting", spec["weighting"]["name"]))
    extra = []
    if spec.get("sampling") is not None:
        extra.append(_label(spec["sampling"], _defaults("sampling", spec["sampling"]["name"])))
    extra += [f"{k}={spec['train'][k]}" for k in varying_train]
    return f"{label} @{','.join(extra)}" if extra else label


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def load(run_dir: str | Path) -> pd.DataFrame:
    """Tidy table of a run: one row per trial x task x split x metric.

    Axis columns hold labels (name plus non-default hyperparameters; the weighting
    label also names the sampling policy and ``train_grid`` values, see
    :func:`weighting_label`). Trials that did not finish ``ok`` contribute one row with
    ``task``/``value`` empty.
    """
    store = RunStore(run_dir)
    if not store.trials_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory (no trials/ folder)")
    from bench.grid import TrialSpec, baseline_of

    rows: list[dict[str, Any]] = []
    records = list(store.records())
    varying = _varying_train_keys(records)
    for rec in records:
        spec = rec["spec"]
        trial = TrialSpec.from_dict(spec)
        base = {
            "trial_id": rec["id"],
            "dataset": _label(spec["dataset"], _defaults("dataset", spec["dataset"]["name"])),
            "sharing": _label(spec["sharing"], _defaults("sharing", spec["sharing"]["name"])),
            "weighting": weighting_label(spec, varying),
            "seed": spec["seed"],
            "baseline_task": spec["tasks"][0] if spec.get("tasks") else None,
            "status": rec["status"],
            "wall_s": rec.get("wall_s", math.nan),
            "step_s": rec.get("timing", {}).get("step_s", math.nan),
            "parameters": rec.get("parameters"),
            # Steady-state timing (set-up and warm-up epoch left out; NaN in older records).
            "trial_s": rec.get("timing", {}).get("trial_s", math.nan),
            "step_spread": _float(rec.get("timing", {}).get("step_spread")),
            "best_epoch": rec.get("best_epoch"),
            "epochs": spec["train"].get("epochs"),
        }
        if rec["status"] != "ok":
            rows.append({**base, "task": None, "split": None, "metric": None, "value": math.nan,
                         "baseline_id": None})
            continue
        for split, per_task in rec["metrics"].items():
            for task, metrics in per_task.items():
                baseline_id = None if trial.is_baseline else baseline_of(trial, task).id
                for metric, value in metrics.items():
                    rows.append(
                        {**base, "task": task, "split": split, "metric": metric, "value": value,
                         "baseline_id": baseline_id}
                    )
    return pd.DataFrame(rows, columns=COLUMNS)
