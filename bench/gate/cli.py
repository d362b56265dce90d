"""``mtlbench check``'s command line: options, and :func:`main`: plan, run both parts,
then write the reference (``--update``) or compare with it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench import faults, speed
from bench.config import SweepSpec, load_spec
from bench.errors import ConfigError
from bench.gate.accuracy import compare_accuracy, run_accuracy
from bench.gate.plan import (
    DEFAULTS,
    THREADS,
    accuracy_plan,
    coverage_specs,
    coverage_text,
    parse_coverage,
    trial_count,
)
from bench.gate.ratios import BLOCK_REDUCE, SpeedVerdict, compare_speed, measure_ratios, speed_cells
from bench.gate.reference import (
    DEFAULT_REFERENCE,
    FORMAT,
    REFERENCE_FILE,
    VERSION,
    chosen,
    machine_warning,
    read_reference,
    settings_of,
)
from bench.grid import TrialSpec, canonical_json
from bench.store import atomic_write_json
from bench.timing import machine_info

__all__ = ["EXIT_REGRESSION", "HELP", "add_arguments", "main", "standalone"]

HELP = "regression gate: a fixed sweep's metrics and speed ratios to ew vs a committed reference"
EXIT_REGRESSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="DIR",
                        help=f"reference directory (default {DEFAULT_REFERENCE})")
    # The old name of --reference, kept so that existing commands still work.
    parser.add_argument("--baseline", dest="reference", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--update", action="store_true",
                        help="run and (re)write the reference instead of comparing")
    parser.add_argument("--trials-dir", metavar="DIR",
                        help="accuracy: keep the trial records in this run directory "
                        "(default: a temporary one; records already there are reused)")
    parser.add_argument("--preset", default="check", help="the fixed sweep (default 'check')")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key of the sweep")
    parser.add_argument("--coverage", default="all", metavar="NAMES",
                        help="accuracy: the coverage sweeps' strategies and architectures: "
                        "'all' built-in ones (default), 'none', or names separated by "
                        "commas ('cagrad,hps': cagrad on hard sharing; 'cagrad': on every "
                        "architecture)")
    parser.add_argument("--no-speed", action="store_true", help="accuracy only")
    parser.add_argument("--repeats", type=int, default=d["repeats"],
                        help=f"speed: timed rounds (default {d['repeats']})")
    parser.add_argument("--warmup", type=int, default=d["warmup"],
                        help=f"speed: untimed rounds (default {d['warmup']})")
    parser.add_argument("--steps", type=int, default=d["steps"],
                        help=f"speed: steps per cell and round, a sample is the fastest "
                        f"(default {d['steps']})")
    parser.add_argument("--large-tasks", type=int, default=d["large_tasks"], metavar="T",
                        help=f"speed: also time every cell at T tasks, so a cost growing "
                        f"faster than T shows (0: off; default {d['large_tasks']})")
    parser.add_argument("--min-effect", type=float, default=d["min_effect"],
                        help=f"speed: smallest slowdown that fails (default {d['min_effect']})")
    parser.add_argument("--alpha", type=float, default=d["alpha"],
                        help=f"speed: significance level (default {d['alpha']})")
    parser.add_argument("--rtol", type=float, default=d["rtol"],
                        help=f"accuracy: relative tolerance (default {d['rtol']})")
    parser.add_argument("--atol", type=float, default=d["atol"],
                        help=f"accuracy: absolute tolerance (default {d['atol']})")
    parser.add_argument("--json", dest="json_out", metavar="PATH",
                        help="also write the verdict as JSON")


def _validate(args: argparse.Namespace) -> None:
    if args.repeats < 2:
        raise ConfigError("--repeats: must be at least 2")
    if args.warmup < 0:
        raise ConfigError("--warmup: must be at least 0")
    if args.steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if args.large_tasks < 0:
        raise ConfigError("--large-tasks: must be >= 0")
    if not args.min_effect >= 0:
        raise ConfigError("--min-effect: must be >= 0")
    if not 0 < args.alpha < 1:
        raise ConfigError("--alpha: must be in (0, 1)")
    if not (args.rtol >= 0 and args.atol >= 0):
        raise ConfigError("--rtol/--atol: must be >= 0")


def _load_warning() -> str | None:
    """A note when the machine is busier than its cores: some steps (the gradient-based
    ones) slow down more than ew's under contention, so ratios drift upwards a little."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"the machine is busy (1-min load average {load:.1f} on {cores} cores): "
            "speed ratios can drift under contention; rerun on a quiet machine to be sure")


