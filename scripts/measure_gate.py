"""Measure the regression gate (`mtlbench check`): false alarms and detection power.

Runs the check N times per condition, each in a fresh process, the conditions
interleaved round-robin (so a change in machine load hits them alike):

- ``unchanged``: no fault; every failure is a false alarm;
- ``slow <strategy> 30%``: ``MTLBENCH_INJECT_SLOWDOWN`` makes one strategy's steps 30%
  slower; a failure naming it is a detection;
- ``accuracy <strategy> -x``: ``MTLBENCH_INJECT_ACCURACY`` worsens one strategy's
  metrics by a relative x; a failure is a detection;
- with ``--extended``, also faults the gate must NOT flag: a 5% slowdown (below the 15%
  minimum effect) and a 1e-7 accuracy change (below the 1e-6 tolerance).

Speed false alarms are also counted on every run for the strategies no fault touches,
and every count is also given per speed cell (each strategy is timed at the sweep's T
and at ``--large-tasks``, see ``bench/check.py``).

    .venv/bin/python scripts/measure_gate.py --runs 20 --out results/gate/measure.json

Uses a fresh baseline written first (``--update``) unless ``--baseline DIR`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SLOW_ENV = "MTLBENCH_INJECT_SLOWDOWN"
ACC_ENV = "MTLBENCH_INJECT_ACCURACY"


def _check(
    args: list[str], env: dict[str, str], verdict: Path
) -> tuple[int, dict[str, Any], float]:
    verdict.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.check", *args, "--json", str(verdict)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=900,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1) or not verdict.is_file():
        raise SystemExit(f"check failed to run (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.returncode, json.loads(verdict.read_text()), elapsed


def conditions(strategy_slow: str, strategy_acc: str, drop: float,
               extended: bool) -> list[tuple[str, dict[str, str], str | None]]:
    """(name, environment, what it injects: 'speed', 'accuracy' or None)."""
    out: list[tuple[str, dict[str, str], str | None]] = [
        ("unchanged", {}, None),
        (f"slow {strategy_slow} +30%", {SLOW_ENV: f"{strategy_slow}:0.3"}, "speed"),
        (f"accuracy {strategy_acc} -{drop:g}", {ACC_ENV: f"{strategy_acc}:{drop:g}"},
         "accuracy"),
    ]
    if extended:
        out += [
            (f"slow {strategy_slow} +5% (must pass)", {SLOW_ENV: f"{strategy_slow}:0.05"}, None),
            (f"accuracy {strategy_acc} -1e-07 (must pass)", {ACC_ENV: f"{strategy_acc}:1e-7"},
             None),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="check runs per condition")
    parser.add_argument("--baseline", help="baseline directory (default: a fresh one)")
    parser.add_argument("--slow", default="pcgrad", help="strategy to slow down")
    parser.add_argument("--acc", default="mgda", help="strategy whose accuracy to worsen")
    parser.add_argument("--drop", type=float, default=1e-4, help="relative accuracy drop")
    parser.add_argument("--extended", action="store_true",
                        help="also sub-threshold faults that must not be flagged")
    parser.add_argument("--out", default="results/gate/measure.json", help="summary JSON")
    parser.add_argument("check_args", nargs="*", help="extra `check` arguments (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        verdict = Path(tmp) / "verdict.json"
        baseline = args.baseline or str(Path(tmp) / "baseline")
        common = ["--baseline", baseline, *args.check_args]
        if args.baseline is None:
            rc, _, elapsed = _check(["--update", *common], {}, verdict)
            print(f"baseline written in {elapsed:.1f} s", flush=True)
        conds = conditions(args.slow, args.acc, args.drop, args.extended)
        runs: list[dict[str, Any]] = []
        for i in range(args.runs):
            for name, env, kind in conds:
                rc, result, elapsed = _check(common, env, verdict)
                runs.append({"condition": name, "kind": kind, "rc": rc, "elapsed_s": elapsed,
                             "result": result})
                flagged = result["speed_flagged"]
                print(f"[{i + 1}/{args.runs}] {name}: exit {rc} in {elapsed:.1f} s"
                      f"{' flagged ' + ','.join(flagged) if flagged else ''}"
                      f"{' regressed ' + ','.join(result['speed_regressed']) if rc else ''}",
                      flush=True)

    summary = summarize(runs, conds, args.slow)
    print(json.dumps(summary, indent=1))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "runs": runs, "args": vars(args)}, indent=1))
    print(f"-> {out}")
    return 0


def _strategy(label: str) -> str:
    return label.split("/")[0].split("(")[0]


def summarize(runs: list[dict[str, Any]], conds: list, slow: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, _, kind in conds:
        mine = [r for r in runs if r["condition"] == name]
        fails = sum(r["rc"] == 1 for r in mine)
        entry: dict[str, Any] = {
            "runs": len(mine),
            "failed": fails,
            "fail_rate": fails / len(mine) if mine else None,
            "mean_elapsed_s": sum(r["elapsed_s"] for r in mine) / len(mine) if mine else None,
        }
        if kind == "speed":
            changes = [v["change"] for r in mine for k, v in r["result"]["speed_first"].items()
                       if _strategy(k) == slow]
            entry["detected_named"] = sum(
                any(_strategy(k) == slow for k in r["result"]["speed_regressed"]) for r in mine)
            entry["median_measured_change"] = _median(changes)
            cells = sorted({k for r in mine for k in r["result"]["speed_first"]
                            if _strategy(k) == slow})
            entry["by_cell"] = {
                label: {
                    "detected": sum(label in r["result"]["speed_regressed"] for r in mine),
                    "median_measured_change": _median(
                        [r["result"]["speed_first"][label]["change"] for r in mine
                         if label in r["result"]["speed_first"]]),
                }
                for label in cells
            }
        out[name] = entry
    # Speed false alarms: strategies without an injected slowdown, over every run.
    cells = flagged = regressed = 0
    per_cell: dict[str, dict[str, int]] = {}
    for r in runs:
        for label in r["result"]["speed_first"]:
            if r["kind"] == "speed" and _strategy(label) == slow:
                continue
            if "slow" in r["condition"] and _strategy(label) == slow:
                continue
            cells += 1
            flagged += label in r["result"]["speed_flagged"]
            regressed += label in r["result"]["speed_regressed"]
            c = per_cell.setdefault(label, {"runs": 0, "flagged_first_run": 0,
                                            "failed_after_rerun": 0})
            c["runs"] += 1
            c["flagged_first_run"] += label in r["result"]["speed_flagged"]
            c["failed_after_rerun"] += label in r["result"]["speed_regressed"]
    out["speed_cells_without_fault"] = {
        "cells": cells, "flagged_first_run": flagged, "failed_after_rerun": regressed,
        "by_cell": per_cell,
    }
    return out


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


if __name__ == "__main__":
    raise SystemExit(main())
