"""Store: a run directory of JSON trial records, written atomically, plus a manifest.

Layout::

    results/<run>/manifest.json       the sweep (resolved) and its trial ids
    results/<run>/trials/<id>.json    one record per finished trial

A record only ever appears complete: it is written to a temporary file in the
same directory, flushed to disk, then renamed over its final name. A trial
whose record exists is finished, so rerunning a sweep skips it.

Files damaged or put there by hand are checked on every read: a record that is
not valid JSON, lacks what the tidy table needs (an ``ok`` record without
metrics), sits under another trial's file name, or belongs to no trial of the
manifest is left out with a note naming the file; ``mtlbench run`` moves such
files into ``quarantine/`` and runs their trials again.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pydantic
import pydantic_core

from bench.errors import ConfigError
from bench.records import TrialRecord, dumps, upgrade_trial, v1_labels
from bench.spec import Labels, TrialSpec

__all__ = [
    "RecordProblem", "RunStore", "Scan", "atomic_write_json", "atomic_write_text", "frame",
    "load", "print_problems",
]

MANIFEST = "manifest.json"
QUARANTINE = "quarantine"  # damaged or foreign files that `run` set aside
RETRIED = "retried"  # the last failed record of each trial rerun by --retry-failed


def _create_temp(path: Path) -> tuple[int, str]:
    """Open a new temporary file beside ``path``. Unlike ``tempfile.mkstemp`` (always
    0600) it is created 0666 so the kernel applies the umask (and default ACLs), as for
    any other file the user writes."""
    for _ in range(100):
        # The writer's pid in the name lets a later run remove what a killed writer left.
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.
    The file gets the mode the umask gives (0644 under umask 022)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
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


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def _parse(data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in ``data``, or None and why it is unusable."""
    if not data.strip():
        return None, "empty file"
    try:
        # pydantic's parser: twice as fast as json's, and it reads NaN / Infinity too.
        raw = pydantic_core.from_json(data)
    except ValueError as err:  # invalid UTF-8 included
        return None, f"not valid JSON, truncated or damaged ({err})"
    if not isinstance(raw, dict):
        return None, f"not a trial record (a JSON {_JSON_TYPES.get(type(raw), 'value')})"
    return raw, None


def _validate(stem: str, raw: dict[str, Any], labels: dict[str, Labels] | None = None
              ) -> tuple[TrialRecord | None, str | None]:
    """``raw`` as a current :class:`TrialRecord` (schema-1 records upgraded), or None and
    why it is not one."""
    try:
        rec = TrialRecord.model_validate(upgrade_trial(raw, labels))
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(k) for k in first["loc"])
        what = "missing" if first["type"] == "missing" else first["msg"]
        if first["type"] == "value_error" and not where:
            what = what.removeprefix("Value error, ")
            return None, what
        return None, f"not a trial record ({where}: {what})"
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return None, f"not a trial record ({type(err).__name__}: {err})"
    if rec.id != stem:
        # Read under its file name, it would hide the trial the name promises.
        return None, f"holds trial {rec.id}, not the {stem} its name says"
    return rec, None


def _check_record(path: Path, data: bytes) -> tuple[TrialRecord | None, str | None]:
    """The record in ``data`` (read from ``path``), or None and why it is not usable."""
    raw, reason = _parse(data)
    return (None, reason) if raw is None else _validate(path.stem, raw)


@dataclass(frozen=True)
class RecordProblem:
    """A file of ``trials/`` left out of the run: damaged, misnamed or foreign."""

    path: Path
    reason: str
    rerun: bool = False  # its name is a trial of the sweep, which a resume runs again
    moved_to: Path | None = None  # where `run` set it aside


@dataclass
class Scan:
    """The usable records of a run directory, and the files left out with why."""

    records: list[TrialRecord]
    problems: list[RecordProblem]
    manifest: dict[str, Any] | None


