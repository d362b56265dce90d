"""DualProj: the mean task gradient, projected onto the dual cone of the task gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
https://arxiv.org/abs/2406.16232 (the DualProj aggregator of Section 3 / Appendix; the
projection is Equation 11 of GEM, Lopez-Paz & Ranzato, NeurIPS 2017,
https://arxiv.org/abs/1706.08840).

With pi_J the Euclidean projection onto the dual cone {d : J d >= 0},

    d = pi_J(J^T p),        p = ``pref_vector`` (default 1/T: the mean gradient),

so g_t . d >= 0 for every task t. By Proposition 1 of the paper d = J^T v with
v = argmin_{v >= p} v^T G v on the Gramian G = J J^T: a ``GramianWeighting``.

Implementation as for UPGrad (see ``strategies.weighting.upgrad``): G / trace(G) with the
``norm_eps`` guard, plus ``reg_eps`` I, as in torchjd; when J^T p conflicts with a task
the QP is solved by the compiled DAQP solver, its answer checked against the KKT
conditions, with the exact Lawson-Hanson active-set method as the fallback (and for
reg_eps < 1e-8).

Scale: d(c J) = c d(J) for c > 0 while ||J||_F^2 >= norm_eps. T = 1 gives p_1 g_1. One
host transfer of the T x T Gramian per step; NaN/Inf raise ``FloatingPointError``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import DualConeWeighting


@WEIGHTING.register("dualproj")
class DualProj(DualConeWeighting):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients.

    ``pref_vector`` replaces the mean's 1/T weights; ``norm_eps`` and ``reg_eps`` are
    torchjd's Gramian normalisation guard and ridge.
    """

    non_conflicting: ClassVar[bool] = True
    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    @staticmethod
    def prefs_matrix(prefs: np.ndarray) -> np.ndarray:
        return prefs[None, :]  # one projection: of J^T p

    @staticmethod
    def sum_projections(projected: np.ndarray) -> np.ndarray:
        return projected[0]
