"""Small exact solvers on the (T, T) Gramian, shared by the Gramian-based strategies.

Not a component (the leading underscore keeps it out of the registry). Everything here
works on float64 NumPy arrays on the host: the problems are T x T with T the number of
tasks (a handful to a few dozen), their algorithms branch on the values (active sets,
root brackets), and a float64 host solve is both more exact and faster than hundreds of
tiny kernel launches. Strategies call :func:`gramian_to_host` once per step, which is
the one device -> host transfer (a synchronisation on an accelerator) of that step, and
the place where non-finite values are caught.

Solvers:

- :func:`nonneg_qp`: min 1/2 x^T Q x + c^T x subject to x >= 0, by the Lawson-Hanson
  active-set method written on Q and c (Bro & De Jong, "A fast non-negativity-constrained
  least squares algorithm", J. Chemometrics 1997). Finite: it ends with x optimal on its
  support (a linear solve) and the KKT residual -(Q x + c) <= tol off the support.
- :func:`min_norm_weights`: the min-norm point of the convex hull (MGDA), exactly, as
  one :func:`nonneg_qp` (a non-negative least-squares reformulation, see there).
- :func:`dual_cone_weights`: projections onto the dual cone of the task gradients
  (UPGrad, DualProj): one compiled dual active-set solve (DAQP) per projected vector
  that conflicts with a task, each checked against its KKT conditions, and
  :func:`nonneg_qp` where that check fails or the ridge is too small for it.
- :func:`psd_pinv`: pseudo-inverse of a PSD matrix by its eigendecomposition.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Annotated, ClassVar

import numpy as np
import pydantic
import torch

try:  # a pinned dependency with wheels; without it the pure-NumPy solver serves
    import daqp as _daqp
except ImportError:  # pragma: no cover
    _daqp = None

from strategies.weighting.base import GramianWeighting

__all__ = [
    "DualConeWeighting",
    "HostGramianWeighting",
    "dual_cone_weights",
    "gramian_to_host",
    "min_norm_weights",
    "nonneg_qp",
    "psd_pinv",
    "weights_to_device",
]

NON_FINITE_MESSAGE = (
    "the task Jacobian contains NaN or Inf (or its Gramian J J^T overflowed); "
    "check the losses and the learning rate"
)


def gramian_to_host(gramian: torch.Tensor) -> np.ndarray:
    """The (T, T) Gramian as a symmetric float64 host array; raises on NaN/Inf.

    This is the one device -> host transfer (a synchronisation on an accelerator) per
    step of every strategy that solves on the host.
    """
    host = gramian.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(host).all():
        raise FloatingPointError(NON_FINITE_MESSAGE)
    return 0.5 * (host + host.T)


def weights_to_device(weights: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(T,) host weights as a tensor on ``like``'s device, in at least float32."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    return torch.as_tensor(np.ascontiguousarray(weights), dtype=dtype).to(like.device)


class HostGramianWeighting(GramianWeighting):
    """A Gramian strategy that solves for its weights on the host: ``weights`` moves the
    (T, T) Gramian once per step with :func:`gramian_to_host` and returns the result
    with :func:`weights_to_device`."""


class DualConeWeighting(HostGramianWeighting):
    """Base of UPGrad and DualProj: project combinations of the task gradients onto the
    dual cone {d : J d >= 0} (:func:`dual_cone_weights`).

    A subclass says which combinations (``prefs_matrix``: (K, T) rows u, each projected
    as J^T u) and how the projections' weights are summed (``sum_projections``: (K, T) -> (T,)).
    ``pref_vector`` sets the preferences (default 1/T); ``norm_eps`` and ``reg_eps`` are
    torchjd's Gramian normalisation guard and ridge.
    """

    supports_rep: ClassVar[bool] = True

    def __init__(
        self,
        *,
        pref_vector: list[float] | None = None,
        norm_eps: Annotated[float, pydantic.Field(ge=0)] = 1e-4,
        reg_eps: Annotated[float, pydantic.Field(ge=0)] = 1e-4,
    ) -> None:
        super().__init__()
        self.pref_vector = pref_vector
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    @staticmethod
    @abstractmethod
    def prefs_matrix(prefs: np.ndarray) -> np.ndarray:
        """(K, T) rows u whose J^T u are projected, from the (T,) preferences."""

    @staticmethod
    @abstractmethod
    def sum_projections(projected: np.ndarray) -> np.ndarray:
        """(T,) weights of the direction from the (K, T) weights of the projections."""

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        host = gramian_to_host(gramian)  # the step's one host sync (QP solver)
        prefs = self.prefs_matrix(preference(self.pref_vector, host.shape[0]))
        projected = dual_cone_weights(host, prefs, self.norm_eps, self.reg_eps)
        return weights_to_device(self.sum_projections(projected), gramian)


def _solve_sym(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a small symmetric system; least squares when it is (numerically) singular."""
    try:
        solution = np.linalg.solve(matrix, rhs)
        if np.isfinite(solution).all():
            return solution
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def nonneg_qp(
    quad: np.ndarray,
    lin: np.ndarray,
    *,
    tol: float | None = None,
    max_iter: int | None = None,
) -> np.ndarray:
    """argmin_{x >= 0} 1/2 x^T Q x + c^T x for a PSD ``quad`` Q, by Lawson-Hanson.

    The dual variable w = -(Q x + c) is the negative gradient. Starting from x = 0, the
    coordinate with the largest w joins the support P; x_P solves the unconstrained
    problem on P (Q_PP x_P = -c_P), stepping back to the boundary and dropping
    coordinates that would turn negative. It stops when w_j <= ``tol`` for every j off
    the support, which with x_P solved exactly is the KKT certificate of optimality.
    The default ``tol`` is 1e-13 times the scale max(|Q|, |c|), i.e. the answer is exact
    up to rounding. Lawson & Hanson's bound of 3T outer iterations is rarely reached;
    ``max_iter`` (default 10 T + 50 linear solves) only guards against cycling caused by
    rounding, in which case the last feasible iterate is returned.

    With Q = A^T A and c = -A^T b this is non-negative least squares min ||A x - b||; Q
    only needs to be PSD and bounded below on the orthant (e.g. Q positive definite).
    """
    num = lin.shape[0]
    if tol is None:
        scale = max(float(np.abs(quad).max(initial=0.0)), float(np.abs(lin).max(initial=0.0)))
        tol = 1e-13 * scale
    if max_iter is None:
        max_iter = 10 * num + 50
    x = np.zeros(num)
    passive = np.zeros(num, dtype=bool)
    blocked = np.zeros(num, dtype=bool)  # would enter with a non-positive value (rounding)
    dual = -np.asarray(lin, dtype=np.float64)
    solves = 0
    while solves < max_iter:
        candidates = ~passive & ~blocked & (dual > tol)
        if not candidates.any():
            break
        enter = int(np.argmax(np.where(candidates, dual, -np.inf)))
        passive[enter] = True
        first = True
        while True:
            solves += 1
            idx = np.flatnonzero(passive)
            trial = np.zeros(num)
            if idx.size == 0:  # cannot happen in exact arithmetic; x = 0 is feasible
                break
            trial[idx] = _solve_sym(quad[np.ix_(idx, idx)], -lin[idx])
            if (trial[idx] > 0.0).all():
                break
            if first and trial[enter] <= 0.0:
                # In exact arithmetic a coordinate entering with w_j > 0 comes out
                # positive (Lawson & Hanson); when rounding says otherwise, leave it out.
                passive[enter] = False
                blocked[enter] = True
                trial = None
                break
            first = False
            # Step from x towards the trial point until the first coordinate hits zero,
            # and drop the coordinates that did.
            shrinking = passive & (trial <= 0.0)
            ratios = x[shrinking] / (x[shrinking] - trial[shrinking])
            hit = np.flatnonzero(shrinking)[int(np.argmin(ratios))]
            x = x + float(ratios.min()) * (trial - x)
            x[hit] = 0.0
            passive &= x > 0.0
            x[~passive] = 0.0
            if solves >= max_iter:
                trial = x
                break
        if trial is None:
            continue
        x = trial
        dual = -(quad @ x + lin)
        blocked[:] = False
    return np.maximum(x, 0.0)


