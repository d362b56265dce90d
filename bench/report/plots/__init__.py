"""Plots of a report: seaborn on matplotlib's Agg backend, saved as PNG and SVG.

Every function takes already-aggregated frames (see :mod:`bench.analysis` and
:mod:`bench.report.results`) and returns a :class:`matplotlib.figure.Figure`, or ``None``
when there is nothing to draw. Figures are built without pyplot (no global figure
registry), under a seaborn theme applied through ``rc_context`` so importing this
package changes no global style. Strategies are listed in one order and drawn in one
colour each in every figure (:func:`strategy_colors`).
"""

from __future__ import annotations

from bench.report.plots.base import save, strategy_colors, theme
from bench.report.plots.cost import cost_quality, scaling_curves, speed_throughput, throughput
from bench.report.plots.dynamics import (
    affinity_heatmaps,
    conflict_heatmaps,
    cosine_over_steps,
    expert_utilisation,
    learning_curves,
    toy_trajectories,
    weights_over_training,
)
from bench.report.plots.quality import cd_diagram, delta_m_heatmap, pareto_front, task_changes

__all__ = [
    "affinity_heatmaps",
    "cd_diagram",
    "conflict_heatmaps",
    "cosine_over_steps",
    "cost_quality",
    "delta_m_heatmap",
    "expert_utilisation",
    "learning_curves",
    "pareto_front",
    "save",
    "scaling_curves",
    "speed_throughput",
    "strategy_colors",
    "task_changes",
    "theme",
    "throughput",
    "toy_trajectories",
    "weights_over_training",
]
