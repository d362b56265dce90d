"""The "Task relationships" section: gradient conflict, task affinity and expert
utilisation (tables computed by :func:`bench.analysis.relationships`)."""

from __future__ import annotations

import pandas as pd

from bench import analysis
from bench.probes import AUTO_PROBES, MIN_PROBED_STEPS
from bench.report import plots
from bench.report.document import Block, Document, Section, slug
from bench.report.results import RunResults
from bench.report.tables import ci


def render(doc: Document, results: RunResults) -> None:
    sec = doc.section("Task relationships")
    rel = results.relationships
    if rel is None or rel.empty:
        sec.blocks.append(Block("note", text=(
            "No probes (gradient conflict, task affinity) and no expert utilisation in the "
            "records of this run.")))
        return
    if not rel.conflict.empty:
        summary = rel.conflict
        shown = summary[summary["enough_probes"]]
        level = f"{analysis.CI_LEVEL:.0%}"
        sec.blocks.append(Block("heading", text="Gradient conflict"))
        sec.blocks.append(Block("para", text=(
            "Pairwise cosine of the task gradients on the shared parameters at probed steps: "
            f"mean cosine with its {level} t-interval (over the seeds' means; with one seed, "
            "over that trial's probed steps, which are correlated, so the interval is too "
            "narrow), and conflict fraction = share of probed steps with negative cosine, "
            "mean over seeds. Near orthogonal gradients the fraction is about 0.5 from noise "
            "alone: read it beside the cosine and whether its interval excludes 0.")))
        _few_probes_note(sec, summary, "Gradient-conflict", "conflict", "conflict_every")
        disp = pd.DataFrame({
            "dataset": shown["dataset"], "strategy": shown["strategy"], "pair": shown["pair"],
            f"mean cosine [{level} CI]": [
                ci(m, lo, hi, 3) for m, lo, hi in
                zip(shown["mean_cosine"], shown["cosine_low"], shown["cosine_high"],
                    strict=True)],
            "CI over": shown["interval"], "cosine vs 0": shown["cosine_sign"],
            "conflict fraction": shown["conflict_fraction"].round(3),
            "magnitude similarity": shown["mean_magnitude_similarity"].round(3),
            "n_seeds": shown["n_seeds"], "probed steps": shown["probed_steps"],
        })
        doc.table(sec, "conflict", disp, "Gradient conflict per task pair", summary,
                  show=not disp.empty)
        cos = rel.cosines
        for dataset, group in shown.groupby("dataset", sort=True):
            ds = str(dataset)
            by_strategy = dict(list(group.groupby("strategy", sort=True)))
            mats = {s: analysis.pair_matrix(g, "mean_cosine") for s, g in by_strategy.items()}
            texts = {s: analysis.pair_matrix(g.assign(text=[
                f"{c:+.2f}{'*' if sign in ('negative', 'positive') else ''}\n{f:.2f}"
                for c, sign, f in zip(g["mean_cosine"], g["cosine_sign"],
                                      g["conflict_fraction"], strict=True)]), "text")
                for s, g in by_strategy.items()}
            doc.figure(sec, f"conflict-{slug(ds)}",
                       plots.conflict_heatmaps(mats, f"{ds}: gradient cosine and conflict "
                                               "fraction", texts),
                       f"{ds}: colour and upper number: mean gradient cosine (red conflicting, "
                       f"blue aligned, pale near orthogonal; * its {level} interval excludes "
                       "0); lower number: fraction of probed steps with a negative cosine.")
            if not cos.empty:
                mine = cos[(cos["dataset"] == dataset) & cos["strategy"].isin(by_strategy)]
                doc.figure(sec, f"cosine-{slug(ds)}", plots.cosine_over_steps(
                    mine, f"{ds}: gradient cosine over training"),
                    f"{ds}: cosine of each task pair's gradients over training steps.")
    if not rel.affinity.empty:
        agg = rel.affinity
        shown = agg[agg["enough_probes"]]
        sec.blocks.append(Block("heading", text="Task affinity"))
        sec.blocks.append(Block("para", text=(
            "Lookahead inter-task affinity (Fifty et al. 2021): effect of a step on task i's "
            "loss on task j's loss (positive: the step helps task j), mean over probed steps, "
            "then over seeds.")))
        _few_probes_note(sec, agg, "Task-affinity", "affinity", "affinity_every")
        doc.table(sec, "affinity", shown.drop(columns="enough_probes"),
                  "Task affinity (row task i -> task j)", agg, show=not shown.empty)
        for dataset, group in shown.groupby("dataset", sort=True):
            ds = str(dataset)
            mats = {s: g.pivot_table(index="task_i", columns="task_j", values="affinity")
                    for s, g in group.groupby("strategy", sort=True)}
            doc.figure(sec, f"affinity-{slug(ds)}",
                       plots.affinity_heatmaps(mats, f"{ds}: task affinity"),
                       f"{ds}: lookahead affinity, stepping task i (rows) on task j "
                       "(columns), in the unit named by the colour bar; the colour scale "
                       "follows the off-diagonal cells (the diagonal saturates).")
    if not rel.experts.empty:
        agg = rel.experts
        sec.blocks.append(Block("heading", text="Expert utilisation"))
        sec.blocks.append(Block("para", text=(
            "Mean gate weight each task's gate gives each expert (gated architectures), mean "
            "over seeds.")))
        wide = agg.pivot_table(index=["dataset", "strategy", "task"], columns="expert",
                               values="weight").round(4)
        wide.columns = [f"expert {c}" for c in wide.columns]
        doc.table(sec, "expert-utilisation", wide.reset_index(), "Expert utilisation")
        for dataset, group in agg.groupby("dataset", sort=True):
            ds = str(dataset)
            mats = {s: g.pivot_table(index="task", columns="expert", values="weight")
                    for s, g in group.groupby("strategy", sort=True)}
            doc.figure(sec, f"experts-{slug(ds)}",
                       plots.expert_utilisation(mats, f"{ds}: expert utilisation"),
                       f"{ds}: mean gate weight per task (rows) and expert (columns).")


def _few_probes_note(sec: Section, results: pd.DataFrame, what: str, table: str,
                     setting: str) -> None:
    """Say which (dataset, strategy) probe results are left out for too few probed steps."""
    few = results[~results["enough_probes"]].groupby(["dataset", "strategy"], sort=True)[
        "probed_steps"].min().reset_index()
    if few.empty:
        return
    parts = []
    for dataset, g in few.groupby("dataset", sort=True):
        lo, hi = int(g["probed_steps"].min()), int(g["probed_steps"].max())
        count = str(lo) if lo == hi else f"{lo} to {hi}"
        parts.append(f"{dataset}: {len(g)} of its strategies ({', '.join(g['strategy'])}), "
                     f"{count} probed step{'' if hi == 1 else 's'} per trial")
    sec.blocks.append(Block("note", text=(
        f"{what} results from fewer than {MIN_PROBED_STEPS} probed steps are not shown as "
        "per-strategy findings (such a result rests mostly on the step-0 measurement, taken "
        "before any strategy acted and the same for every strategy of a seed): "
        + "; ".join(parts) + f". They stay in tables/{table}.csv with enough_probes = False. "
        f'probes.{setting} = "auto" probes about {AUTO_PROBES} steps of every trial.')))
