"""The perf suite (``make perf``): pytest-benchmark timings of full training steps.

Runs only when benchmarks are asked for (``--benchmark-only``) or with
``MTLBENCH_PERF=1``; a plain ``pytest`` run skips it. Settings (environment):
``MTLBENCH_PERF_DEVICE`` (cpu, cuda, mps, auto; default cpu), ``MTLBENCH_PERF_ENGINE``
(the engine of gradient strategies; default loop).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def perf_device():
    from bench.environment import resolve_device

    return resolve_device(os.environ.get("MTLBENCH_PERF_DEVICE", "cpu"))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add what changes a timing: CPU/GPU, driver, torch/CUDA/cuDNN and TF32/cuDNN flags."""
    from bench.timing import machine_info as mtlbench_machine

    machine_info["mtlbench"] = mtlbench_machine(perf_device())


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", False) or os.environ.get("MTLBENCH_PERF") == "1":
        return
    skip = pytest.mark.skip(reason="perf suite: `make perf` (pytest tests/perf --benchmark-only)")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
