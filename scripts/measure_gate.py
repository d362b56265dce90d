"""Measure the regression gate (`mtlbench check`): false alarms and detection power.

Runs the check N times per condition, each in a fresh process, the conditions
interleaved round-robin (so a change in machine load hits them alike):

- ``unchanged``: no fault; every failure is a false alarm;
- ``slow <strategy> 30%``: a fault hook makes one strategy's steps 30% slower; a
  failure naming it is a detection;
- ``accuracy <strategy> -x``: a fault hook worsens one strategy's metrics by a relative
  x; a failure is a detection;
- with ``--extended``, also faults the gate must NOT flag: a 5% slowdown (below the 15%
  minimum effect) and a 1e-7 accuracy change (below the 1e-6 tolerance).

Speed false alarms are also counted on every run for the strategies no fault touches,
and every count is also given per speed cell (each strategy is timed at the sweep's T
and at ``--large-tasks``, see ``bench/gate/``). Each check runs
``scripts/check_with_faults.py``, which installs the :mod:`bench.faults` hooks of its
condition and then runs the check.

    .venv/bin/python scripts/measure_gate.py --runs 20 --out results/gate/measure.json

Uses a fresh reference written first (``--update``) unless ``--reference DIR`` is given.

``--defaults`` measures instead which changed defaults the accuracy part catches (in
this process, no reference file): for every hyperparameter of every built-in strategy
and architecture, its default is changed as an edit of its file would (the function's
``__kwdefaults__``, then registered again): numbers x1.5 (0 -> 0.1 or 1; ints + 1, else
the first value the range admits), booleans flipped, a ``Literal`` to its next choice
(defaults of None are left, and listed). The component's coverage trials (``--coverage
NAME``) run again and are compared with the unchanged ones as the check compares them.

    .venv/bin/python scripts/measure_gate.py --defaults --out results/gate/defaults.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_with_faults.py"


def _check(
    args: list[str], fault: list[str], verdict: Path
) -> tuple[int, dict[str, Any], float]:
    """One check in a fresh process, with the fault hooks ``fault`` asks for."""
    verdict.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(CHECK), *fault, "--", *args, "--json", str(verdict)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1) or not verdict.is_file():
        raise SystemExit(f"check failed to run (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.returncode, json.loads(verdict.read_text()), elapsed


def conditions(strategy_slow: str, strategy_acc: str, drop: float,
               extended: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, fault options of check_with_faults.py, what it injects: 'speed', 'accuracy'
    or None)."""
    out: list[tuple[str, list[str], str | None]] = [
        ("unchanged", [], None),
        (f"slow {strategy_slow} +30%", ["--slowdown", f"{strategy_slow}:0.3"], "speed"),
        (f"accuracy {strategy_acc} -{drop:g}", ["--accuracy", f"{strategy_acc}:{drop:g}"],
         "accuracy"),
    ]
    if extended:
        out += [
            (f"slow {strategy_slow} +5% (must pass)", ["--slowdown", f"{strategy_slow}:0.05"],
             None),
            (f"accuracy {strategy_acc} -1e-07 (must pass)",
             ["--accuracy", f"{strategy_acc}:1e-7"], None),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="check runs per condition")
    parser.add_argument("--reference", "--baseline", dest="reference",
                        help="the check's reference directory (default: a fresh one)")
    parser.add_argument("--slow", default="pcgrad", help="strategy to slow down")
    parser.add_argument("--acc", default="mgda", help="strategy whose accuracy to worsen")
    parser.add_argument("--drop", type=float, default=1e-4, help="relative accuracy drop")
    parser.add_argument("--extended", action="store_true",
                        help="also sub-threshold faults that must not be flagged")
    parser.add_argument("--out", default="results/gate/measure.json", help="summary JSON")
    parser.add_argument("--defaults", action="store_true",
                        help="instead: which changed defaults the accuracy part catches")
    parser.add_argument("check_args", nargs="*", help="extra `check` arguments (after --)")
    args = parser.parse_args(argv)
    if args.defaults:
        out = ROOT / (args.out if args.out != parser.get_default("out")
                      else "results/gate/defaults.json")
        result = measure_defaults()
        print(json.dumps(result["summary"], indent=1))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"-> {out}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        verdict = Path(tmp) / "verdict.json"
        reference = args.reference or str(Path(tmp) / "reference")
        common = ["--reference", reference, *args.check_args]
        if args.reference is None:
            rc, _, elapsed = _check(["--update", *common], [], verdict)
            print(f"reference written in {elapsed:.1f} s", flush=True)
        conds = conditions(args.slow, args.acc, args.drop, args.extended)
        runs: list[dict[str, Any]] = []
        for i in range(args.runs):
            for name, fault, kind in conds:
                rc, result, elapsed = _check(common, fault, verdict)
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


