"""Report of a run directory, built from the stored records alone.

``write_report(run_dir)`` writes

- ``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG data
  URIs, no external resource, every config string escaped by jinja2's autoescape);
- ``tables/<name>.csv`` (numbers) and ``tables/<name>.tex`` (booktabs, LaTeX-escaped);
- ``plots/<name>.png`` and ``.svg`` (seaborn, Agg backend).

Sections: overview, results per dataset (with the scalarization front when ``ls`` trials
exist), rankings across datasets, negative transfer, task relationships (gradient
conflict and affinity probes, expert utilisation), cost (time per step, throughput and,
with ``speed/*.json`` records, memory and scaling), environment, failed trials. See
:mod:`bench.analysis` for the statistics.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import analysis, curves, recommend, store, tensorboard
from bench.errors import ConfigError, error_summary
from bench.probes import AUTO_PROBES, MIN_PROBED_STEPS
from bench.records import TrialRecord
from bench.tasks import HIGHER_IS_BETTER
from bench.timing import SPREAD_FLAG, relative_spread

__all__ = ["load_speed", "to_latex", "write_report"]

TEMPLATES = Path(__file__).resolve().parent / "templates"


# --------------------------------------------------------------------------- document model


@dataclass
class Block:
    kind: str  # heading | para | note | bullets | table | figure
    text: str = ""
    items: list[str] = field(default_factory=list)
    name: str = ""
    caption: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    b64: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


class _Doc:
    """Collects sections, and writes tables and plots as they are added."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sections: list[Section] = []
        self.tables_dir = run_dir / "tables"
        self.plots_dir = run_dir / "plots"
        self._names: dict[str, set[str]] = {"table": set(), "figure": set()}

    def section(self, title: str) -> Section:
        sec = Section(title, f"s{len(self.sections) + 1}")
        self.sections.append(sec)
        return sec

    def unique(self, kind: str, name: str) -> str:
        base, i = name, 2
        while name in self._names[kind]:
            name, i = f"{base}-{i}", i + 1
        self._names[kind].add(name)
        return name

    def table(self, sec: Section, name: str, display: pd.DataFrame, caption: str,
              raw: pd.DataFrame | None = None, *, show: bool = True) -> None:
        """Write ``tables/name.csv`` (``raw``, else ``display``) and ``.tex`` (``display``);
        show ``display`` in the report unless ``show`` is false."""
        name = self.unique("table", name)
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        csv_safe(raw if raw is not None else display).to_csv(self.tables_dir / f"{name}.csv",
                                                             index=False)
        (self.tables_dir / f"{name}.tex").write_text(to_latex(display, caption), "utf-8")
        if not show:
            return
        sec.blocks.append(Block(
            "table", name=name, caption=caption, columns=[str(c) for c in display.columns],
            rows=[[_cell(v) for v in row] for row in display.itertuples(index=False)],
        ))

    def figure(self, sec: Section, name: str, fig: Any, caption: str) -> None:
        if fig is None:
            return
        from bench import plots

        name = self.unique("figure", name)
        png = plots.save(fig, self.plots_dir, name)
        sec.blocks.append(Block("figure", name=name, caption=caption,
                                b64=base64.b64encode(png).decode("ascii")))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (a hash is appended when characters change)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:50] or "x"
    if s != text:
        s += "-" + hashlib.sha1(str(text).encode()).hexdigest()[:6]
    return s


# --------------------------------------------------------------------------- LaTeX

_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "Δ": r"$\Delta$", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "—": "---",
    "–": "--", "…": r"\ldots{}", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
    "†": r"\dag{}",
}


def latex_escape(text: object) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs ``table`` of ``df`` (cells as shown in the report, LaTeX-escaped)."""
    def numeric(col: pd.Series) -> bool:
        return all(re.fullmatch(r"[-+]?[\d.,eE+\-\s\[\]±—%]*", _cell(v)) for v in col)

    align = "".join("r" if numeric(df[c]) else "l" for c in df.columns) or "l"
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape(_cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading


def _scan(run_dir: Path) -> store.Scan:
    """The run's usable records, read once; each file left out is named on stderr."""
    run = store.RunStore(run_dir)
    if not run.trials_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory (no trials/ folder)")
    scan = run.scan()
    store.print_problems(scan.problems)
    return scan


