"""Command line: ``mtlbench list|run|report``. All state lives in ``main``'s arguments."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

from tabulate import tabulate

from bench import __version__, compare, gate, speed, tensorboard
from bench.config import check_run_dir, load_spec, preset_names
from bench.data import DATASETS
from bench.data.common import availability
from bench.dryrun import preset_rows, summary
from bench.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    Interrupted,
    SweepError,
    error_summary,
)
from bench.executors import SweepOutcome, default_workers, preflight, run_specs
from bench.grid import expand
from bench.plugins import import_plugins, load_entry_points
from bench.report import write_report
from bench.sampling import SAMPLING
from bench.spec import TrialSpec
from bench.store import RunStore, print_problems, weighting_label
from strategies.sharing import SHARING, reference_parameter_counts
from strategies.weighting import WEIGHTING

__all__ = ["main"]

RUN_EXIT_CODES = """exit codes:
  0    every trial of the sweep has an ok record
  1    some trial failed (diverged, timeout, oom, error), this run or an earlier one
       (--retry-failed reruns those); or the sweep could not go on
  2    unusable input (sweep file, --set, arguments, run directory), nothing run
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM, 129 by SIGHUP: finished
       trials are kept, running ones stopped; rerun to resume"""
LISTED_FAILURES = 20  # failed trials named at the end of `run`; the report lists all

# Commands living in their own modules: each has HELP, add_arguments(parser), main(args).
PLUGGED_COMMANDS: dict[str, ModuleType] = {
    "compare": compare,
    "speed": speed,
    "check": gate,
    "tensorboard": tensorboard,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        raise ConfigError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mtlbench", description="Benchmark multi-task learning strategies.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("kind", choices=["weighting", "sharing", "datasets", "sampling", "presets"])
    lst.add_argument("--names", action="store_true", help="bare names, one per line")
    lst.add_argument("--plugins", nargs="+", action="extend", default=[],
                     metavar="FILE_OR_MODULE",
                     help="import these plugins first (.py files or module names), "
                          "as a sweep's `plugins` key does")

    run = sub.add_parser("run", help="run a sweep (resumes: finished trials are skipped)",
                         epilog=RUN_EXIT_CODES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("spec", nargs="?", help="sweep TOML file")
    run.add_argument("--preset", help="packaged preset (see `mtlbench list presets`)")
    run.add_argument("--out", help="run directory (default: results/<sweep name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a spec key, e.g. train.epochs=3")
    run.add_argument("--executor", metavar="NAME",
                     help="override the spec's executor (process, inline, ray, submitit, "
                          "or one a plugin registers)")
    run.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    run.add_argument("--ray-address", help="address of an existing Ray cluster")
    run.add_argument("--time-limit", type=float, metavar="SECONDS", help="per-trial time limit")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun trials whose record is not 'ok'")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--dry-run", action="store_true",
                     help="print the trial count (multi-task, baselines) and a time estimate "
                          "from step times measured here; run nothing, write nothing")

    rep = sub.add_parser("report", help="write the report of a run directory")
    rep.add_argument("run_dir")

    for name, module in PLUGGED_COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def _version() -> str:
    """The installed distribution's version, else the source tree's."""
    try:
        return metadata.version("mtlbench")
    except metadata.PackageNotFoundError:

        return __version__


def _dataset_inputs(names: list[str]) -> dict[str, str]:
    """"single", "multi" (each task its own samples) or "both" (a parameter chooses),
    read from each loader's return annotation, so nothing is loaded."""

    out = {}
    for n in names:
        returns = str(inspect.signature(DATASETS.get(n)).return_annotation)
        multi, single = "MultiInputDataset" in returns, "MTLDataset" in returns
        out[n] = "both" if multi and single else "multi" if multi else "single"
    return out


