"""``mtlbench speed``'s command line: options, :func:`run` (measure and write the
records) and :func:`main` (print the tables)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import faults
from bench.config import load_spec
from bench.engine import ENGINES
from bench.environment import resolve_device
from bench.errors import ConfigError
from bench.records import SpeedRecord
from bench.speed.cells import build_cells, with_all_strategies
from bench.speed.records import SpeedStore, add_ratios, make_record
from bench.speed.runner import measure, torch_threads
from bench.speed.tables import split_table, table, write_split
from bench.timing import machine_info, make_timer

__all__ = ["DEFAULT_REPEATS", "DEFAULT_WARMUP", "add_arguments", "int_list", "main", "run"]

DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 3


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers (an argparse type: errors name the option)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 2,4,8, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="sweep TOML file (strategies, architectures, "
                        "model, optimizer)")
    parser.add_argument("--preset", help="packaged preset (default: 'speed' without a file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec key, e.g. model.hidden=[64]")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"],
                        help="device (default: the spec's train.device)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed rounds (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed rounds first (default {DEFAULT_WARMUP})")
    parser.add_argument("--steps", type=int, default=1,
                        help="consecutive steps per cell and round; a sample is their mean")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads while timing (default: torch's default); "
                        "1 is steadier on a busy machine")
    parser.add_argument("--cpu-clock", choices=["wall", "thread"], default="wall",
                        help="CPU timer: wall clock (perf_counter, default) or the thread's CPU "
                        "time (ignores preemption by other processes; use with --threads 1)")
    parser.add_argument("--engines", type=_name_list,
                        help=f"comma-separated engines (default: all: {', '.join(ENGINES)})")
    parser.add_argument("--tasks", type=int_list,
                        help="numbers of tasks T, e.g. 2,4,8,16,32,64")
    parser.add_argument("--batch-sizes", type=int_list,
                        help="batch sizes (default: train.batch_size)")
    parser.add_argument("--widths", type=int_list,
                        help="first hidden layer widths (default: model.hidden[0])")
    parser.add_argument("--all-strategies", action="store_true",
                        help="time every registered strategy (defaults) instead of the spec's")
    parser.add_argument("--out", help="output directory; records go to OUT/speed/ "
                        "(default: results/<sweep name>)")


def run(args: argparse.Namespace) -> tuple[list[SpeedRecord], list[str], Path]:
    """Measure what ``args`` asks for, write the records; returns them, the notes and the
    records' folder."""
    if args.repeats < 1:
        raise ConfigError("--repeats: must be at least 1")
    if args.warmup < 0:
        raise ConfigError("--warmup: must be at least 0")
    if args.steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads: must be at least 1")
    preset = args.preset if args.preset or args.spec else "speed"
    spec = load_spec(args.spec, preset=preset, overrides=args.overrides)
    if args.all_strategies:
        spec = with_all_strategies(spec)
    device_name = args.device or spec.train.device
    try:
        device = resolve_device(device_name)
    except RuntimeError as err:
        raise ConfigError(f"--device: {err}") from None
    cells, notes = build_cells(
        spec, engines=args.engines, tasks=args.tasks, batch_sizes=args.batch_sizes,
        widths=args.widths, device=str(device),
    )
    if not cells:
        raise ConfigError("speed: no compatible cell to time (" + "; ".join(notes) + ")")
    slowdowns = faults.current().injected()["slowdown"]
    if slowdowns:
        print(f"warning: fault hooks inject slowdowns {slowdowns}", file=sys.stderr)
    with torch_threads(args.threads):
        measurements = measure(cells, repeats=args.repeats, warmup=args.warmup,
                               steps_per_repeat=args.steps, cpu_clock=args.cpu_clock)
        machine = machine_info(device)
    timer_kind = make_timer(device, args.cpu_clock).kind
    records = add_ratios(cells, [
        make_record(c, m, machine=machine, warmup=args.warmup, steps_per_repeat=args.steps,
                    timer_kind=timer_kind, slowdown=slowdowns.get(c.strategy.name, 0.0))
        for c, m in zip(cells, measurements, strict=True)
    ])
    out = (Path(args.out) if args.out else Path("results") / spec.name) / "speed"
    store = SpeedStore(out)
    for record in records:
        store.write(record)
    return records, notes, out


def main(args: argparse.Namespace) -> int:
    records, notes, out = run(args)
    print(table(records))
    print("\nPhase split per T (median ms and share of the step's median):\n")
    print(split_table(records))
    for note in notes:
        print(f"note: {note}")
    csv_path, md_path = write_split(out)
    print(f"{len(records)} cells x {args.repeats} repeats -> {out} "
          f"(phase split: {csv_path.name}, {md_path.name})")
    return 0
