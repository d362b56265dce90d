"""``mtlbench check`` and ``python -m bench.check``: the regression gate's command module.
The gate itself is the package :mod:`bench.gate` (see its docstring); this module
re-exports it under the command's name."""

from __future__ import annotations

from bench.gate import *  # noqa: F403
from bench.gate import __all__ as __all__
from bench.gate import standalone

if __name__ == "__main__":
    raise SystemExit(standalone())
