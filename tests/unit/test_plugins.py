"""The README's plugin example registers a strategy that then runs in a sweep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


BAD_PLUGIN = '''
import torch

from bench.data import DATASETS, MTLDataset
from strategies.sharing import SHARING
from strategies.sharing.hps import HardParameterSharing
from strategies.weighting import WEIGHTING, LossWeighting


class _Sum(LossWeighting):
    """Plain sum."""

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum()


@WEIGHTING.register("bad_nodefault")
class NoDefault(_Sum):
    """A hyperparameter without a default."""

    def __init__(self, *, c: float) -> None:
        super().__init__()


@WEIGHTING.register("bad_init")
class RaisingInit(_Sum):
    """Its __init__ raises."""

    def __init__(self) -> None:
        raise RuntimeError("cannot build me")


@SHARING.register("bad_arch")
class RaisingArch(HardParameterSharing):
    """Its __init__ raises."""

    def __init__(self, *args, **kwargs) -> None:
        raise KeyError("no such layer")


@DATASETS.register("bad_huge")
def huge() -> MTLDataset:
    """Runs out of memory while planning (as num_train = 10**8 with a wide input would)."""
    raise MemoryError("Unable to allocate 7.11 PiB for an array")
'''


@pytest.fixture
def bad_plugin(tmp_path):
    from bench.data import DATASETS
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    path = tmp_path / "bad_plugin.py"
    path.write_text(BAD_PLUGIN)
    yield path
    for registry, name in ((WEIGHTING, "bad_nodefault"), (WEIGHTING, "bad_init"),
                           (SHARING, "bad_arch"), (DATASETS, "bad_huge")):
        registry.unregister(name)


@pytest.mark.parametrize(("edit", "message"), [
    ('weighting = ["bad_nodefault"]',
     "weighting[0]: weighting 'bad_nodefault' (plugin {path}): hyperparameter 'c' needs a default"),
    ('weighting = ["bad_init"]', "weighting 'bad_init' (plugin {path}): creating it failed: "
                                 "RuntimeError: cannot build me"),
    ('sharing = ["bad_arch"]', "sharing 'bad_arch' (plugin {path}): building it on dataset "
                               "'penguins' failed: KeyError: 'no such layer'"),
    ('datasets = ["bad_huge"]', "dataset 'bad_huge' (plugin {path}) with {{}} does not fit in "
                                "memory (Unable to allocate 7.11 PiB for an array); choose "
                                "smaller sizes"),
])
def test_a_failing_plugin_component_is_a_one_line_error_naming_it(
        bad_plugin, tmp_path, capsys, edit, message):
    from bench.cli import main

    lines = {"datasets": 'datasets = ["penguins"]', "sharing": 'sharing = ["hps"]',
             "weighting": 'weighting = ["ew"]'}
    lines[edit.split(" ")[0]] = edit
    spec = tmp_path / "sweep.toml"
    spec.write_text('name = "p"\nplugins = ["bad_plugin.py"]\n' + "\n".join(lines.values()))
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mtlbench: error:"), err
    assert message.format(path=bad_plugin) in err
    assert not out.exists()
