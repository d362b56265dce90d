"""The report's "Recommendation" section: which strategy and architecture to pick.

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench import analysis

if TYPE_CHECKING:
    from bench.report import Section, _Doc

__all__ = ["BEST_MARK", "DatasetPick", "dataset_picks", "mark_best", "section"]

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


def _usable(cells: pd.DataFrame) -> pd.DataFrame:
    """Multi-task cells with a finite Δm, fixed-weight scalarization (ls) left out as in
    the rankings."""
    if cells.empty:
        return cells
    keep = ~cells["weighting"].map(analysis.is_scalarization) & np.isfinite(
        cells["delta_m_task"].astype(float))
    return cells[keep]


def _step_times(tidy: pd.DataFrame) -> pd.DataFrame:
    """Median step time over seeds per (dataset, strategy)."""
    costs = analysis.trial_costs(tidy)
    if costs.empty:
        return pd.DataFrame(columns=["dataset", "strategy", "step_s"])
    costs["strategy"] = [analysis.strategy_label(s, w) for s, w in
                         zip(costs["sharing"], costs["weighting"], strict=True)]
    return costs.groupby(["dataset", "strategy"], sort=True)["step_s"].median().reset_index()


def _negative(intervals: pd.DataFrame, dataset: str, strategy: str) -> str:
    """Tasks with negative transfer under ``strategy`` on ``dataset``, or why none can be
    named ("no verdict: n seeds")."""
    mine = intervals[(intervals["dataset"] == dataset) & (intervals["strategy"] == strategy)]
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
    use = _usable(cells)
    steps = _step_times(tidy)
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
            "negative transfer (tasks)": [_negative(intervals, ds, s)
                                          for s in group["strategy"]],
        })
        picks.append(DatasetPick(
            ds, str(best["strategy"]), tied, str(cheapest), tie_note,
            {s: _negative(intervals, ds, s) for s in {best["strategy"], cheapest}}, table))
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


def _architectures(doc: _Doc, sec: Section, cells: pd.DataFrame, tidy: pd.DataFrame) -> None:
    """Architecture-level summary: per dataset and sharing, the best and the mean Δm over
    its weightings, its parameter count and step time; and the mean rank of each
    architecture's best Δm across datasets."""
    from bench.report import Block

    use = _usable(cells)
    if use.empty or use["sharing"].nunique() < 2:
        return
    ok = tidy[(tidy["status"] == "ok") & tidy["baseline_id"].notna()].drop_duplicates(
        "trial_id")
    params = ok.groupby(["dataset", "sharing"])["parameters"].median()
    steps = ok.groupby(["dataset", "sharing"])["step_s"].median()
    rows = []
    for (dataset, sharing), g in use.groupby(["dataset", "sharing"], sort=True):
        top = g.sort_values("delta_m_task", ascending=False).iloc[0]
        rows.append({
            "dataset": dataset, "sharing": sharing,
            "best Δm task ↑ (%)": top["delta_m_task"],
            "with": top["weighting"],
            "mean Δm task over weightings (%)": g["delta_m_task"].mean(),
            "weightings": len(g),
            "parameters": params.get((dataset, sharing), math.nan),
            "step (ms)": 1e3 * steps.get((dataset, sharing), math.nan),
        })
    table = pd.DataFrame(rows).sort_values(["dataset", "best Δm task ↑ (%)"],
                                           ascending=[True, False], kind="stable")
    sec.blocks.append(Block("heading", text="Architectures"))
    sec.blocks.append(Block("para", text=(
        "Each architecture (sharing) with its best weighting and the mean over every weighting "
        "it ran with; parameters as trained (model.match_params sets them equal when given). "
        "Rows sorted by the best Δm within each dataset.")))
    display = table.copy()
    for col in ("best Δm task ↑ (%)", "mean Δm task over weightings (%)", "step (ms)"):
        display[col] = display[col].map(lambda v: f"{v:.3g}" if np.isfinite(v) else "—")
    display["parameters"] = display["parameters"].map(
        lambda v: f"{int(v):,}" if np.isfinite(v) else "—")
    doc.table(sec, "architectures", display, "Architectures: best and mean Δm task", table)
    arch = use.groupby(["dataset", "sharing"], sort=True)["delta_m_task"].max().reset_index()
    rk = analysis.rankings(arch.rename(columns={"sharing": "strategy"}), "delta_m_task")
    if not rk.mean_rank.empty and len(rk.ranks) > 1:
        sec.blocks.append(Block("para", text=(
            "Mean rank of each architecture's best Δm across datasets (1 = best): "
            + ", ".join(f"{s} {r:.2f}" for s, r in rk.mean_rank.items())
            + (f"; Nemenyi CD = {rk.cd:.2f}" if rk.testable else f" ({rk.note})") + ".")))


