"""Executors give identical records; faults become statuses; sweeps survive kills."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.config import load_spec
from bench.executors import ExecutorOptions, run_specs
from bench.grid import TrialSpec, expand
from bench.spec import Component, ProbeSettings
from bench.store import RunStore
from bench.trial import execute
from strategies.weighting import WEIGHTING, LossWeighting

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

SMALL = """
name = "small"
seeds = [0, 1]
datasets = [{ name = "mmoe_synthetic", num_train = 256, num_val = 64, num_test = 64, input_dim = 16 }]
sharing = ["hps"]
weighting = ["ew", "pcgrad"]
[model]
hidden = [16]
[train]
epochs = 2
batch_size = 64
"""


def _metrics(store: RunStore) -> dict[str, dict]:
    return {r.id: r.metrics for r in store.records()}


def _run(kind: str, tmp_path: Path, trials, **extra) -> dict[str, dict]:
    store = RunStore(tmp_path / kind)
    outcome = run_specs(trials, store, ExecutorOptions(kind=kind, workers=2, **extra),
                        progress=False)
    assert set(outcome.ran.values()) == {"ok"}, outcome.ran
    return _metrics(store)


def test_all_executors_give_identical_records(tmp_path, write_spec):
    trials = expand(load_spec(write_spec(SMALL)))
    inline = _run("inline", tmp_path, trials)
    assert set(inline) == {t.id for t in trials}
    assert _run("process", tmp_path, trials) == inline
    assert _run("submitit", tmp_path, trials, submitit={"cluster": "local"}) == inline


def test_ray_executor_on_a_real_local_cluster(tmp_path, write_spec):
    import ray  # the ray extra is part of the dev install (make install)

    trials = expand(load_spec(write_spec(SMALL), overrides=["seeds=[0]"]))
    inline = _run("inline", tmp_path, trials)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a real local cluster
    try:
        assert ray.cluster_resources()["CPU"] == 2
        assert _run("ray", tmp_path, trials) == inline
    finally:
        ray.shutdown()


class _NaNAtStep(LossWeighting):
    """Test double: NaN loss from the 5th step on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def combine(self, losses):
        self.calls += 1
        return losses.sum() * (float("nan") if self.calls >= 5 else 1.0)


class _OOM(LossWeighting):
    """Test double: behaves like a CUDA out-of-memory error."""

    def combine(self, losses):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture
def fault_strategies():
    WEIGHTING.register("_nan_at_5")(_NaNAtStep)
    WEIGHTING.register("_oom")(_OOM)
    yield
    WEIGHTING.unregister("_nan_at_5")
    WEIGHTING.unregister("_oom")


def _with_weighting(spec: TrialSpec, name: str) -> TrialSpec:
    return dataclasses.replace(spec, weighting=Component(name, {}))


def test_fault_statuses(write_spec, fault_strategies):
    base = next(t for t in expand(load_spec(write_spec(SMALL))) if not t.is_baseline)
    rec = execute(_with_weighting(base, "_nan_at_5"))
    # Step 4's NaN objective poisons the parameters; the task losses are NaN from step 5.
    assert rec.status == "diverged" and rec.diverged_step == 5, rec.error
    assert "step 5 (epoch 1)" in rec.error
    rec = execute(_with_weighting(base, "_oom"))
    assert rec.status == "oom" and "out of memory" in rec.error
    rec = execute(base, time_limit_s=1e-9)
    assert rec.status == "timeout" and "time limit" in rec.error


def test_failed_trials_are_kept_then_retried(tmp_path, write_spec):
    trials = expand(load_spec(write_spec(SMALL), overrides=["seeds=[0]"]))
    store = RunStore(tmp_path / "run")
    timed_out = run_specs(trials, store, ExecutorOptions(kind="inline", time_limit_s=1e-9),
                          progress=False)
    assert set(timed_out.ran.values()) == {"timeout"}
    again = run_specs(trials, store, ExecutorOptions(kind="inline"), progress=False)
    assert again.ran == {} and again.skipped == len(trials)  # failures count as finished
    retried = run_specs(trials, store, ExecutorOptions(kind="inline"), retry_failed=True,
                        progress=False)
    assert set(retried.ran.values()) == {"ok"} and len(retried.ran) == len(trials)


