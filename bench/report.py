"""Report: ``report.md`` of a run directory, built from the stored records alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench import store
from bench.analysis import trial_summary
from bench.errors import ConfigError
from bench.tasks import HIGHER_IS_BETTER

__all__ = ["write_report"]


def _pm(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _primary_metric(tidy: pd.DataFrame, task: str) -> str:
    metrics = set(tidy.loc[tidy["task"] == task, "metric"])
    for preferred in ("auc", "accuracy", "mse"):
        if preferred in metrics:
            return preferred
    return sorted(metrics - {"loss"})[0]


def _dataset_table(tidy: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    test = tidy[(tidy["split"] == "test") & (tidy["status"] == "ok")]
    tasks = list(dict.fromkeys(test["task"]))
    primary = {t: _primary_metric(test, t) for t in tasks}
    rows = []
    mtl = test[test["baseline_id"].notna()]
    for (sharing, weighting), group in mtl.groupby(["sharing", "weighting"], sort=True):
        row = {"sharing": sharing, "weighting": weighting}
        for t in tasks:
            sel = group[(group["task"] == t) & (group["metric"] == primary[t])]
            row[f"{t} {primary[t]}"] = _pm(sel.groupby("seed")["value"].first())
        sm = summary[(summary["sharing"] == sharing) & (summary["weighting"] == weighting)]
        row["Δm task ↑ (%)"] = _pm(sm["delta_m_task"], 2)
        row["Δm metric ↓ (%)"] = _pm(sm["delta_m_metric"], 2)
        trials = group.drop_duplicates("trial_id")
        row["step (ms)"] = _pm(trials["step_s"] * 1000, 2)
        row["trial (s)"] = _pm(trials["wall_s"], 1)
        row["seeds"] = trials["seed"].nunique()
        rows.append(row)
    base = test[test["baseline_task"].notna()]
    if not base.empty:
        row = {"sharing": "stl (baselines)", "weighting": "—"}
        for t in tasks:
            sel = base[(base["task"] == t) & (base["metric"] == primary[t])]
            row[f"{t} {primary[t]}"] = _pm(sel.groupby("seed")["value"].first())
        row["Δm task ↑ (%)"] = row["Δm metric ↓ (%)"] = "0 (ref.)"
        trials = base.drop_duplicates("trial_id")
        row["step (ms)"] = _pm(trials["step_s"] * 1000, 2)
        row["trial (s)"] = _pm(trials["wall_s"], 1)
        row["seeds"] = trials["seed"].nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def _environment(run_dir: Path) -> list[str]:
    trials = sorted((run_dir / "trials").glob("*.json"))
    for path in trials:
        env = json.loads(path.read_text("utf-8")).get("env")
        if env:
            return [f"- {k}: `{v}`" for k, v in sorted(env.items())]
    return ["- (no finished trial)"]


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.md`` and return its path."""
    run_dir = Path(run_dir)
    tidy = store.load(run_dir)
    if tidy.empty:
        raise ConfigError(f"{run_dir}: no trial records to report on")
    summary = trial_summary(tidy)
    manifest = store.RunStore(run_dir).manifest() or {}
    sweep = manifest.get("sweep", {})
    title = sweep.get("name", run_dir.name)
    n_trials = tidy["trial_id"].nunique()
    lines = [
        f"# mtlbench report: {title}",
        "",
        sweep.get("description", "") or "",
        "",
        f"{n_trials} trials in `{run_dir}`. Test-split metrics, mean ± std over seeds; "
        "the checkpoint of each trial was selected on the validation split.",
        "",
        "- **Δm task ↑**: task-level mean of relative improvement over the single-task "
        "baseline with the same seed (higher is better).",
        "- **Δm metric ↓**: metric-level mean of relative drop over all metrics "
        "(Nash-MTL / FAMO convention; lower is better).",
        "- Metric directions: "
        + ", ".join(f"{m} {'↑' if hi else '↓'}" for m, hi in HIGHER_IS_BETTER.items())
        + ". **step**: training time per step; **trial**: wall time per trial.",
        "",
    ]
    for dataset, group in tidy.groupby("dataset", sort=True):
        table = _dataset_table(group, summary[summary["dataset"] == dataset])
        lines += [f"## {dataset}", ""]
        lines += [table.to_markdown(index=False) if not table.empty else "(no finished trial)"]
        lines += [""]
    failed = tidy[tidy["status"] != "ok"].drop_duplicates("trial_id")
    if not failed.empty:
        lines += ["## Failed trials", ""]
        lines += [
            failed[["trial_id", "dataset", "sharing", "weighting", "seed", "status"]].to_markdown(
                index=False
            ),
            "",
        ]
    lines += ["## Environment", "", *_environment(run_dir), ""]
    path = run_dir / "report.md"
    store.atomic_write_text(path, "\n".join(lines))
    return path
