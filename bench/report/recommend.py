"""What the report recommends: which strategy and architecture to pick (computed once by
:mod:`bench.report.results`; shown by :mod:`bench.report.sections.recommendation`).

Per dataset: the (sharing, weighting) combination with the highest mean Δm task, the ones
statistically tied with it, the cheapest of those by median step time, and the tasks that
show negative transfer under each. Across datasets: the best mean rank and the strategies
within the Nemenyi critical difference of it (:func:`bench.analysis.rankings`).

Ties use what the report already computes, and nothing else:

- within a dataset, two strategies are tied when their Student-t intervals of Δm over seeds
  overlap (a conservative reading: overlapping 95% intervals do not show a difference).
  With fewer than two seeds there is no interval, and the section says the tie test is not
  possible instead of inventing one;
- across datasets, a strategy is tied with the best when its mean rank is within the
  Nemenyi critical difference; with too few strategies or datasets the section repeats why
  the test is not possible.

Cost across datasets is each strategy's step time divided by the fastest strategy's on the
same dataset, averaged over datasets (absolute step times differ between datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench import analysis

__all__ = ["BEST_MARK", "DatasetPick", "dataset_picks", "mark_best", "step_times", "usable"]

BEST_MARK = "★ best"


@dataclass
class DatasetPick:
    """The recommendation for one dataset (``table``: every strategy, sorted by Δm)."""

    dataset: str
    best: str
    tied: list[str]
    cheapest: str
    tie_note: str  # why no tie test was possible; "" when it was
    negative: dict[str, str] = field(default_factory=dict)  # strategy -> tasks or a note
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def usable(cells: pd.DataFrame) -> pd.DataFrame:
    """Multi-task cells with a finite Δm, fixed-weight scalarization (ls) left out as in
    the rankings."""
    if cells.empty:
        return cells
    keep = ~cells["weighting"].map(analysis.is_scalarization) & np.isfinite(
        cells["delta_m_task"].astype(float))
    return cells[keep]


def step_times(tidy: pd.DataFrame) -> pd.DataFrame:
    """Median step time over seeds per (dataset, strategy)."""
    costs = analysis.trial_costs(tidy)
    if costs.empty:
        return pd.DataFrame(columns=["dataset", "strategy", "step_s"])
    costs["strategy"] = [analysis.strategy_label(s, w) for s, w in
                         zip(costs["sharing"], costs["weighting"], strict=True)]
    return costs.groupby(["dataset", "strategy"], sort=True)["step_s"].median().reset_index()


def negative(intervals: pd.DataFrame, dataset: str, strategy: str) -> str:
    """Tasks with negative transfer under ``strategy`` on ``dataset``, or why none can be
    named ("no verdict: n seeds")."""
    mine = intervals[(intervals["dataset"] == dataset) & (intervals["strategy"] == strategy)]
    return _negative(mine)


def _negative(mine: pd.DataFrame) -> str:
    """:func:`negative` of one (dataset, strategy)'s rows of the intervals."""
    if mine.empty:
        return "—"
    neg = mine[mine["negative_transfer"]]
    if not neg.empty:
        return ", ".join(map(str, neg["task"]))
    few = mine[mine["n_seeds"] < analysis.MIN_SEEDS_VERDICT]
    if len(few) == len(mine):
        return (f"no verdict ({int(mine['n_seeds'].min())} seeds; needs "
                f"{analysis.MIN_SEEDS_VERDICT})")
    return "none"


def _interval(row: pd.Series) -> str:
    m, lo, hi = row["delta_m_task"], row["delta_m_task_low"], row["delta_m_task_high"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:.2f}"
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def dataset_picks(cells: pd.DataFrame, tidy: pd.DataFrame,
                  intervals: pd.DataFrame) -> list[DatasetPick]:
    """One :class:`DatasetPick` per dataset with at least one finite Δm task."""
    use = usable(cells)
    steps = step_times(tidy)
    # Each (dataset, strategy)'s intervals from one groupby, not a filter per table row.
    by_pair = dict(list(intervals.groupby(["dataset", "strategy"], sort=False))) if (
        not intervals.empty) else {}
    none = intervals.iloc[:0]

    def negative_of(ds: str, s: str) -> str:
        return _negative(by_pair.get((ds, s), none))

    picks = []
    for dataset, group in use.groupby("dataset", sort=True):
        ds = str(dataset)
        group = group.sort_values(["delta_m_task", "strategy"], ascending=[False, True],
                                  kind="stable")
        best = group.iloc[0]
        has_interval = bool(np.isfinite(best["delta_m_task_low"]))
        if has_interval:
            tie_note = ""
            # Overlapping intervals: no difference shown at this level.
            tied_mask = np.isfinite(group["delta_m_task_high"]) & (
                group["delta_m_task_high"] >= best["delta_m_task_low"])
        else:
            tie_note = (f"tie test not possible: {int(best['n_seeds'])} seed(s), no interval "
                        "of Δm (run at least 2 seeds)")
            tied_mask = group["strategy"] == best["strategy"]
        tied_mask.iloc[0] = True
        tied = [s for s in group.loc[tied_mask, "strategy"] if s != best["strategy"]]
        step = steps[steps["dataset"] == dataset].set_index("strategy")["step_s"]
        candidates = [best["strategy"], *tied]
        timed = [(float(step[s]), s) for s in candidates if s in step and np.isfinite(step[s])]
        cheapest = min(timed)[1] if timed else best["strategy"]
        table = pd.DataFrame({
            "rank": [BEST_MARK if i == 0 else str(i + 1) for i in range(len(group))],
            "strategy": group["strategy"].to_numpy(),
            "Δm task ↑ (%) [95% CI]": [_interval(r) for _, r in group.iterrows()],
            "seeds": group["n_seeds"].to_numpy(),
            "tied with best": [
                "—" if s == best["strategy"] else ("n/a" if tie_note else
                                                   ("yes" if t else "no"))
                for s, t in zip(group["strategy"], tied_mask, strict=True)],
            "step (ms)": [f"{1e3 * step[s]:.3g}" if s in step and np.isfinite(step[s])
                          else "—" for s in group["strategy"]],
            "negative transfer (tasks)": [negative_of(ds, s) for s in group["strategy"]],
        })
        picks.append(DatasetPick(
            ds, str(best["strategy"]), tied, str(cheapest), tie_note,
            {s: negative_of(ds, s) for s in {best["strategy"], cheapest}}, table))
    return picks


def mark_best(display: pd.DataFrame, raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A results table (display and raw rows in the same order) sorted by Δm task, best
    first, baselines last, with a ``Δm rank`` column that marks the best row."""
    if display.empty or "delta_m_task" not in raw:
        return display, raw
    is_base = (raw["sharing"] == "stl").to_numpy()
    value = raw["delta_m_task"].astype(float).to_numpy()
    # Baselines last; rows without Δm after those with one.
    key = np.where(is_base, 2, np.where(np.isfinite(value), 0, 1))
    order = np.lexsort((-np.nan_to_num(value, nan=-np.inf), key))
    display = display.iloc[order].reset_index(drop=True)
    raw = raw.iloc[order].reset_index(drop=True)
    ranks, n = [], 0
    for base, v in zip(raw["sharing"] == "stl", raw["delta_m_task"].astype(float),
                       strict=True):
        if base or not math.isfinite(v):
            ranks.append("—")
            continue
        n += 1
        ranks.append(BEST_MARK if n == 1 else str(n))
    display.insert(0, "Δm rank", ranks)
    return display, raw
