"""The README's plugin example registers a strategy that then runs in a sweep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Adding a strategy") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_plugin_runs_in_a_process_pool_sweep(tmp_path):
    (tmp_path / "my_strategies.py").write_text(_readme_example())
    (tmp_path / "sweep.toml").write_text(
        """
name = "plugin"
plugins = ["my_strategies.py"]
seeds = [0]
datasets = [{ name = "penguins" }]
sharing = ["hps"]
weighting = [{ name = "softmax_loss", temperature = 0.5 }]
[train]
epochs = 2
"""
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "sweep.toml", "--out", str(out),
         "--workers", "2", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    mine = [r for r in records if r["spec"]["weighting"]["name"] == "softmax_loss"]
    assert len(mine) == 1 and mine[0]["status"] == "ok", mine
    assert mine[0]["spec"]["weighting"]["params"] == {"temperature": 0.5}
    weights = mine[0]["history"][-1]["weights"]
    assert sum(weights.values()) == pytest.approx(3.0)


def test_bad_plugin_hyperparameter_is_a_config_error(tmp_path):
    (tmp_path / "my_strategies.py").write_text(_readme_example())
    (tmp_path / "sweep.toml").write_text(
        'name = "p"\nplugins = ["my_strategies.py"]\ndatasets = ["penguins"]\n'
        'sharing = ["hps"]\nweighting = [{ name = "softmax_loss", temperature = 0.0 }]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "sweep.toml", "--out", str(tmp_path / "run")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert "temperature: Input should be greater than 0" in proc.stderr
    assert not (tmp_path / "run").exists()
