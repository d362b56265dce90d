"""Table-driven: malformed sweep files and command lines each give one line, exit 2,
and write nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[2]

BASE = """
name = "bad"
seeds = [0]
datasets = [{ name = "penguins" }]
sharing = ["hps"]
weighting = ["ew", "pcgrad"]
[model]
hidden = [8]
[train]
epochs = 1
lr = 0.01
batch_size = 64
"""

# (id, edit of BASE as (old, new) or None, extra CLI args, expected message fragment)
CASES = [
    ("unknown-top-key", ("seeds = [0]", "seeds = [0]\nseed = 3"), [], "seed: unknown key (did you mean 'seeds'?)"),
    ("unknown-train-key", ("epochs = 1", "epoch = 1"), [], "train.epoch: unknown key (did you mean 'epochs'?)"),
    ("weighting-dup", ('"pcgrad"', '"pcgrad", "ew"'), [], "weighting[2]: 'ew' is listed twice (as weighting[0])"),
    ("dataset-dup", ('{ name = "penguins" }', '{ name = "penguins" }, "penguins"'), [], "datasets[1]: 'penguins' is listed twice"),
    ("exclude-seed", ("[model]", "exclude = [{ seed = 5 }]\n[model]"), [], "exclude[0].seed: 5 is not one of the sweep's seeds (0)"),
    ("num-train-huge", ('{ name = "penguins" }', '{ name = "mmoe_synthetic", num_train = 10000000000000 }'), [], "num_train: Input should be less than or equal to 10000000"),
    ("input-dim-huge", ('{ name = "penguins" }', '{ name = "mmoe_synthetic", input_dim = 10000000000 }'), [], "input_dim: Input should be less than or equal to 100000"),
    ("out-proc", (), ["--out", "/proc/mtlbench-x"], "--out /proc/mtlbench-x: cannot write in /proc"),
    ("out-long", (), ["--out", "x" * 300], "is longer than the file system allows"),
    ("unknown-strategy", ('"pcgrad"', '"pcgard"'), [], "unknown weighting 'pcgard' (did you mean 'pcgrad'?)"),
    ("unknown-dataset", ('"penguins"', '"penguin"'), [], "unknown dataset 'penguin' (did you mean 'penguins'?)"),
    ("unknown-sharing", ('["hps"]', '["hsp"]'), [], "unknown sharing 'hsp' (did you mean 'hps'?)"),
    ("epochs-type", ("epochs = 1", 'epochs = "one"'), [], "train.epochs: Input should be a valid integer"),
    ("epochs-float", ("epochs = 1", "epochs = 1.5"), [], "train.epochs: Input should be a valid integer"),
    ("lr-negative", ("lr = 0.01", "lr = -0.01"), [], "train.lr: Input should be greater than 0"),
    ("lr-zero", ("lr = 0.01", "lr = 0.0"), [], "train.lr: Input should be greater than 0"),
    ("batch-zero", ("batch_size = 64", "batch_size = 0"), [], "train.batch_size: Input should be greater than or equal to 1"),
    ("seeds-empty", ("seeds = [0]", "seeds = []"), [], "seeds: List should have at least 1 item"),
    ("seeds-dup", ("seeds = [0]", "seeds = [0, 0]"), [], "seeds: contains duplicates"),
    ("seeds-type", ("seeds = [0]", 'seeds = ["zero"]'), [], "seeds[0]: Input should be a valid integer"),
    ("dataset-param-unknown", ('{ name = "penguins" }', '{ name = "penguins", split = 1 }'), [], "unknown hyperparameter 'split' for dataset 'penguins' (did you mean 'split_seed'?)"),
    ("dataset-param-type", ('{ name = "penguins" }', '{ name = "penguins", split_seed = "a" }'), [], "split_seed: Input should be a valid integer"),
    ("dataset-param-range", ('{ name = "penguins" }', '{ name = "penguins", split_seed = -1 }'), [], "split_seed: Input should be greater than or equal to 0"),
    ("hp-range", ('"pcgrad"', '{ name = "dwa", temperature = -1.0 }'), [], "weighting 'dwa': temperature: Input should be greater than 0"),
    ("hp-unknown", ('"pcgrad"', '{ name = "dwa", temp = 1.0 }'), [], "unknown hyperparameter 'temp' for weighting 'dwa' (did you mean 'temperature'?)"),
    ("hp-no-name", ('"pcgrad"', "{ temperature = 1.0 }"), [], "weighting[1]: needs a 'name'"),
    ("device", ("batch_size = 64", 'batch_size = 64\ndevice = "tpu"'), [], "train.device: String should match pattern"),
    ("optimizer", ("batch_size = 64", 'batch_size = 64\noptimizer = "adagrad"'), [], "train.optimizer: Input should be 'adam', 'adamw' or 'sgd'"),
    ("engine-unknown", ("batch_size = 64", 'batch_size = 64\nengine = "jit"'), [], "train.engine: Input should be 'loop', 'vmap', 'gramian', 'autogram', 'auto' or 'rep'"),
    ("engine-gramian", ('"pcgrad"', '"graddrop"'), ["--set", "train.engine=gramian"], "train.engine: engine 'gramian' needs a strategy whose direction is weights(J J^T) @ J; 'graddrop' is not one"),
    ("engine-rep", (), ["--set", "train.engine=rep"], "train.engine: engine 'rep' is not defined for strategy 'pcgrad'"),
    ("include-unknown", ("[model]", 'include = [{ weighting = "mgda" }]\n[model]'), [], "include[0].weighting: 'mgda' is not in the sweep's weighting axis"),
    ("grid-empty", ("[model]", 'exclude = [{ dataset = "penguins" }]\n[model]'), [], "the grid is empty"),
    ("toml", ("[model]", "[model"), [], "not valid TOML"),
    ("hidden-empty", ("hidden = [8]", "hidden = []"), [], "model.hidden: List should have at least 1 item"),
    ("dropout", ("hidden = [8]", "hidden = [8]\ndropout = 1.0"), [], "model.dropout: Input should be less than 1"),
    ("name-chars", ('name = "bad"', 'name = "a b"'), [], "name: String should match pattern"),
    ("time-limit-spec", ("seeds = [0]", "seeds = [0]\ntime_limit_s = 0"), [], "time_limit_s: Input should be greater than 0"),
    ("executor-spec", ("seeds = [0]", 'seeds = [0]\nexecutor = "slurm"'), [], "executor: unknown executor 'slurm'; known: inline, process, ray, submitit"),
    ("plugin-missing", ("seeds = [0]", 'seeds = [0]\nplugins = ["nowhere.py"]'), [], "plugins: plugin"),
    ("set-no-equals", (), ["--set", "train.epochs"], "--set 'train.epochs': expected KEY=VALUE"),
    ("set-bad-index", (), ["--set", "datasets.5.name=penguins"], "no item 5 in 'datasets'"),
    ("set-wrong-type", (), ["--set", "train.epochs=many"], "train.epochs: Input should be a valid integer"),
    ("workers-zero", (), ["--workers", "0"], "--workers: must be at least 1"),
    ("time-limit-cli", (), ["--time-limit", "-5"], "--time-limit: must be a positive number"),
    ("executor-cli", (), ["--executor", "slurm"], "mtlbench: error: unknown executor 'slurm'; known: inline, process, ray, submitit"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("edit", "extra", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_malformed_sweep_or_command_line(tmp_path, capsys, edit, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = BASE.replace(*edit, 1) if edit else BASE
    assert not edit or edit[0] in BASE
    spec = tmp_path / "sweep.toml"
    spec.write_text(text)
    before = _snapshot(tmp_path)
    code = main(["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("mtlbench: error:")
    assert message in err
    assert _snapshot(tmp_path) == before  # nothing written


def test_unreadable_missing_and_conflicting_sources(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.toml").mkdir()
    cases = [
        (["run", str(tmp_path / "dir.toml")], "cannot read sweep file"),
        (["run", str(tmp_path / "missing.toml")], "no such sweep file"),
        (["run", "--preset", "quik"], "unknown preset 'quik' (did you mean 'quick'?)"),
        (["run", str(tmp_path / "dir.toml"), "--preset", "quick"], "either a sweep file or --preset"),
        (["run"], "no sweep given"),
        (["report", str(tmp_path / "nothing")], "not a run directory"),
        (["list", "strategies"], "invalid choice: 'strategies'"),
    ]
    before = _snapshot(tmp_path)
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert _snapshot(tmp_path) == before


def test_run_directory_of_a_different_sweep_is_refused(tmp_path, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text(BASE.replace('"pcgrad"', '"mgda"'))
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--no-progress",
                 "--executor", "inline"]) == 0
    capsys.readouterr()
    spec.write_text(BASE)
    before = _snapshot(tmp_path)
    assert main(["run", str(spec), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run directory holds sweep 'bad' with other weighting" in err
    assert len(err.splitlines()) == 1
    assert _snapshot(tmp_path) == before
    file_out = tmp_path / "afile"
    file_out.write_text("x")
    assert main(["run", str(spec), "--out", str(file_out)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_a_long_name_creates_nothing(tmp_path, capsys, monkeypatch):
    # Without --out the run directory is results/<name>: nothing, not even results/, before
    # the name is validated.
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "sweep.toml"
    spec.write_text(BASE.replace('name = "bad"', f'name = "{"a" * 300}"'))
    assert main(["run", str(spec), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name: String should have at most 100 characters" in err
    assert len(err) < 300  # the value is cut in the message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]


def test_an_unrelated_folder_is_not_taken_over(tmp_path, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text(BASE)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    before = _snapshot(tmp_path)
    assert main(["run", str(spec), "--out", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"mtlbench: error: --out {folder}: an existing folder that is not a run "
                   "directory (no manifest.json); choose a new or empty folder")
    assert _snapshot(tmp_path) == before
    (folder / "holiday.jpg").unlink()  # an empty folder is fine
    assert main(["run", str(spec), "--out", str(folder), "--no-progress",
                 "--executor", "inline"]) == 0


def _unprivileged(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``mtlbench argv`` in a child that file permissions bind: as root, without the
    capabilities that override them (setpriv), so a read-only folder is read-only."""
    prefix = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
              if os.geteuid() == 0 else [])
    return subprocess.run([*prefix, sys.executable, "-m", "bench", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_read_only_places_are_one_line_errors(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(BASE.replace('"pcgrad"', '"mgda"'))
    run_dir = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(run_dir), "--no-progress",
                 "--executor", "inline"]) == 0
    locked = tmp_path / "locked"
    locked.mkdir()
    for path in (run_dir, run_dir / "trials", locked):
        path.chmod(0o555)
    try:
        before = _snapshot(tmp_path)
        cases = [
            (["run", str(spec), "--out", str(locked / "new")], f"cannot write in {locked}"),
            (["run", str(spec), "--out", str(run_dir)], f"cannot write in {run_dir}"),
            (["report", str(run_dir)], "cannot write the report"),
        ]
        for argv, message in cases:
            proc = _unprivileged([*argv, "--no-progress"] if argv[0] == "run" else argv,
                                 tmp_path)
            err = proc.stderr.strip()
            assert proc.returncode == 2, err
            assert len(err.splitlines()) == 1 and message in err, err
        assert _snapshot(tmp_path) == before
    finally:
        for path in (run_dir, run_dir / "trials", locked):
            path.chmod(0o755)


def test_the_table_covers_at_least_thirty_malformed_inputs():
    assert len(CASES) >= 30
