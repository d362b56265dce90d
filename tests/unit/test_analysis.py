"""delta-m and per-task relative change on numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.analysis import (
    BOOTSTRAP_RESAMPLES,
    CI_LEVEL,
    MIN_SEEDS_VERDICT,
    bootstrap_ci,
    cost_quality,
    delta_m_intervals,
    is_scalarization,
    nemenyi_cd,
    pareto_mask,
    per_task_changes,
    rankings,
    scalarization_front,
    strategy_label,
    t_interval,
    task_change_intervals,
    trial_summary,
)
from bench.store import COLUMNS


def _row(trial, task, metric, value, *, baseline_task=None, baseline_id=None, seed=0):
    row = dict.fromkeys(COLUMNS)
    row.update(
        trial_id=trial, dataset="d", sharing="stl" if baseline_task else "hps",
        weighting="ew", seed=seed, baseline_task=baseline_task, baseline_id=baseline_id,
        status="ok", task=task, split="test", metric=metric, value=value,
    )
    return row


def _frame():
    rows = [
        # Baselines: task a (classification, accuracy 0.80), task b (regression mse 2.0, mae 1.0)
        _row("Ba", "a", "accuracy", 0.80, baseline_task="a"),
        _row("Bb", "b", "mse", 2.0, baseline_task="b"),
        _row("Bb", "b", "mae", 1.0, baseline_task="b"),
        # Multi-task trial M: accuracy 0.88 (+10%), mse 2.5 (-25%), mae 0.9 (+10%)
        _row("M", "a", "accuracy", 0.88, baseline_id="Ba"),
        _row("M", "b", "mse", 2.5, baseline_id="Bb"),
        _row("M", "b", "mae", 0.9, baseline_id="Bb"),
        # Losses never enter delta-m.
        _row("M", "a", "loss", 123.0, baseline_id="Ba"),
        _row("Ba", "a", "loss", 1.0, baseline_task="a"),
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_relative_improvement_signs():
    changes = per_task_changes(_frame()).set_index(["task", "metric"])["rel_improvement"]
    assert changes[("a", "accuracy")] == pytest.approx(0.10)
    assert changes[("b", "mse")] == pytest.approx(-0.25)
    assert changes[("b", "mae")] == pytest.approx(0.10)
    assert ("a", "loss") not in changes.index


def test_delta_m_both_conventions_by_hand():
    s = trial_summary(_frame()).set_index("trial_id").loc["M"]
    # Task level: task a +10 %, task b mean(-25 %, +10 %) = -7.5 %; mean = +1.25 %.
    assert s["rel_a"] == pytest.approx(10.0)
    assert s["rel_b"] == pytest.approx(-7.5)
    assert s["delta_m_task"] == pytest.approx(1.25)
    # Metric level (Nash-MTL): drops -10 %, +25 %, -10 % -> mean +1.6667 %.
    assert s["delta_m_metric"] == pytest.approx(5.0 / 3.0)


def test_missing_baseline_gives_nan_not_partial_mean():
    frame = _frame()
    frame = frame[frame["trial_id"] != "Bb"]
    s = trial_summary(frame).set_index("trial_id").loc["M"]
    assert math.isnan(s["delta_m_task"]) and math.isnan(s["delta_m_metric"])


def test_seeds_pair_with_their_own_baseline():
    rows = [
        _row("B0", "a", "accuracy", 0.5, baseline_task="a", seed=0),
        _row("B1", "a", "accuracy", 0.8, baseline_task="a", seed=1),
        _row("M0", "a", "accuracy", 0.6, baseline_id="B0", seed=0),
        _row("M1", "a", "accuracy", 0.6, baseline_id="B1", seed=1),
    ]
    s = trial_summary(pd.DataFrame(rows, columns=COLUMNS)).set_index("trial_id")
    assert s.loc["M0", "delta_m_task"] == pytest.approx(20.0)
    assert s.loc["M1", "delta_m_task"] == pytest.approx(-25.0)


def test_trials_of_datasets_with_different_tasks_each_get_delta_m():
    rows = [
        _row("Bx", "x", "accuracy", 0.5, baseline_task="x"),
        _row("By", "y", "accuracy", 0.4, baseline_task="y"),
        _row("Mx", "x", "accuracy", 0.6, baseline_id="Bx"),
        _row("My", "y", "accuracy", 0.5, baseline_id="By"),
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.loc[frame["trial_id"].isin(["By", "My"]), "dataset"] = "other"
    s = trial_summary(frame).set_index("trial_id")
    assert s.loc["Mx", "delta_m_task"] == pytest.approx(20.0)
    assert s.loc["My", "delta_m_task"] == pytest.approx(25.0)


# --------------------------------------------------------------------------- intervals


def test_bootstrap_interval_contains_mean_and_is_reproducible():
    values = [1.0, 2.0, 4.0, 7.0]
    mean, low, high = bootstrap_ci(values)
    assert mean == pytest.approx(3.5)
    assert 1.0 <= low < mean < high <= 7.0
    assert bootstrap_ci(values) == (mean, low, high)  # seeded
    assert BOOTSTRAP_RESAMPLES == 10_000 and CI_LEVEL == 0.95


def test_bootstrap_small_samples_by_hand():
    # One seed: no interval.
    mean, low, high = bootstrap_ci([3.0])
    assert mean == 3.0 and math.isnan(low) and math.isnan(high)
    # Two seeds a < b: resampled means are a, (a+b)/2, b with probabilities 1/4, 1/2, 1/4,
    # so the 2.5 % and 97.5 % percentiles are a and b.
    assert bootstrap_ci([2.0, 6.0]) == (4.0, 2.0, 6.0)
    # No spread: a degenerate interval; NaNs (a missing seed) are dropped.
    assert bootstrap_ci([5.0, 5.0, float("nan"), 5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def _summary(rows):
    """A trial_summary-like frame from (strategy, seed, {task: rel change %})."""
    out = []
    for i, (weighting, seed, rel, *rest) in enumerate(rows):
        dataset = rest[0] if rest else "d"
        sharing = rest[1] if len(rest) > 1 else "hps"
        row = {"trial_id": f"t{i}", "dataset": dataset, "sharing": sharing,
               "weighting": weighting, "seed": seed}
        row.update({f"rel_{t}": v for t, v in rel.items()})
        row["delta_m_task"] = sum(rel.values()) / len(rel)
        row["delta_m_metric"] = -row["delta_m_task"]
        out.append(row)
    return pd.DataFrame(out)


def test_negative_transfer_needs_the_whole_interval_below_zero():
    summary = _summary([
        ("ew", 0, {"a": -5.0, "b": -5.0}),
        ("ew", 1, {"a": -6.0, "b": 5.0}),
        ("ew", 2, {"a": -4.0, "b": 0.0}),
        ("one", 0, {"a": -9.0, "b": -9.0}),  # a single seed: no interval, never flagged
    ])
    iv = task_change_intervals(summary).set_index(["weighting", "task"])
    a = iv.loc[("ew", "a")]
    assert a["mean"] == pytest.approx(-5.0) and a["n_seeds"] == 3
    # Student-t: -5 ± t(0.975, 2) * 1 / sqrt(3) = -5 ± 2.484.
    assert (a["low"], a["high"]) == pytest.approx((-7.484, -2.516), abs=1e-3)
    assert bool(a["negative_transfer"]) and a["verdict"] == "yes"
    b = iv.loc[("ew", "b")]
    assert b["low"] < 0 < b["high"] and not bool(b["negative_transfer"])
    assert not bool(iv.loc[("one", "a"), "negative_transfer"])
    assert iv.loc[("ew", "a"), "strategy"] == strategy_label("hps", "ew") == "hps/ew"


def test_t_interval_by_hand():
    # n = 2: mean ± t(0.975, 1) s / sqrt(2) with s = 2 sqrt(2), t = 12.706: ± 25.41, far
    # wider than the two values (a percentile bootstrap gives exactly [2, 6]).
    mean, low, high = t_interval([2.0, 6.0])
    assert mean == 4.0 and (low, high) == pytest.approx((4.0 - 25.4124, 4.0 + 25.4124),
                                                          abs=1e-3)
    mean, low, high = t_interval([1.0, 2.0, 4.0, 7.0])  # s = 2.6458, t(0.975, 3) = 3.1824
    assert (low, high) == pytest.approx((3.5 - 4.2099, 3.5 + 4.2099), abs=1e-3)
    assert t_interval([5.0, 5.0, float("nan"), 5.0]) == (5.0, 5.0, 5.0)
    mean, low, high = t_interval([3.0])
    assert mean == 3.0 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in t_interval([]))


def test_no_negative_transfer_verdict_below_the_minimum_seed_count():
    # Two seeds, both clearly negative: the percentile bootstrap gave [min, max] = [-9, -8]
    # and "negative transfer: yes"; now there is no verdict.
    summary = _summary([("ew", 0, {"a": -8.0, "b": 1.0}), ("ew", 1, {"a": -9.0, "b": 2.0})])
    iv = task_change_intervals(summary).set_index("task")
    assert MIN_SEEDS_VERDICT == 3
    assert iv.loc["a", "verdict"] == "too few seeds (n=2)"
    assert not bool(iv.loc["a", "negative_transfer"])
    # The interval itself is wider than the two values (here still below 0: only the
    # minimum seed count withholds the verdict).
    assert iv.loc["a", "low"] < -14.0 and iv.loc["a", "high"] > -3.0
    # A third seed that agrees gives the verdict.
    summary = _summary([("ew", s, {"a": v, "b": 1.0}) for s, v in enumerate([-8, -9, -8.5])])
    iv = task_change_intervals(summary).set_index("task")
    assert iv.loc["a", "verdict"] == "yes" and bool(iv.loc["a", "negative_transfer"])
    assert iv.loc["b", "verdict"] == "no"


def test_delta_m_intervals_contain_the_mean():
    summary = _summary([("ew", s, {"a": v, "b": 2 * v}) for s, v in enumerate([1.0, 2.0, 6.0])])
    row = delta_m_intervals(summary).iloc[0]
    assert row["n_seeds"] == 3
    assert row["delta_m_task"] == pytest.approx(4.5)
    for name in ("delta_m_task", "delta_m_metric"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
    assert row["delta_m_metric"] == pytest.approx(-4.5)
    # Student-t over seeds: delta_m_task per seed is 1.5, 3, 9 (s = 3.9686).
    half = 4.302653 * 3.968627 / math.sqrt(3)
    assert (row["delta_m_task_low"], row["delta_m_task_high"]) == pytest.approx(
        (4.5 - half, 4.5 + half), abs=1e-4)


# --------------------------------------------------------------------------- rankings


def _cells(table):
    return pd.DataFrame([{"dataset": d, "strategy": s, "delta_m_task": v}
                         for d, row in table.items() for s, v in row.items()])


def test_friedman_and_nemenyi_on_a_known_example():
    # 4 datasets, A always best, then B, then C: mean ranks 1, 2, 3.
    # chi2_F = 12 N / (k (k + 1)) * (sum R_j^2 - k (k + 1)^2 / 4) = 4 * (14 - 12) = 8,
    # p = exp(-8 / 2) (chi-square with 2 degrees of freedom).
    table = {f"d{i}": {"A": 5.0 + i, "B": 1.0 + i, "C": -3.0 - i} for i in range(4)}
    r = rankings(_cells(table))
    assert list(r.mean_rank.index) == ["A", "B", "C"]
    assert r.mean_rank.tolist() == [1.0, 2.0, 3.0]
    assert r.friedman_statistic == pytest.approx(8.0)
    assert r.friedman_p == pytest.approx(math.exp(-4.0))
    # CD = q_0.05 sqrt(k (k + 1) / (6 N)), q_0.05(k=3) = 2.343 (Demsar 2006, Table 5a).
    assert r.cd == pytest.approx(2.343 * math.sqrt(12 / 24), abs=1e-3)
    assert r.significantly_different("A", "C")
    assert not r.significantly_different("A", "B")
    assert r.cliques == [["A", "B"], ["B", "C"]]


def test_nemenyi_cd_matches_demsar():
    # Demsar (2006), section 3.2.2: k = 4 classifiers on N = 14 data sets, CD = 1.25.
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.01)
    assert nemenyi_cd(5, 10) == pytest.approx(2.728 * math.sqrt(30 / 60), abs=1e-3)


def test_rankings_state_their_requirements():
    two = rankings(_cells({"d0": {"A": 1.0, "B": 0.0}, "d1": {"A": 2.0, "B": 3.0}}))
    assert not two.testable and ">= 3 strategies" in two.note
    assert two.mean_rank.tolist() == [1.5, 1.5]
    one = rankings(_cells({"d0": {"A": 1.0, "B": 0.0, "C": 2.0}}))
    assert not one.testable and "2 datasets" in one.note
    assert one.mean_rank.index[0] == "C"
    # A strategy without a result on every dataset is left out; ties share their rank.
    partial = rankings(_cells({"d0": {"A": 1.0, "B": 1.0, "C": 0.0, "D": 5.0},
                               "d1": {"A": 2.0, "B": 2.0, "C": 0.0}}))
    assert partial.dropped == ["D"]
    assert partial.ranks.loc["d0", "A"] == partial.ranks.loc["d0", "B"] == 1.5
    # Lower is better (delta_m_metric).
    low = rankings(_cells({"d0": {"A": 1.0, "B": 0.0}}), higher_is_better=False)
    assert low.mean_rank.index[0] == "B"


# --------------------------------------------------------------------------- Pareto


def test_pareto_mask():
    v = np.array([[1.0, 1.0], [2.0, 0.0], [0.5, 0.5], [1.0, 1.0], [np.nan, 9.0]])
    assert pareto_mask(v, [True, True]).tolist() == [True, True, False, True, False]
    # Minimising the second column instead.
    assert pareto_mask(v, [True, False]).tolist() == [False, True, False, False, False]


def test_scalarization_dominance_on_a_two_task_example():
    ls = "ls(weights=[{}])"
    summary = _summary([
        # The ls front: (10, -10), (5, 5), (-10, 10); (0, 0) is dominated by (5, 5).
        (ls.format("1, 0"), 0, {"a": 10.0, "b": -10.0}),
        (ls.format("0.5, 0.5"), 0, {"a": 5.0, "b": 5.0}),
        (ls.format("0, 1"), 0, {"a": -10.0, "b": 10.0}),
        (ls.format("0.3, 0.3"), 0, {"a": 0.0, "b": 0.0}),
        # X: mean (4, 4) over two seeds, dominated by (5, 5).
        ("X", 0, {"a": 3.0, "b": 5.0}),
        ("X", 1, {"a": 5.0, "b": 3.0}),
        # Y: (8, 0) beats every ls point somewhere.
        ("Y", 0, {"a": 8.0, "b": 0.0}),
        # Z: another architecture, without ls trials: no verdict.
        ("Z", 0, {"a": -50.0, "b": -50.0}, "d", "mmoe"),
        # A dataset with 4 tasks is left out.
        ("X", 0, {"a": 1.0, "b": 1.0, "c": 1.0, "e": 1.0}, "four"),
        (ls.format("1, 1, 1, 1"), 0, {"a": 1.0, "b": 1.0, "c": 1.0, "e": 1.0}, "four"),
    ])
    fronts = scalarization_front(summary)
    assert list(fronts) == ["d"]
    f = fronts["d"].set_index("weighting")
    assert f.loc["X", "rel_a"] == pytest.approx(4.0) and f.loc["X", "n_seeds"] == 2
    assert f.loc["X", "dominated"] is True
    assert f.loc["X", "dominated_by"] == ls.format("0.5, 0.5")
    assert f.loc["Y", "dominated"] is False and f.loc["Y", "dominated_by"] == ""
    assert f.loc["Z", "dominated"] is None
    assert f.loc[ls.format("0.3, 0.3"), "on_front"] == False  # noqa: E712
    assert all(f.loc[ls.format(w), "on_front"] for w in ("1, 0", "0.5, 0.5", "0, 1"))
    assert is_scalarization(ls.format("1, 0")) and not is_scalarization("lsx")


def test_cost_quality_marks_non_dominated_strategies():
    cells = pd.DataFrame([
        {"dataset": "d", "sharing": "hps", "weighting": w, "strategy": f"hps/{w}",
         "delta_m_task": dm}
        for w, dm in (("A", 1.0), ("B", 2.0), ("C", 0.5), ("ls(weights=[1, 0])", 9.0))
    ])
    costs = pd.DataFrame([
        {"trial_id": f"{w}{s}", "dataset": "d", "sharing": "hps", "weighting": w, "seed": s,
         "step_s": t * (1 + 0.1 * s), "wall_s": 1.0}
        for w, t in (("A", 1.0), ("B", 3.0), ("C", 2.0), ("ls(weights=[1, 0])", 0.1))
        for s in (0, 1, 2)
    ])
    cq = cost_quality(cells, costs).set_index("weighting")
    assert "ls(weights=[1, 0])" not in cq.index  # scalarization trials are left out
    assert cq.loc["A", "step_s"] == pytest.approx(1.1)  # median over seeds
    assert cq["non_dominated"].to_dict() == {"A": True, "B": True, "C": False}
    # Peak memory (known for A and C only) is a third axis where both rows have it:
    # C now beats A on memory, so C is no longer dominated.
    memory = pd.DataFrame([{"sharing": "hps", "weighting": "A", "peak_memory_bytes": 100},
                           {"sharing": "hps", "weighting": "C", "peak_memory_bytes": 10}])
    cq = cost_quality(cells, costs, memory).set_index("weighting")
    assert cq["non_dominated"].to_dict() == {"A": True, "B": True, "C": True}
    assert math.isnan(cq.loc["B", "peak_memory_bytes"])


def test_no_matching_baseline_gives_an_empty_summary():
    # E.g. records written before a change of the baseline's spec: no id matches.
    frame = _frame()
    frame.loc[frame["baseline_id"].notna(), "baseline_id"] = "elsewhere"
    assert per_task_changes(frame).empty
    s = trial_summary(frame)
    assert s.empty and {"delta_m_task", "delta_m_metric"} <= set(s.columns)
    assert delta_m_intervals(s).empty and task_change_intervals(s).empty
    assert scalarization_front(s) == {}


def test_best_reference_uses_the_tuned_single_task_recipe_for_every_trial():
    """With two baseline recipes (e.g. two learning rates), reference="best" measures
    every trial against the better recipe of each task, seed by seed."""
    rows = []

    def add(tid, weighting, seed, task, value, baseline_task=None, baseline_id=None):
        rows.append({"trial_id": tid, "dataset": "d", "sharing": "hps" if baseline_id else
                     "stl", "weighting": weighting, "seed": seed, "baseline_task": baseline_task,
                     "baseline_id": baseline_id, "status": "ok", "task": task, "split": "test",
                     "metric": "accuracy", "value": value, "wall_s": 1.0, "step_s": 0.1,
                     "parameters": 10})

    for seed in (0, 1):
        # lr=a baselines: 0.5 on both tasks; lr=b: 0.8 on t1, 0.4 on t2.
        add(f"a1{seed}", "ew @lr=a", seed, "t1", 0.5, baseline_task="t1")
        add(f"a2{seed}", "ew @lr=a", seed, "t2", 0.5, baseline_task="t2")
        add(f"b1{seed}", "ew @lr=b", seed, "t1", 0.8, baseline_task="t1")
        add(f"b2{seed}", "ew @lr=b", seed, "t2", 0.4, baseline_task="t2")
        add(f"m{seed}", "ew @lr=a", seed, "t1", 0.6, baseline_id=f"a1{seed}")
        add(f"m{seed}", "ew @lr=a", seed, "t2", 0.6, baseline_id=f"a2{seed}")
    tidy = pd.DataFrame(rows)
    paired = trial_summary(tidy).set_index("seed")
    best = trial_summary(tidy, reference="best").set_index("seed")
    assert paired.loc[0, "rel_t1"] == pytest.approx(20.0)  # 0.6 vs its own 0.5
    assert best.loc[0, "rel_t1"] == pytest.approx(-25.0)  # 0.6 vs the better 0.8
    assert best.loc[0, "rel_t2"] == pytest.approx(20.0)  # 0.6 vs the better 0.5
    with pytest.raises(ValueError, match="reference"):
        trial_summary(tidy, reference="worst")


def test_conflict_summary_reports_the_mean_cosine_interval_beside_the_fraction():
    """Near orthogonal gradients half the probed steps 'conflict' from noise alone: the
    summary gives the mean cosine with its t-interval and says it holds 0."""
    from bench.analysis import conflict_summary

    rows = []
    for seed, (noise, against, along) in enumerate(
            [(0.010, -0.30, 0.20), (-0.012, -0.32, 0.25), (0.003, -0.28, 0.22)]):
        for pair, cos, frac in (("a|b", noise, 0.5), ("a|c", against, 0.9),
                                ("b|c", along, 0.1)):
            rows.append({"dataset": "d", "strategy": "hps/ew", "seed": seed, "pair": pair,
                         "conflict_fraction": frac, "mean_cosine": cos,
                         "mean_magnitude_similarity": 0.9, "probed_steps": 20})
    # One seed only: the interval is over that trial's probed steps.
    rows.append({"dataset": "d", "strategy": "hps/mgda", "seed": 0, "pair": "a|b",
                 "conflict_fraction": 0.25, "mean_cosine": 0.1, "cosines": [0.1, 0.2, 0.0, 0.1],
                 "mean_magnitude_similarity": 0.8, "probed_steps": 4})
    out = conflict_summary(pd.DataFrame(rows)).set_index(["strategy", "pair"])
    noise = out.loc[("hps/ew", "a|b")]
    _, low, high = t_interval([0.010, -0.012, 0.003])
    assert noise["conflict_fraction"] == 0.5 and noise["interval"] == "seeds"
    assert (noise["cosine_low"], noise["cosine_high"]) == pytest.approx((low, high))
    assert noise["cosine_sign"] == "indistinguishable from 0"
    assert out.loc[("hps/ew", "a|c"), "cosine_sign"] == "negative"
    assert out.loc[("hps/ew", "b|c"), "cosine_sign"] == "positive"
    assert out.loc[("hps/ew", "a|b"), "enough_probes"]
    one = out.loc[("hps/mgda", "a|b")]
    _, low, high = t_interval([0.1, 0.2, 0.0, 0.1])
    assert one["interval"] == "probed steps" and one["n_seeds"] == 1
    assert (one["cosine_low"], one["cosine_high"]) == pytest.approx((low, high))
    # 4 probed steps is below the minimum: not a per-strategy finding.
    assert one["probed_steps"] == 4 and not one["enough_probes"]
