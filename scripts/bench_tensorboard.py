"""Cost of TensorBoard logging: every trial of a preset run with and without events, in
one process, back to back in alternating order (so load on a shared machine hits both
alike); prints the summed trial wall time of each and the ratio, with a bootstrap
interval over trials.

    .venv/bin/python scripts/bench_tensorboard.py --preset default --set 'seeds=[0]'
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np

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
    off_s, on_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        logged = attach(trials, settings, tmp)
        execute(trials[0])  # imports and first-touch costs out of the measurement
        execute(dataclasses.replace(logged[0]))
        for i, (plain, with_log) in enumerate(zip(trials, logged, strict=True)):
            order = [(plain, off_s), (with_log, on_s)]
            for spec_, times in (order if i % 2 == 0 else order[::-1]):
                rec = execute(spec_)
                assert rec["status"] == "ok", rec.get("error")
                times.append(rec["wall_s"])
    off, on = np.array(off_s), np.array(on_s)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(off), size=(2000, len(off)))
    boot = on[idx].sum(1) / off[idx].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    print(f"{len(off)} trials of preset '{args.preset}' {args.overrides}, every = "
          f"{settings.every}: without logging {off.sum():.1f} s, with {on.sum():.1f} s, "
          f"ratio {on.sum() / off.sum():.4f} (95% bootstrap over trials {low:.4f} .. "
          f"{high:.4f})")


if __name__ == "__main__":
    main()
