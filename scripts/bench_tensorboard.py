"""Cost of TensorBoard logging: every trial of a preset run with and without events, in
one process, back to back in alternating order (so load on a shared machine hits both
alike); prints the summed trial wall time and CPU time (``time.process_time``: less
sensitive to other processes on a shared machine) of each with the ratio and a bootstrap
interval over trials, and the time spent inside ``TrialLogger`` itself.

    .venv/bin/python scripts/bench_tensorboard.py --preset default --set 'seeds=[0]'
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time

import numpy as np

from bench import tensorboard
from bench.config import load_spec
from bench.grid import expand
from bench.tensorboard import attach
from bench.trial import execute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--every", type=int, help="tensorboard.every (default: the sweep's)")
    args = parser.parse_args()
    spec = load_spec(preset=args.preset, overrides=args.overrides)
    settings = spec.tensorboard.model_copy(update={"enabled": True, **(
        {"every": args.every} if args.every else {})})
    trials = expand(spec)
    inside = [0.0]  # seconds spent in the logger's own methods

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside[0] += time.perf_counter() - start
        return wrapper

    for name in ("__init__", "begin", "start_epoch", "due", "step", "end_epoch", "finish",
                 "close"):
        setattr(tensorboard.TrialLogger, name, timed(getattr(tensorboard.TrialLogger, name)))
    off_s, on_s, off_cpu, on_cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        logged = attach(trials, settings, tmp)
        execute(trials[0])  # imports and first-touch costs out of the measurement
        execute(dataclasses.replace(logged[0]))
        inside[0] = 0.0
        for i, (plain, with_log) in enumerate(zip(trials, logged, strict=True)):
            order = [(plain, off_s, off_cpu), (with_log, on_s, on_cpu)]
            for spec_, times, cpu in (order if i % 2 == 0 else order[::-1]):
                start = time.process_time()
                rec = execute(spec_)
                cpu.append(time.process_time() - start)
                assert rec["status"] == "ok", rec.get("error")
                times.append(rec["wall_s"])
    print(f"{len(off_s)} trials of preset '{args.preset}' {args.overrides}, every = "
          f"{settings.every}:")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(off_s), size=(2000, len(off_s)))
    for what, off, on in (("wall", np.array(off_s), np.array(on_s)),
                          ("CPU", np.array(off_cpu), np.array(on_cpu))):
        low, high = np.percentile(on[idx].sum(1) / off[idx].sum(1), [2.5, 97.5])
        print(f"  {what} time: without logging {off.sum():.1f} s, with {on.sum():.1f} s, "
              f"ratio {on.sum() / off.sum():.4f} (95% bootstrap over trials {low:.4f} .. "
              f"{high:.4f})")
    print(f"  inside TrialLogger: {inside[0]:.2f} s = {inside[0] / sum(on_s):.2%} of the "
          "logged trials' wall time")


if __name__ == "__main__":
    main()
