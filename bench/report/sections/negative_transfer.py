"""The "Negative transfer" section: tasks whose interval of relative change lies below zero."""

from __future__ import annotations

from bench import analysis
from bench.report import plots
from bench.report.document import Block, Document, slug
from bench.report.results import RunResults
from bench.report.tables import ci


def render(doc: Document, results: RunResults) -> None:
    intervals = results.intervals
    sec = doc.section("Negative transfer")
    if intervals.empty:
        sec.blocks.append(Block("note", text="(no multi-task trial with its baselines)"))
        return
    flagged = intervals[intervals["negative_transfer"]]
    judged = intervals[intervals["n_seeds"] >= analysis.MIN_SEEDS_VERDICT]
    sec.blocks.append(Block("para", text=(
        f"{len(flagged)} of {len(judged)} judged (strategy, task) pairs show negative "
        f"transfer (whole {analysis.CI_LEVEL:.0%} Student-t interval of the relative change "
        f"over seeds below zero). A verdict needs at least {analysis.MIN_SEEDS_VERDICT} "
        "seeds.")))
    few = intervals[intervals["n_seeds"] < analysis.MIN_SEEDS_VERDICT]
    if not few.empty:
        sec.blocks.append(Block("note", text=(
            f"{len(few)} of {len(intervals)} (strategy, task) pairs have fewer than "
            f"{analysis.MIN_SEEDS_VERDICT} seeds (n = "
            + ", ".join(str(n) for n in sorted(set(few["n_seeds"])))
            + "): no negative-transfer verdict for them; run more seeds.")))
    disp = intervals.assign(**{
        "relative change (%)": [ci(m, lo, hi) for m, lo, hi in zip(
            intervals["mean"], intervals["low"], intervals["high"], strict=True)],
        "negative transfer": intervals["verdict"],
    })[["dataset", "strategy", "task", "relative change (%)", "n_seeds", "negative transfer"]]
    show = disp[intervals["negative_transfer"].to_numpy()]
    if not show.empty:
        doc.table(sec, "negative-transfer", show, "Tasks with negative transfer",
                  intervals[intervals["negative_transfer"]])
    doc.table(sec, "task-changes", disp,
              "Relative change of every task against its single-task baseline", intervals,
              show=False)
    sec.blocks.append(Block("note", text=(
        "The relative change of every (strategy, task) pair is in tables/task-changes.csv; "
        "the plots below show them with their intervals.")))
    for dataset, group in intervals.groupby("dataset", sort=True):
        ds = str(dataset)
        doc.figure(sec, f"task-changes-{slug(ds)}", plots.task_changes(group, ds),
                   f"{ds}: relative change per task with {analysis.CI_LEVEL:.0%} Student-t "
                   "intervals; red circles mark negative transfer.")
