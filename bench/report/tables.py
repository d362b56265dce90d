"""The results table of one dataset: per (sharing, weighting) row the test metrics (mean
± std over seeds), Δm with its interval, step and trial time, seeds and trials that ended on
their best validation epoch; one row per single-task recipe. Computed once, by
:mod:`bench.report.results`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench import analysis
from bench.timing import SPREAD_FLAG, relative_spread


def pm(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _primary_metric(tidy: pd.DataFrame, task: str) -> str:
    metrics = set(tidy.loc[tidy["task"] == task, "metric"].dropna())
    for preferred in ("auc", "accuracy", "mse"):
        if preferred in metrics:
            return preferred
    rest = sorted(metrics - {"loss"}) or sorted(metrics)
    return rest[0] if rest else "loss"


NOISY = " †"  # marks a step time whose spread is large against its median
LAST_EPOCH = "best = last epoch"


def timing_spread(trials: pd.DataFrame) -> float:
    """The largest relative spread (IQR / median) of a row's step time: within a trial (over
    its steady epochs) or across its seeds. NaN when neither is known."""
    spreads = [*trials["step_spread"].dropna().astype(float),
               relative_spread(trials["step_s"].astype(float).tolist())]
    spreads = [v for v in spreads if v is not None and math.isfinite(v)]
    return max(spreads) if spreads else math.nan


def trial_columns(trials: pd.DataFrame, row: dict, r: dict) -> None:
    """Step and trial time (steady state), seeds and trials that ended on their best
    validation epoch, for one row of a results table (``trials``: one tidy row each)."""
    spread = timing_spread(trials)
    row["step (ms)"] = pm(trials["step_s"] * 1000, 2) + (NOISY if spread > SPREAD_FLAG else "")
    row["trial (s)"] = pm(trials["trial_s"], 1)
    row["seeds"] = trials["seed"].nunique()
    if "last_epoch_best" in trials:  # one row per finished trial, flag computed already
        flags = trials["last_epoch_best"]
    else:
        flags = analysis.convergence(trials)["last_epoch_best"]
    last, n = int(flags.sum()), len(flags)
    row[LAST_EPOCH] = f"{last}/{n}"
    r.update(step_s_median=trials["step_s"].median(), step_spread=spread,
             trial_s_mean=trials["trial_s"].mean(), wall_s_mean=trials["wall_s"].mean(),
             seeds=row["seeds"], last_epoch_best=last, trials=n)


_NO_SEEDS = pd.Series(dtype=float)


def _per_seed(rows: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.Series]:
    """``rows``' first value per seed (a Series by seed) for each combination of ``keys``."""
    values = rows.groupby([*keys, "seed"], sort=False)["value"].first()
    levels = list(range(len(keys)))
    return {key: group.droplevel(levels)
            for key, group in values.groupby(level=levels, sort=False)}


def dataset_table(tidy: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display and raw tables of one dataset: one row per (sharing, weighting) and one for
    the single-task baselines."""
    test = tidy[(tidy["split"] == "test") & (tidy["status"] == "ok")]
    tasks = list(dict.fromkeys(test["task"].dropna()))
    primary = {t: _primary_metric(test, t) for t in tasks}
    rows, raw = [], []
    # Each row's per-seed values from one groupby, its Δm from one dict: filtering the
    # frame per row and task was most of a 10,000-trial report's time.
    prim = test[test["metric"] == test["task"].map(primary)]
    mtl_seeds = _per_seed(prim[prim["baseline_id"].notna()], ["sharing", "weighting", "task"])
    base_seeds = _per_seed(prim[prim["baseline_task"].notna()], ["weighting", "task"])
    first = cells.drop_duplicates(["sharing", "weighting"])
    cell_of = {k: dict(zip(first.columns, v, strict=True)) for k, v in zip(
        zip(first["sharing"], first["weighting"], strict=True),
        zip(*(first[c].tolist() for c in first.columns), strict=True), strict=True)}
    # One row per trial (first appearance, as each group's drop_duplicates gave), with its
    # convergence flag, grouped once: no frame filtering per table row.
    per_trial = test.drop_duplicates("trial_id")
    per_trial = per_trial.assign(last_epoch_best=analysis.convergence(per_trial)[
        "last_epoch_best"].to_numpy())
    mtl_trials = dict(list(per_trial[per_trial["baseline_id"].notna()].groupby(
        ["sharing", "weighting"], sort=True)))
    for (sharing, weighting), group in mtl_trials.items():
        row = {"sharing": sharing, "weighting": weighting}
        r = {"sharing": sharing, "weighting": weighting}
        for t in tasks:
            per_seed = mtl_seeds.get((sharing, weighting, t), _NO_SEEDS)
            row[f"{t} {primary[t]}"] = pm(per_seed)
            r[f"{t}_{primary[t]}_mean"] = per_seed.mean()
            r[f"{t}_{primary[t]}_std"] = per_seed.std(ddof=1)
        c = cell_of.get((sharing, weighting))
        for name, head in (("delta_m_task", "Δm task ↑ (%)"), ("delta_m_metric",
                                                               "Δm metric ↓ (%)")):
            vals = (c[name], c[f"{name}_low"], c[f"{name}_high"]) if c is not None else (
                math.nan, math.nan, math.nan)
            row[head] = ci(*vals)
            r[name], r[f"{name}_low"], r[f"{name}_high"] = vals
        trial_columns(group, row, r)
        rows.append(row)
        raw.append(r)
    # One baseline row per training recipe (a train_grid gives each value its baselines).
    recipes = list(per_trial[per_trial["baseline_task"].notna()].groupby("weighting",
                                                                         sort=True))
    for label, base in recipes:
        row = {"sharing": "stl (baselines)", "weighting": label if len(recipes) > 1 else "—"}
        r = {"sharing": "stl", "weighting": label}
        for t in tasks:
            per_seed = base_seeds.get((label, t), _NO_SEEDS)
            row[f"{t} {primary[t]}"] = pm(per_seed)
            r[f"{t}_{primary[t]}_mean"] = per_seed.mean()
            r[f"{t}_{primary[t]}_std"] = per_seed.std(ddof=1)
        row["Δm task ↑ (%)"] = row["Δm metric ↓ (%)"] = "0 (ref.)"
        r.update(delta_m_task=0.0, delta_m_metric=0.0)
        trial_columns(base, row, r)
        rows.append(row)
        raw.append(r)
    return pd.DataFrame(rows), pd.DataFrame(raw)


def row_label(sharing: str, weighting: str, baseline_task: Any) -> str:
    if pd.notna(baseline_task):
        return f"stl (baseline: {baseline_task})"
    return analysis.strategy_label(sharing, weighting)
