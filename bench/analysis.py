"""Analysis: each task's relative change against its single-task baseline, and delta-m.

Conventions (both reported, named explicitly, in percent):

- ``delta_m_task``: task-level mean of relative *improvement*. For each task,
  average over its metrics of ``s_k (M_k - B_k) / |B_k|`` (``s_k = +1`` when
  higher is better, ``-1`` otherwise), then average over tasks. Positive is
  better. Each task's term is its *relative change*, the negative-transfer
  signal (Maninis et al. 2019; Vandenhende et al. 2021).
- ``delta_m_metric``: metric-level mean of relative *drop*, as Nash-MTL (Navon
  et al. 2022) and FAMO (Liu et al. 2023) report it:
  ``1/K sum_k (-1)^{d_k} (M_k - B_k) / B_k`` over all K metrics of all tasks,
  ``d_k = 1`` when higher is better. Lower is better.

``M`` is the multi-task trial's test metric and ``B`` that of the single-task
baseline trained with the same seed, so seeds pair up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.tasks import HIGHER_IS_BETTER

__all__ = ["per_task_changes", "trial_summary"]


def per_task_changes(tidy: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per multi-task trial x task x metric with its baseline value and relative
    improvement (``rel_improvement``, a fraction; positive is better)."""
    ok = tidy[(tidy["status"] == "ok") & (tidy["split"] == split)]
    ok = ok[ok["metric"].isin(HIGHER_IS_BETTER.keys())]
    mtl = ok[ok["baseline_id"].notna()]
    base = ok[ok["baseline_task"].notna()][["trial_id", "task", "metric", "value"]]
    merged = mtl.merge(
        base.rename(columns={"trial_id": "baseline_id", "value": "baseline_value"}),
        on=["baseline_id", "task", "metric"],
        how="inner",
    )
    sign = merged["metric"].map(lambda m: 1.0 if HIGHER_IS_BETTER[m] else -1.0)
    denom = merged["baseline_value"].abs().replace(0.0, np.nan)
    merged["rel_improvement"] = sign * (merged["value"] - merged["baseline_value"]) / denom
    return merged


def trial_summary(tidy: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per multi-task trial: ``delta_m_task`` and ``delta_m_metric`` (percent), and
    ``rel_<task>`` (percent), each task's mean relative improvement over its metrics.

    Trials missing a baseline for some task get NaN delta-m (never a partial mean)."""
    changes = per_task_changes(tidy, split)
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
    incomplete = summary.index.get_level_values("trial_id").map(
        lambda t: have.get(t, 0) < expected.get(t, 0)
    )
    summary.loc[np.asarray(incomplete), ["delta_m_task", "delta_m_metric"]] = np.nan
    return summary.reset_index()
