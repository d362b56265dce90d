"""End to end through the command line, including a SIGKILL in the middle of a sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_spec
from bench.grid import expand

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_list_names(capsys):
    assert main(["list", "weighting", "--names"]) == 0
    names = capsys.readouterr().out.split()
    assert {"ew", "uw", "dwa", "mgda", "pcgrad"} <= set(names)
    assert main(["list", "sharing", "--names"]) == 0
    assert {"hps", "stl"} <= set(capsys.readouterr().out.split())
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "mmoe_synthetic" in out and "correlation=0.5" in out
    inputs = {line.split()[0]: line.split()[1] for line in out.splitlines()
              if line[:1].isalpha() and not line.startswith("name")}
    assert inputs["mmoe_synthetic"] == "single" and inputs["conflict"] == "both"
    assert inputs["mnist_fashion"] == "multi"
    assert main(["list", "sampling", "--names"]) == 0
    assert capsys.readouterr().out.split() == ["proportional", "round_robin", "temperature"]


def test_run_and_report_end_to_end(tmp_path, write_spec):
    spec = write_spec()
    out = tmp_path / "run"
    proc = _cli("run", str(spec), "--out", str(out), "--executor", "process", "--workers", "2",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = expand(load_spec(spec))
    records = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    assert sorted(r["id"] for r in records) == sorted(t.id for t in trials)
    assert all(r["status"] == "ok" for r in records)
    rec = next(r for r in records if r["spec"]["weighting"]["name"] == "mgda")
    assert set(rec["metrics"]) == {"val", "test"}
    assert len(rec["history"]) == 2 and "weights" in rec["history"][0]
    assert rec["env"]["torch"] and rec["env"]["device"] == "cpu"
    assert 0 <= rec["best_epoch"] < 2

    proc = _cli("report", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.md").read_text()
    assert "| hps" in report and "mgda" in report and "Δm task" in report
    assert "stl (baselines)" in report

    # A second run skips everything.
    proc = _cli("run", str(spec), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0
    assert f"0 trials run, {len(trials)} already done" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--preset", "nope"],
        ["run", "missing.toml"],
        ["run", "--preset", "quick", "--set", "train.epochs=zero"],
        ["run", "--preset", "quick", "--set", "weighting=[\"pcgard\"]"],
        ["frobnicate"],
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args):
    proc = _cli(*args, "--out", str(tmp_path / "run"), cwd=tmp_path) if args[0] == "run" else \
        _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtlbench: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_run_dir_of_another_sweep_is_refused(tmp_path, write_spec):
    spec = write_spec()
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--executor", "inline",
                 "--no-progress", "--set", "seeds=[0]", "--set", "weighting=[\"ew\"]"]) == 0
    before = sorted(p.name for p in (out / "trials").iterdir())
    code = main(["run", str(spec), "--out", str(out), "--no-progress"])
    assert code == 2
    assert sorted(p.name for p in (out / "trials").iterdir()) == before


KILL_SPEC = """
name = "kill"
seeds = [0, 1, 2, 3]
datasets = [{ name = "mmoe_synthetic", num_train = 512, num_val = 64, num_test = 64, input_dim = 16 }]
sharing = ["hps"]
weighting = ["ew", "pcgrad"]

[model]
hidden = [32]

[train]
epochs = 3
batch_size = 32
"""


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path, write_spec):
    spec = write_spec(KILL_SPEC)
    out = tmp_path / "run"
    trials = expand(load_spec(spec))
    cmd = [sys.executable, "-m", "bench", "run", str(spec), "--out", str(out),
           "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    trials_dir = out / "trials"
    while time.time() < deadline:
        if trials_dir.is_dir() and len(list(trials_dir.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, at once
    proc.wait()
    finished = {p.stem: p.read_bytes() for p in trials_dir.glob("*.json")}
    assert 3 <= len(finished) < len(trials), "the kill should land mid-sweep"

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(trials) - len(finished)} trials run, {len(finished)} already done" in done.stdout
    files = sorted(trials_dir.iterdir())
    assert sorted(p.stem for p in files) == sorted(t.id for t in trials)  # no temp files
    for p in files:
        json.loads(p.read_text())  # every record parses
    # Records finished before the kill are untouched (not rerun).
    assert all(trials_dir.joinpath(f"{k}.json").read_bytes() == v for k, v in finished.items())
