"""The "Cost" section: quality against cost, set-up and warm-up, throughput, and the
speed records (``mtlbench speed``) with their scaling."""

from __future__ import annotations

import pandas as pd

from bench.report import plots
from bench.report.document import Block, Document
from bench.report.results import RunResults
from bench.report.tables import ci


def render(doc: Document, results: RunResults) -> None:
    trials, speed, cq = results.trials, results.speed, results.cost_quality
    sec = doc.section("Cost")
    if not cq.empty:
        sec.blocks.append(Block("para", text=(
            "Quality (Δm task, mean over seeds) against cost (median time per training step "
            "over seeds" + (", and peak memory from the speed records" if results.memory_known
                            and cq["peak_memory_bytes"].notna().any() else "")
            + "). Non-dominated: no other strategy of the same dataset is at least as good on "
            "every axis and better on one.")))
        doc.figure(sec, "cost-quality", plots.cost_quality(cq, results.colors),
                   "Δm task against cost; filled markers are non-dominated.")
        disp = pd.DataFrame({
            "dataset": cq["dataset"], "strategy": cq["strategy"],
            "Δm task ↑ (%)": [ci(m, lo, hi) for m, lo, hi in zip(
                cq["delta_m_task"], cq["delta_m_task_low"], cq["delta_m_task_high"],
                strict=True)],
            "step (ms)": (cq["step_s"] * 1e3).round(3),
            "peak memory (MiB)": (cq["peak_memory_bytes"] / 2**20).round(1),
            "non-dominated": cq["non_dominated"].map({True: "yes", False: "no"}),
        })
        if cq["peak_memory_bytes"].isna().all():
            disp = disp.drop(columns=["peak memory (MiB)"])
        doc.table(sec, "cost-quality", disp, "Cost and quality", cq)
    if not trials.empty and trials["setup_s"].notna().any():
        sec.blocks.append(Block("para", text=(
            "Left out of every step and trial time: each trial's set-up (data, model, "
            "optimizer, and in a worker's first trial its one-off imports; median {:.2f} s, "
            "max {:.2f} s) and its first, warm-up epoch (median {:.2f} s, max "
            "{:.2f} s). Step times include the probes' work when probes are on.".format(
                trials["setup_s"].median(), trials["setup_s"].max(),
                trials["warmup_s"].median(), trials["warmup_s"].max()))))
    mtl = trials[trials["baseline_task"].isna() & (trials["status"] == "ok")] if not (
        trials.empty) else trials
    doc.figure(sec, "throughput", plots.throughput(mtl),
               "Training throughput of each strategy in its trials (median over seeds).")
    if speed.empty:
        sec.blocks.append(Block("note", text="No speed records (speed/*.json) in this run."))
        return
    sec.blocks.append(Block("heading", text="Speed benchmark"))
    cols = [c for c in ("strategy", "engine", "sharing", "num_tasks", "batch_size", "width",
                        "device") if c in speed]
    disp = speed[cols].copy()
    disp["step (ms), median"] = (speed["step_median_s"] * 1e3).round(3)
    disp["IQR (ms)"] = (speed["step_iqr_s"] * 1e3).round(3)
    disp["samples/s"] = speed["samples_per_s"].round(1)
    disp["peak memory (MiB)"] = (speed["peak_memory_bytes"] / 2**20).round(1)
    disp["× ew"] = speed["ratio_to_ew"].round(2)
    doc.table(sec, "speed", disp, "Speed records (median and IQR of step time)", speed)
    doc.figure(sec, "speed-throughput", plots.speed_throughput(speed),
               "Samples per second of each strategy [engine] per configuration.")
    doc.figure(sec, "scaling", plots.scaling_curves(speed),
               "Step time against number of tasks, batch size and width (the other two held "
               "at their most common value).")