def _speed_table(rows: list[dict[str, Any]]) -> str:
    table = [[r["strategy"], f"{r['reference']:.3f}", f"{r['current']:.3f}",
              f"{r['change']:+.1%}", f"{r['p']:.2g}", r["verdict"]] for r in rows]
    return tabulate(table, headers=["speed cell (ratio to ew)", "reference", "current",
                                    "change", "p (slower)", "verdict"], disable_numparse=True)


@dataclass
class _Run:
    """What one check measured: the plan and its trials' results, the speed cells and
    their ratio samples."""

    plan: dict[str, TrialSpec]
    coverage: list[tuple[str, SweepSpec]]
    accuracy: dict[str, dict[str, Any]]
    cells: list[speed.SpeedCell]
    ratios: dict[str, dict[str, Any]]
    injected: dict[str, dict[str, float]]
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)


def _measure(args: argparse.Namespace, reference: dict[str, Any] | None) -> _Run:
    """Check the settings against ``reference`` (None: --update), then run both parts."""
    spec = load_spec(preset=args.preset, overrides=args.overrides)
    only = parse_coverage(args.coverage)
    settings = settings_of(args, spec, only)
    if reference is not None and chosen(reference["settings"]) != chosen(settings):
        old = reference["settings"].get("coverage") or {}
        raise ConfigError(
            f"{Path(args.reference) / REFERENCE_FILE}: made with a different sweep (preset "
            f"{reference['settings'].get('preset')!r}, --set "
            f"{reference['settings'].get('overrides')}, --coverage "
            f"{coverage_text(old.get('only', ()))}); use the same settings or rerun with --update"
        )
    coverage = coverage_specs(args.preset, args.overrides, only)
    plan = accuracy_plan(spec, coverage)
    machine = machine_info(None)
    machine["threads"] = THREADS
    injected = faults.current().injected()
    if any(injected.values()):
        if args.update:
            raise ConfigError("refusing to write a reference with fault injection active "
                              "(bench.faults hooks installed)")
        print(f"warning: fault injection active: {injected}", file=sys.stderr)
    accuracy = run_accuracy(plan, run_dir=args.trials_dir)
    cells = [] if args.no_speed else speed_cells(spec, args.large_tasks)
    ratios = measure_ratios(cells, repeats=args.repeats, warmup=args.warmup,
                            steps=args.steps) if cells else {}
    return _Run(plan, coverage, accuracy, cells, ratios, injected, settings, machine)


def _update(args: argparse.Namespace, run: _Run, started: float) -> int:
    folder = Path(args.reference)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "machine": run.machine,
        "settings": run.settings,
        "injected": run.injected,
        "accuracy": {"rtol": args.rtol, "atol": args.atol, "trials": run.accuracy},
        "speed": {"reference": speed.REFERENCE, "repeats": args.repeats,
                  "warmup": args.warmup, "steps_per_repeat": args.steps,
                  "tasks": sorted({c.num_tasks for c in run.cells}),
                  "block_reduce": BLOCK_REDUCE, "cells": run.ratios},
    }
    atomic_write_json(folder / REFERENCE_FILE, document)
    elapsed = time.perf_counter() - started
    print(f"reference: {trial_count(run.plan, run.coverage)}, {len(run.ratios)} speed cells -> "
          f"{folder / REFERENCE_FILE} ({elapsed:.1f} s)")
    if args.json_out:
        atomic_write_json(Path(args.json_out), {"passed": True, "updated": True,
                                                "injected": run.injected, "elapsed_s": elapsed})
    return 0


