"""UPGrad: the mean of the task gradients, each projected onto the dual cone of all of them.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
https://arxiv.org/abs/2406.16232 (Section 3, Definition of A_UPGrad; Proposition 1).

The dual cone of the rows g_1..g_T of J is {d : J d >= 0}: the directions that conflict
with no task. With pi_J the Euclidean projection onto it,

    d = sum_i p_i pi_J(g_i),        p = ``pref_vector`` (default 1/T: the paper's mean).

Every pi_J(g_i) lies in the cone, hence so does d (for p >= 0): g_t . d >= 0 for all t.
By Proposition 1 of the paper, pi_J(J^T u) = J^T v with v = argmin_{v >= u} v^T G v on the
Gramian G = J J^T, so d = (sum_i v^(i))^T J with u = p_i e_i: a ``GramianWeighting``.

Implementation (``strategies.weighting._solvers.dual_cone_weights``): as in torchjd (the
authors' library), G is first divided by its trace ||J||_F^2 (when that is below
``norm_eps`` the Gramian is replaced by 0 and d becomes sum_i p_i g_i) and ``reg_eps`` I is
added (the QP becomes strictly convex; the projection is then onto the dual cone of a
slightly regularised J, and d may conflict with a task by at most ~reg_eps relative to
||J||_F^2). Each QP min_{v >= u} 1/2 v^T G v whose u conflicts with a task (G u has a
negative entry; the others give v = u) is solved in float64 by DAQP, a compiled dual
active-set solver (torchjd uses quadprog, the same kind of method), and its answer is
accepted only if its KKT residual is below 1e-9 of max|G| max|v|; otherwise, and
whenever reg_eps < 1e-8 (then G may be singular), by the Lawson-Hanson active-set method
on v = u + x, min_{x >= 0} 1/2 x^T G x + (G u)^T x, exact up to rounding (KKT residual
below 1e-13 of max(|G|, |G u|)).

Nearly degenerate cones (e.g. g_1 and g_2 almost opposite with a third gradient across
them, Gramian condition numbers of 1e10 and more) need very large weights v, and the
rounding of G = J J^T itself then limits the accuracy: with reg_eps = 0 a conflict of
about cond(G) * eps relative to ||J||^2 can remain (1e-9 to 1e-5 in the cases found).
The default ridge reg_eps = 1e-4 dominates that error.

Scale: d(c J) = c d(J) for c > 0 while ||J||_F^2 and c^2 ||J||_F^2 are both >= norm_eps.
T = 1 gives the task's own gradient times p_1. One host transfer of the T x T Gramian per
step (a sync on an accelerator); NaN/Inf raise ``FloatingPointError``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import DualConeWeighting


@WEIGHTING.register("upgrad")
class UPGrad(DualConeWeighting):
    """UPGrad: average of each task gradient projected onto the dual cone (no conflicts).

    ``pref_vector`` weights the projected gradients (default 1/T); ``norm_eps`` and
    ``reg_eps`` are torchjd's Gramian normalisation guard and ridge.
    """

    non_conflicting: ClassVar[bool] = True
    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    @staticmethod
    def prefs_matrix(prefs: np.ndarray) -> np.ndarray:
        return np.diag(prefs)  # one projection per task: of p_i g_i

    @staticmethod
    def sum_projections(projected: np.ndarray) -> np.ndarray:
        return projected.sum(axis=0)
