"""The "Overview" section: what the run holds and how to read the report."""

from __future__ import annotations

from collections import Counter

from bench import analysis
from bench.report.document import Block, Document
from bench.report.results import RunResults
from bench.report.tables import LAST_EPOCH, NOISY
from bench.tasks import HIGHER_IS_BETTER
from bench.timing import SPREAD_FLAG


def render(doc: Document, results: RunResults) -> None:
    run_dir, tidy, labels = results.run_dir, results.tidy, results.labels
    sec = doc.section("Overview")
    status = Counter(labels["status"])
    mtl = labels[labels["baseline_task"].isna()]
    sec.blocks.append(Block("para", text=(
        f"{len(labels)} trials in {run_dir} ("
        + ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
        + f"): {len(mtl)} multi-task, {len(labels) - len(mtl)} single-task baselines; "
        f"{labels['dataset'].nunique()} datasets, {mtl['strategy'].nunique()} strategies "
        f"(sharing/weighting), seeds {sorted(set(labels['seed']))}.")))
    sec.blocks.append(Block("bullets", items=[
        "Test-split metrics; each trial's checkpoint was selected on the validation split.",
        "Δm task ↑: task-level mean of relative improvement over the single-task baseline "
        "with the same seed, in percent (higher is better).",
        "Δm metric ↓: metric-level mean of relative drop over all metrics, in percent "
        "(Nash-MTL / FAMO convention; lower is better).",
        f"Intervals: {analysis.CI_LEVEL:.0%} Student-t interval of the mean over seeds "
        "(mean ± t(n − 1) · std / √n; wide with few seeds, as it should be); one seed gives "
        "no interval. Metric values are mean ± std over seeds.",
        "Negative transfer: a task whose whole interval of relative change lies below zero, "
        f"judged only with at least {analysis.MIN_SEEDS_VERDICT} seeds (fewer: 'too few "
        "seeds', no verdict).",
        "Metric directions: " + ", ".join(
            f"{m} {'↑' if hi else '↓'}" for m, hi in HIGHER_IS_BETTER.items()) + ".",
        "step: training time per step without the first (warm-up) epoch; trial: training "
        "and evaluation time per trial without set-up (data, model, and a worker's one-off "
        "start-up), the warm-up epoch counted at the steady step time (both are in each "
        f"record's timing). {NOISY.strip()}: step time with IQR / median above "
        f"{SPREAD_FLAG:.0%} (within a trial or across seeds); no timing difference is "
        "tested for significance here.",
        f"{LAST_EPOCH}: trials whose checkpoint is their last epoch (probably not "
        "converged).",
    ]))
    conv = analysis.convergence(tidy)
    last = int(conv["last_epoch_best"].sum())
    if last:
        sec.blocks.append(Block("note", text=(
            f"Probably not converged: {last} of {len(conv)} finished trials selected their "
            "last epoch as best on validation (the validation loss was still falling); see "
            "the notes under each results table, and train longer.")))
