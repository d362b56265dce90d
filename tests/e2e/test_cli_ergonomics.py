"""Sweep ergonomics (issue 17): ``mtlbench --version``, ``run --dry-run`` and ``list
presets``."""

from __future__ import annotations

import math
from importlib import resources

import pytest
import tomllib

from bench import dryrun
from bench.cli import main as cli_main
from bench.config import load_spec, preset_names
from bench.grid import expand

SPEC = """
name = "dry"
seeds = [0, 1]
datasets = [{ name = "mmoe_synthetic", num_train = 300, num_val = 64, num_test = 64, input_dim = 8 }]
sharing = ["hps", "mmoe"]
weighting = ["ew", "mgda"]
executor = "inline"

[model]
hidden = [8]

[train]
epochs = 3
batch_size = 64
"""


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "mtlbench 0.1.0"


def test_dry_run_counts_estimates_and_writes_nothing(write_spec, tmp_path, monkeypatch,
                                                     capsys):
    path = write_spec(SPEC)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli_main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    # 2 sharing x 2 weighting x 2 seeds multi-task; 2 tasks x 2 seeds baselines.
    assert "12 trials (8 multi-task, 4 single-task baselines)" in out
    assert "1 trials at once" in out  # the inline executor runs one at a time
    assert "time estimate:" in out and "nothing written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out/, no results/


def test_dry_run_of_a_toy_landscape_counts_without_an_estimate(capsys):
    # Objective tasks have no labelled batches to time a step on (it was a traceback).
    assert cli_main(["run", "--preset", "toy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "40 trials (40 multi-task, 0 single-task baselines)" in out
    assert "time estimate: none" in out and "nothing written" in out


def test_dry_run_estimate_is_steps_times_step_cost(write_spec, monkeypatch):
    spec = load_spec(write_spec(SPEC))
    trials = expand(spec)
    calls = []

    def fake_step(t, shape, tasks):
        calls.append((t.sharing.name, t.weighting.name, tasks))
        return 0.01 if t.sharing.name == "mmoe" else 0.002

    monkeypatch.setattr(dryrun, "_time_step", fake_step)
    # 300 training samples / batch 64 -> 5 steps per epoch, 3 epochs.
    steps = 3 * math.ceil(300 / 64)
    cost = sum(steps * (0.01 if t.sharing.name == "mmoe" else 0.002) for t in trials)
    assert dryrun.estimate(trials, workers=2) == pytest.approx(cost / 2)
    # Each distinct (sharing, weighting, tasks) is timed once, not once per seed.
    assert len(calls) == len(set(calls)) == 2 * 2 + 1


def test_list_presets_shows_description_count_and_measured_time(capsys):
    assert cli_main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        assert name in out
    raw = tomllib.loads((resources.files("bench") / "presets" / "default.toml")
                        .read_text("utf-8"))
    spec = load_spec(preset="default")
    trials = expand(spec)
    base = sum(t.is_baseline for t in trials)
    assert f"{len(trials)} ({len(trials) - base} + {base} baselines)" in out
    # The run time column is what the preset file records (measured_run_s, measured_on).
    row = next(r for r in dryrun.preset_rows() if r[0] == "default")
    expected = ("not measured" if "measured_run_s" not in raw
                else dryrun._duration(raw["measured_run_s"]))
    assert row[3].startswith(expected)
    assert cli_main(["list", "presets", "--names"]) == 0
    assert capsys.readouterr().out.split() == preset_names()
