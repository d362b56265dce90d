"""Faults of processes and signals: dead workers, Ctrl-C, SIGTERM, a killed parent,
unreachable clusters; exit codes and how failed trials are named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import load_spec
from bench.executors import ExecutorOptions, run_specs
from bench.grid import TrialSpec, expand
from bench.store import RunStore
from bench.trial import execute
from strategies.weighting import WEIGHTING, LossWeighting

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Plugin strategies that kill the worker running them at their 3rd step.
KILLERS = '''
import os
import signal

from strategies.weighting import WEIGHTING, LossWeighting


def _killer(signum):
    class Killer(LossWeighting):
        """Test double: the process dies from ``signum`` at the 3rd step."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def combine(self, losses):
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), signum)
            return losses.sum()

    return Killer


WEIGHTING.register("kill9")(_killer(signal.SIGKILL))
WEIGHTING.register("segv")(_killer(signal.SIGSEGV))
'''

DATA = ('datasets = [{ name = "mmoe_synthetic", num_train = 256, num_val = 64, num_test = 64, '
        'input_dim = 16 }]')


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_a_worker_that_dies_costs_one_trial_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "killers.py").write_text(KILLERS)
    (tmp_path / "sweep.toml").write_text(textwrap.dedent(f"""
        name = "crash"
        plugins = ["killers.py"]
        seeds = [0]
        {DATA}
        sharing = ["hps"]
        weighting = ["kill9", "segv", "ew"]
        [model]
        hidden = [16]
        [train]
        epochs = 2
        batch_size = 64
    """))
    out = tmp_path / "run"
    args = ("run", "sweep.toml", "--out", str(out), "--workers", "2", "--no-progress")
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # some trials failed
    assert "Traceback" not in proc.stderr, proc.stderr
    records = {r["spec"]["weighting"]["name"] + ("/stl" if r["spec"]["sharing"]["name"] == "stl"
                                                 else ""): r
               for r in map(json.loads, map(Path.read_text, (out / "trials").glob("*.json")))}
    trials = expand(load_spec(tmp_path / "sweep.toml"))
    assert len(list((out / "trials").glob("*.json"))) == len(trials) == 5  # each has a record
    killed, segv = records["kill9"], records["segv"]
    assert killed["status"] in ("oom", "error") and "SIGKILL" in killed["error"], killed
    assert segv["status"] == "error" and "SIGSEGV" in segv["error"], segv
    assert "worker process died while running this trial" in segv["error"]
    assert records["ew"]["status"] == records["ew/stl"]["status"] == "ok"
    # Both failures are named at the end: dataset | sharing | weighting | seed: status: error.
    assert f"mmoe_synthetic | hps | segv | seed 0: error: {segv['error']}" in proc.stderr
    assert "mmoe_synthetic | hps | kill9 | seed 0:" in proc.stderr

    again = _cli(*args, cwd=tmp_path)  # resuming neither aborts nor reruns them
    assert again.returncode == 1, again.stderr
    assert "0 trials run, 5 already done, 0 failed" in again.stdout
    assert "2 failed records found from earlier runs (not rerun: --retry-failed reruns them)" \
        in again.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def _wait_for(condition, limit_s: float = 120.0) -> None:
    """Poll until ``condition()`` (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


LONG = f"""
name = "long"
seeds = [{", ".join(map(str, range(24)))}]
{DATA}
sharing = ["hps"]
weighting = ["ew"]
[model]
hidden = [16]
[train]
epochs = 4
batch_size = 32
"""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(("signum", "to_group", "code"), [
    (signal.SIGINT, True, 130),  # Ctrl-C in a terminal reaches the whole process group
    (signal.SIGTERM, False, 143),
    (signal.SIGKILL, False, -signal.SIGKILL),
])
def test_a_signal_stops_the_sweep_and_its_workers(tmp_path, write_spec, signum, to_group, code):
    spec = write_spec(LONG)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", str(spec), "--out", str(out), "--workers", "2",
         "--no-progress"], cwd=tmp_path, env=ENV, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials_dir = out / "trials"
    _wait_for(lambda: len(list(trials_dir.glob("*.json"))) >= 2 if trials_dir.is_dir() else False)
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers  # two workers (and multiprocessing's resource tracker)
    before = len(list(trials_dir.glob("*.json")))
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    if signum != signal.SIGKILL:
        assert f"mtlbench: interrupted by {signal.Signals(signum).name}" in stderr, stderr
    _wait_for(lambda: not any(_alive(w) for w in workers))  # no orphan keeps training
    after = len(list(trials_dir.glob("*.json")))
    # At most the two trials running at the signal could finish; none started after it.
    assert before <= after <= before + 2 < len(expand(load_spec(spec)))
    for path in trials_dir.glob("*.json"):
        assert json.loads(path.read_text())["status"] == "ok"  # stopped trials keep no record


def test_an_unreachable_ray_address_fails_fast_and_writes_nothing(tmp_path):
    proc = _cli("run", "--preset", "quick", "--out", str(tmp_path / "run"), "--executor", "ray",
                "--ray-address", "127.0.0.1:1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtlbench: error: ray address '127.0.0.1:1': "
                                                   "nothing answers at 127.0.0.1:1"), lines
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_ray_address_is_a_config_error(tmp_path, write_spec, capsys):
    code = main(["run", str(write_spec()), "--out", str(tmp_path / "run"), "--executor", "ray",
                 "--ray-address", "127.0.0.1:notaport"])
    assert code == 2 and "expected HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_plugin_calling_sys_exit_at_import_is_an_error(tmp_path):
    (tmp_path / "bye.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "sweep.toml").write_text(
        'name = "bye"\nplugins = ["bye.py"]\ndatasets = ["mmoe_synthetic"]\n'
        'sharing = ["hps"]\nweighting = ["ew"]\n')
    proc = _cli("run", "sweep.toml", "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bye.py: import failed: SystemExit: 0" in lines[0], lines
    assert not (tmp_path / "run").exists()


class _ExitInTrial(LossWeighting):
    """Test double: calls ``sys.exit(0)`` at its first step."""

    def combine(self, losses):
        sys.exit(0)


class _NaNLoss(LossWeighting):
    """Test double: NaN loss at every step."""

    def combine(self, losses):
        return losses.sum() * float("nan")


@pytest.fixture
def doubles():
    WEIGHTING.register("_exit_in_trial")(_ExitInTrial)
    WEIGHTING.register("_nan_loss")(_NaNLoss)
    yield
    WEIGHTING.unregister("_exit_in_trial")
    WEIGHTING.unregister("_nan_loss")


SMALL = f"""
name = "small"
seeds = [0]
{DATA}
sharing = ["hps"]
weighting = ["ew"]
[model]
hidden = [16]
[train]
epochs = 2
batch_size = 64
"""


def _mtl_trial(write_spec, weighting: str, *overrides: str) -> TrialSpec:
    spec = load_spec(write_spec(SMALL), overrides=[f'weighting=["{weighting}"]', *overrides])
    return next(t for t in expand(spec) if not t.is_baseline)


def test_sys_exit_in_a_trial_fails_that_trial_only(write_spec, doubles):
    rec = execute(_mtl_trial(write_spec, "_exit_in_trial"))
    assert rec.status == "error"
    assert rec.error.startswith("SystemExit(0): a component called sys.exit()")


@pytest.mark.parametrize("weighting", ["ew", "dwa", "pcgrad", "mgda", "cagrad"])
def test_divergence_is_diverged_whatever_the_strategy(write_spec, weighting):
    rec = execute(_mtl_trial(write_spec, weighting, 'train.optimizer="sgd"', "train.lr=10.0"))
    assert rec.status == "diverged", rec.error
    assert isinstance(rec.diverged_step, int) and rec.diverged_step >= 0
    assert f"step {rec.diverged_step} (epoch 0)" in rec.error
    assert rec.traceback is None


def _run(spec: Path, out: Path, *extra: str) -> int:
    return main(["run", str(spec), "--out", str(out), "--executor", "inline", "--no-progress",
                 *extra])


def test_exit_codes_and_failed_trials_named_at_the_end_and_in_the_report(
        tmp_path, write_spec, capsys, doubles):
    spec = write_spec(SMALL)
    out = tmp_path / "run"
    assert _run(spec, out, "--set", "seeds=[0, 1]") == 0  # every trial ok
    capsys.readouterr()
    # Timeouts are failures: exit 1, and each failed trial named with its first error line.
    timed = write_spec(SMALL.replace('name = "small"', 'name = "timed"'), "timed.toml")
    assert _run(timed, tmp_path / "timed", "--time-limit", "1e-9") == 1
    err = capsys.readouterr().err
    assert "failed trials (3):" in err
    assert "mmoe_synthetic | hps | ew | seed 0: timeout: time limit reached at step 0" in err
    assert "mmoe_synthetic | stl | ew | seed 0 task=t1: timeout:" in err
    # A rerun finds them, says so, and still exits 1; --retry-failed reruns them.
    assert _run(timed, tmp_path / "timed") == 1
    captured = capsys.readouterr()
    assert "0 trials run, 3 already done, 0 failed" in captured.out
    assert "3 failed records found from earlier runs (not rerun: --retry-failed reruns them)" \
        in captured.err
    assert _run(timed, tmp_path / "timed", "--retry-failed") == 0

    # Divergence is a failure too; the report names the trial and its error's first line.
    nan = write_spec(SMALL.replace('name = "small"', 'name = "nan"'), "nan.toml")
    assert _run(nan, tmp_path / "nan", "--set", 'weighting=["ew", "_nan_loss"]') == 1
    assert "mmoe_synthetic | hps | _nan_loss | seed 0: diverged: non-finite training loss " \
           "at step 1 (epoch 0)" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nan")]) == 0
    report = (tmp_path / "nan" / "report.md").read_text()
    failed = report[report.index("## Failed trials"):]
    assert "_nan_loss" in failed and "non-finite training loss at step 1 (epoch 0)" in failed


def test_no_device_no_run(tmp_path, write_spec, capsys, monkeypatch):
    spec = write_spec(SMALL)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run(spec, tmp_path / "a", "--set", 'train.device="cuda"') == 2
    err = capsys.readouterr().err.strip()
    assert err == ("mtlbench: error: train.device = 'cuda': device 'cuda' requested but CUDA is "
                   "not available; use 'cpu' or 'auto', or an executor that runs trials "
                   "elsewhere (ray, submitit)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["run", str(spec), "--out", str(tmp_path / "b"), "--no-progress",
                 "--set", 'train.device="cuda:3"']) == 2
    assert "only 1 CUDA device(s) visible" in capsys.readouterr().err
    assert list(tmp_path.glob("[ab]")) == []


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=[99999999999999999999]", "seeds[0]: Input should be less than or equal to 4294967295"),
    ("seeds=[-1]", "seeds[0]: Input should be greater than or equal to 0"),
    ("train.weight_decay=1e308", "train.weight_decay: Input should be less than or equal to 10"),
])
def test_values_that_cannot_train_are_refused(tmp_path, write_spec, capsys, override, message):
    assert _run(write_spec(SMALL), tmp_path / "run", "--set", override) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_run_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for line in ("0    every trial of the sweep has an ok record", "1    some trial failed",
                 "2    unusable input", "130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM"):
        assert line in text


def test_a_dead_worker_with_oom_kills_counted_is_oom(tmp_path, monkeypatch):
    from bench.executors import local

    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    monkeypatch.setattr(local, "OOM_COUNTERS", (str(tmp_path / "absent"), str(counter)))
    before = local._oom_kills()
    assert before == 1
    assert local.crash_status(-signal.SIGKILL, before)[0] == "error"  # no new OOM kill
    counter.write_text("oom 2\noom_kill 2\n")
    status, message = local.crash_status(-signal.SIGKILL, before)
    assert status == "oom" and "SIGKILL (signal 9)" in message and "out-of-memory" in message
    assert local.crash_status(-signal.SIGSEGV, before)[0] == "error"
    assert "exited with code 3" in local.crash_status(3, before)[1]


def test_run_specs_interrupted_by_ctrl_c_leaves_no_worker(tmp_path, write_spec, monkeypatch):
    """In-process: KeyboardInterrupt from the progress callback stops the pool at once."""
    trials = expand(load_spec(write_spec(LONG)))
    store = RunStore(tmp_path / "run")
    started: list[int] = []

    def stop(trial_id: str, status: str) -> None:
        import multiprocessing

        started.extend(p.pid for p in multiprocessing.active_children())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_specs(trials, store, ExecutorOptions(kind="process", workers=2), progress=False,
                  on_done=stop)
    assert started and not any(_alive(pid) for pid in started)
    assert len(list(store.trials_dir.glob("*.json"))) <= 2


def test_error_summary_names_what_went_wrong():
    from bench.errors import error_summary

    assert error_summary("TrialTimeout: time limit\nmore detail") == "TrialTimeout: time limit"
    tb = "Traceback (most recent call last):\n  File 'x.py', line 1\nRuntimeError: boom"
    assert error_summary(tb) == "RuntimeError: boom"  # a whole traceback: its last line
    assert error_summary(None) == "" and error_summary("  \n") == ""
    assert len(error_summary("x" * 500)) == 200


def test_workers_that_cannot_start_stop_the_sweep_with_one_line(tmp_path):
    (tmp_path / "parent_only.py").write_text(
        "import multiprocessing\n"
        "if multiprocessing.current_process().name.startswith('mtlbench-worker'):\n"
        "    raise RuntimeError('not in a worker')\n")
    (tmp_path / "sweep.toml").write_text(textwrap.dedent(f"""
        name = "nostart"
        plugins = ["parent_only.py"]
        seeds = [0]
        {DATA}
        sharing = ["hps"]
        weighting = ["ew"]
    """))
    proc = _cli("run", "sweep.toml", "--out", str(tmp_path / "run"), "--workers", "2",
                "--no-progress", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("mtlbench: error: worker set-up failed: ConfigError: plugin ")
    assert lines[-1].endswith("import failed: RuntimeError: not in a worker"), lines
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "run" / "trials").glob("*.json"))