def _cmd_list(args: argparse.Namespace) -> int:

    load_entry_points()  # installed packages' components are listed like built-in ones
    import_plugins(args.plugins)
    if args.kind == "presets":
        if args.names:
            print("\n".join(preset_names()))
            return 0

        print(tabulate(preset_rows(), headers=["name", "description", "trials",
                                               "measured run time"],
                       maxcolwidths=[None, 70, None, 40]))
        return 0
    registry = {"weighting": WEIGHTING, "sharing": SHARING, "datasets": DATASETS,
                "sampling": SAMPLING}[args.kind]
    names = registry.names()
    if args.names:
        print("\n".join(names))
        return 0
    headers = ["name", "description", "hyperparameters (defaults)"]
    extra: dict[str, str] = {}
    if args.kind == "sharing":

        counts = reference_parameter_counts()
        extra = {n: f"{counts[n]:,}" if n in counts else "—" for n in names}
        headers.append("parameters (reference)")
    elif args.kind == "datasets":

        status = availability()
        extra = {n: ("installed" if status.get(n) is None else f"missing: {status[n]}")
                 for n in names}
        headers.append("status")
        headers.insert(1, "inputs")
        inputs = _dataset_inputs(names)
    rows = [
        [
            n,
            *([inputs[n]] if args.kind == "datasets" else []),
            registry.summary(n),
            ", ".join(f"{h.name}={h.default!r}" for h in registry.hyperparameters(n)) or "—",
            *([extra[n]] if extra else []),
        ]
        for n in names
    ]
    print(tabulate(rows, headers=headers, maxcolwidths=[None, 60, 60, None]))
    if args.kind == "sharing":
        print("\nreference: 2 regression tasks, input (100,), MLP hidden (64, 64); "
              "mtan: input (1, 8, 12), CNN channels (16, 32)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:

    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers: must be at least 1")
    if args.time_limit is not None and not args.time_limit > 0:
        raise ConfigError("--time-limit: must be a positive number of seconds")
    # Everything is validated (and the grid built) before anything is written.
    spec = load_spec(args.spec, preset=args.preset, overrides=args.overrides)
    trials = expand(spec)
    if args.dry_run:  # before the run directory is even checked: nothing is written

        inline = (args.executor or spec.executor.kind) == "inline"
        workers = 1 if inline else args.workers or max(
            1, default_workers() // spec.train.threads)
        print(summary(spec, trials, workers))
        return EXIT_OK
    out = Path(args.out) if args.out else Path("results") / spec.name
    check_run_dir(out)
    store = RunStore(out)
    sweep = spec.to_dict()
    overrides = {
        "kind": args.executor, "workers": args.workers, "ray_address": args.ray_address,
        "time_limit_s": args.time_limit,
    }
    options = dataclasses.replace(
        spec.executor, **{k: v for k, v in overrides.items() if v is not None}
    )
    preflight(trials, options)  # executor, Ray address, devices: before anything is written
    store.require_same_sweep(sweep)
    try:
        store.write_manifest(sweep, [t.id for t in trials])
    except OSError as err:  # what the check above could not foresee (a full disk)
        raise ConfigError(f"--out {out}: cannot write {err.filename or out}: "
                          f"{err.strerror or err}") from None
    store.remove_stale_temp_files()
    if spec.tensorboard.enabled:  # events under <out>/tensorboard (ids unchanged)

        trials = tensorboard.attach(trials, spec.tensorboard, out)
        tensorboard.write_experiment(out, trials)
    # Damaged, misnamed or foreign records go to quarantine/ (named here); theirs rerun.
    print_problems(store.set_aside(), "set aside")

    start = time.perf_counter()
    outcome = run_specs(
        trials, store, options, retry_failed=args.retry_failed, progress=not args.no_progress
    )
    elapsed = time.perf_counter() - start
    busy = f", {outcome.busy} running elsewhere" if outcome.busy else ""
    print(
        f"{len(outcome.ran)} trials run, {outcome.skipped} already done{busy}, "
        f"{len(outcome.failed)} failed, in {elapsed:.1f} s -> {out}"
    )
    return _report_failures(outcome, trials, store)


def _trial_name(spec: TrialSpec) -> str:

    task = f" task={','.join(spec.tasks)}" if spec.is_baseline and spec.tasks else ""
    return (f"{spec.dataset.name} | {spec.sharing.name} | "
            f"{weighting_label(spec)} | seed {spec.seed}{task}")


def _first_error_line(store: RunStore, trial_id: str) -> str:

    try:
        return error_summary(store.read(trial_id).error)
    except (OSError, ValueError, AttributeError):
        return ""


def _report_failures(outcome: SweepOutcome, trials: Sequence[TrialSpec],
                     store: RunStore) -> int:
    """Name each failed trial of the sweep on stderr; the exit code of ``run``."""
    failed = {**outcome.earlier_failed, **outcome.failed}
    if outcome.earlier_failed:
        print(f"{len(outcome.earlier_failed)} failed records found from earlier runs "
              "(not rerun: --retry-failed reruns them)", file=sys.stderr)
    if not failed:
        return EXIT_OK
    by_id = {t.id: t for t in trials}
    print(f"failed trials ({len(failed)}):", file=sys.stderr)
    for trial_id, status in list(failed.items())[:LISTED_FAILURES]:
        error = _first_error_line(store, trial_id)
        print(f"  {_trial_name(by_id[trial_id])}: {status}{': ' + error if error else ''} "
              f"[{trial_id}]", file=sys.stderr)
    if len(failed) > LISTED_FAILURES:
        print(f"  ... and {len(failed) - LISTED_FAILURES} more (mtlbench report lists all)",
              file=sys.stderr)
    return EXIT_FAILED


@contextlib.contextmanager
def _termination_raises() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Interrupted`` in the main thread (as SIGINT raises
    KeyboardInterrupt), so executors stop their workers on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    signums = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _cmd_report(args: argparse.Namespace) -> int:

    try:
        path = write_report(args.run_dir)
    except OSError as err:  # a read-only run directory, a full disk
        where = err.filename or args.run_dir
        raise ConfigError(f"{args.run_dir}: cannot write the report ({where}: "
                          f"{err.strerror or err})") from None
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlbench`` console script; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
        handlers = {"list": _cmd_list, "run": _cmd_run, "report": _cmd_report}
        if args.command in PLUGGED_COMMANDS:
            return PLUGGED_COMMANDS[args.command].main(args)
        with _termination_raises() if args.command == "run" else contextlib.nullcontext():
            return handlers[args.command](args)
    except ConfigError as err:
        print(f"mtlbench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SweepError as err:
        print(f"mtlbench: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, Interrupted) as err:
        code = err.exit_code if isinstance(err, Interrupted) else 128 + signal.SIGINT
        print(f"mtlbench: interrupted by {err if isinstance(err, Interrupted) else 'SIGINT'} "
              "(finished trials are kept; rerun to resume)", file=sys.stderr)
        return code
