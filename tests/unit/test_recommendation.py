"""The report's Recommendation section (bench/recommend.py) on synthetic runs whose effects
are known: the best strategy, its ties, the cheapest tie and negative transfer."""

from __future__ import annotations

import pandas as pd

from bench.report import write_report
from bench.report.recommend import BEST_MARK
from unit.test_report import synthetic_run

DATASETS = {"dA": {"a": "binary", "b": "binary"}, "dB": {"a": "binary", "b": "binary"}}
# pcgrad is best (Δm 4) but hurts task b; upgrad is within noise of it and cheaper
# (synthetic step times: pcgrad 9 ms, upgrad 3 ms); ew and mgda are clearly worse.
STRATEGIES = {
    ("hps", "pcgrad"): {"a": 12.0, "b": -4.0},
    ("hps", "upgrad"): 3.9,
    ("hps", "ew"): 1.0,
    ("hps", "mgda"): -6.0,
    ("mmoe", "ew"): 0.5,
}


def _table(run, name: str) -> pd.DataFrame:
    return pd.read_csv(run / "tables" / f"{name}.csv")


def test_recommendation_names_best_ties_cheapest_and_negative_transfer(tmp_path):
    run = synthetic_run(tmp_path / "run", seeds=(0, 1, 2), datasets=DATASETS,
                        strategies=STRATEGIES, ls=False, extras=False, noise=0.3)
    md = write_report(run).read_text("utf-8")
    # The first section of the report.
    assert md.index("## Recommendation") < md.index("## Overview")
    rec = _table(run, "recommendation").set_index("dataset")
    for ds in DATASETS:
        row = rec.loc[ds]
        assert row["best"] == "hps/pcgrad"
        assert row["tied with best"] == "hps/upgrad"
        assert row["cheapest of those"] == "hps/upgrad"
        assert row["negative transfer under best"] == "b"
        assert row["under cheapest"] == "none"
    per = _table(run, "recommendation-dA")
    assert list(per["strategy"]) == ["hps/pcgrad", "hps/upgrad", "hps/ew", "mmoe/ew",
                                     "hps/mgda"]
    assert per["rank"].iloc[0] == BEST_MARK
    assert list(per["tied with best"]) == ["—", "yes", "no", "no", "no"]
    # Across datasets: Nemenyi over 2 datasets and 5 strategies.
    assert "best mean rank by Δm task: hps/pcgrad" in md
    assert "tied with it (mean rank within the Nemenyi CD" in md
    # Architecture-level summary: hps's best is pcgrad, mmoe ran with ew only.
    arch = _table(run, "architectures")
    top = arch[arch["dataset"] == "dA"].iloc[0]
    assert (top["sharing"], top["with"]) == ("hps", "pcgrad")
    assert "## Recommendation" in md and "### Architectures" in md


def test_results_tables_are_sorted_by_delta_m_with_the_best_marked(tmp_path):
    run = synthetic_run(tmp_path / "run", seeds=(0, 1, 2), datasets=DATASETS,
                        strategies=STRATEGIES, ls=False, extras=False)
    write_report(run)
    results = _table(run, "results-dA")
    mtl = results[results["sharing"] != "stl"]
    assert list(mtl["weighting"])[:2] == ["pcgrad", "upgrad"]
    assert mtl["delta_m_task"].is_monotonic_decreasing
    assert results["sharing"].iloc[-1] == "stl"  # baselines last
    html = (run / "report.html").read_text("utf-8")
    assert f"<td>{BEST_MARK}</td>" in html


def test_one_seed_says_the_tie_test_is_not_possible(tmp_path):
    run = synthetic_run(tmp_path / "run", seeds=(0,), datasets={"dA": DATASETS["dA"]},
                        strategies=STRATEGIES, ls=False, extras=False)
    md = write_report(run).read_text("utf-8")
    row = _table(run, "recommendation").iloc[0]
    assert row["best"] == "hps/pcgrad"
    assert row["tied with best"].startswith("tie test not possible: 1 seed(s)")
    assert row["cheapest of those"] == "hps/pcgrad"  # no ties: the best itself
    assert row["negative transfer under best"].startswith("no verdict (1 seeds")
    assert "yes" not in set(_table(run, "recommendation-dA")["tied with best"])
    assert "Across datasets" not in md  # one dataset: no cross-dataset ranking
