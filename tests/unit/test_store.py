"""Store: atomic records, resume, the tidy DataFrame, and damaged or shared run directories."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_spec
from bench.executors import ExecutorOptions, run_specs
from bench.grid import expand
from bench.records import TrialRecord
from bench.spec import Component, TrainSettings, TrialModel, TrialSpec
from bench.store import RunStore, atomic_write_json, atomic_write_text, load


def _spec(seed: int = 0) -> TrialSpec:
    """A trial spec of no sweep (records written by hand)."""
    return TrialSpec(dataset=Component("penguins", {"split_seed": 0}),
                     sharing=Component("hps", {}), weighting=Component("ew", {}), seed=seed,
                     model=TrialModel(hidden=[8]), train=TrainSettings(epochs=1))


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
    before = {t.id: store.read(t.id).finished_at for t in trials[:2]}
    second = run_specs(trials, store, ExecutorOptions(kind="inline"), progress=False)
    assert second.skipped == 2
    assert set(second.ran) == {t.id for t in trials[2:]}
    assert {t: store.read(t).finished_at for t in before} == before


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


# ----------------------------------------------------------- damaged or shared run directories



@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_spec) -> tuple[Path, Path]:
    """A finished tiny run (8 ok trials) and its sweep file; copy it before damaging it."""
    root = tmp_path_factory.mktemp("finished")
    spec = root / "sweep.toml"
    spec.write_text(tiny_spec)
    run = root / "run"
    assert main(["run", str(spec), "--out", str(run), "--executor", "inline",
                 "--no-progress"]) == 0
    return spec, run


@pytest.fixture
def run_copy(finished, tmp_path) -> tuple[Path, Path, list[str]]:
    spec, run = finished
    shutil.copytree(run, tmp_path / "run")
    ids = json.loads((run / "manifest.json").read_text())["trials"]
    return spec, tmp_path / "run", sorted(ids)


def _damage(trials: Path, ids: list[str], how: str) -> tuple[Path, str | None]:
    """Damage one file of ``trials/``; returns it and the trial that must run again."""
    path = trials / f"{ids[0]}.json"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff garbage")
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "ok without metrics":
        rec = json.loads(path.read_text())
        del rec["metrics"]
        path.write_text(json.dumps(rec))
    elif how == "not a record":
        path = trials / "notes.json"
        path.write_text("[]")
        return path, None
    elif how == "misnamed":  # trial 1's record saved under trial 0's name
        path.write_bytes((trials / f"{ids[1]}.json").read_bytes())
    elif how == "other sweep":  # a record of another sweep copied in
        rec = json.loads(path.read_text())
        rec["spec"]["dataset"]["name"] = "other_dataset"
        rec["id"] = "0123456789abcdef"
        path = trials / f"{rec['id']}.json"
        path.write_text(json.dumps(rec))
        return path, None
    return path, ids[0]


DAMAGES = ["truncated", "garbage", "empty", "ok without metrics", "not a record", "misnamed",
           "other sweep"]


@pytest.mark.parametrize("how", DAMAGES)
def test_load_leaves_a_bad_file_out_and_names_it(run_copy, how, capsys):
    _, run, ids = run_copy
    path, rerun = _damage(run / "trials", ids, how)
    df = load(run)
    err = capsys.readouterr().err
    assert f"left out {path}: " in err and len(err.splitlines()) == 1
    # Every other trial is there, each once; nothing foreign (no extra dataset).
    assert sorted(df["trial_id"].unique()) == sorted(set(ids) - {rerun})
    assert df["dataset"].nunique() == 1 and "other_dataset" not in df["dataset"].iloc[0]
    scan = RunStore(run).scan()
    assert [p.path for p in scan.problems] == [path]
    assert scan.problems[0].rerun == (rerun is not None)


def test_report_then_resume_of_a_damaged_run(run_copy, capsys):
    spec, run, ids = run_copy
    trials = run / "trials"
    damaged = dict(_damage(trials, ids[i:], how) for i, how in enumerate(DAMAGES))
    before = {p.name: p.read_bytes() for p in damaged}

    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    for path in damaged:
        assert f"left out {path}: " in err
    assert "## Files left out" in (run / "report.md").read_text()

    assert main(["run", str(spec), "--out", str(run), "--executor", "inline",
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    rerun = sorted(t for t in damaged.values() if t)
    for path, trial in damaged.items():
        note = next(line for line in err.splitlines() if f"set aside {path} -> " in line)
        assert note.endswith(f"trial {trial} runs again") == (trial is not None)
    assert out.startswith(f"{len(rerun)} trials run, {len(ids) - len(rerun)} already done")
    # Nothing deleted: each file set aside as it was; every trial has a good record again.
    assert {p.name: p.read_bytes() for p in (run / "quarantine").iterdir()} == before
    assert sorted(p.stem for p in trials.glob("*.json")) == ids
    assert all(RunStore(run).status(i) == "ok" for i in ids)

    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().err == ""
    assert "Files left out" not in (run / "report.md").read_text()
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("report.md", "report.html", "manifest.json", f"trials/{ids[0]}.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.parametrize("text", ["garbage", '{"sweep": {"name": "tiny"}, "tri', "[]",
                                  '{"sweep": {}, "trials": [1]}'])
def test_a_damaged_manifest_stops_run_with_one_line_naming_it(run_copy, text, capsys):
    spec, run, ids = run_copy
    (run / "manifest.json").write_text(text)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["run", str(spec), "--out", str(run), "--executor", "inline",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mtlbench: error: {run / 'manifest.json'}: ") and "\n" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # The report reads the records without it, and says it left it out.
    assert sorted(load(run)["trial_id"].unique()) == ids
    assert f"left out {run / 'manifest.json'}: " in capsys.readouterr().err


def test_set_aside_never_overwrites_an_earlier_copy(tmp_path):
    store = RunStore(tmp_path)
    store.write_manifest({"name": "x"}, ["a" * 16])
    for text in ("{", "[]"):
        (store.trials_dir / "notes.json").parent.mkdir(parents=True, exist_ok=True)
        (store.trials_dir / "notes.json").write_text(text)
        moved = store.set_aside()
        assert [p.path.name for p in moved] == ["notes.json"] and not moved[0].rerun
    assert sorted(p.read_text() for p in (tmp_path / "quarantine").iterdir()) == ["[]", "{"]


@pytest.mark.parametrize("retry_failed", [False, True])
def test_two_sweeps_run_each_failing_trial_once(tmp_path, write_spec, monkeypatch,
                                                retry_failed):
    """A second sweep starts on the directory while the first runs its first trial; all
    trials time out. Each trial must run once in all (not once per sweep)."""
    import bench.executors.base

    trials = expand(load_spec(write_spec()))
    store = RunStore(tmp_path / "run")
    failing = ExecutorOptions(kind="inline", time_limit_s=1e-9)
    if retry_failed:  # every trial already has a failed record to retry
        run_specs(trials, store, failing, progress=False)
        assert {store.status(t.id) for t in trials} == {"timeout"}
    calls: Counter[str] = Counter()
    real = bench.executors.base.execute
    second: list = []

    def counting(spec, time_limit_s=None):
        calls[spec.id] += 1
        if not calls.total() > 1:  # the first sweep planned and holds its first trial's lock
            second.append(run_specs(trials, RunStore(store.root), failing,
                                    retry_failed=retry_failed, progress=False))
        return real(spec, time_limit_s=time_limit_s)

    monkeypatch.setattr(bench.executors.base, "execute", counting)  # what run_one calls
    first = run_specs(trials, store, failing, retry_failed=retry_failed, progress=False)
    assert calls == {t.id: 1 for t in trials}
    assert len(first.ran) + len(second[0].ran) == len(trials)
    assert first.busy == len(trials) - 1 and second[0].busy == 1
    assert {store.status(t.id) for t in trials} == {"timeout"}
    if retry_failed:  # the failure each retry replaced is kept
        assert len(list((store.root / "retried").glob("*.json"))) == len(trials)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = RunStore(tmp_path / "run")
        rec = TrialRecord.of(_spec(), "ok", metrics={"test": {"t": {"mse": 1.0}}})
        store.write_manifest({"name": "x"}, [rec.id])
        store.write(rec)
        atomic_write_text(tmp_path / "report.md", "# r\n")
    finally:
        os.umask(old)
    for path in (store.root / "manifest.json", store.record_path(rec.id),
                 tmp_path / "report.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
