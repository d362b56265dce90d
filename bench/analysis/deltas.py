"""Relative changes against the single-task baselines, Δm, their intervals over seeds,
convergence and per-trial cost (see :mod:`bench.analysis` for the conventions)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

from bench.tasks import HIGHER_IS_BETTER

BOOTSTRAP_RESAMPLES = 10_000
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
CI_METHOD = "Student-t interval of the mean over seeds"
MIN_SEEDS_VERDICT = 3  # fewer seeds: no negative-transfer verdict
SCALARIZATION = "ls"  # weighting name of linear scalarization with fixed weights

GROUP = ["dataset", "sharing", "weighting"]


def per_task_changes(
    tidy: pd.DataFrame, split: str = "test", reference: str = "paired"
) -> pd.DataFrame:
    """One row per multi-task trial x task x metric with its baseline value and relative
    improvement (``rel_improvement``, a fraction; positive is better).

    ``reference="paired"``: each trial's own baseline (same data, model, training
    settings and seed). ``reference="best"``: for each (dataset, task, metric) the
    single-task recipe (baselines' training settings, e.g. a ``train_grid`` learning
    rate) with the best mean over seeds, paired by seed: the tuned single-task model, one
    reference for all of a dataset's trials, so that points trained with different
    settings are comparable (identical to "paired" when there is one recipe)."""
    ok = tidy[(tidy["status"] == "ok") & (tidy["split"] == split)]
    ok = ok[ok["metric"].isin(HIGHER_IS_BETTER.keys())]
    mtl = ok[ok["baseline_id"].notna()]
    base = ok[ok["baseline_task"].notna()]
    if reference == "paired":
        merged = mtl.merge(
            base[["trial_id", "task", "metric", "value"]].rename(
                columns={"trial_id": "baseline_id", "value": "baseline_value"}),
            on=["baseline_id", "task", "metric"],
            how="inner",
        )
    elif reference == "best":
        keys = ["dataset", "task", "metric"]
        means = base.groupby([*keys, "weighting"])["value"].mean().reset_index()
        higher = means["metric"].map(HIGHER_IS_BETTER)
        means["score"] = np.where(higher, means["value"], -means["value"])
        best = means.loc[means.groupby(keys)["score"].idxmax(), [*keys, "weighting"]]
        ref = base.merge(best, on=[*keys, "weighting"])[[*keys, "seed", "value"]]
        merged = mtl.merge(ref.rename(columns={"value": "baseline_value"}),
                           on=[*keys, "seed"], how="inner")
    else:
        raise ValueError(f"reference must be 'paired' or 'best', not {reference!r}")
    higher = np.array([HIGHER_IS_BETTER[m] for m in merged["metric"]], dtype=bool)
    sign = np.where(higher, 1.0, -1.0)
    value = merged["value"].astype(float)
    denom = merged["baseline_value"].astype(float).abs().replace(0.0, np.nan)
    merged["rel_improvement"] = sign * (value - merged["baseline_value"].astype(float)) / denom
    return merged


def trial_summary(
    tidy: pd.DataFrame, split: str = "test", reference: str = "paired"
) -> pd.DataFrame:
    """One row per multi-task trial: ``delta_m_task`` and ``delta_m_metric`` (percent), and
    ``rel_<task>`` (percent), each task's mean relative improvement over its metrics;
    ``reference`` as in :func:`per_task_changes`.

    Trials missing a baseline for some task get NaN delta-m (never a partial mean)."""
    changes = per_task_changes(tidy, split, reference)
    keys = ["trial_id", "dataset", "sharing", "weighting", "seed"]
    if changes.empty:
        return pd.DataFrame(columns=[*keys, "delta_m_task", "delta_m_metric"])
    task_change = changes.groupby([*keys, "task"])["rel_improvement"].mean() * 100
    summary = task_change.unstack("task")
    summary.columns = [f"rel_{c}" for c in summary.columns]
    summary["delta_m_task"] = task_change.groupby(keys).mean()
    summary["delta_m_metric"] = -changes.groupby(keys)["rel_improvement"].mean() * 100
    expected = tidy[tidy["baseline_id"].notna()].groupby("trial_id")["task"].nunique()
    have = changes.groupby("trial_id")["task"].nunique()
    ids = summary.index.get_level_values("trial_id")
    incomplete = (have.reindex(ids).fillna(0).to_numpy()
                  < expected.reindex(ids).fillna(0).to_numpy())
    summary.loc[incomplete, ["delta_m_task", "delta_m_metric"]] = np.nan
    return summary.reset_index()


# --------------------------------------------------------------------------- intervals


def _finite_values(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """The values as a float array, NaN dropped (one per seed)."""
    return np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed, NaN dropped) and its
    percentile-bootstrap interval. Fewer than 2 values give NaN bounds."""
    x = _finite_values(values)
    if x.size < 2:
        return (float(x.mean()) if x.size else np.nan, np.nan, np.nan)
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (mean, float(low), float(high))


