"""``python -m bench.gate``: ``mtlbench check`` without the ``mtlbench`` front end."""

from bench.gate.cli import standalone

raise SystemExit(standalone())