def section(doc: _Doc, cells: pd.DataFrame, tidy: pd.DataFrame,
            intervals: pd.DataFrame) -> None:
    """Add the "Recommendation" section (called first, so it heads the report)."""
    from bench.report import Block

    sec = doc.section("Recommendation")
    picks = dataset_picks(cells, tidy, intervals)
    if not picks:
        sec.blocks.append(Block("note", text=(
            "No recommendation: no multi-task trial with its single-task baselines (Δm).")))
        return
    sec.blocks.append(Block("para", text=(
        "Best strategy (sharing/weighting) by Δm task per dataset; tied: its "
        f"{analysis.CI_LEVEL:.0%} Student-t interval over seeds overlaps the best's (no "
        "difference shown); cheapest: the lowest median step time among the best and its "
        "ties; negative transfer: tasks whose interval of relative change lies below zero "
        f"(at least {analysis.MIN_SEEDS_VERDICT} seeds).")))
    rows = []
    for p in picks:
        rows.append({
            "dataset": p.dataset, "best": p.best,
            "Δm task ↑ (%) [95% CI]": p.table.iloc[0]["Δm task ↑ (%) [95% CI]"],
            "tied with best": p.tie_note or (", ".join(p.tied) if p.tied else "none"),
            "cheapest of those": p.cheapest,
            "negative transfer under best": p.negative[p.best],
            "under cheapest": p.negative[p.cheapest],
        })
    doc.table(sec, "recommendation", pd.DataFrame(rows),
              "Recommendation per dataset")
    _across(doc, sec, cells, tidy, intervals, picks)
    for p in picks:
        doc.table(sec, f"recommendation-{_slug(p.dataset)}", p.table,
                  f"{p.dataset}: strategies sorted by Δm task (best first)")
    _architectures(doc, sec, cells, tidy)


def _slug(text: str) -> str:
    from bench.report import slug

    return slug(text)


def _across(doc: _Doc, sec: Section, cells: pd.DataFrame, tidy: pd.DataFrame,
            intervals: pd.DataFrame, picks: list[DatasetPick]) -> None:
    from bench.report import Block

    if len(picks) < 2:
        return
    rk = analysis.rankings(_usable(cells), "delta_m_task")
    if rk.mean_rank.empty:
        sec.blocks.append(Block("note", text=f"Across datasets: no ranking ({rk.note})."))
        return
    best = str(rk.mean_rank.index[0])
    if rk.testable:
        tied = [str(s) for s, r in rk.mean_rank.items()
                if s != best and r - rk.mean_rank.iloc[0] <= rk.cd]
        tie_text = (f"tied with it (mean rank within the Nemenyi CD = {rk.cd:.2f}): "
                    + (", ".join(tied) if tied else "none"))
    else:
        tied = []
        tie_text = f"tie test not possible: {rk.note}"
    steps = _step_times(tidy)
    if not steps.empty:
        steps["ratio"] = steps["step_s"] / steps.groupby("dataset")["step_s"].transform("min")
    ratio = steps.groupby("strategy")["ratio"].mean() if not steps.empty else pd.Series()
    timed = [(float(ratio[s]), s) for s in [best, *tied] if s in ratio and np.isfinite(ratio[s])]
    cheapest = min(timed)[1] if timed else best
    negative = "; ".join(f"{p.dataset}: {_negative(intervals, p.dataset, best)}"
                         for p in picks)
    sec.blocks.append(Block("heading", text="Across datasets"))
    sec.blocks.append(Block("bullets", items=[
        f"best mean rank by Δm task: {best} ({rk.mean_rank.iloc[0]:.2f} over "
        f"{len(rk.ranks)} datasets)",
        tie_text,
        f"cheapest of those: {cheapest} (step time {ratio.get(cheapest, math.nan):.2f} x the "
        "fastest strategy's on each dataset, mean over datasets)",
        f"negative transfer under {best}: {negative}",
        *([f"left out (no Δm on every dataset): {', '.join(rk.dropped)}"] if rk.dropped
          else []),
    ]))
