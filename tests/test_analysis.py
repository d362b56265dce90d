"""delta-m and per-task relative change on numbers computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.analysis import per_task_changes, trial_summary
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
