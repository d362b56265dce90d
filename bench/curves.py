"""Learning curves for the report: per task, validation loss against epoch from each
record's ``history``; one line per strategy (mean over seeds, band = min..max over
seeds), single-task baselines dashed, each trial's selected checkpoint marked, and
trials whose best epoch is their last one flagged (probably not converged)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bench.records import TrialRecord
    from bench.report import _Doc

__all__ = ["BASELINE", "curve_frame", "learning_curves", "section"]

BASELINE = "single-task"  # the label of the baselines' lines
COLUMNS = ["trial_id", "dataset", "strategy", "seed", "task", "epoch", "val_loss",
           "best_epoch", "last_epoch_best"]


def curve_frame(records: list[TrialRecord], labels: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial x task x epoch: its validation loss, the trial's selected
    epoch and whether that is its last one. Baselines carry the strategy ``BASELINE``."""
    rows = []
    by_id = labels.to_dict("index")
    for rec in records:
        lab = by_id.get(rec.id)
        history = rec.history
        if lab is None or not rec.ok or not history:
            continue
        strategy = BASELINE if not pd.isna(lab["baseline_task"]) else lab["strategy"]
        best = rec.best_epoch
        last = best is not None and len(history) > 1 and best == len(history) - 1
        for h in history:
            for task, metrics in h.val.items():
                loss = (metrics or {}).get("loss")
                if loss is not None:
                    rows.append([rec.id, lab["dataset"], strategy, lab["seed"], task,
                                 h.epoch, float(loss), best, last])
    return pd.DataFrame(rows, columns=COLUMNS)


def learning_curves(curves: pd.DataFrame, title: str) -> Figure | None:
    """One panel per task: validation loss per epoch, a line per strategy (mean over
    seeds) with its min..max band; dots: selected checkpoints; red crosses: selected at
    the last epoch."""
    from matplotlib.lines import Line2D

    from bench import plots

    if curves.empty:
        return None
    tasks = list(dict.fromkeys(curves["task"]))
    strategies = sorted(s for s in dict.fromkeys(curves["strategy"]) if s != BASELINE)[:12]
    if (curves["strategy"] == BASELINE).any():
        strategies.append(BASELINE)
    colors = dict(zip(strategies, plots._palette(len(strategies)), strict=True))
    with plots.theme():
        lw = plots._legend_w([*strategies, "best = last epoch"])
        fig, axes = plots._grid(len(tasks), 3, 2.8, 2.0, legend=lw, top=0.7, hspace=0.8)
        for ax, task in zip(axes, tasks, strict=True):
            sub = curves[curves["task"] == task]
            for strategy in strategies:
                s = sub[sub["strategy"] == strategy]
                if s.empty:
                    continue
                stats = s.groupby("epoch")["val_loss"].agg(["mean", "min", "max"])
                style = "--" if strategy == BASELINE else "-"
                ax.plot(stats.index, stats["mean"], style, color=colors[strategy], lw=1.1)
                ax.fill_between(stats.index, stats["min"], stats["max"],
                                color=colors[strategy], alpha=0.12, lw=0)
                chosen = s[s["epoch"] == s["best_epoch"]]
                ok, last = chosen[~chosen["last_epoch_best"]], chosen[chosen["last_epoch_best"]]
                ax.scatter(ok["epoch"], ok["val_loss"], s=10, color=colors[strategy], zorder=3)
                ax.scatter(last["epoch"], last["val_loss"], s=28, marker="x", color="red",
                           lw=1.2, zorder=4)
            ax.set_title(plots._short(task))
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation loss")
            if np.nanmin(sub["val_loss"]) > 0 and np.nanmax(sub["val_loss"]) > \
                    20 * np.nanmin(sub["val_loss"]):
                ax.set_yscale("log")  # early epochs would flatten the rest
        handles = [Line2D([], [], color=colors[s], ls="--" if s == BASELINE else "-")
                   for s in strategies]
        handles += [Line2D([], [], ls="", marker="o", color="grey", ms=3),
                    Line2D([], [], ls="", marker="x", color="red", ms=5)]
        plots._legend(fig, handles, [plots._t(s) for s in strategies]
                      + ["selected checkpoint", "best = last epoch"], lw)
        fig.suptitle(plots._t(title), fontsize=9)
    return fig


def section(doc: _Doc, records: list[TrialRecord], labels: pd.DataFrame) -> None:
    """The report's "Learning curves" section: a figure per dataset, and a note naming the
    strategies with trials whose best epoch is the last."""
    from bench.report import LAST_EPOCH, Block, slug

    curves = curve_frame(records, labels)
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
        doc.figure(sec, f"curves-{slug(ds)}", learning_curves(group, f"{ds}: learning curves"),
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