@dataclass
class _SpeedOutcome:
    first: dict[str, SpeedVerdict] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)
    confirm: dict[str, SpeedVerdict] = field(default_factory=dict)
    regressed: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _compare_speed(args: argparse.Namespace, run: _Run, ref_cells: dict[str, Any]
                   ) -> _SpeedOutcome:
    """Compare each cell's ratios with the reference's; confirm flagged ones by a rerun."""
    out = _SpeedOutcome()
    for label, cur in run.ratios.items():
        base = ref_cells.get(label)
        if base is None:
            out.notes.append(f"speed cell {label} is not in the reference (run --update)")
            continue
        if canonical_json(base["cell"]) != canonical_json(cur["cell"]):
            # e.g. a strategy's default hyperparameters changed: still compared, as such a
            # change can be the very regression to catch
            out.notes.append(f"speed cell {label} is built differently from the reference's")
        verdict = compare_speed(base["ratio_samples"], cur["ratio_samples"],
                                min_effect=args.min_effect, alpha=args.alpha)
        out.first[label] = verdict
        if verdict.regressed:
            out.flagged.append(label)
    if not args.no_speed:
        out.notes += [f"speed cell {label} of the reference was not measured"
                      for label in ref_cells.keys() - run.ratios.keys()]
    if out.flagged:
        keys = {c.reference_key for c in run.cells if c.label in out.flagged}
        rerun_cells = [c for c in run.cells if c.label in out.flagged or (
            c.strategy.name == speed.REFERENCE and c.reference_key in keys)]
        print(f"speed: {', '.join(out.flagged)} flagged; confirming with a rerun",
              file=sys.stderr)
        rerun = measure_ratios(rerun_cells, repeats=args.repeats, warmup=args.warmup,
                               steps=args.steps)
        for label in out.flagged:
            out.confirm[label] = compare_speed(ref_cells[label]["ratio_samples"],
                                               rerun[label]["ratio_samples"],
                                               min_effect=args.min_effect, alpha=args.alpha)
    out.regressed = [label for label in out.flagged if out.confirm[label].regressed]
    for label, verdict in out.first.items():
        final = out.confirm.get(label, verdict)
        if label in out.regressed:
            state = "REGRESSED (confirmed)"
        elif label in out.flagged:
            state = "ok (not confirmed by rerun)"
        elif verdict.improved:
            state = "faster (consider --update)"
        else:
            state = "ok"
        out.rows.append({"strategy": label, "reference": verdict.reference_median,
                         "current": final.current_median, "change": final.change,
                         "p": final.p_slower, "verdict": state})
    return out


def _report(args: argparse.Namespace, run: _Run, acc_rows: list[list[Any]],
            sp: _SpeedOutcome, started: float) -> int:
    if sp.rows:
        print(_speed_table(sp.rows))
    notes = list(sp.notes)
    load = _load_warning()
    if load and (sp.flagged or sp.regressed):
        notes.append(load)
    for note in notes:
        print(f"note: {note}")
    failed = bool(acc_rows or sp.regressed)
    if failed:
        def num(v: Any) -> Any:
            return f"{v:.8g}" if isinstance(v, float) else v

        rows = [["accuracy", what, num(b), num(c), change] for what, b, c, change in acc_rows]
        rows += [["speed", f"{r['strategy']} step / ew step", f"{r['reference']:.3f}",
                  f"{r['current']:.3f}", f"{r['change']:+.1%}"]
                 for r in sp.rows if r["strategy"] in sp.regressed]
        print("\nREGRESSIONS:")
        print(tabulate(rows, headers=["check", "what", "reference", "current", "change"],
                       disable_numparse=True))
    elapsed = time.perf_counter() - started
    print(f"check {'FAILED' if failed else 'passed'}: {trial_count(run.plan, run.coverage)} "
          f"(rtol {args.rtol:g}), {len(run.ratios)} speed cells (min effect "
          f"{args.min_effect:.0%}, alpha {args.alpha:g}), {elapsed:.1f} s")
    if args.json_out:
        atomic_write_json(Path(args.json_out), {
            "passed": not failed,
            "updated": False,
            "accuracy_mismatches": acc_rows,
            "speed_first": {k: asdict(v) for k, v in sp.first.items()},
            "speed_flagged": sp.flagged,
            "speed_confirm": {k: asdict(v) for k, v in sp.confirm.items()},
            "speed_regressed": sp.regressed,
            "injected": run.injected,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "elapsed_s": elapsed,
        })
    return EXIT_REGRESSION if failed else 0


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _validate(args)
    reference = None if args.update else read_reference(Path(args.reference))
    run = _measure(args, reference)
    if reference is None:
        return _update(args, run, started)
    warning = machine_warning(reference, run.machine)
    if warning:
        print(warning, file=sys.stderr)
    acc_rows = compare_accuracy(reference["accuracy"]["trials"], run.accuracy, rtol=args.rtol,
                                atol=args.atol)
    return _report(args, run, acc_rows, _compare_speed(args, run, reference["speed"]["cells"]),
                   started)


def standalone(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.gate``: the same command without the ``mtlbench`` front end."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise ConfigError(message)

    parser = _Parser(prog="mtlbench check", description=HELP)
    add_arguments(parser)
    try:
        return main(parser.parse_args(argv))
    except ConfigError as err:
        print(f"mtlbench: error: {err}", file=sys.stderr)
        return 2
