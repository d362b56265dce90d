"""Report (markdown, HTML, tables, plots) and ``mtlbench compare``, on a small real run and on
synthetic records with the optional fields (probes, speed records, expert utilisation)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bench import compare
from bench.cli import main as cli_main
from bench.errors import ConfigError
from bench.records import TrialRecord
from bench.report import latex_escape, load_speed, write_report
from bench.spec import Component, TrainSettings, TrialModel, TrialSpec
from bench.store import RunStore

EVIL_DATASET = '<script>alert("ds")</script>'
EVIL_WEIGHTING = "w<script>x</script>$_&%"

# Relative effect (percent) of each strategy on each task: strategies far apart, so that
# ranks, dominance and negative transfer are clear-cut.
EFFECTS = {
    ("hps", "ew"): 2.0,
    ("hps", "mgda"): -6.0,
    ("hps", "pcgrad"): 4.0,
    ("mmoe", "ew"): 1.0,
    ("hps", EVIL_WEIGHTING): 0.5,
}

TINY = """
name = "tiny"
seeds = [0, 1]
datasets = [{ name = "mmoe_synthetic", num_train = 128, num_val = 64, num_test = 64, input_dim = 8 }]
sharing = ["hps"]
weighting = ["ew", "mgda"]

[model]
hidden = [8]