def _left_out(doc: _Doc, run_dir: Path, problems: list[store.RecordProblem]) -> None:
    if not problems:
        return
    sec = doc.section("Files left out")
    sec.blocks.append(Block("note", text=(
        f"{len(problems)} files of the run directory are not usable records of this run "
        "and were left out of every table above (`mtlbench run` on the directory sets them "
        "aside into quarantine/ and reruns their trials).")))
    sec.blocks.append(Block("bullets", items=[
        f"{p.path.relative_to(run_dir) if p.path.is_relative_to(run_dir) else p.path}: "
        f"{p.reason}" for p in problems]))


def load_speed(run_dir: str | Path) -> pd.DataFrame:
    """Speed records of ``RUN_DIR/speed/*.json`` as a flat frame (missing keys -> NaN)."""
    rows = []
    for path in sorted((Path(run_dir) / "speed").glob("*.json")):
        try:
            rec = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("kind", "speed") != "speed":
            continue
        step = rec.get("step") or {}
        row = {
            "file": path.name,
            **{k: rec.get(k) for k in ("strategy", "engine", "sharing", "num_tasks",
                                       "batch_size", "width", "device")},
            "step_median_s": step.get("median_s", math.nan),
            "step_iqr_s": step.get("iqr_s", math.nan),
            "samples_per_s": rec.get("samples_per_s", math.nan),
            "peak_memory_bytes": rec.get("peak_memory_bytes", math.nan),
            "ratio_to_ew": rec.get("ratio_to_ew", math.nan),
        }
        for phase, v in (rec.get("phases") or {}).items():
            row[f"phase_{phase}_median_s"] = (v or {}).get("median_s", math.nan)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("strategy", "engine", "sharing"):
        if col in df:
            df[col] = df[col].fillna("n/a").astype(str)
    for col in ("step_median_s", "step_iqr_s", "samples_per_s", "peak_memory_bytes",
                "ratio_to_ew", "num_tasks", "batch_size", "width"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _labels(tidy: pd.DataFrame) -> pd.DataFrame:
    cols = ["trial_id", "dataset", "sharing", "weighting", "seed", "baseline_task", "status"]
    lab = tidy.drop_duplicates("trial_id")[cols].set_index("trial_id")
    lab["strategy"] = [analysis.strategy_label(s, w)
                       for s, w in zip(lab["sharing"], lab["weighting"], strict=True)]
    return lab


def _mtl_ok(records: Iterable[TrialRecord], labels: pd.DataFrame
            ) -> Iterable[tuple[TrialRecord, dict]]:
    rows = labels.to_dict("index")  # a dict per trial: .loc per record is slow at 10k trials
    for rec in records:
        lab = rows.get(rec.id)
        if lab is not None and rec.ok and pd.isna(lab["baseline_task"]):
            yield rec, lab


# --------------------------------------------------------------------------- formatting


def _pm(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _primary_metric(tidy: pd.DataFrame, task: str) -> str:
    metrics = set(tidy.loc[tidy["task"] == task, "metric"].dropna())
    for preferred in ("auc", "accuracy", "mse"):
        if preferred in metrics:
            return preferred
    rest = sorted(metrics - {"loss"}) or sorted(metrics)
    return rest[0] if rest else "loss"


NOISY = " †"  # marks a step time whose spread is large against its median
LAST_EPOCH = "best = last epoch"


def timing_spread(trials: pd.DataFrame) -> float:
    """The largest relative spread (IQR / median) of a row's step time: within a trial (over
    its steady epochs) or across its seeds. NaN when neither is known."""
    spreads = [*trials["step_spread"].dropna().astype(float),
               relative_spread(trials["step_s"].astype(float).tolist())]
    spreads = [v for v in spreads if v is not None and math.isfinite(v)]
    return max(spreads) if spreads else math.nan


def _trial_columns(trials: pd.DataFrame, row: dict, r: dict) -> None:
    """Step and trial time (steady state), seeds and trials that ended on their best
    validation epoch, for one row of a results table (``trials``: one tidy row each)."""
    spread = timing_spread(trials)
    row["step (ms)"] = _pm(trials["step_s"] * 1000, 2) + (NOISY if spread > SPREAD_FLAG else "")
    row["trial (s)"] = _pm(trials["trial_s"], 1)
    row["seeds"] = trials["seed"].nunique()
    conv = analysis.convergence(trials)
    last = int(conv["last_epoch_best"].sum())
    row[LAST_EPOCH] = f"{last}/{len(conv)}"
    r.update(step_s_median=trials["step_s"].median(), step_spread=spread,
             trial_s_mean=trials["trial_s"].mean(), wall_s_mean=trials["wall_s"].mean(),
             seeds=row["seeds"], last_epoch_best=last, trials=len(conv))


_NO_SEEDS = pd.Series(dtype=float)


def _per_seed(rows: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.Series]:
    """``rows``' first value per seed (a Series by seed) for each combination of ``keys``."""
    values = rows.groupby([*keys, "seed"], sort=False)["value"].first()
    levels = list(range(len(keys)))
    return {key: group.droplevel(levels)
            for key, group in values.groupby(level=levels, sort=False)}


def _dataset_table(tidy: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display and raw tables of one dataset: one row per (sharing, weighting) and one for
    the single-task baselines."""
    test = tidy[(tidy["split"] == "test") & (tidy["status"] == "ok")]
    tasks = list(dict.fromkeys(test["task"].dropna()))
    primary = {t: _primary_metric(test, t) for t in tasks}
    rows, raw = [], []
    mtl = test[test["baseline_id"].notna()]
    # Each row's per-seed values from one groupby, its Δm from one dict: filtering the
    # frame per row and task was most of a 10,000-trial report's time.
    prim = test[test["metric"] == test["task"].map(primary)]
    mtl_seeds = _per_seed(prim[prim["baseline_id"].notna()], ["sharing", "weighting", "task"])
    base_seeds = _per_seed(prim[prim["baseline_task"].notna()], ["weighting", "task"])
    cell_of = cells.drop_duplicates(["sharing", "weighting"]).set_index(
        ["sharing", "weighting"]).to_dict("index")
    for (sharing, weighting), group in mtl.groupby(["sharing", "weighting"], sort=True):
        row = {"sharing": sharing, "weighting": weighting}
        r = {"sharing": sharing, "weighting": weighting}
        for t in tasks:
            per_seed = mtl_seeds.get((sharing, weighting, t), _NO_SEEDS)
            row[f"{t} {primary[t]}"] = _pm(per_seed)
            r[f"{t}_{primary[t]}_mean"] = per_seed.mean()
            r[f"{t}_{primary[t]}_std"] = per_seed.std(ddof=1)
        c = cell_of.get((sharing, weighting))
        for name, head in (("delta_m_task", "Δm task ↑ (%)"), ("delta_m_metric",
                                                               "Δm metric ↓ (%)")):
            vals = (c[name], c[f"{name}_low"], c[f"{name}_high"]) if c is not None else (
                math.nan, math.nan, math.nan)
            row[head] = _ci(*vals)
            r[name], r[f"{name}_low"], r[f"{name}_high"] = vals
        _trial_columns(group.drop_duplicates("trial_id"), row, r)
        rows.append(row)
        raw.append(r)
    # One baseline row per training recipe (a train_grid gives each value its baselines).
    recipes = list(test[test["baseline_task"].notna()].groupby("weighting", sort=True))
    for label, base in recipes:
        row = {"sharing": "stl (baselines)", "weighting": label if len(recipes) > 1 else "—"}
        r = {"sharing": "stl", "weighting": label}
        for t in tasks:
            per_seed = base_seeds.get((label, t), _NO_SEEDS)
            row[f"{t} {primary[t]}"] = _pm(per_seed)
            r[f"{t}_{primary[t]}_mean"] = per_seed.mean()
            r[f"{t}_{primary[t]}_std"] = per_seed.std(ddof=1)
        row["Δm task ↑ (%)"] = row["Δm metric ↓ (%)"] = "0 (ref.)"
        r.update(delta_m_task=0.0, delta_m_metric=0.0)
        _trial_columns(base.drop_duplicates("trial_id"), row, r)
        rows.append(row)
        raw.append(r)
    return pd.DataFrame(rows), pd.DataFrame(raw)


def _row_label(sharing: str, weighting: str, baseline_task: Any) -> str:
    if pd.notna(baseline_task):
        return f"stl (baseline: {baseline_task})"
    return analysis.strategy_label(sharing, weighting)


def _dataset_notes(tidy: pd.DataFrame, display: pd.DataFrame) -> list[Block]:
    """Warnings under a results table: trials that ended on their best validation epoch
    (probably not converged), and noisy step times."""
    blocks = []
    conv = analysis.convergence(tidy)
    last = conv[conv["last_epoch_best"]]
    if not last.empty:
        conv["label"] = [_row_label(*v) for v in  # not .apply(axis=1): 10k trials
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


# --------------------------------------------------------------------------- sections


def _overview(doc: _Doc, run_dir: Path, tidy: pd.DataFrame, labels: pd.DataFrame,
              sweep: dict) -> None:
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


def _results(doc: _Doc, tidy: pd.DataFrame, cells: pd.DataFrame, summary: pd.DataFrame,
             weights: pd.DataFrame) -> None:
    from bench import plots

    sec = doc.section("Results per dataset")
    # One reference per task (the best single-task recipe): with a train_grid, points
    # trained with different settings must share it to be compared.
    fronts = (analysis.scalarization_front(analysis.trial_summary(tidy, reference="best"))
              if not summary.empty else {})
    for dataset, group in tidy.groupby("dataset", sort=True):
        ds = str(dataset)
        sec.blocks.append(Block("heading", text=ds))
        display, raw = _dataset_table(group, cells[cells["dataset"] == dataset])
        display, raw = recommend.mark_best(display, raw)  # best first, marked
        if display.empty:
            sec.blocks.append(Block("note", text="(no finished trial)"))
        else:
            doc.table(sec, f"results-{slug(ds)}", display,
                      f"{ds}: test metrics (mean ± std over seeds) and Δm with "
                      f"{analysis.CI_LEVEL:.0%} Student-t intervals over seeds", raw)
            sec.blocks += _dataset_notes(group, display)
        w = weights[weights["dataset"] == dataset] if not weights.empty else weights
        if not w.empty:
            doc.figure(sec, f"weights-{slug(ds)}", plots.weights_over_training(
                w, f"{ds}: task weights over training"),
                f"{ds}: task weights per epoch (mean over seeds); strategies whose weights "
                "never change are left out.")
        if ds in fronts:
            front = fronts[ds]
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


def _rankings(doc: _Doc, cells: pd.DataFrame) -> None:
    from bench import plots

    sec = doc.section("Rankings across datasets")
    use = cells[~cells["weighting"].map(analysis.is_scalarization)]
    doc.figure(sec, "delta-m-heatmap", plots.delta_m_heatmap(use),
               "Δm task (%) per strategy and dataset, mean over seeds.")
    if use.empty or use["dataset"].nunique() < 1:
        sec.blocks.append(Block("note", text="(no multi-task results)"))
        return
    rk = analysis.rankings(use, "delta_m_task")
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


def _negative_transfer(doc: _Doc, intervals: pd.DataFrame) -> None:
    from bench import plots

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
        "relative change (%)": [_ci(m, lo, hi) for m, lo, hi in zip(
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


def _relationships(doc: _Doc, records: list[TrialRecord], labels: pd.DataFrame) -> None:
    from bench import plots

    sec = doc.section("Task relationships")
    conflict_rows, cosine_rows, affinity_rows, expert_rows = [], [], [], []
    for rec, lab in _mtl_ok(records, labels):
        key = {"dataset": lab["dataset"], "strategy": lab["strategy"], "seed": lab["seed"]}
        probes = rec.probes
        conflict = probes.get("conflict") or {}
        steps = conflict.get("steps") or []
        fractions = conflict.get("conflict_fraction") or {}
        # Records from before probed_steps was recorded: the length of their step list.
        probed = conflict.get("probed_steps", len(steps))
        for pair, series in (conflict.get("pairs") or {}).items():
            cos = [v for v in (series or {}).get("cosine") or [] if v is not None]
            mag = [v for v in (series or {}).get("magnitude_similarity") or [] if v is not None]
            conflict_rows.append({**key, "pair": pair,
                                  "conflict_fraction": fractions.get(pair, math.nan),
                                  "mean_cosine": float(np.mean(cos)) if cos else math.nan,
                                  "cosines": cos, "probed_steps": probed,
                                  "mean_magnitude_similarity":
                                      float(np.mean(mag)) if mag else math.nan})
            for i, c in enumerate((series or {}).get("cosine") or []):
                step = steps[i] if i < len(steps) else i
                cosine_rows.append({**key, "pair": pair, "step": step, "cosine": c})
        for pair, frac in fractions.items():
            if pair not in (conflict.get("pairs") or {}):
                conflict_rows.append({**key, "pair": pair, "conflict_fraction": frac,
                                      "mean_cosine": math.nan, "cosines": [],
                                      "probed_steps": probed,
                                      "mean_magnitude_similarity": math.nan})
        affinity = probes.get("affinity") or {}
        matrix = affinity.get("matrix") or {}
        observed = affinity.get("probed_steps", affinity.get("observations", 0))
        for ti, row in matrix.items():
            for tj, v in (row or {}).items():
                affinity_rows.append({**key, "task_i": ti, "task_j": tj, "affinity": v,
                                      "probed_steps": observed})
        util = rec.architecture_stats.get("expert_utilisation") or {}
        for task, ws in util.items():
            for e, w in enumerate(ws or []):
                expert_rows.append({**key, "task": task, "expert": e, "weight": w})
    if not (conflict_rows or affinity_rows or expert_rows):
        sec.blocks.append(Block("note", text=(
            "No probes (gradient conflict, task affinity) and no expert utilisation in the "
            "records of this run.")))
        return
    if conflict_rows:
        summary = analysis.conflict_summary(pd.DataFrame(conflict_rows))
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
                _ci(m, lo, hi, 3) for m, lo, hi in
                zip(shown["mean_cosine"], shown["cosine_low"], shown["cosine_high"],
                    strict=True)],
            "CI over": shown["interval"], "cosine vs 0": shown["cosine_sign"],
            "conflict fraction": shown["conflict_fraction"].round(3),
            "magnitude similarity": shown["mean_magnitude_similarity"].round(3),
            "n_seeds": shown["n_seeds"], "probed steps": shown["probed_steps"],
        })
        doc.table(sec, "conflict", disp, "Gradient conflict per task pair", summary,
                  show=not disp.empty)
        cos = pd.DataFrame(cosine_rows)
        for dataset, group in shown.groupby("dataset", sort=True):
            ds = str(dataset)
            by_strategy = dict(list(group.groupby("strategy", sort=True)))
            mats = {s: _pair_matrix(g, "mean_cosine") for s, g in by_strategy.items()}
            texts = {s: _pair_matrix(g.assign(text=[
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
    if affinity_rows:
        af = pd.DataFrame(affinity_rows)
        agg = af.groupby(["dataset", "strategy", "task_i", "task_j"], sort=True).agg(
            affinity=("affinity", "mean"), n_seeds=("seed", "nunique"),
            probed_steps=("probed_steps", "min")).reset_index()
        agg["enough_probes"] = agg["probed_steps"] >= MIN_PROBED_STEPS
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
    if expert_rows:
        ex = pd.DataFrame(expert_rows)
        agg = ex.groupby(["dataset", "strategy", "task", "expert"], sort=True).agg(
            weight=("weight", "mean"), n_seeds=("seed", "nunique")).reset_index()
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


def _pair_matrix(group: pd.DataFrame, value: str) -> pd.DataFrame:
    """Symmetric task x task matrix from ``ti|tj`` pair keys (numbers or strings)."""
    entries: dict[tuple[str, str], Any] = {}
    tasks: list[str] = []
    for pair, v in zip(group["pair"], group[value], strict=True):
        a, _, b = str(pair).partition("|")
        b = b or a
        entries[(a, b)] = entries[(b, a)] = v
        tasks += [t for t in (a, b) if t not in tasks]
    return pd.DataFrame({b: {a: entries.get((a, b), np.nan) for a in tasks} for b in tasks},
                        index=tasks, columns=tasks)


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


def _cost(doc: _Doc, tidy: pd.DataFrame, cells: pd.DataFrame, trials: pd.DataFrame,
          speed: pd.DataFrame) -> None:
    from bench import plots

    sec = doc.section("Cost")
    memory = None
    if not speed.empty and "peak_memory_bytes" in speed:
        memory = speed.rename(columns={"strategy": "weighting"})[
            ["sharing", "weighting", "peak_memory_bytes"]].dropna()
    cq = analysis.cost_quality(cells, analysis.trial_costs(tidy), memory)
    if not cq.empty:
        sec.blocks.append(Block("para", text=(
            "Quality (Δm task, mean over seeds) against cost (median time per training step "
            "over seeds" + (", and peak memory from the speed records" if memory is not None
                            and cq["peak_memory_bytes"].notna().any() else "")
            + "). Non-dominated: no other strategy of the same dataset is at least as good on "
            "every axis and better on one.")))
        doc.figure(sec, "cost-quality", plots.cost_quality(cq),
                   "Δm task against cost; filled markers are non-dominated.")
        disp = pd.DataFrame({
            "dataset": cq["dataset"], "strategy": cq["strategy"],
            "Δm task ↑ (%)": [_ci(m, lo, hi) for m, lo, hi in zip(
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


def _toy_landscape(doc: _Doc, records: list[TrialRecord], labels: pd.DataFrame) -> None:
    """Trajectories recorded by the ``landscape`` architecture on ``toy2`` trials."""
    import numpy as np
    import torch

    from bench import plots
    from bench.data.toy2 import STARTS, toy_losses

    rows, finals = [], []
    scale = 1.0
    for rec in records:
        traj = rec.architecture_stats.get("trajectory")
        if not rec.ok or not traj or rec.spec.dataset.name != "toy2":
            continue
        params = rec.spec.dataset.params
        scale = params.get("scale", 1.0)
        method = labels.loc[rec.id, "weighting"] if rec.id in labels.index else (
            rec.spec.weighting.name)
        start = STARTS[params.get("start", 0)]
        every = rec.architecture_stats.get("trajectory_every", 1)
        for i, (x1, x2) in enumerate(traj):
            rows.append({"method": method, "start": str(start), "step": i * every,
                         "x1": x1, "x2": x2})
        f1, f2 = (rec.metrics["test"][t]["value"] for t in ("f1", "f2"))
        finals.append({"method": method, "start": str(start), "x1": traj[-1][0],
                       "x2": traj[-1][1], "f1": f1, "f2": f2})
    if not rows:
        return
    sec = doc.section("Toy landscape")
    axis = np.linspace(-10, 10, 300)
    xs, ys = np.meshgrid(axis, axis)
    values = toy_losses(torch.tensor(np.stack([xs, ys], -1), dtype=torch.float64), scale).numpy()
    zs = values.mean(-1)
    flat = values.reshape(-1, 2)
    # Numerical Pareto set: grid points no other grid point dominates.
    order = np.lexsort((flat[:, 1], flat[:, 0]))
    best_f2, keep = np.inf, []
    for idx in order:
        if flat[idx, 1] < best_f2:
            best_f2 = flat[idx, 1]
            keep.append(idx)
    pareto_values = flat[keep]
    pareto_points = np.stack([xs.reshape(-1)[keep], ys.reshape(-1)[keep]], -1)
    doc.figure(sec, "toy-trajectories", plots.toy_trajectories(
        pd.DataFrame(rows), (xs, ys, zs), pareto_points,
        "Trajectories over the average loss (gray dots: Pareto set)"),
        "Each method from every starting point (circle) to where it ends (cross), over the "
        "contours of (f1 + f2) / 2; the Pareto set is computed on a 300 x 300 grid.")
    final = pd.DataFrame(finals)
    tol = 1e-2 * (np.ptp(pareto_values, axis=0).max() or 1.0)

    def on_front(row: pd.Series) -> bool:
        better_f1 = pareto_values[:, 0] < row["f1"] - tol
        better_f2 = pareto_values[:, 1] < row["f2"] - tol
        return not (better_f1 & better_f2).any()

    final["on Pareto set"] = final.apply(on_front, axis=1).map({True: "yes", False: "no"})
    final["average loss"] = (final["f1"] + final["f2"]) / 2
    display = final[["method", "start", "x1", "x2", "f1", "f2", "average loss", "on Pareto set"]]
    doc.table(sec, "toy-endpoints", display.round(3),
              "Where each method ends: a point is off the Pareto set when some grid point "
              "is better on both objectives by more than 1% of the front's range.")


def _environment(doc: _Doc, records: list[TrialRecord]) -> None:
    sec = doc.section("Environment")
    values: dict[str, Counter] = {}
    for rec in records:
        for k, v in rec.env.items():
            values.setdefault(str(k), Counter())[json.dumps(v, sort_keys=True)
                                                 if not isinstance(v, str) else v] += 1
    if not values:
        sec.blocks.append(Block("note", text="(no finished trial)"))
        return
    rows = [{"key": k, "value": "; ".join(
        v if len(c) == 1 else f"{v} ({n} trials)" for v, n in c.most_common())}
        for k, c in sorted(values.items())]
    doc.table(sec, "environment", pd.DataFrame(rows),
              "Environment of the trials (values that differ between trials are counted)")


def _failed(doc: _Doc, records: list[TrialRecord], labels: pd.DataFrame) -> None:
    sec = doc.section("Failed trials")
    rows = []
    for rec in records:
        if rec.ok or rec.id not in labels.index:
            continue
        lab = labels.loc[rec.id]
        rows.append({"trial_id": rec.id, "dataset": lab["dataset"],
                     "sharing": lab["sharing"], "weighting": lab["weighting"],
                     "seed": lab["seed"], "status": rec.status,
                     "error": error_summary(rec.error)})  # as `run` names it
    if not rows:
        sec.blocks.append(Block("para", text="All trials finished ok."))
        return
    doc.table(sec, "failed", pd.DataFrame(rows), "Trials that did not finish ok")


def _weights(records: list[TrialRecord], labels: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rec, lab in _mtl_ok(records, labels):
        for h in rec.history:
            for task, w in (h.weights or {}).items():
                if w is not None:
                    rows.append({"dataset": lab["dataset"], "strategy": lab["strategy"],
                                 "seed": lab["seed"], "epoch": h.epoch, "task": task,
                                 "weight": float(w)})
    df = pd.DataFrame(rows, columns=["dataset", "strategy", "seed", "epoch", "task", "weight"])
    if df.empty:
        return df
    spread = df.groupby(["dataset", "strategy"])["weight"].agg(lambda s: s.max() - s.min())
    varying = spread[spread > 1e-9].index
    keep = pd.MultiIndex.from_frame(df[["dataset", "strategy"]]).isin(varying)
    return df[keep].reset_index(drop=True)


def _trials(records: list[TrialRecord], labels: pd.DataFrame) -> pd.DataFrame:
    rows = []
    by_id = labels.to_dict("index")
    for rec in records:
        if rec.id not in by_id:
            continue
        t = rec.timing

        def num(v: float | None) -> float:
            return math.nan if v is None else float(v)

        rows.append({"trial_id": rec.id, **by_id[rec.id],
                     "samples_per_s": num(t.samples_per_s) if t else math.nan,
                     "step_s": num(t.step_s) if t else math.nan,
                     "setup_s": num(t.setup_s) if t else math.nan,
                     "warmup_s": num(t.warmup_s) if t else math.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- rendering


# Text that would start a Markdown block (heading, quote, list, rule, table) at a line's start.
_MD_BLOCK_START = re.compile(r"^(?:[#>+*=|~`-]|\d+(?=[.)](?:\s|$)))")
# Spreadsheet formula prefixes (OWASP CSV injection): such a text cell gets a leading '.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_text(text: object) -> str:
    """``text`` safe inside a line of report.md: names and record fields reach the report,
    so no raw HTML (``<script>``, ``<img onerror>``), no line break (a fake heading or table
    row) and no link or image made of them; ordinary text is left as it reads."""
    out = " ".join(str(text).splitlines())
    return out.replace("<", "&lt;").replace(">", "&gt;").replace("](", "]\\(")


def md_block(text: object) -> str:
    """:func:`md_text` for text that starts a line: a leading ``#``, ``-``, ``1.`` ... is
    escaped, so that it stays text."""
    out = md_text(text).lstrip()  # four leading spaces would make a code block
    match = _MD_BLOCK_START.match(out)
    if match is None:
        return out
    end = match.end()
    return out[:end] + "\\" + out[end:] if out[:end].isdigit() else "\\" + out


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell and header that a spreadsheet would run as a formula
    (``=``, ``+``, ``-``, ``@``, tab, CR first) prefixed with a single quote."""
    def cell(value: object) -> object:
        return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) \
            else value

    out = df.copy()
    for i in range(out.shape[1]):  # by position: column names may repeat
        if not pd.api.types.is_numeric_dtype(out.iloc[:, i]):
            out.iloc[:, i] = out.iloc[:, i].map(cell)
    out.columns = [cell(c) for c in out.columns]
    return out


def _markdown(title: str, description: str, sections: list[Section]) -> str:
    # Every string goes through md_text/md_block here, the one place report.md is written.
    def md_cell(s: str) -> str:
        return md_text(s).replace("|", r"\|")

    lines = [f"# mtlbench report: {md_text(title)}", ""]
    if description:
        lines += [md_block(description), ""]
    for sec in sections:
        lines += [f"## {md_text(sec.title)}", ""]
        for b in sec.blocks:
            if b.kind == "heading":
                lines += [f"### {md_text(b.text)}", ""]
            elif b.kind in ("para", "note"):
                lines += [md_block(b.text) if b.kind == "para" else f"_{md_text(b.text)}_", ""]
            elif b.kind == "bullets":
                lines += [*(f"- {md_block(i)}" for i in b.items), ""]
            elif b.kind == "table":
                from tabulate import tabulate

                rows = [[md_cell(c) for c in r] for r in b.rows]
                lines += [f"_{md_text(b.caption)}_ (tables/{b.name}.csv)", "",
                          tabulate(rows, headers=[md_cell(c) for c in b.columns],
                                   tablefmt="pipe", disable_numparse=True), ""]
            elif b.kind == "figure":
                alt = md_cell(b.caption).replace("[", r"\[").replace("]", r"\]")
                lines += [f"![{alt}](plots/{b.name}.png)", ""]
    return "\n".join(lines)


def _html(title: str, description: str, sections: list[Section]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html.j2").render(title=title, description=description,
                                                     sections=sections)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html``, ``tables/`` and ``plots/`` into ``run_dir``;
    return the path of ``report.md``."""
    run_dir = Path(run_dir)
    scan = _scan(run_dir)
    records = scan.records
    tidy = store.frame(records)
    if tidy.empty:
        raise ConfigError(f"{run_dir}: no trial records to report on")
    labels = _labels(tidy)
    summary = analysis.trial_summary(tidy)
    cells = analysis.delta_m_intervals(summary)
    intervals = analysis.task_change_intervals(summary)
    speed = load_speed(run_dir)
    manifest = scan.manifest or {}  # None when missing or damaged (a file left out)
    sweep = manifest.get("sweep", {}) or {}
    title = str(sweep.get("name") or run_dir.name)
    description = str(sweep.get("description") or "")

    doc = _Doc(run_dir)
    recommend.section(doc, cells, tidy, intervals)  # first: the practitioner's answer
    _overview(doc, run_dir, tidy, labels, sweep)
    _results(doc, tidy, cells, summary, _weights(records, labels))
    curves.section(doc, records, labels)
    _rankings(doc, cells)
    _negative_transfer(doc, intervals)
    _relationships(doc, records, labels)
    _toy_landscape(doc, records, labels)
    _cost(doc, tidy, cells, _trials(records, labels), speed)
    _environment(doc, records)
    _failed(doc, records, labels)
    _left_out(doc, run_dir, scan.problems)

    store.atomic_write_text(run_dir / "report.html", _html(title, description, doc.sections))
    # Δm needs every baseline: written here as each trial's HParams metrics (TensorBoard).
    tensorboard.write_delta_m(run_dir, summary, records)
    path = run_dir / "report.md"
    store.atomic_write_text(path, _markdown(title, description, doc.sections))
    return path