def min_norm_weights(gramian: np.ndarray) -> np.ndarray:
    """Exact simplex weights alpha of the min-norm point of the convex hull of the gradients.

    argmin_{alpha in simplex} alpha^T G alpha is one non-negative least-squares problem:
    with A = [J^T; 1^T] and b = (0, 1), min_{x >= 0} ||A x - b||^2 = ||J^T x||^2 +
    (1^T x - 1)^2. Writing x = s alpha with alpha in the simplex, the first term is
    s^2 ||J^T alpha||^2, minimised over alpha by the min-norm weights whatever s > 0, so
    the solution is x* = alpha* / (1 + ||d*||^2) and alpha* = x* / 1^T x*. In Gramian form
    Q = A^T A = G + 1 1^T and c = -A^T b = -1 (G first scaled to unit max diagonal, which
    leaves alpha unchanged).
    """
    num = gramian.shape[0]
    scale = float(gramian.diagonal().max(initial=0.0))
    if num == 1 or scale <= 0.0:  # a single task, or only zero gradients: any alpha is optimal
        return np.full(num, 1.0 / num)
    quad = gramian / scale + 1.0
    x = nonneg_qp(quad, -np.ones(num))
    return x / x.sum()


def dual_cone_weights(
    gramian: np.ndarray, prefs: np.ndarray, norm_eps: float, reg_eps: float
) -> np.ndarray:
    """Weights of the projections of J^T u onto the dual cone {d : J d >= 0}, for each row u.

    By Proposition 1 of Quinton & Rey (https://arxiv.org/abs/2406.16232) the projection
    of J^T u is J^T v with v = argmin_{v >= u} v^T G v. As in torchjd, the problem is
    posed on G / trace(G) + ``reg_eps`` I (``norm_eps`` guards the division; the ridge
    makes the QP strictly convex), solved here as its multiple G + reg_eps trace(G) I.
    ``prefs`` is (K, T); returns the (K, T) weights v.

    Rows u with Q u >= 0 (J^T u already in the cone up to the solver tolerance) are
    answered v = u without a solve. The others go, when the ridge is at least
    :data:`COMPILED_MIN_RIDGE` (Q then has a condition number below ~1 / ``reg_eps``), to
    the compiled dual active-set solver DAQP (:func:`_dual_cone_compiled`), and each of
    its answers is checked against the KKT conditions (:func:`_dual_cone_kkt_ok`). Rows
    it rejects or fails, and every row when the ridge is smaller (reg_eps = 0: the exact
    projection, where Q may be singular), are solved exactly by :func:`nonneg_qp` on
    v = u + x: min_{x >= 0} 1/2 x^T Q x + (Q u)^T x.
    """
    num = gramian.shape[0]
    trace = float(gramian.trace())
    if trace < norm_eps or trace <= 0.0:
        quad = reg_eps * np.eye(num)  # torchjd's guard: the normalised Gramian is 0
    else:
        # trace * (G / trace + reg_eps I): the same minimiser (the objective is only
        # scaled), without the rounding of the division, which on nearly degenerate
        # cones erases the small eigenvalues that decide the answer.
        quad = gramian + (reg_eps * trace) * np.eye(num)
    # v(c u) = c v(u) for c > 0: each row is solved scaled by a power of two (exact) to
    # max |u| in [0.5, 1), so that the solvers' tolerances are relative to u.
    prefs = np.asarray(prefs, dtype=np.float64)
    exps = np.frexp(np.abs(prefs).max(axis=1, initial=0.0))[1][:, None]
    prefs = np.ldexp(prefs, -exps)
    out = prefs.copy()
    lins = prefs @ quad  # row k: (Q u_k)^T, the gradient at x = 0 (Q is symmetric)
    # x = 0 is optimal when no coordinate can enter: nonneg_qp's own first test.
    qscale = float(np.abs(quad).max(initial=0.0))
    tols = 1e-13 * np.maximum(qscale, np.abs(lins).max(axis=1, initial=0.0))
    todo = np.flatnonzero((lins < -tols[:, None]).any(axis=1))
    if todo.size and _daqp is not None and reg_eps >= COMPILED_MIN_RIDGE and qscale > 0.0:
        todo = _dual_cone_compiled(quad, prefs, todo, out)
    for k in todo:
        out[k] = prefs[k] + nonneg_qp(quad, lins[k])
    return np.ldexp(out, exps)