[train]
epochs = 2
batch_size = 64
lr = 0.01
"""


# --------------------------------------------------------------------------- synthetic runs


def _spec(dataset: str, sharing: str, weighting: str, seed: int,
          params: dict | None = None) -> TrialSpec:
    return TrialSpec(
        dataset=Component(dataset, {}), sharing=Component(sharing, {}),
        weighting=Component(weighting, dict(params or {})), seed=seed,
        model=TrialModel(hidden=[8]), train=TrainSettings(epochs=3, engine="loop"),
    )


def baseline_of(spec: TrialSpec, task: str) -> TrialSpec:
    """The single-task baseline of ``spec`` for ``task`` (stl/ew, by the schema-1 rule:
    the synthetic datasets are not registered, so no registry labels them)."""
    return TrialSpec(dataset=spec.dataset, sharing=Component("stl", {}),
                     weighting=Component("ew", {}), seed=spec.seed, model=spec.model,
                     train=spec.train, tasks=(task,))


def _metrics(tasks: dict[str, str], values: dict[str, float]) -> dict:
    out = {}
    for task, kind in tasks.items():
        v = values[task]
        out[task] = ({"mse": v, "mae": v / 2, "loss": v} if kind == "regression"
                     else {"accuracy": v, "loss": 1 - v})
    return {"test": out, "val": out}


def _record(spec: TrialSpec, tasks: dict[str, str], values: dict[str, float], *,
            rng: np.random.Generator, status: str = "ok", extra: dict | None = None
            ) -> TrialRecord:
    names = list(tasks)
    history = []
    for epoch in range(3):
        w = rng.dirichlet(np.ones(len(names))) * len(names)
        history.append({
            "epoch": epoch, "seconds": 0.1 * (epoch + 1),
            "train_loss": {t: 1.0 / (epoch + 1) for t in names},
            "val": {t: {"loss": 1.0 / (epoch + 1)} for t in names},
            "weights": ({t: 1.0 for t in names} if spec.weighting.name == "ew"
                        else dict(zip(names, w.tolist(), strict=True))),
        })
    step_s = {"ew": 0.002, "mgda": 0.006, "pcgrad": 0.009}.get(spec.weighting.name, 0.003)
    if spec.tasks is None:
        spec = dataclasses.replace(spec, baselines={t: baseline_of(spec, t).id for t in names})
    rec = {
        "error": None if status == "ok" else "Traceback ...\nRuntimeError: boom <b>bad</b>",
        "metrics": _metrics(tasks, values) if status == "ok" else {},
        "history": history if status == "ok" else [],
        "timing": {"train_s": 1.0, "steps": 100, "step_s": step_s * rng.uniform(0.9, 1.1),
                   "samples_per_s": 64 / step_s, "setup_s": 0.1, "warmup_s": 0.05,
                   "warmup_steps": 10, "step_spread": 0.05, "trial_s": 1.0},
        "wall_s": 1.2, "parameters": 1000, "shared_parameters": 800,
        "flops_per_sample": 1234, "architecture_stats": {},
        "env": {"python": "3.11", "torch": "2.13.0+cpu", "device": "cpu",
                "host": f"node{spec.seed % 2}"},
        "tasks": names,
    }
    rec.update(extra or {})
    return TrialRecord.of(spec, status, **rec)


def _probes(names: list[str], rng: np.random.Generator, steps=(0, 10, 20, 30, 40, 50)) -> dict:
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    steps = list(steps)
    cover = {"probed_steps": len(steps), "every": 10, "trial_steps": 60}
    return {
        "conflict": {
            "steps": steps,
            "pairs": {f"{a}|{b}": {"cosine": rng.uniform(-0.5, 0.8, len(steps)).tolist(),
                                   "magnitude_similarity": rng.uniform(0, 1, len(steps)).tolist()}
                      for a, b in pairs},
            "conflict_fraction": {f"{a}|{b}": float(rng.uniform(0, 1)) for a, b in pairs},
            **cover,
        },
        "affinity": {"matrix": {a: {b: float(rng.normal()) for b in names} for a in names},
                     "observations": len(steps), "steps": steps, **cover},
    }


def synthetic_run(root: Path, *, seeds=(0, 1, 2), datasets: dict | None = None,
                  strategies: dict | None = None, ls: bool = True, extras: bool = True,
                  noise: float = 0.2) -> Path:
    """Write a run directory of synthetic records: multi-task trials with effects from
    ``strategies`` (percent per task), their single-task baselines, ls trials tracing a
    front, and (``extras``) probes, expert utilisation, speed records and failed trials."""
    datasets = datasets or {
        "toy2": {"a": "binary", "b": "binary"},
        "toy3": {"x": "binary", "y": "binary", "z": "regression"},
        EVIL_DATASET: {"p": "binary", "q": "binary"},
    }
    strategies = strategies or EFFECTS
    rng = np.random.default_rng(0)
    store = RunStore(root)
    ids = []
    base_value = {"binary": 0.8, "regression": 2.0}
    for dataset, tasks in datasets.items():
        names = list(tasks)
        for seed in seeds:
            offset = rng.normal(0, 0.01)
            baseline = {t: base_value[k] + offset for t, k in tasks.items()}
            combos = [(s, w, {}, eff) for (s, w), eff in strategies.items()]
            if ls and len(names) in (2, 3):
                grid = [(0.1, 0.9), (0.3, 0.7), (0.5, 0.5), (0.7, 0.3), (0.9, 0.1)]
                if len(names) == 3:
                    grid = [(0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6), (1 / 3,) * 3]
                for wv in grid:
                    # Concave front: effect on task t grows with its weight.
                    eff = {t: 10 * math.sqrt(w) - 5 for t, w in zip(names, wv, strict=True)}
                    combos.append(("hps", "ls", {"weights": list(wv)}, eff))
            for sharing, weighting, params, eff in combos:
                spec = _spec(dataset, sharing, weighting, seed, params)
                values = {}
                for t, kind in tasks.items():
                    e = (eff[t] if isinstance(eff, dict) else eff) + rng.normal(0, noise)
                    sign = -1.0 if kind == "regression" else 1.0
                    values[t] = baseline[t] * (1 + sign * e / 100)
                extra = {}
                if extras and sharing == "hps" and weighting in ("ew", "mgda"):
                    extra["probes"] = _probes(names, rng)
                if extras and sharing == "mmoe":
                    extra["architecture_stats"] = {"expert_utilisation": {
                        t: rng.dirichlet(np.ones(3)).tolist() for t in names}}
                store.write(_record(spec, tasks, values, rng=rng, extra=extra))
                ids.append(spec.id)
                for t in names:
                    b = baseline_of(spec, t)
                    if not store.has(b.id):
                        store.write(_record(b, {t: tasks[t]}, baseline, rng=rng))
                        ids.append(b.id)
        if extras:
            for i, status in enumerate(("error", "diverged")):
                spec = _spec(dataset, "hps", "uw", 100 + i)
                store.write(_record(spec, tasks, {}, rng=rng, status=status))
                ids.append(spec.id)  # the manifest lists every trial of the run
    store.write_manifest({"name": "synthetic", "description": "synthetic <records> & co"}, ids)
    if extras:
        speed = root / "speed"
        speed.mkdir(parents=True, exist_ok=True)
        for strategy, base in (("ew", 1.0), ("mgda", 3.0), ("pcgrad", 4.0)):
            for engine in ((None,) if strategy == "ew" else ("loop", "batched")):
                for num_tasks in (2, 4, 8):
                    for batch in (32, 128):
                        step = 1e-3 * base * num_tasks ** (0.5 if engine == "batched" else 1)
                        step *= batch / 32
                        (speed / f"{strategy}-{engine}-{num_tasks}-{batch}.json").write_text(
                            json.dumps({
                                "kind": "speed", "strategy": strategy, "engine": engine,
                                "sharing": "hps", "num_tasks": num_tasks, "batch_size": batch,
                                "width": 64, "device": "cpu",
                                "phases": {"forward": {"median_s": step / 3, "iqr_s": 0.0},
                                           "backward": {"median_s": step / 2, "iqr_s": 0.0}},
                                "step": {"median_s": step, "iqr_s": step / 10},
                                "samples_per_s": batch / step,
                                "peak_memory_bytes": int(2**20 * base * num_tasks),
                                "ratio_to_ew": base,
                            }))
    return root


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    spec = tmp / "tiny.toml"
    spec.write_text(textwrap.dedent(TINY))
    out = tmp / "run"
    assert cli_main(["run", str(spec), "--out", str(out), "--no-progress",
                     "--executor", "inline"]) == 0
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """About 150 synthetic trials with every optional part; the report's CPU time is kept in
    ``report_cpu_s`` beside the run."""
    run = synthetic_run(tmp_path_factory.mktemp("synthetic") / "run", seeds=(0, 1, 2, 3))
    start = time.process_time()
    write_report(run)
    (run.parent / "report_cpu_s").write_text(str(time.process_time() - start))
    return run


def _html(run: Path) -> str:
    return (run / "report.html").read_text("utf-8")


def _assert_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert 'src="file' not in html and "src='file" not in html
    assert "<link" not in html.lower() and "<script" not in html.lower()
    assert "<iframe" not in html.lower() and "url(" not in html.lower()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


# --------------------------------------------------------------------------- report


def test_report_on_a_real_run(real_run):
    path = write_report(real_run)
    assert path == real_run / "report.md"
    md = path.read_text("utf-8")
    for heading in ("## Overview", "## Results per dataset", "## Rankings across datasets",
                    "## Negative transfer", "## Task relationships", "## Cost",
                    "## Environment", "## Failed trials"):
        assert heading in md
    assert "| hps" in md and "mgda" in md and "stl (baselines)" in md
    assert re.search(r"-?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\]", md)  # a Δm with interval
    html = _html(real_run)
    _assert_self_contained(html)
    plots = {p.name for p in (real_run / "plots").iterdir()}
    for name in ("delta-m-heatmap", "cost-quality", "throughput"):
        assert {f"{name}.png", f"{name}.svg"} <= plots
    assert any(n.startswith("task-changes-") and n.endswith(".svg") for n in plots)
    assert any(n.startswith("weights-") for n in plots)  # mgda's weights vary
    tables = {p.name for p in (real_run / "tables").iterdir()}
    for name in ("task-changes", "cost-quality", "environment"):
        assert {f"{name}.csv", f"{name}.tex"} <= tables
    assert any(n.startswith("results-mmoe_synthetic") for n in tables)
    tex = (real_run / "tables" / "cost-quality.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$\Delta$m" in tex


def test_report_with_every_optional_part(synthetic):
    md = (synthetic / "report.md").read_text("utf-8")
    plots = {p.stem for p in (synthetic / "plots").glob("*.svg")}
    assert {p.stem for p in (synthetic / "plots").glob("*.png")} == plots
    for prefix in ("pareto-toy2", "pareto-toy3", "conflict-toy2", "cosine-toy2",
                   "affinity-toy3", "experts-toy2", "weights-toy2", "task-changes-toy2",
                   "cd-diagram", "delta-m-heatmap", "cost-quality", "throughput",
                   "speed-throughput", "scaling"):
        assert any(p.startswith(prefix) for p in plots), prefix
    tables = {p.stem for p in (synthetic / "tables").glob("*.csv")}
    for name in ("conflict", "affinity", "expert-utilisation", "speed", "rankings",
                 "scalarization-toy2", "scalarization-toy3", "failed", "negative-transfer"):
        assert name in tables, name
    # Cost-quality uses peak memory from the speed records.
    assert "peak memory (MiB)" in md
    # Friedman on 3 datasets x 4 strategies; mgda (always worst) has negative transfer.
    assert "Friedman χ²" in md and "Nemenyi CD" in md
    assert re.search(r"hps/mgda +\| \w+ +\| -\d", md)
    # ls trials stay out of the rankings but trace the front.
    rankings = (synthetic / "tables" / "rankings.csv").read_text()
    assert "hps/ls" not in rankings and "hps/pcgrad" in rankings
    front = (synthetic / "tables" / "scalarization-toy2.csv").read_text().splitlines()
    header = front[0].split(",")
    rows = [dict(zip(header, r.split(","), strict=False)) for r in front[1:]]
    mgda = next(r for r in rows if r["weighting"] == "mgda")
    assert mgda["dominated"] == "True"
    pcgrad = next(r for r in rows if r["weighting"] == "pcgrad")
    assert pcgrad["dominated"] == "False"
    assert "error" in md and "diverged" in md  # failed trials listed


def test_report_escapes_config_strings(synthetic):
    html = _html(synthetic)
    _assert_self_contained(html)  # no raw <script> anywhere
    assert "&lt;script&gt;alert(&#34;ds&#34;)&lt;/script&gt;" in html
    assert "w&lt;script&gt;x&lt;/script&gt;$_&amp;%" in html
    assert "&lt;b&gt;bad&lt;/b&gt;" in html  # error messages are escaped too
    assert "synthetic &lt;records&gt; &amp; co" in html
    tex = "\n".join(p.read_text() for p in (synthetic / "tables").glob("*.tex"))
    assert r"w\textless{}script\textgreater{}x\textless{}/script\textgreater{}\$\_\&\%" in tex
    assert latex_escape("a_b & {c}~^\\") == (
        r"a\_b \& \{c\}\textasciitilde{}\textasciicircum{}\textbackslash{}")
    # File names derived from labels are safe.
    for p in (synthetic / "plots").iterdir():
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name), p.name


def test_load_speed_tolerates_missing_fields(tmp_path):
    (tmp_path / "speed").mkdir()
    (tmp_path / "speed" / "a.json").write_text(json.dumps({"kind": "speed", "strategy": "ew"}))
    (tmp_path / "speed" / "b.json").write_text("{not json")
    (tmp_path / "speed" / "c.json").write_text(json.dumps({"kind": "other"}))
    df = load_speed(tmp_path)
    assert len(df) == 1 and df.loc[0, "strategy"] == "ew"
    assert math.isnan(df.loc[0, "step_median_s"])
    assert load_speed(tmp_path / "nothing").empty


def test_report_of_a_150_trial_run_is_fast(synthetic):
    assert len(list((synthetic / "trials").glob("*.json"))) >= 150
    # CPU time, not wall time: the test machine may be shared; on an idle machine they
    # agree (about 7 s here).
    assert float((synthetic.parent / "report_cpu_s").read_text()) < 30.0


def test_report_gives_no_negative_transfer_verdict_below_three_seeds(tmp_path):
    # mgda is 6 % worse on every task: with 2 seeds the percentile bootstrap interval was
    # [min, max] of the two values and said "negative transfer: yes".
    run = synthetic_run(tmp_path / "run", seeds=(0, 1), datasets={"toy2": {
        "a": "binary", "b": "binary"}}, extras=False, ls=False)
    md = write_report(run).read_text("utf-8")
    assert "Student-t interval of the mean over seeds" in md
    assert "judged only with at least 3 seeds" in md
    assert "no negative-transfer verdict" in md and "Tasks with negative transfer" not in md
    changes = (run / "tables" / "task-changes.csv").read_text().splitlines()
    mgda = [r for r in changes if "hps/mgda" in r]
    assert len(mgda) == 2 and all(",False,too few seeds (n=2)" in r for r in mgda)


def test_report_flags_unconverged_trials_and_noisy_step_times(tmp_path):
    run = synthetic_run(tmp_path / "run", seeds=(0, 1, 2), datasets={"toy2": {
        "a": "binary", "b": "binary"}}, extras=False, ls=False)
    store = RunStore(run)
    for rec in list(store.records()):
        name = rec.spec.weighting.name
        # 3 epochs: mgda and the baselines of task a end on their best validation epoch.
        last = name == "mgda" or rec.spec.tasks == ("a",)
        update: dict = {"best_epoch": 2 if last else 1}
        if name == "pcgrad":  # per-epoch step times all over the place
            update["timing"] = rec.timing.model_copy(update={"step_spread": 0.6})
        if name == "ew" and rec.spec.tasks is None and rec.spec.seed == 0:
            update["wall_s"] = 5.7  # a worker's first trial: start-up outside trial_s
        store.write(rec.model_copy(update=update))
    md = write_report(run).read_text("utf-8")
    table = md[md.index("### toy2"):md.index("## Rankings")]
    assert "best = last epoch" in table
    assert re.search(r"\| hps +\| mgda .*\| 3/3 +\|", table)
    assert re.search(r"\| hps +\| ew .*\| 1\.0 ± 0\.0 .*\| 0/3 +\|", table)
    assert re.search(r"\| stl \(baselines\) .*\| 3/6 +\|", table)
    assert ("Probably not converged: 6 of 21 trials selected their last epoch (of 3)"
            in table)
    assert "hps/mgda 3/3" in table and "stl (baseline: a) 3/3" in table
    assert "hps/ew" not in table.split("Probably not converged")[1].split(".")[0]
    assert "Probably not converged: 6 of 21 finished trials" in md  # overview
    assert re.search(r"\| hps +\| pcgrad .*\d †", table)
    assert not re.search(r"\| hps +\| (ew|mgda) .*†", table)
    assert "† step time with a large spread" in table
    assert "Left out of every step and trial time" in md


def test_report_without_records_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        write_report(tmp_path)


# --------------------------------------------------------------------------- compare


def _compare(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.main(parser.parse_args(list(argv)))


def test_compare_flags_the_changed_strategy(real_run, tmp_path, capsys):
    run_b = tmp_path / "b"
    shutil.copytree(real_run, run_b)
    store = RunStore(run_b)
    factors = {"auc": 0.7, "accuracy": 0.7, "mse": 1.5, "mae": 1.5}
    for rec in list(store.records()):
        if rec.spec.weighting.name != "mgda":
            continue
        metrics = {split: {task: {m: v * factors.get(m, 1.0) for m, v in values.items()}
                           for task, values in per_task.items()}
                   for split, per_task in rec.metrics.items()}
        rec = rec.model_copy(update={"metrics": metrics})
        store.write(rec)
        spec = dataclasses.replace(rec.spec, weighting=Component("newstrat", {}))
        extra = rec.model_copy(update={
            "id": spec.id, "spec": spec,
            "labels": rec.labels.model_copy(update={"weighting": "newstrat"})})
    store.write(extra)
    manifest = json.loads((run_b / "manifest.json").read_text())
    manifest["trials"].append(extra.id)  # a trial of run b only (else left out as foreign)
    (run_b / "manifest.json").write_text(json.dumps(manifest))

    assert _compare(str(real_run), str(run_b)) == 0
    out = capsys.readouterr().out
    report = (run_b / f"compare-{real_run.name}.md").read_text()
    assert report.strip() in out
    cmp = compare.compare_runs(real_run, run_b)
    sig = cmp.significant
    assert not sig.empty and set(sig["weighting"]) == {"mgda"}
    assert (sig["direction"] == "worse").all()
    ew = cmp.rows[cmp.rows["weighting"] == "ew"]
    assert (ew["diff"] == 0).all()
    timing = ew["quantity"] == "step (ms)"
    assert (ew[~timing]["exceeds_noise"] == "no").all()
    assert (ew[timing]["exceeds_noise"] == "not tested").all()
    assert cmp.only_a == [] and [k[1:] for k in cmp.only_b] == [("hps", "newstrat")]
    assert "## Only in B" in report and "newstrat" in report
    assert "| mgda" in report and "yes" in report

    assert _compare(str(real_run), str(run_b), "--fail-on-change",
                    "--out", str(tmp_path / "c.md")) == 1
    assert (tmp_path / "c.md").is_file()
    assert _compare(str(real_run), str(real_run), "--fail-on-change",
                    "--out", str(tmp_path / "same.md")) == 0


def test_compare_reports_sweep_differences_and_bad_input(tmp_path):
    a = synthetic_run(tmp_path / "a", seeds=(0, 1), extras=False, ls=False)
    b = synthetic_run(tmp_path / "b", seeds=(0, 1), extras=False, ls=False)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["sweep"]["train"] = {"epochs": 5}
    (b / "manifest.json").write_text(json.dumps(manifest))
    text = compare.render(compare.compare_runs(a, b))
    assert "`train.epochs`" in text and "0 beyond seed noise" in text
    with pytest.raises(ConfigError):
        _compare(str(a), str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        compare.compare_runs(a, b, alpha=2.0)


def test_compare_gives_timings_no_seed_noise_verdict(tmp_path, capsys):
    """Run B's steps are 3x slower in every trial, with the same seed-to-seed variation:
    Welch's test over seeds would call that beyond seed noise, but seed variation is not a
    timing's noise, so timings are reported without that verdict."""
    a = synthetic_run(tmp_path / "a", seeds=(0, 1, 2), extras=False, ls=False)
    b = synthetic_run(tmp_path / "b", seeds=(0, 1, 2), extras=False, ls=False)
    store = RunStore(b)
    for rec in list(store.records()):
        timing = rec.timing.model_copy(update={"step_s": rec.timing.step_s * 3.0})
        store.write(rec.model_copy(update={"timing": timing}))
    cmp = compare.compare_runs(a, b)
    steps = cmp.rows[cmp.rows["quantity"] == "step (ms)"]
    assert not steps.empty and (steps["rel_diff_pct"] > 150).all()
    assert (steps["exceeds_noise"] == "not tested").all()
    assert steps["welch_p"].isna().all() and steps["diff_low"].isna().all()
    assert cmp.significant.empty  # nothing else changed
    text = compare.render(cmp)
    assert "0 beyond seed noise" in text and "timings not tested" in text
    assert "| not tested" in text
    assert _compare(str(a), str(b), "--fail-on-change", "--out", str(tmp_path / "c.md")) == 0


