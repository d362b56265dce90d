"""Figures show everything they claim (issue 17): with 12 strategies and two datasets of the
same family, every strategy and dataset appears, with whole, distinct labels, in the same
order in every figure. Read from the SVGs, whose text stays text (svg.fonttype none)."""

from __future__ import annotations

import re

import numpy as np

from bench.report import write_report
from bench.store import RunStore
from unit.test_report import _probes, _record, _spec, baseline_of

WEIGHTINGS = ["ew", "uw", "dwa", "rlw", "famo", "gradnorm", "mgda", "pcgrad", "cagrad",
              "nash_mtl", "imtl_g", "upgrad"]
DATASETS = ["mmoe_synthetic(correlation=0.2)", "mmoe_synthetic(correlation=0.9)"]
TASKS = {"t1": "regression", "t2": "regression"}


def _run(root):
    rng = np.random.default_rng(0)
    store = RunStore(root)
    ids = []
    for dataset in DATASETS:
        for seed in (0, 1, 2):
            for i, w in enumerate(WEIGHTINGS):
                spec = _spec(dataset, "hps", w, seed)
                values = {t: 2.0 * (1 - (i - 5) / 100 + rng.normal(0, 0.002)) for t in TASKS}
                store.write(_record(spec, TASKS, values, rng=rng,
                                    extra={"probes": _probes(list(TASKS), rng)}))
                ids.append(spec.id)
                for t in TASKS:
                    b = baseline_of(spec, t)
                    if not store.has(b.id):
                        store.write(_record(b, {t: TASKS[t]}, {t: 2.0}, rng=rng))
                        ids.append(b.id)
    store.write_manifest({"name": "figures"}, ids)
    return root


def _svg_text(run, name: str) -> str:
    return (run / "plots" / f"{name}.svg").read_text("utf-8")


def _order(text: str, labels: list[str]) -> list[str]:
    return sorted(labels, key=text.index)


def test_every_strategy_and_dataset_appears_with_whole_labels_in_one_order(tmp_path):
    run = _run(tmp_path / "run")
    write_report(run)
    plots = {p.stem for p in (run / "plots").glob("*.svg")}
    strategies = sorted(f"hps/{w}" for w in WEIGHTINGS)
    for prefix in ("conflict-", "cosine-", "affinity-", "weights-"):
        figures = sorted(p for p in plots if p.startswith(prefix))
        assert len(figures) == 2, (prefix, figures)  # one per dataset: labels distinct
        for fig in figures:
            text = _svg_text(run, fig)
            shown = [s for s in strategies if re.search(re.escape(s) + r"\b", text)]
            if prefix == "weights-":  # strategies whose weights never change are left out
                strategies_here = [s for s in strategies if s != "hps/ew"]
            else:
                strategies_here = strategies
            assert shown == strategies_here, (fig, set(strategies_here) - set(shown))
            assert _order(text, strategies_here) == strategies_here  # same order everywhere
    # Whole dataset labels: the two correlations stay apart in the heatmap and throughput.
    for fig in ("delta-m-heatmap", "throughput"):
        text = _svg_text(run, fig)
        for ds in DATASETS:
            assert ds in text, (fig, ds)
    # The weights panels share one y-scale and name their lines' tasks.
    weights = _svg_text(run, next(p for p in sorted(plots) if p.startswith("weights-")))
    assert ">task<" in weights or "task</text>" in weights
    html = (run / "report.html").read_text("utf-8")
    assert "thead th { white-space: normal" in html  # long headers wrap, the page does not


def test_cost_quality_uses_the_reports_strategy_colours_and_order(tmp_path):
    """Issue 17: the cost-quality plot lists strategies in the one (sorted) order and draws
    each in the colour every other figure gives it, whatever the order of its rows."""
    import pandas as pd

    from bench.report import plots

    strategies = [f"hps/{w}" for w in WEIGHTINGS]
    colors = plots.strategy_colors(strategies)
    assert list(colors) == sorted(strategies)
    rows = list(reversed(strategies))  # rows in another order than the report's
    cq = pd.DataFrame({"dataset": "d", "strategy": rows,
                       "delta_m_task": np.linspace(-1, 1, len(rows)),
                       "step_s": np.linspace(0.001, 0.002, len(rows)),
                       "peak_memory_bytes": np.nan, "non_dominated": False})
    fig = plots.cost_quality(cq, colors)
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()][:-1]
    assert names == sorted(strategies)
    for handle, name in zip(legend.legend_handles, names, strict=False):
        assert tuple(handle.get_color()) == tuple(colors[name])
    # In a whole report, the legend lists every strategy in the same order.
    run = _run(tmp_path / "run")
    write_report(run)
    text = _svg_text(run, "cost-quality")
    legend_order = [s for s in re.findall(r"hps/[a-z_]+", text) if s in strategies]
    assert legend_order[-len(strategies):] == sorted(strategies)
