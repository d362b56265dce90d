"""Moved: the learning curves are :func:`bench.report.results.curve_frame` and
:func:`bench.report.plots.learning_curves` (kept for callers of the old path)."""

from bench.report.plots import learning_curves
from bench.report.results import BASELINE, curve_frame

__all__ = ["BASELINE", "curve_frame", "learning_curves"]