def test_compare_interval_is_welchs_and_agrees_with_the_test():
    from scipy import stats

    a, b = np.array([1.0, 2.0]), np.array([10.0, 14.0])
    lo, hi = compare.welch_interval(a, b, 0.95)
    # diff 10.5, se² = 0.5/2 + 8/2 = 4.25, df = 4.25² / (0.25² + 4²) = 1.1247
    half = stats.t.ppf(0.975, 4.25**2 / (0.25**2 + 4.0**2)) * math.sqrt(4.25)
    assert (lo, hi) == pytest.approx((10.5 - half, 10.5 + half))
    assert lo < 0 < hi  # two seeds each: not distinguishable (a bootstrap said [8, 13])
    assert compare._test(a, b, 0.05)[1] == "no"
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = rng.normal(0, 1, 4), rng.normal(rng.uniform(0, 3), 1, 3)
        lo, hi = compare.welch_interval(x, y, 0.95)
        assert (lo > 0 or hi < 0) == (compare._test(x, y, 0.05)[1] == "yes")
    assert compare.welch_interval(np.array([1.0, 1.0]), np.array([2.0, 2.0]), 0.95) == (
        1.0, 1.0)
    assert all(math.isnan(v) for v in compare.welch_interval(np.array([1.0]), b, 0.95))


