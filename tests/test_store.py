"""Store: atomic records, resume, and the tidy DataFrame."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench.config import load_spec
from bench.executors import ExecutorOptions, run_specs
from bench.grid import expand
from bench.store import RunStore, atomic_write_json, load


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # not JSON-serialisable, fails mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_atomic_write_replaces_via_rename(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"v": 1})
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        # At rename time the full new content is already on disk under the temp name.
        seen.append(json.loads(Path(src).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_json(path, {"v": 2})
    assert seen == [{"v": 2}]
    assert json.loads(path.read_text()) == {"v": 2}


def test_resume_skips_finished_trials(tmp_path, write_spec):
    trials = expand(load_spec(write_spec()))
    store = RunStore(tmp_path / "run")
    first = run_specs(trials[:2], store, ExecutorOptions(kind="inline"), progress=False)
    assert len(first.ran) == 2 and first.skipped == 0
    before = {t.id: store.read(t.id)["finished_at"] for t in trials[:2]}
    second = run_specs(trials, store, ExecutorOptions(kind="inline"), progress=False)
    assert second.skipped == 2
    assert set(second.ran) == {t.id for t in trials[2:]}
    assert {t: store.read(t)["finished_at"] for t in before} == before


def test_load_returns_tidy_frame(tmp_path, write_spec):
    trials = expand(load_spec(write_spec()))
    store = RunStore(tmp_path / "run")
    run_specs(trials, store, ExecutorOptions(kind="inline"), progress=False)
    df = load(store.root)
    assert set(df["trial_id"]) == {t.id for t in trials}
    assert set(df["split"]) == {"val", "test"}
    assert {"mse", "mae", "loss"} <= set(df["metric"])
    assert set(df["weighting"]) == {"ew", "mgda"}
    assert set(df["sharing"]) == {"hps", "stl"}
    # One row per trial x task x split x metric.
    assert not df.duplicated(["trial_id", "task", "split", "metric"]).any()
    mtl = df[df["baseline_id"].notna()]
    assert set(mtl["baseline_id"]) <= set(df["trial_id"])


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    store = RunStore(tmp_path)
    store.trials_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = store.trials_dir / f".abc.json.{dead.pid}.k3j.tmp"
    live = store.trials_dir / f".abd.json.{os.getpid()}.k3j.tmp"
    stale.write_text("{")
    live.write_text("{")
    assert store.remove_stale_temp_files() == 1
    assert not stale.exists() and live.exists()