def t_interval(
    values: Sequence[float] | np.ndarray | pd.Series, *, level: float = CI_LEVEL
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed, NaN dropped) and its
    Student-t interval, ``mean ± t_{n-1} s / sqrt(n)``. Fewer than 2 values give NaN
    bounds; values without spread give a degenerate interval."""
    return _t_interval(_finite_values(values), level)


@lru_cache(maxsize=256)
def _t_quantile(level: float, dof: int) -> float:
    return float(stats.t.ppf(0.5 + level / 2.0, dof))


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float, float]:
    """:func:`t_interval` of finite float values ``x``."""
    if x.size < 2:
        return (float(x.mean()) if x.size else np.nan, np.nan, np.nan)
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / np.sqrt(x.size)
    half = _t_quantile(level, x.size - 1) * sem
    return (mean, mean - half, mean + half)


def _groups(frame: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, np.ndarray]]:
    """``frame.groupby(keys, sort=True)``'s keys with each group's row positions (in frame
    order), without building a frame per group."""
    if frame.empty:
        return []
    grouped = frame.groupby(keys, sort=True)
    codes = grouped.ngroup().to_numpy()
    valid = np.flatnonzero(codes >= 0)  # NaN keys: dropped, as groupby does
    order = valid[np.argsort(codes[valid], kind="stable")]
    bounds = np.searchsorted(codes[order], np.arange(grouped.ngroups + 1))
    names = list(grouped.size().index)
    return [(name if isinstance(name, tuple) else (name,), order[bounds[i]:bounds[i + 1]])
            for i, name in enumerate(names)]


def _finite(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    x = column[rows]
    return x[~np.isnan(x)]


def transfer_verdict(n_seeds: int, high: float) -> str:
    """``yes`` (whole interval below zero), ``no``, or ``too few seeds (n=k)`` below
    ``MIN_SEEDS_VERDICT``."""
    if n_seeds < MIN_SEEDS_VERDICT:
        return f"too few seeds (n={n_seeds})"
    return "yes" if np.isfinite(high) and high < 0.0 else "no"


def strategy_label(sharing: str, weighting: str) -> str:
    """How a (sharing, weighting) combination is named in tables and plots."""
    return f"{sharing}/{weighting}"


def component_name(label: str) -> str:
    """``ls(weights=[1, 0])`` -> ``ls``; ``ew @proportional`` -> ``ew``."""
    return str(label).split(" @", 1)[0].split("(", 1)[0]


def is_scalarization(weighting_label: str) -> bool:
    return component_name(weighting_label) == SCALARIZATION


def _tasks_of(summary: pd.DataFrame) -> list[str]:
    return [c[len("rel_"):] for c in summary.columns if c.startswith("rel_")]


def task_change_intervals(summary: pd.DataFrame, *, level: float = CI_LEVEL) -> pd.DataFrame:
    """Per (dataset, sharing, weighting, task): mean relative change over seeds (percent),
    its Student-t interval (:func:`t_interval`), the number of seeds, ``verdict`` (see
    :func:`transfer_verdict`) and ``negative_transfer`` (verdict "yes": at least
    ``MIN_SEEDS_VERDICT`` seeds and the whole interval below zero)."""
    columns = [*GROUP, "strategy", "task", "mean", "low", "high", "n_seeds",
               "negative_transfer", "verdict"]
    rows = []
    tasks = _tasks_of(summary)
    values_of = {t: summary[f"rel_{t}"].to_numpy(dtype=float) for t in tasks}
    for key, positions in _groups(summary, GROUP):
        for task in tasks:
            values = _finite(values_of[task], positions)
            if values.size == 0:
                continue
            mean, low, high = _t_interval(values, level)
            verdict = transfer_verdict(int(values.size), high)
            rows.append({
                **dict(zip(GROUP, key, strict=True)),
                "strategy": strategy_label(key[1], key[2]),
                "task": task, "mean": mean, "low": low, "high": high,
                "n_seeds": int(values.size),
                "negative_transfer": verdict == "yes", "verdict": verdict,
            })
    return pd.DataFrame(rows, columns=columns)


def delta_m_intervals(summary: pd.DataFrame, *, level: float = CI_LEVEL) -> pd.DataFrame:
    """Per (dataset, sharing, weighting): ``delta_m_task`` and ``delta_m_metric`` (mean
    over seeds, percent) each with ``_low``/``_high`` Student-t bounds, and ``n_seeds``."""
    columns = [*GROUP, "strategy", "n_seeds"]
    for name in ("delta_m_task", "delta_m_metric"):
        columns += [name, f"{name}_low", f"{name}_high"]
    rows = []
    names = ("delta_m_task", "delta_m_metric")
    values_of = {n: summary[n].to_numpy(dtype=float) for n in names}
    for key, positions in _groups(summary, GROUP):
        row = {**dict(zip(GROUP, key, strict=True)),
               "strategy": strategy_label(key[1], key[2]),
               "n_seeds": int((~np.isnan(values_of["delta_m_task"][positions])).sum())}
        for name in names:
            row[name], row[f"{name}_low"], row[f"{name}_high"] = _t_interval(
                _finite(values_of[name], positions), level)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def convergence(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial (multi-task and single-task baselines) with its
    ``best_epoch`` (0-based, lowest mean validation loss), ``epochs`` and
    ``last_epoch_best``: the checkpoint is the last epoch, so the validation loss was
    still falling when training stopped: probably not converged."""
    cols = ["trial_id", *GROUP, "seed", "baseline_task", "best_epoch", "epochs"]
    ok = tidy[tidy["status"] == "ok"].drop_duplicates("trial_id")
    out = ok.reindex(columns=cols).reset_index(drop=True)
    best = pd.to_numeric(out["best_epoch"], errors="coerce")
    epochs = pd.to_numeric(out["epochs"], errors="coerce")
    out["last_epoch_best"] = (best == epochs - 1) & (epochs > 1)
    return out


def trial_costs(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per finished multi-task trial with its time per step and wall time."""
    ok = tidy[(tidy["status"] == "ok") & tidy["baseline_id"].notna()]
    cols = ["trial_id", *GROUP, "seed", "step_s", "wall_s"]
    return ok.drop_duplicates("trial_id")[cols].reset_index(drop=True)