def test_toy_landscape_section_draws_trajectories_and_endpoints(tmp_path, write_spec):
    from bench.cli import main

    spec = write_spec(
        'name = "toyrep"\n'
        'datasets = [{ name = "toy2", start = 0, steps_per_epoch = 60 }]\n'
        'sharing = [{ name = "landscape", record_every = 20 }]\n'
        'weighting = ["ew", "mgda"]\n'
        "[train]\nepochs = 2\nbatch_size = 1\nlr = 0.01\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--executor", "inline",
                 "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Toy landscape" in text and "on Pareto set" in text
    assert (out / "plots" / "toy-trajectories.png").stat().st_size > 1000
    table = (out / "tables" / "toy-endpoints.csv").read_text().splitlines()
    assert len(table) == 3  # header + ew + mgda


def test_probe_results_from_too_few_steps_are_left_out_with_a_note(tmp_path):
    """A schedule longer than the trial leaves one probed step (step 0, before any strategy
    acted): the report says so and draws no per-strategy finding from it."""
    run = synthetic_run(tmp_path / "run", seeds=(0, 1, 2), ls=False, extras=False,
                        datasets={"long": {"a": "binary", "b": "binary"},
                                  "short": {"p": "binary", "q": "binary"}},
                        strategies={("hps", "ew"): 2.0, ("hps", "mgda"): -6.0})
    store = RunStore(run)
    rng = np.random.default_rng(1)
    for rec in list(store.records()):
        if rec.spec.tasks is None:
            dataset = rec.spec.dataset.name
            probes = _probes(rec.tasks, rng,
                             steps=range(0, 60, 10) if dataset == "long" else [0])
            store.write(rec.model_copy(update={"probes": probes}))
    write_report(run)
    md = (run / "report.md").read_text("utf-8")
    section = md[md.index("### Gradient conflict"):md.index("## Cost")]
    assert "fewer than 5 probed steps" in section
    assert "short: 2 of its strategies (hps/ew, hps/mgda), 1 probed step per trial" in section
    assert "| long " in section and "| short " not in section
    assert "mean cosine [95% CI]" in section and "| 6 " in section  # probed steps shown
    plots = {p.stem for p in (run / "plots").glob("*.png")}
    assert {"conflict-long", "cosine-long", "affinity-long"} <= plots
    assert not {"conflict-short", "cosine-short", "affinity-short"} & plots
    conflict = (run / "tables" / "conflict.csv").read_text().splitlines()
    assert any(r.startswith("short,") and r.endswith(",1,False") for r in conflict)
    assert any(r.startswith("long,") and r.endswith(",6,True") for r in conflict)


def test_affinity_heatmap_values_are_readable():
    """Affinities of order 1e-5 off the diagonal are written in a power-of-ten unit, not as
    0.00, and the colour scale follows the off-diagonal cells."""
    import pandas as pd

    from bench.report import plots

    m = pd.DataFrame([[1.7e-2, -8.2e-5], [3.1e-5, 1.8e-2]], index=["t1", "t2"],
                     columns=["t1", "t2"])
    fig = plots.affinity_heatmaps({"hps/ew": m}, "affinity")
    ax = fig.axes[0]
    cells = [t.get_text() for t in ax.texts]
    assert cells == ["1.7k", "-8.2", "3.1", "1.8k"]
    colorbar = fig.axes[1]
    assert "1e-5" in colorbar.get_ylabel()
    assert colorbar.get_ylim() == pytest.approx((-8.2, 8.2))
