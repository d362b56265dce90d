from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

# Tests send SIGINT to mtlbench subprocesses. A suite started in the background by a
# non-interactive shell (`... &`, nohup) has SIGINT ignored, and exec'd children keep an
# ignored signal: take it back so that they get the default (Python's KeyboardInterrupt).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY_SPEC = """
name = "tiny"
seeds = [0, 1]
datasets = [{ name = "mmoe_synthetic", num_train = 256, num_val = 64, num_test = 64, input_dim = 16 }]
sharing = ["hps"]
weighting = ["ew", "mgda"]

[model]
hidden = [16]

[train]
epochs = 2
batch_size = 64
lr = 0.01
"""


@pytest.fixture(scope="session")
def tiny_spec() -> str:
    """The text of a tiny, fast sweep (one synthetic dataset, ew + mgda, two seeds)."""
    return TINY_SPEC


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a sweep TOML (dedented) into tmp_path and return its path."""

    def _write(text: str = TINY_SPEC, name: str = "sweep.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write