def test_probes_record_conflict_and_affinity_without_changing_training(write_spec):
    spec = next(t for t in expand(load_spec(write_spec(SMALL))) if t.weighting.name == "pcgrad")
    plain = execute(spec)
    probed = execute(dataclasses.replace(
        spec, probes=ProbeSettings(conflict_every=2, affinity_every=3)))
    assert probed.metrics == plain.metrics  # probes never change training
    conflict = probed.probes["conflict"]
    assert conflict["steps"] == list(range(0, 8, 2))
    pair = conflict["pairs"]["t1|t2"]
    assert all(-1 - 1e-6 <= c <= 1 + 1e-6 for c in pair["cosine"])
    assert all(0 <= m <= 1 + 1e-6 for m in pair["magnitude_similarity"])
    frac = conflict["conflict_fraction"]["t1|t2"]
    assert frac == pytest.approx(sum(c < 0 for c in pair["cosine"]) / len(pair["cosine"]))
    affinity = probed.probes["affinity"]
    assert affinity["observations"] == 3
    assert set(affinity["matrix"]) == {"t1", "t2"}
    # A step on a task's own loss lowers that loss on the same batch.
    assert affinity["matrix"]["t1"]["t1"] > 0 and affinity["matrix"]["t2"]["t2"] > 0


KILL = """
name = "kill10"
seeds = [0, 1, 2, 3, 4]
datasets = [{ name = "mmoe_synthetic", num_train = 384, num_val = 64, num_test = 64, input_dim = 16 }]
sharing = ["hps"]
weighting = ["ew", "mgda"]
[model]
hidden = [16]
[train]
epochs = 3
batch_size = 32
"""


def test_ten_random_sigkills_then_resume_equals_an_uninterrupted_run(tmp_path, write_spec):
    spec_path = write_spec(KILL)
    trials = expand(load_spec(spec_path))
    reference = RunStore(tmp_path / "reference")
    run_specs(trials, reference, ExecutorOptions(kind="inline"), progress=False)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bench", "run", str(spec_path), "--out", str(out),
           "--workers", "2", "--no-progress"]
    rng = random.Random(1234)
    for _ in range(10):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))  # spawn takes ~2 s: kills land before and during
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for path in (out / "trials").glob("*.json") if (out / "trials").is_dir() else []:
            json.loads(path.read_text())  # every record on disk is complete at all times
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    store = RunStore(out)
    files = sorted(p.name for p in store.trials_dir.iterdir())
    assert files == sorted(f"{t.id}.json" for t in trials)  # each once, no temp files
    assert _metrics(store) == _metrics(reference)


def test_two_concurrent_runs_on_one_directory_split_the_work(tmp_path, write_spec):
    spec_path = write_spec(KILL.replace("epochs = 3", "epochs = 2"))
    trials = expand(load_spec(spec_path))
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "bench", "run", str(spec_path), "--out", str(out),
           "--workers", "1", "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ran = [int(o.split(" trials run")[0].split()[-1]) for o, _ in outputs]
    assert sum(ran) == len(trials), outputs  # nothing ran twice, nothing was left out
    store = RunStore(out)
    assert sorted(p.stem for p in store.trials_dir.glob("*.json")) == sorted(t.id for t in trials)
    for record in store.records():
        assert record.status == "ok"


def test_a_missing_optional_dependency_names_its_install_command():
    from bench.errors import ConfigError
    from bench.executors import optional_module

    with pytest.raises(ConfigError, match=r"executor 'ray' needs no_such_module_xyz: "
                                          r"\.venv/bin/pip install -e '\.\[ray\]'"):
        optional_module("no_such_module_xyz", "ray")
    assert optional_module("json", "ray").dumps([1]) == "[1]"