# Smallest ridge reg_eps for which dual_cone_weights uses the compiled solver: Q's
# condition number is then below ~1 / reg_eps, so its answers are accurate to ~1e-8
# relative; below it (reg_eps = 0 is the exact projection) Lawson-Hanson solves.
COMPILED_MIN_RIDGE = 1e-8
# From this many tasks on, the rows share one DAQP workspace (one factorisation of Q,
# each solve warm-started from the previous active set); below, one-shot solves are cheaper.
_SHARED_WORKSPACE_TASKS = 8
_DAQP_INF = 1e30  # DAQP's "no bound"
_DAQP_SETTINGS = {"primal_tol": 1e-12}  # absolute: the rows u are scaled to max |u| ~ 1


def _dual_cone_compiled(
    quad: np.ndarray, prefs: np.ndarray, rows: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """min_{v >= u} 1/2 v^T Q v for the rows u = prefs[rows], by DAQP, into ``out``.

    DAQP (Arnström, Bemporad & Axehill, "A dual active-set solver for embedded quadratic
    programming using recursive LDL^T updates", IEEE TAC 2022) is a compiled dual
    active-set method. Its tolerances are absolute: Q (positive definite) is scaled by a
    power of two (exact) to max |Q| in [0.5, 1), and ``prefs`` must be of order 1 (as
    :func:`dual_cone_weights` scales them). Returns the rows that DAQP did not solve (an
    exit flag other than 1) or whose answer fails the KKT check; ``out`` keeps the other
    answers.
    """
    num = quad.shape[0]
    quad = quad * 2.0 ** -math.frexp(float(np.abs(quad).max()))[1]
    bounds = prefs[rows]
    lin, cons, upper = np.zeros(num), np.zeros((0, num)), np.full(num, _DAQP_INF)
    ok = np.ones(rows.size, dtype=bool)
    if num >= _SHARED_WORKSPACE_TASKS and rows.size > 1:
        model = _daqp.Model()
        model.settings = {**model.settings, **_DAQP_SETTINGS}
        ok[:] = model.setup(quad, lin, cons, upper, bounds[0])[0] >= 0
        for i in range(rows.size if ok[0] else 0):
            if i:
                model.update(blower=bounds[i])
            weights, _, flag, _ = model.solve()
            out[rows[i]], ok[i] = weights, flag == 1
    else:
        for i in range(rows.size):
            weights, _, flag, _ = _daqp.solve(quad, lin, cons, upper, bounds[i], **_DAQP_SETTINGS)
            out[rows[i]], ok[i] = weights, flag == 1
    ok &= _dual_cone_kkt_ok(quad, bounds, out[rows])
    good = rows[ok]
    out[good] = np.maximum(out[good], bounds[ok])
    return rows[~ok]


def _dual_cone_kkt_ok(
    quad: np.ndarray, prefs: np.ndarray, weights: np.ndarray, rtol: float = 1e-9
) -> np.ndarray:
    """(K,) whether each v = ``weights[k]`` solves min_{v >= u} 1/2 v^T Q v, u = ``prefs[k]``.

    The KKT conditions are v - u >= 0, lambda = Q v >= 0 and lambda_j (v_j - u_j) = 0;
    their natural residual min(max|Q| (v - u), lambda) is zero exactly at the solution
    and must stay within ``rtol`` max|Q| max(|v|, |u|) in every coordinate (NaN fails).
    """
    qscale = float(np.abs(quad).max())
    residual = np.abs(np.minimum(qscale * (weights - prefs), weights @ quad))
    vscale = np.maximum(np.abs(weights), np.abs(prefs)).max(axis=1, keepdims=True)
    return (residual <= (rtol * qscale) * vscale).all(axis=1)


def psd_pinv(gramian: np.ndarray, rtol: float) -> np.ndarray:
    """Moore-Penrose pseudo-inverse of a PSD matrix: eigenvalues <= rtol * max count as 0."""
    eigvals, eigvecs = np.linalg.eigh(gramian)
    cutoff = rtol * max(float(eigvals.max(initial=0.0)), 0.0)
    keep = eigvals > cutoff
    if not keep.any():
        return np.zeros_like(gramian)
    vecs = eigvecs[:, keep]
    return (vecs / eigvals[keep]) @ vecs.T


def preference(
    pref_vector: list[float] | None, num: int, default: float | None = None
) -> np.ndarray:
    """The (T,) preference weights: ``pref_vector``, else ``default`` for every task
    (1/T when ``default`` is None); a wrong length raises."""
    if pref_vector is None:
        return np.full(num, 1.0 / num if default is None else default)
    if len(pref_vector) != num:
        raise ValueError(f"pref_vector has {len(pref_vector)} entries for {num} tasks")
    return np.asarray(pref_vector, dtype=np.float64)
