"""The "Rankings across datasets" section: mean ranks by Δm task, the Friedman test and
the Nemenyi critical difference."""

from __future__ import annotations

import pandas as pd

from bench import analysis
from bench.report import plots
from bench.report.document import Block, Document
from bench.report.results import RunResults


def render(doc: Document, results: RunResults) -> None:
    cells = results.cells
    sec = doc.section("Rankings across datasets")
    use = cells[~cells["weighting"].map(analysis.is_scalarization)]
    doc.figure(sec, "delta-m-heatmap", plots.delta_m_heatmap(use),
               "Δm task (%) per strategy and dataset, mean over seeds.")
    if use.empty or use["dataset"].nunique() < 1:
        sec.blocks.append(Block("note", text="(no multi-task results)"))
        return
    rk = results.rankings
    sec.blocks.append(Block("para", text=(
        "Strategies ranked within each dataset by Δm task (1 = best, ties averaged); the "
        "Friedman test and the Nemenyi critical difference (α = 0.05, studentized range) "
        "need at least 3 strategies with a result on every one of at least 2 datasets. "
        "ls (fixed-weight scalarization) trials are left out.")))
    if rk.mean_rank.empty:
        sec.blocks.append(Block("note", text=rk.note))
        return
    table = pd.DataFrame({"strategy": rk.mean_rank.index,
                          "mean rank": rk.mean_rank.round(3).to_numpy()})
    for dataset in rk.ranks.index:
        table[f"rank on {dataset}"] = rk.ranks.loc[dataset, rk.mean_rank.index].to_numpy()
    doc.table(sec, "rankings", table, "Mean rank by Δm task (1 = best)")
    if rk.dropped:
        sec.blocks.append(Block("note", text="Left out (no Δm on every dataset): "
                                + ", ".join(rk.dropped)))
    if rk.testable:
        verdict = "differ" if rk.friedman_p < rk.alpha else "do not differ significantly"
        sec.blocks.append(Block("para", text=(
            f"Friedman χ² = {rk.friedman_statistic:.3f}, p = {rk.friedman_p:.4g} "
            f"({len(rk.mean_rank)} strategies, {len(rk.ranks)} datasets): the strategies "
            f"{verdict} at α = {rk.alpha}. Nemenyi CD = {rk.cd:.3f}; strategies joined by a "
            "bar in the diagram are not significantly different. With few datasets the "
            "test has little power.")))
        doc.figure(sec, "cd-diagram", plots.cd_diagram(rk.mean_rank, rk.cd, rk.cliques,
                                                       len(rk.ranks)),
                   "Critical-difference diagram (Demšar 2006): mean ranks, Nemenyi CD.")
    else:
        sec.blocks.append(Block("note", text=rk.note))