# --------------------------------------------------------------------------- defaults


def changed_values(annotation: Any, default: Any) -> list[Any]:
    """Candidate changed defaults, the first valid one is used (see the module docstring)."""
    import typing

    base = annotation
    while typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    if typing.get_origin(base) is typing.Literal:
        choices = list(typing.get_args(base))
        return choices[choices.index(default) + 1:] + choices[:choices.index(default)]
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int):
        return [default + 1, default - 1, default * 2]
    if isinstance(default, float):
        if default == 0.0:
            return [0.1, 1.0, 1e-3]
        return [default * 1.5, default * 0.5, default * 0.9]
    return []


def _set_default(registry: Any, name: str, param: str, value: Any) -> Any:
    """Change ``param``'s default of component ``name`` (its function's ``__kwdefaults__``)
    and register it again; the old default."""
    import inspect

    obj = registry.get(name)
    func = obj.__init__ if inspect.isclass(obj) else obj
    old = func.__kwdefaults__[param]
    func.__kwdefaults__[param] = value
    registry.unregister(name)
    registry.register(name)(obj)
    return old


def measure_defaults(preset: str = "check") -> dict[str, Any]:
    """Change each default of each built-in strategy and architecture in turn; rerun the
    component's coverage trials; is any metric off the unchanged run's (rtol 1e-6)?"""
    from bench import gate as check
    from bench.config import load_spec
    from bench.errors import ConfigError
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    spec = load_spec(preset=preset)

    def coverage(only: tuple[str, ...]) -> dict[str, Any]:
        plan = check.accuracy_plan(spec, check.coverage_specs(preset, [], only))
        return {k: t for k, t in plan.items() if k.startswith(check.COVERAGE_PREFIX)}

    start = time.perf_counter()
    reference = check.run_accuracy(coverage(()), quiet=True)
    print(f"reference: {len(reference)} coverage trials in {time.perf_counter() - start:.1f} s",
          flush=True)
    weighting, sharing = check.coverage_components()
    rows: list[dict[str, Any]] = []
    for registry, names in ((WEIGHTING, weighting), (SHARING, sharing)):
        for name in names:
            for hp in registry.hyperparameters(name):
                row: dict[str, Any] = {"kind": registry.kind, "component": name,
                                       "param": hp.name, "default": hp.default}
                candidates = changed_values(hp.annotation, hp.default)
                keys = list(coverage((name,)))  # its trials with the default
                for value in candidates:
                    old = _set_default(registry, name, hp.name, value)
                    try:
                        registry.resolve(name, {})
                        plan = coverage((name,))
                    except ConfigError:
                        continue  # out of range: the next candidate
                    else:
                        row["changed_to"] = value
                        current = check.run_accuracy(plan, quiet=True)
                        # A trial present on one side only (an architecture that now
                        # builds in another setting) is a mismatch, as in the check.
                        differing = [k for k in dict.fromkeys([*keys, *plan])
                                     if check.compare_accuracy(
                                         {k: reference[k]} if k in keys else {},
                                         {k: current[k]} if k in current else {})]
                        row.update(trials=len(keys), trials_differing=len(differing),
                                   caught=bool(differing))
                        break
                    finally:
                        _set_default(registry, name, hp.name, old)
                if "changed_to" not in row:
                    row.update(caught=None, note="default not changed (None, or no valid "
                               "candidate)" if candidates or hp.default is None else
                               "no candidate for this type")
                if row["caught"] is None:
                    verdict = row["note"]
                else:
                    verdict = (f"{'caught' if row['caught'] else 'NOT caught'} "
                               f"({row['trials_differing']} of {row['trials']} trials differ)")
                print(f"{registry.kind} {name}.{hp.name}: {hp.default!r} -> "
                      f"{row.get('changed_to', '-')!r}: {verdict}", flush=True)
                rows.append(row)
    tried = [r for r in rows if r["caught"] is not None]
    summary = {
        "hyperparameters": len(rows),
        "changed": len(tried),
        "caught": sum(bool(r["caught"]) for r in tried),
        "not_caught": [f"{r['component']}.{r['param']} {r['default']!r} -> {r['changed_to']!r}"
                       for r in tried if not r["caught"]],
        "not_changed": [f"{r['component']}.{r['param']} (default {r['default']!r})"
                        for r in rows if r["caught"] is None],
        "elapsed_s": time.perf_counter() - start,
    }
    return {"summary": summary, "rows": rows}


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


if __name__ == "__main__":
    raise SystemExit(main())
