"""Run ``mtlbench check`` with fault hooks installed: what ``scripts/measure_gate.py``
runs in a fresh process per check.

    .venv/bin/python scripts/check_with_faults.py --slowdown pcgrad:0.3 -- --reference DIR

``--slowdown NAME:X[,...]`` makes every step of strategy NAME X times slower (a busy
wait inside the timed step); ``--accuracy NAME:X[,...]`` worsens every metric of its
trials by a relative X (see :class:`bench.faults.GateFaults`). Every other argument
goes to the check. Production code reads no environment variable for this: the hooks
are installed here, in-process, before the check runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import faults
from bench.gate import standalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slowdown", default="", metavar="NAME:X[,...]",
                        help="slow these strategies' steps down by a relative X")
    parser.add_argument("--accuracy", default="", metavar="NAME:X[,...]",
                        help="worsen these strategies' metrics by a relative X")
    args, rest = parser.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        hooks = faults.GateFaults(slowdown=faults.parse_fractions(args.slowdown, "--slowdown"),
                                  accuracy=faults.parse_fractions(args.accuracy, "--accuracy"))
    except ValueError as err:
        parser.error(str(err))
    with faults.installed(hooks):
        return standalone(rest)


if __name__ == "__main__":
    raise SystemExit(main())
