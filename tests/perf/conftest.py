"""The perf suite (``make perf``): our training step against torchjd and the floor proxy.

Runs only when benchmarks are asked for (``--benchmark-only``) or with
``MTLBENCH_PERF=1``; a plain ``pytest`` run skips it. Settings: see
``test_step_perf.py``. At the end of the session the ratio table is printed and
written to ``$MTLBENCH_PERF_OUT`` (default ``results/perf``): ``ratios.md`` and
``ratios.json``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


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


def _report(results) -> tuple[str, dict]:
    from bench.timing import machine_info

    from . import harness as H

    machine = machine_info(perf_device())
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rounds = sorted({len(s) for r in results for s in r.samples.values()})
    threads = sorted({r.threads for r in results})
    head = (f"## Training step: ours / torchjd 0.18 / floor proxy ({when})\n\n"
            f"Machine: {machine.get('cpu')}, {os.cpu_count()} cores, torch "
            f"{machine.get('torch')}; {H.clock_note(threads[0] if len(threads) == 1 else None)}; reference problem: hps, MLP "
            f"{H.INPUT_DIM}-{'-'.join(map(str, H.HIDDEN))}, heads of width 1, batch "
            f"{H.BATCH_SIZE}, Adam; rounds per group {rounds}. Ratios pair the runners' "
            "steps of the same round.\n")
    notes = [f"- T={r.num_tasks} {r.strategy}: {'; '.join(r.notes)}" for r in results
             if r.notes]
    summary = "\n".join([head, H.table(results)])
    text = "\n".join([summary, "\n### Phase medians (ms)\n", H.phase_table(results),
                      "\n### Notes\n", *notes, ""])
    data = {"created_at": datetime.now(timezone.utc).isoformat(), "machine": machine,
            "clock": "thread_time", "targets": H.TARGETS,
            "groups": [r.to_dict() for r in results]}
    return summary, text, data


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from . import harness as H

    if not H.RESULTS:
        return
    summary, text, data = _report(H.RESULTS)
    terminalreporter.write_sep("=", "mtlbench perf: ratio table (phases and notes: ratios.md)")
    terminalreporter.write_line(summary)
    out = Path(os.environ.get("MTLBENCH_PERF_OUT", ROOT / "results" / "perf"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ratios.md").write_text(text, "utf-8")
    (out / "ratios.json").write_text(json.dumps(data, indent=1), "utf-8")
    engines = H.engine_list(os.environ.get("MTLBENCH_PERF_ENGINES", H.DEFAULT_ENGINES))
    shown = [engines[0], *(["auto"] if "auto" in engines[1:] else [])]
    (out / "readme.md").write_text(H.readme_table(H.RESULTS, shown) + "\n", "utf-8")
    terminalreporter.write_line(f"-> {out / 'ratios.md'}, {out / 'ratios.json'}, "
                                f"{out / 'readme.md'} (the README's table)")
