"""The results of one run, computed once from the typed records of one scan.

:func:`RunResults.build` reads the run directory (one :meth:`RunStore.scan`), builds the
tidy frame and every table the report shows (per-dataset results, Δm intervals, task
changes, rankings, scalarization fronts, task relationships, cost, learning curves, the
toy landscape, environment, failed trials); the sections only render them. The statistics
are :mod:`bench.analysis`'s."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import analysis, store
from bench.data import DATASETS
from bench.errors import ConfigError, error_summary
from bench.grid import schema1_labels
from bench.records import TrialRecord
from bench.report import recommend, tables
from bench.report.plots.base import strategy_colors

__all__ = ["BASELINE", "DatasetResults", "RunResults", "ToyResults", "curve_frame",
           "load_speed"]

BASELINE = "single-task"  # the strategy of the baselines' learning curves
CURVE_COLUMNS = ["trial_id", "dataset", "strategy", "seed", "task", "epoch", "val_loss",
                 "best_epoch", "last_epoch_best"]


def load_speed(run_dir: str | Path) -> pd.DataFrame:
    """Speed records of ``RUN_DIR/speed/*.json`` as a flat frame (missing keys -> NaN)."""
    rows = []
    for path in sorted((Path(run_dir) / "speed").glob("*.json")):
        try:
            rec = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("kind", "speed") != "speed":
            continue
        step = rec.get("step") or {}
        row = {
            "file": path.name,
            **{k: rec.get(k) for k in ("strategy", "engine", "sharing", "num_tasks",
                                       "batch_size", "width", "device")},
            "step_median_s": step.get("median_s", math.nan),
            "step_iqr_s": step.get("iqr_s", math.nan),
            "samples_per_s": rec.get("samples_per_s", math.nan),
            "peak_memory_bytes": rec.get("peak_memory_bytes", math.nan),
            "ratio_to_ew": rec.get("ratio_to_ew", math.nan),
        }
        for phase, v in (rec.get("phases") or {}).items():
            row[f"phase_{phase}_median_s"] = (v or {}).get("median_s", math.nan)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("strategy", "engine", "sharing"):
        if col in df:
            df[col] = df[col].fillna("n/a").astype(str)
    for col in ("step_median_s", "step_iqr_s", "samples_per_s", "peak_memory_bytes",
                "ratio_to_ew", "num_tasks", "batch_size", "width"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _labels(tidy: pd.DataFrame) -> pd.DataFrame:
    cols = ["trial_id", "dataset", "sharing", "weighting", "seed", "baseline_task", "status"]
    lab = tidy.drop_duplicates("trial_id")[cols].set_index("trial_id")
    lab["strategy"] = [analysis.strategy_label(s, w)
                       for s, w in zip(lab["sharing"], lab["weighting"], strict=True)]
    return lab


def _by_id(labels: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """``labels.to_dict("index")`` (Python scalars), built from whole columns."""
    names = list(labels.columns)
    columns = [labels[c].tolist() for c in names]
    return {tid: dict(zip(names, values, strict=True))
            for tid, values in zip(labels.index, zip(*columns, strict=True), strict=True)}


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def curve_frame(records: list[TrialRecord], labels: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial x task x epoch: its validation loss, the trial's selected
    epoch and whether that is its last one. Baselines carry the strategy ``BASELINE``."""
    rows = []
    by_id = _by_id(labels)
    for rec in records:
        lab = by_id.get(rec.id)
        if lab is None or not rec.ok or not rec.history:
            continue
        strategy = BASELINE if not pd.isna(lab["baseline_task"]) else lab["strategy"]
        best = rec.best_epoch
        last = best is not None and len(rec.history) > 1 and best == len(rec.history) - 1
        for h in rec.history:
            for task, metrics in h.val.items():
                loss = (metrics or {}).get("loss")
                if loss is not None:
                    rows.append([rec.id, lab["dataset"], strategy, lab["seed"], task,
                                 h.epoch, float(loss), best, last])
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


@dataclass
class DatasetResults:
    """One dataset's results table (``display`` as shown, ``raw`` as written to CSV, rows
    in the same order, best Δm first), its tidy rows, the task weights over training of
    the strategies whose weights change, and its scalarization front (or None)."""

    name: str
    tidy: pd.DataFrame
    display: pd.DataFrame
    raw: pd.DataFrame
    weights: pd.DataFrame
    front: pd.DataFrame | None = None


@dataclass
class ToyResults:
    """Trajectories on a dataset that provides its landscape (``toy2``): every recorded
    point, each trial's end point and objectives, the landscape on a grid and its
    numerical Pareto set."""

    trajectories: pd.DataFrame
    endpoints: pd.DataFrame
    grid: tuple[np.ndarray, np.ndarray, np.ndarray]
    pareto_points: np.ndarray


@dataclass
class RunResults:
    """Everything the report shows about one run, computed once (see the module)."""

    run_dir: Path
    title: str
    description: str
    records: list[TrialRecord]
    problems: list[store.RecordProblem]
    tidy: pd.DataFrame
    labels: pd.DataFrame  # one row per trial, by trial_id, with its strategy label
    summary: pd.DataFrame  # analysis.trial_summary
    cells: pd.DataFrame  # analysis.delta_m_intervals
    intervals: pd.DataFrame  # analysis.task_change_intervals
    speed: pd.DataFrame
    colors: dict[str, Any]  # the one strategy -> colour mapping of every figure
    sweep: dict[str, Any] = field(default_factory=dict)  # the manifest's sweep
    memory_known: bool = False  # speed records give a peak memory column
    datasets: list[DatasetResults] = field(default_factory=list)
    picks: list[recommend.DatasetPick] = field(default_factory=list)
    rankings: analysis.Rankings | None = None  # by Δm task, ls left out
    relationships: analysis.Relationships | None = None
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per trial: timing
    cost_quality: pd.DataFrame = field(default_factory=pd.DataFrame)
    toy: ToyResults | None = None
    environment: pd.DataFrame = field(default_factory=pd.DataFrame)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def build(cls, run_dir: str | Path) -> RunResults:
        """Read ``run_dir`` once and compute every table; files left out are named on
        stderr (and in the report)."""
        run_dir = Path(run_dir)
        run = store.RunStore(run_dir)
        if not run.trials_dir.is_dir():
            raise ConfigError(f"{run_dir}: not a run directory (no trials/ folder)")
        scan = run.scan(schema1_labels)  # older records labelled as the registries would
        store.print_problems(scan.problems)
        tidy = store.frame(scan.records)
        if tidy.empty:
            raise ConfigError(f"{run_dir}: no trial records to report on")
        labels = _labels(tidy)
        summary = analysis.trial_summary(tidy)
        sweep = (scan.manifest or {}).get("sweep", {}) or {}  # None: missing or damaged
        mtl = labels[labels["baseline_task"].isna()]
        r = cls(run_dir=run_dir, title=str(sweep.get("name") or run_dir.name),
                description=str(sweep.get("description") or ""), records=scan.records,
                problems=scan.problems, tidy=tidy, labels=labels, summary=summary,
                cells=analysis.delta_m_intervals(summary),
                intervals=analysis.task_change_intervals(summary),
                speed=load_speed(run_dir), colors=strategy_colors(mtl["strategy"]),
                sweep=sweep)
        r._compute()
        return r

    def mtl_ok(self) -> Iterator[tuple[TrialRecord, dict]]:
        """Finished multi-task trials with their labels (a dict per trial: no per-record
        ``.loc``, slow at 10,000 trials)."""
        for rec in self.records:
            lab = self._by_id.get(rec.id)
            if lab is not None and rec.ok and pd.isna(lab["baseline_task"]):
                yield rec, lab

    def _compute(self) -> None:
        self._by_id = _by_id(self.labels)
        self.picks = recommend.dataset_picks(self.cells, self.tidy, self.intervals)
        use = self.cells[~self.cells["weighting"].map(analysis.is_scalarization)]
        self.rankings = (analysis.rankings(use, "delta_m_task")
                         if not use.empty else None)
        self.relationships = analysis.relationships(self.mtl_ok())
        self.curves = curve_frame(self.records, self.labels)
        self.trials = self._trials()
        self._datasets()
        self._cost()
        self.toy = self._toy()
        self.environment = self._environment()
        self.failed = self._failed()

    def _weights(self) -> pd.DataFrame:
        rows = []
        for rec, lab in self.mtl_ok():
            for h in rec.history:
                for task, w in (h.weights or {}).items():
                    if w is not None:
                        rows.append({"dataset": lab["dataset"], "strategy": lab["strategy"],
                                     "seed": lab["seed"], "epoch": h.epoch, "task": task,
                                     "weight": float(w)})
        df = pd.DataFrame(rows, columns=["dataset", "strategy", "seed", "epoch", "task",
                                         "weight"])
        if df.empty:
            return df
        spread = df.groupby(["dataset", "strategy"])["weight"].agg(lambda s: s.max() - s.min())
        varying = spread[spread > 1e-9].index
        keep = pd.MultiIndex.from_frame(df[["dataset", "strategy"]]).isin(varying)
        return df[keep].reset_index(drop=True)

    def _datasets(self) -> None:
        # One reference per task (the best single-task recipe): with a train_grid, points
        # trained with different settings must share it to be compared.
        fronts = (analysis.scalarization_front(
            analysis.trial_summary(self.tidy, reference="best"))
            if not self.summary.empty else {})
        weights = self._weights()
        for dataset, group in self.tidy.groupby("dataset", sort=True):
            display, raw = tables.dataset_table(group,
                                                self.cells[self.cells["dataset"] == dataset])
            display, raw = recommend.mark_best(display, raw)  # best first, marked
            w = weights[weights["dataset"] == dataset] if not weights.empty else weights
            self.datasets.append(DatasetResults(str(dataset), group, display, raw, w,
                                                fronts.get(str(dataset))))

    def _trials(self) -> pd.DataFrame:
        rows = []
        for rec in self.records:
            lab = self._by_id.get(rec.id)
            if lab is None:
                continue
            t = rec.timing
            rows.append({"trial_id": rec.id, **lab,
                         "samples_per_s": _num(t.samples_per_s) if t else math.nan,
                         "step_s": _num(t.step_s) if t else math.nan,
                         "setup_s": _num(t.setup_s) if t else math.nan,
                         "warmup_s": _num(t.warmup_s) if t else math.nan})
        return pd.DataFrame(rows)

    def _cost(self) -> None:
        memory = None
        if not self.speed.empty and "peak_memory_bytes" in self.speed:
            memory = self.speed.rename(columns={"strategy": "weighting"})[
                ["sharing", "weighting", "peak_memory_bytes"]].dropna()
        self.memory_known = memory is not None
        self.cost_quality = analysis.cost_quality(self.cells, analysis.trial_costs(self.tidy),
                                                  memory)

    def _toy(self) -> ToyResults | None:
        """Trajectories recorded by the ``landscape`` architecture on datasets that
        provide their landscape (``landscape`` on the registered loader)."""
        traced = [(rec, lab) for rec, lab in ((r, self._by_id.get(r.id)) for r in self.records)
                  if rec.ok and rec.architecture_stats.get("trajectory") and lab is not None]
        if not traced:
            return None
        rows, finals, found = [], [], None
        for rec, lab in traced:
            name = rec.spec.dataset.name
            landscape = getattr(DATASETS.get(name), "landscape", None) if (
                name in DATASETS) else None
            if landscape is None:
                continue
            params = rec.spec.dataset.params
            found = found or (landscape, params)
            start = str(landscape.start(params))
            every = rec.architecture_stats.get("trajectory_every", 1)
            traj = rec.architecture_stats["trajectory"]
            for i, (x1, x2) in enumerate(traj):
                rows.append({"method": lab["weighting"], "start": start, "step": i * every,
                             "x1": x1, "x2": x2})
            f1, f2 = (rec.metrics["test"][t]["value"] for t in landscape.objectives)
            finals.append({"method": lab["weighting"], "start": start, "x1": traj[-1][0],
                           "x2": traj[-1][1], "f1": f1, "f2": f2})
        if found is None:
            return None
        front = found[0].front(found[1])
        final = pd.DataFrame(finals)
        on = analysis.near_front(final[["f1", "f2"]].to_numpy(float), front.values)
        final["on Pareto set"] = np.where(on, "yes", "no")
        final["average loss"] = (final["f1"] + final["f2"]) / 2
        return ToyResults(pd.DataFrame(rows), final, (front.xs, front.ys, front.mean_loss),
                          front.points)

    def _environment(self) -> pd.DataFrame:
        values: dict[str, Counter] = {}
        for rec in self.records:
            for k, v in rec.env.items():
                values.setdefault(str(k), Counter())[json.dumps(v, sort_keys=True)
                                                     if not isinstance(v, str) else v] += 1
        return pd.DataFrame([{"key": k, "value": "; ".join(
            v if len(c) == 1 else f"{v} ({n} trials)" for v, n in c.most_common())}
            for k, c in sorted(values.items())])

    def _failed(self) -> pd.DataFrame:
        rows = []
        for rec in self.records:
            lab = self._by_id.get(rec.id)
            if rec.ok or lab is None:
                continue
            rows.append({"trial_id": rec.id, "dataset": lab["dataset"],
                         "sharing": lab["sharing"], "weighting": lab["weighting"],
                         "seed": lab["seed"], "status": rec.status,
                         "error": error_summary(rec.error)})  # as `run` names it
        return pd.DataFrame(rows)