def print_problems(problems: Sequence[RecordProblem], action: str = "left out",
                   file: IO[str] | None = None, limit: int = 10) -> None:
    """One line per file left out (``limit`` at most, then a count), on stderr."""
    out = file or sys.stderr
    for p in problems[:limit]:
        to = f" -> {p.moved_to}" if p.moved_to else ""
        again = f"; trial {p.path.stem} runs again" if p.rerun and p.moved_to else ""
        print(f"mtlbench: note: {action} {p.path}{to}: {p.reason}{again}", file=out)
    if len(problems) > limit:
        print(f"mtlbench: note: ... and {len(problems) - limit} more files {action}", file=out)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Reading 10^4 records allocates millions of objects, none of them cyclic; the cyclic
    collector's passes over them cost more than the reading itself (1.1 of 1.9 s CPU at
    10,437 records), so it is paused while a run is read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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

    def _valid(self, trial_id: str) -> TrialRecord | None:
        try:
            data = self.record_path(trial_id).read_bytes()
        except OSError:
            return None
        return _check_record(self.record_path(trial_id), data)[0]

    def status(self, trial_id: str) -> str | None:
        """Status of a finished trial, or None when it has no usable record (none, or a
        damaged or misnamed one: the trial runs again)."""
        rec = self._valid(trial_id)
        return None if rec is None else rec.status

    @contextlib.contextmanager
    def _lock(self, trial_id: str) -> Iterator[bool]:
        """``flock`` on ``locks/<id>.lock`` without waiting; yields whether it was taken.
        The kernel releases it when its holder dies, so a killed sweep never leaves a
        trial locked."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        # 0666 & ~umask, so that others sharing the directory (umask 002) can lock too.
        fd = os.open(lock_dir / f"{trial_id}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def claim(self, trial_id: str) -> Iterator[bool]:
        """Hold an exclusive lock on ``trial_id`` while it runs; yields False when another
        process (e.g. a second ``mtlbench run`` on the same directory) holds it, or when
        the trial already has a usable record of any status (another sweep ran it since
        this one planned; failed records to retry were moved away by
        :meth:`take_for_retry` first), so each trial runs once."""
        with self._lock(trial_id) as mine:
            yield mine and self.status(trial_id) is None

    def take_for_retry(self, trial_id: str) -> bool:
        """Make a failed trial runnable again: under its lock, move its record to
        ``retried/<id>.json``. Returns whether this sweep should run it: False when
        another sweep runs it now or its record is ``ok`` (another sweep's retry worked).
        Taking it under the lock that :meth:`claim` uses means two sweeps retrying one
        directory run each failed trial once."""
        with self._lock(trial_id) as mine:
            if not mine:
                return False
            status = self.status(trial_id)
            if status == "ok":
                return False
            if status is not None:
                dest = self.root / RETRIED / f"{trial_id}.json"
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.record_path(trial_id), dest)
            return True

    def write(self, record: TrialRecord) -> None:
        atomic_write_text(self.record_path(record.id), dumps(record))

    def read(self, trial_id: str) -> TrialRecord:
        """The record of ``trial_id``; a ConfigError naming the file when it is unusable."""
        path = self.record_path(trial_id)
        rec, reason = _check_record(path, path.read_bytes())
        if rec is None:
            raise ConfigError(f"{path}: {reason}")
        return rec

    def _record_names(self) -> list[str]:
        """File names of ``trials/*.json``, sorted."""
        try:
            with os.scandir(self.trials_dir) as entries:
                return sorted(e.name for e in entries if e.name.endswith(".json"))
        except FileNotFoundError:
            return []

    def scan(self, schema1_labels: Callable[[list[dict[str, Any]]], dict[str, Labels]]
             | None = None) -> Scan:
        """Read every ``trials/*.json``: the usable records of this run's trials, and the
        files left out (damaged, misnamed, or not a trial of the manifest) with why.
        A damaged ``manifest.json`` is a problem too; then no record is checked against it.
        ``schema1_labels`` labels records written before labels were stored (default:
        :func:`bench.records.v1_labels`; readers that know the registries pass
        ``bench.grid.schema1_labels`` to label them as the registries would)."""
        with _cyclic_gc_paused():
            return self._read_all(schema1_labels)

    def _read_all(self, schema1_labels: Callable[[list[dict[str, Any]]], dict[str, Labels]]
                  | None) -> Scan:
        """The usable records (see :meth:`scan`)."""
        problems: list[RecordProblem] = []
        try:
            manifest = self.manifest()
        except ConfigError as err:
            manifest = None
            problems.append(RecordProblem(self.root / MANIFEST, str(err).split(": ", 1)[-1]))
        ids = manifest.get("trials") if manifest else None
        sweep_ids = set(ids) if isinstance(ids, list) else None
        name = ((manifest or {}).get("sweep") or {}).get("name")
        raws: list[tuple[str, dict[str, Any]]] = []
        folder = str(self.trials_dir)
        for file_name in self._record_names():
            path = os.path.join(folder, file_name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:  # set aside by a concurrent run meanwhile
                continue
            except OSError as err:
                raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
            raw, reason = _parse(data)
            if raw is None:
                problems.append(self._problem(Path(path), reason, sweep_ids))
            else:
                raws.append((file_name, raw))
        # Schema-1 records hold no labels (see bench.records.upgrade_trial).
        old = [raw for _, raw in raws if "schema_version" not in raw]
        labels = (schema1_labels or v1_labels)(old) if old else None
        records = []
        for file_name, raw in raws:
            rec, reason = _validate(file_name[: -len(".json")], raw, labels)
            if rec is not None and sweep_ids is not None and rec.id not in sweep_ids:
                rec, reason = None, f"trial {rec.id} is not part of this run's sweep " \
                                    f"'{name}' ({MANIFEST})"
            if rec is None:
                problems.append(self._problem(self.trials_dir / file_name, reason, sweep_ids))
            else:
                records.append(rec)
        problems.sort(key=lambda p: str(p.path))
        return Scan(records, problems, manifest)

    @staticmethod
    def _problem(path: Path, reason: str | None, sweep_ids: set[str] | None) -> RecordProblem:
        rerun = sweep_ids is not None and path.stem in sweep_ids
        return RecordProblem(path, reason or "unusable", rerun)

    def records(self) -> Iterator[TrialRecord]:
        """The usable records (see :meth:`scan`; the files left out are not named here)."""
        yield from self.scan().records

    def set_aside(self) -> list[RecordProblem]:
        """Move every file :meth:`scan` leaves out into ``quarantine/`` (nothing is
        deleted), so that their trials run again and no report reads them; returns them
        with their new paths. A file named after a trial is moved under that trial's
        lock, after a second look: a concurrent sweep may have just rewritten it."""
        scan = self.scan()
        ids = set((scan.manifest or {}).get("trials") or ())
        moved = []
        for problem in scan.problems:
            if problem.path.parent != self.trials_dir:
                continue  # the manifest: run refuses a damaged one before this
            stem = problem.path.stem
            with self._lock(stem) if stem in ids else contextlib.nullcontext(True) as mine:
                if not mine:
                    continue  # a sweep is running this trial; its record will replace it
                if stem in ids and self.status(stem) is not None:
                    continue  # repaired by a concurrent sweep since the scan
                dest = self._quarantine_path(problem.path.name)
                try:
                    os.replace(problem.path, dest)
                except FileNotFoundError:
                    continue  # set aside by a concurrent sweep
                moved.append(RecordProblem(problem.path, problem.reason, problem.rerun, dest))
        return moved

    def _quarantine_path(self, name: str) -> Path:
        folder = self.root / QUARANTINE
        folder.mkdir(parents=True, exist_ok=True)
        dest, i = folder / name, 1
        while dest.exists():  # keep every copy set aside, never overwrite one
            dest, i = folder / f"{Path(name).stem}.{i}.json", i + 1
        return dest

    def manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none; a damaged one is a ConfigError
        naming the file."""
        path = self.root / MANIFEST
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read ({err})") from None
        try:
            manifest = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"{path}: not valid JSON, truncated or damaged ({err}); "
                              "move it away to start the run directory afresh") from None
        trials = manifest.get("trials", []) if isinstance(manifest, dict) else None
        if (not isinstance(manifest, dict) or not isinstance(manifest.get("sweep", {}), dict)
                or not isinstance(trials, list)
                or not all(isinstance(t, str) for t in trials)):
            raise ConfigError(f"{path}: not a run manifest (an object with 'sweep' and "
                              "'trials'); move it away to start the run directory afresh")
        return manifest

    def require_same_sweep(self, sweep: dict[str, Any]) -> None:
        """Refuse a run directory made by a different sweep (before anything is written)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root}: exists and is not a directory")
        existing = self.manifest()
        sweep = json.loads(json.dumps(sweep))  # as the manifest holds it: tuples are lists
        if existing is not None and existing.get("sweep") != sweep:
            before = existing.get("sweep") or {}
            changed = sorted(k for k in {*before, *sweep} if before.get(k) != sweep.get(k))
            what = (f"a different sweep ('{before.get('name')}')" if "name" in changed else
                    f"sweep '{before.get('name')}' with other {', '.join(changed)}")
            raise ConfigError(f"{self.root}: run directory holds {what}; choose another --out")

    def write_manifest(self, sweep: dict[str, Any], trial_ids: list[str]) -> None:
        atomic_write_json(self.root / MANIFEST, {"sweep": sweep, "trials": trial_ids})


COLUMNS = [
    "trial_id", "dataset", "sharing", "weighting", "seed", "baseline_task", "baseline_id",
    "status",
    "task", "split", "metric", "value", "wall_s", "step_s", "parameters",
    "trial_s", "step_spread", "best_epoch", "epochs",
]


def varying_train_keys(specs: Iterable[TrialSpec]) -> list[str]:
    """Training settings that differ between the run's trials (a ``train_grid`` axis)."""
    values: dict[str, set[str]] = {}
    # A sweep has few distinct recipes: compare those, not every trial's keys.
    distinct = {json.dumps(spec.train.to_dict(), sort_keys=True) for spec in specs}
    for train in distinct:
        for key, value in json.loads(train).items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return sorted(k for k, v in values.items() if len(v) > 1)


def weighting_label(spec: TrialSpec, varying_train: Sequence[str] = ()) -> str:
    """The weighting label of a trial, with what else varies in the sweep's training
    recipe after `` @``: the task-sampling policy (multi-input data) and the
    ``train_grid`` values, e.g. ``ew @proportional`` or ``ls(weights=[1, 0]) @lr=0.01``."""
    labels = spec.labels or Labels(dataset=spec.dataset.name, sharing=spec.sharing.name,
                                   weighting=spec.weighting.name,
                                   sampling=spec.sampling.name if spec.sampling else None)
    extra = [labels.sampling] if labels.sampling is not None else []
    train = spec.train.to_dict()
    extra += [f"{k}={train.get(k)}" for k in varying_train]
    return f"{labels.weighting} @{','.join(extra)}" if extra else labels.weighting


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def load(run_dir: str | Path, *, quiet: bool = False,
         schema1_labels: Callable[[list[dict[str, Any]]], dict[str, Labels]] | None = None
         ) -> pd.DataFrame:
    """Tidy table of a run: one row per trial x task x split x metric.

    Axis columns hold labels (name plus non-default hyperparameters; the weighting
    label also names the sampling policy and ``train_grid`` values, see
    :func:`weighting_label`). Trials that did not finish ``ok`` contribute one row with
    ``task``/``value`` empty. Files of ``trials/`` that are not usable records of this
    run are left out, each named in a note on stderr (unless ``quiet``).
    ``schema1_labels``: see :meth:`RunStore.scan`.
    """
    store = RunStore(run_dir)
    if not store.trials_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory (no trials/ folder)")
    scan = store.scan(schema1_labels)
    if not quiet:
        print_problems(scan.problems)
    return frame(scan.records)


def frame(records: Iterable[TrialRecord]) -> pd.DataFrame:
    """The tidy table of :func:`load` from records already read (:meth:`RunStore.scan`)."""
    with _cyclic_gc_paused():
        return _frame(list(records))


def _frame(records: list[TrialRecord]) -> pd.DataFrame:
    # Rows as tuples in COLUMNS order: building 10^5 dicts cost more than the scan.
    rows: list[tuple[Any, ...]] = []
    varying = varying_train_keys(rec.spec for rec in records)
    for rec in records:
        spec = rec.spec
        timing = rec.timing
        head = (rec.id, rec.labels.dataset, rec.labels.sharing, weighting_label(spec, varying),
                spec.seed, spec.tasks[0] if spec.tasks else None)
        # Steady-state timing (set-up and warm-up epoch left out; NaN in older records).
        tail = (_float(rec.wall_s), _float(timing.step_s) if timing else math.nan,
                rec.parameters, _float(timing.trial_s) if timing else math.nan,
                _float(timing.step_spread) if timing else math.nan, rec.best_epoch,
                spec.train.epochs)
        if not rec.ok:
            rows.append((*head, None, rec.status, None, None, None, math.nan, *tail))
            continue
        for split, per_task in rec.metrics.items():
            for task, metrics in per_task.items():
                baseline_id = rec.baselines.get(task)
                for metric, value in metrics.items():
                    rows.append((*head, baseline_id, rec.status, task, split, metric, value,
                                 *tail))
    return pd.DataFrame.from_records(rows, columns=COLUMNS)
