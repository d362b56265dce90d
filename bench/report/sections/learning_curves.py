"""The "Learning curves" section: per dataset, validation loss against epoch per task, a
line per strategy (mean over seeds, min..max band), single-task baselines dashed, each
trial's selected checkpoint marked and trials whose best epoch is their last flagged."""

from __future__ import annotations

from bench.report import plots
from bench.report.document import Block, Document, slug
from bench.report.results import RunResults
from bench.report.tables import LAST_EPOCH


def render(doc: Document, results: RunResults) -> None:
    curves = results.curves
    if curves.empty:
        return
    sec = doc.section("Learning curves")
    sec.blocks.append(Block("para", text=(
        "Validation loss per epoch and task: mean over seeds, band from the lowest to the "
        "highest seed; single-task baselines dashed. Dots mark each trial's selected "
        f"checkpoint (lowest mean validation loss); red crosses mark {LAST_EPOCH} (probably "
        "not converged).")))
    for dataset, group in curves.groupby("dataset", sort=True):
        ds = str(dataset)
        sec.blocks.append(Block("heading", text=ds))
        doc.figure(sec, f"curves-{slug(ds)}", plots.learning_curves(
            group, f"{ds}: learning curves", results.colors),
            f"{ds}: validation loss per epoch (mean over seeds, min..max band); dots: "
            f"selected checkpoints; red crosses: {LAST_EPOCH}.")
        trials = group.drop_duplicates("trial_id")
        flagged = trials[trials["last_epoch_best"]]
        if not flagged.empty:
            names = ", ".join(f"{s} ({n})" for s, n in
                              flagged.groupby("strategy").size().sort_index().items())
            sec.blocks.append(Block("note", text=(
                f"{LAST_EPOCH}: {len(flagged)} of {len(trials)} trials (probably not "
                f"converged): {names}.")))
