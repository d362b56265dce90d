"""The "Results per dataset" section: each dataset's results table with its notes, task
weights over training and (with ls trials) the scalarization front."""

from __future__ import annotations

import pandas as pd

from bench import analysis
from bench.report import plots
from bench.report.document import Block, Document, slug
from bench.report.results import RunResults
from bench.report.tables import LAST_EPOCH, NOISY, row_label
from bench.timing import SPREAD_FLAG


def _dataset_notes(tidy: pd.DataFrame, display: pd.DataFrame) -> list[Block]:
    """Warnings under a results table: trials that ended on their best validation epoch
    (probably not converged), and noisy step times."""
    blocks = []
    conv = analysis.convergence(tidy)
    last = conv[conv["last_epoch_best"]]
    if not last.empty:
        conv["label"] = [row_label(*v) for v in  # not .apply(axis=1): 10k trials
                         zip(conv["sharing"], conv["weighting"], conv["baseline_task"],
                             strict=True)]
        counts = conv.groupby("label", sort=True)["last_epoch_best"].agg(["sum", "size"])
        counts = counts[counts["sum"] > 0]
        epochs = sorted({int(e) for e in last["epochs"]})
        blocks.append(Block("note", text=(
            f"Probably not converged: {len(last)} of {len(conv)} trials selected their last "
            f"epoch (of {', '.join(map(str, epochs))}) as best on validation, so the "
            "validation loss was still falling when training stopped; their metrics and Δm "
            "describe unfinished models. Train longer (train.epochs). "
            f"Column '{LAST_EPOCH}'; trials: "
            + ", ".join(f"{k} {int(v['sum'])}/{int(v['size'])}" for k, v in counts.iterrows())
            + ".")))
    if display["step (ms)"].astype(str).str.endswith(NOISY).any():
        blocks.append(Block("note", text=(
            f"{NOISY.strip()} step time with a large spread: IQR / median above "
            f"{SPREAD_FLAG:.0%} over the steady epochs of a trial or across seeds (machine "
            "load, too few steps per epoch); compare such timings with mtlbench speed, "
            "which repeats and interleaves its measurements.")))
    return blocks


def render(doc: Document, results: RunResults) -> None:
    sec = doc.section("Results per dataset")
    for d in results.datasets:
        ds, display, raw = d.name, d.display, d.raw
        sec.blocks.append(Block("heading", text=ds))
        if display.empty:
            sec.blocks.append(Block("note", text="(no finished trial)"))
        else:
            doc.table(sec, f"results-{slug(ds)}", display,
                      f"{ds}: test metrics (mean ± std over seeds) and Δm with "
                      f"{analysis.CI_LEVEL:.0%} Student-t intervals over seeds", raw)
            sec.blocks += _dataset_notes(d.tidy, display)
        if not d.weights.empty:
            doc.figure(sec, f"weights-{slug(ds)}", plots.weights_over_training(
                d.weights, f"{ds}: task weights over training"),
                f"{ds}: task weights per epoch (mean over seeds); strategies whose weights "
                "never change are left out.")
        if d.front is not None:
            _front(doc, sec, ds, d.front)


def _front(doc: Document, sec, ds: str, front: pd.DataFrame) -> None:
    tasks = [c[4:] for c in front.columns if c.startswith("rel_")]
    doc.figure(sec, f"pareto-{slug(ds)}", plots.pareto_front(
        front, tasks, f"{ds}: linear-scalarization front"),
        f"{ds}: per-task relative change (%) against the best single-task recipe, of "
        "ls trials with fixed weights (grey; front line) and of the other strategies "
        "(cross: dominated by an ls point).")
    disp = front.copy()
    for t in tasks:
        disp[f"rel_{t}"] = disp[f"rel_{t}"].map(lambda v: f"{v:.2f}")
    disp["on ls front"] = [("yes" if f else "no") if ls else "" for ls, f in zip(
        disp["is_ls"], disp["on_front"], strict=True)]
    disp["dominated"] = [
        "" if ls else ("n/a (no ls trial)" if d is None else ("yes" if d else "no"))
        for ls, d in zip(disp["is_ls"], disp["dominated"], strict=True)]
    disp = disp.rename(columns={f"rel_{t}": f"{t} rel. change (%)" for t in tasks})
    disp = disp.drop(columns=["is_ls", "on_front"])
    doc.table(sec, f"scalarization-{slug(ds)}", disp,
              f"{ds}: scalarization front (Xin et al. 2022; Kurin et al. 2022); "
              "relative changes against the best single-task recipe",
              front)
