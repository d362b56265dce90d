"""The "Recommendation" section: per dataset the best strategy by Δm task, its ties, the
cheapest of those and their negative transfer; across datasets the best mean rank; and the
architectures (see :mod:`bench.report.recommend`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench import analysis
from bench.report import recommend
from bench.report.document import Block, Document, Section, slug
from bench.report.results import RunResults


def _architectures(doc: Document, sec: Section, cells: pd.DataFrame, tidy: pd.DataFrame) -> None:
    """Architecture-level summary: per dataset and sharing, the best and the mean Δm over
    its weightings, its parameter count and step time; and the mean rank of each
    architecture's best Δm across datasets."""
    use = recommend.usable(cells)
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


def render(doc: Document, results: RunResults) -> None:
    """The "Recommendation" section (first, so that it heads the report)."""
    cells, tidy, intervals = results.cells, results.tidy, results.intervals
    sec = doc.section("Recommendation")
    picks = results.picks
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
        doc.table(sec, f"recommendation-{slug(p.dataset)}", p.table,
                  f"{p.dataset}: strategies sorted by Δm task (best first)")
    _architectures(doc, sec, cells, tidy)


def _across(doc: Document, sec: Section, cells: pd.DataFrame, tidy: pd.DataFrame,
            intervals: pd.DataFrame, picks: list[recommend.DatasetPick]) -> None:
    if len(picks) < 2:
        return
    rk = analysis.rankings(recommend.usable(cells), "delta_m_task")
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
    steps = recommend.step_times(tidy)
    if not steps.empty:
        steps["ratio"] = steps["step_s"] / steps.groupby("dataset")["step_s"].transform("min")
    ratio = steps.groupby("strategy")["ratio"].mean() if not steps.empty else pd.Series()
    timed = [(float(ratio[s]), s) for s in [best, *tied] if s in ratio and np.isfinite(ratio[s])]
    cheapest = min(timed)[1] if timed else best
    negative = "; ".join(f"{p.dataset}: {recommend.negative(intervals, p.dataset, best)}"
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
