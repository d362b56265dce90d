"""Bring your own problem: the README's dataset and architecture plugins (the files in
examples/) run in a sweep, are listed with --plugins, are labelled like built-in
components in reports, and a dataset whose labels do not match its tasks fails when it
loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.data import DATASETS, MTLDataset, Split
from bench.data._checks import check_dataset
from bench.errors import ConfigError
from bench.tasks import Task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SECTION = "### Bring your own problem: a dataset and an architecture"


def _mtlbench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _readme_blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(SECTION)
    section = readme[start : readme.index("\n### ", start + 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_readme_shows_the_example_files_verbatim():
    assert _readme_blocks("python") == [
        (EXAMPLES / "plugin_dataset.py").read_text(),
        (EXAMPLES / "plugin_architecture.py").read_text(),
    ]
    assert _readme_blocks("toml") == [(EXAMPLES / "my_problem.toml").read_text()]


def test_example_sweep_runs_and_reports_clean_labels(tmp_path):
    out = tmp_path / "run"
    proc = _mtlbench("run", "examples/my_problem.toml", "--out", str(out), "--executor",
                     "inline", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    assert {r["status"] for r in records} == {"ok"}
    assert {r["spec"]["sharing"]["name"] for r in records} == {"hps", "gated_hps", "stl"}
    # A fresh process, as `mtlbench report` is: it has not imported the plugins itself.
    code = ("import json, sys; from bench import store; t = store.load(sys.argv[1]); "
            "print(json.dumps([sorted(set(t[c])) for c in ('dataset', 'sharing')]))")
    labels = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, text=True,
                            capture_output=True, timeout=300, check=True).stdout
    datasets, sharing = json.loads(labels.splitlines()[-1])
    assert datasets == ["my_table(num_samples=600)"]  # seed=0 is the default
    assert sharing == ["gated_hps", "gated_hps(gate_init=0.0)", "hps", "stl"]


def test_report_keeps_clean_labels_when_a_plugin_no_longer_imports(tmp_path):
    """Records hold the labels the grid computed with the plugins loaded (schema 2), so a
    report needs no plugin: none is imported, none is noted, no label changes."""
    for name in ("plugin_dataset.py", "plugin_architecture.py", "my_problem.toml"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    out = tmp_path / "run"
    proc = _mtlbench("run", "my_problem.toml", "--out", str(out), "--executor", "inline",
                     "--no-progress", "--set", "seeds=[0]", "--set", "weighting=['ew']",
                     "--set", "train.epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "plugin_architecture.py").unlink()
    proc = _mtlbench("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "plugin_architecture.py" not in proc.stderr and "labels of" not in proc.stderr
    text = (out / "report.md").read_text()
    assert "gated_hps(gate_init=0.0)" in text and "| gated_hps " in text
    assert "gate_init=2.0" not in text  # the default, left out as with the plugin loaded


@pytest.mark.parametrize(("kind", "plugin", "name"), [
    ("datasets", "plugin_dataset.py", "my_table"),
    ("sharing", "plugin_architecture.py", "gated_hps"),
])
def test_list_accepts_plugins(kind, plugin, name):
    proc = _mtlbench("list", kind, "--names", "--plugins", f"examples/{plugin}")
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout.split()
    described = _mtlbench("list", kind, "--plugins", f"examples/{plugin}")
    assert described.returncode == 0, described.stderr
    assert name in described.stdout


def test_list_with_a_missing_plugin_is_a_config_error():
    proc = _mtlbench("list", "datasets", "--plugins", "nowhere.py")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mtlbench: error: plugin nowhere.py: no such file"


def test_a_label_named_unlike_its_task_fails_before_anything_runs(tmp_path):
    source = (EXAMPLES / "plugin_dataset.py").read_text()
    typo = source.replace('"sold": sold[rows]', '"sould": sold[rows]')
    assert typo != source
    (tmp_path / "my_data.py").write_text(typo)
    (tmp_path / "sweep.toml").write_text(
        'name = "typo"\nplugins = ["my_data.py"]\ndatasets = ["my_table"]\n'
        'sharing = ["hps"]\nweighting = ["ew"]\n')
    proc = _mtlbench("run", "sweep.toml", "--out", str(tmp_path / "run"), "--executor",
                     "inline", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "dataset 'my_table' (plugin " in lines[0]
    assert ("split 'train': no labels for task(s) 'sold'; labels 'sould' belong to no task "
            "(tasks: 'price', 'sold')") in lines[0]
    assert not (tmp_path / "run").exists()


def _table(y_train: dict[str, torch.Tensor]) -> MTLDataset:
    x = torch.zeros(4, 2)
    ok = Split(x, {"a": torch.zeros(4), "b": torch.zeros(4)})
    tasks = (Task("a", "regression"), Task("b", "binary"))
    return MTLDataset("t", tasks, Split(x, y_train), ok, ok)


def test_check_dataset_accepts_matching_labels():
    check_dataset("penguins", _table({"a": torch.zeros(4), "b": torch.zeros(4)}))


def test_check_dataset_names_a_missing_label_and_a_short_one():
    with pytest.raises(ConfigError, match=r"split 'train': no labels for task\(s\) 'b' "
                                          r"\(tasks: 'a', 'b'\)"):
        check_dataset("penguins", _table({"a": torch.zeros(4)}))
    with pytest.raises(ConfigError, match="task 'b' has 3 labels for 4 inputs"):
        check_dataset("penguins", _table({"a": torch.zeros(4), "b": torch.zeros(3)}))


def test_a_loader_returning_something_else_is_named():
    @DATASETS.register("_not_a_dataset")
    def broken() -> dict:
        return {}

    try:
        with pytest.raises(ConfigError, match=r"must return an MTLDataset.*\(got dict\)"):
            from bench import data

            data.load("_not_a_dataset")
    finally:
        DATASETS.unregister("_not_a_dataset")
