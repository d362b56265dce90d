"""CAGrad: maximise the worst task improvement in a ball around the average gradient.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021, https://arxiv.org/abs/2110.14048 (Section 3.1, Algorithm 1; official code
https://github.com/Cranial-XIX/CAGrad).

With g_0 = (1/T) sum_t g_t the average gradient, CAGrad's update direction is

    d = argmax_{||d - g_0|| <= c ||g_0||}  min_t g_t . d,

with c in [0, 1) (c = 0 is the mean, c -> inf MGDA-like). Its dual over the simplex is

    w = argmin_{w in simplex}  g_w . g_0 + phi ||g_w||,   g_w = J^T w,  phi = c ||g_0||,

and then d = g_0 + (phi / ||g_w||) g_w. Everything is on the Gramian G = J J^T
(g_w . g_0 = w^T G 1/T, ||g_w||^2 = w^T G w), so d = (1/T + phi w / ||g_w||)^T J.

Solver (exact; the official code runs scipy's SLSQP on the dual): the KKT conditions of the
dual say that v = phi w / ||g_w|| solves the non-negative QP
min_{v >= 0} 1/2 v^T G v + (G 1/T - lambda 1)^T v for the multiplier lambda of
sum(w) = 1, with ||J^T v|| = phi. ||J^T v(lambda)|| is continuous and nondecreasing in
lambda, so lambda is the root of ||J^T v(lambda)|| - phi. On a fixed active set v is
affine in lambda and ||J^T v||^2 a quadratic, so the root is found exactly: bracket it,
then repeatedly solve for v(lambda) with the exact Lawson-Hanson active-set solver and
jump to the quadratic's root on that active set (bisection when it leaves the bracket),
until that root satisfies the KKT conditions (finite; typically 2-4 QP solves). Everything
runs in float64 on the host: G is first divided by its trace (weights are scale-free),
projected onto the PSD cone (a float32 Gramian of a rank-deficient J has eigenvalues of
either sign around 1e-8 trace, and a negative one makes the QPs non-convex) and gets a
1e-12 ridge so that every QP is strictly convex (the result is exact up to that ridge:
duality gap ~1e-11 relative).

The stationary case is handled explicitly, because there the reformulation degenerates
(||g_w|| -> 0, v unbounded). Multiplying the KKT conditions by w shows lambda = the dual
optimum. When the min-norm point of the hull of the rows (MGDA's, solved exactly) has
||g_w|| < ``norm_eps`` ||J||_F, 0 is in the hull and:

- c >= 1: g_w . g_0 + phi ||g_w|| >= (c - 1) ||g_0|| ||g_w|| >= 0 for every w, so the
  optimum is g_w = 0 and d = 0 (it lies in the ball and conflicts with no task);
- c < 1: some w with cos(g_w, g_0) < -c may do better (negative value); the root is only
  sought at lambda < -(1 + c) ||g_0|| ``norm_eps`` (below the value at the min-norm point),
  where every QP is bounded; no root there means g_w = 0 again.

Conventions:

- ``c``: the paper's c (its ``alpha`` in the official code), default 0.5 (the official
  ``cagrad(grads, alpha=0.5, rescale=1)``; the NYUv2 runs use 0.4).
- ``rescale``: as the official code: 0 returns d, 1 returns d / (1 + c^2) (the default
  there), 2 returns d / (1 + c). torchjd's ``CAGrad`` corresponds to ``rescale=0``.
- The official code adds 1e-8 inside square roots and denominators; not here, so d is
  exactly scale-equivariant: d(s J) = s d(J) for s > 0.
- Degenerate case: when the optimal g_w is (nearly) zero, ||g_w|| < ``norm_eps`` ||J||_F,
  the direction of g_w is undefined; as torchjd, the weights are then all zero (0 is in
  the convex hull of the gradients: a Pareto-stationary point). torchjd also returns zero
  whenever ||J||_F^2 < norm_eps (absolute); here only the relative test applies.
- T = 1: d = (1 + c) g_1 before rescaling.

One host transfer of the T x T Gramian per step (the solver runs on the host);
NaN/Inf raise ``FloatingPointError``.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import numpy as np
import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import (
    HostGramianWeighting,
    gramian_to_host,
    min_norm_weights,
    nonneg_qp,
    weights_to_device,
)

RIDGE = 1e-12  # relative to trace(G) = 1; makes every QP strictly convex


def _refine(
    quad: np.ndarray, lin: np.ndarray, v: np.ndarray, phi: float
) -> tuple[np.ndarray | None, float | None]:
    """The root on the active set of ``v``, in closed form.

    On a fixed support P, v_P = Q_PP^-1 (lambda 1 - a_P) is affine in lambda and
    v^T Q v = phi^2 a quadratic; returns (v, lambda) at its larger root, with v = None
    when that point violates the KKT conditions (the root lies on another support), and
    lambda = None when the quadratic has no root.
    """
    support = v > 0.0
    if not support.any():
        return None, None
    q_pp = quad[np.ix_(support, support)]
    p = np.linalg.solve(q_pp, np.ones(int(support.sum())))
    r = np.linalg.solve(q_pp, lin[support])
    # v^T Q v = lambda^2 1^T p - 2 lambda 1^T r + a_P^T r = phi^2, larger root.
    qa, qb, qc = float(p.sum()), -2.0 * float(r.sum()), float(lin[support] @ r) - phi**2
    disc = qb * qb - 4.0 * qa * qc
    if qa <= 0.0 or disc < 0.0:
        return None, None
    lam = (-qb + math.sqrt(disc)) / (2.0 * qa)
    exact = np.zeros_like(v)
    exact[support] = lam * p - r
    dual = -(quad @ exact + lin - lam)
    scale = max(float(np.abs(lin).max()), abs(lam), 1.0)
    if (exact[support] < 0.0).any() or (dual[~support] > 1e-12 * scale).any():
        return None, lam
    return exact, lam


def _psd(gram: np.ndarray) -> np.ndarray:
    """``gram`` with its negative eigenvalues set to zero (a PSD matrix, in float64).

    A Gramian rounded in float32 has eigenvalues of either sign around ~1e-8 trace where
    the exact one has zeros (rank-deficient J, more tasks than dimensions); a negative one
    makes the QPs below non-convex and their solutions meaningless.
    """
    eigvals, eigvecs = np.linalg.eigh(gram)
    if eigvals.min(initial=0.0) >= 0.0:
        return gram
    return (eigvecs * np.clip(eigvals, 0.0, None)) @ eigvecs.T


def cagrad_weights(gramian: np.ndarray, c: float, norm_eps: float) -> np.ndarray:
    """CAGrad's weights on the rows of J (before ``rescale``), exact, from the Gramian."""
    num = gramian.shape[0]
    mean = np.full(num, 1.0 / num)
    trace = float(gramian.trace())
    if trace <= 0.0:  # all gradients zero: d = 0 whatever the weights
        return mean
    gram = _psd(gramian / trace)
    lin = gram @ mean  # a = J g_0
    g0_sq = float(mean @ lin)
    if c == 0.0 or g0_sq <= 0.0:
        return mean  # the ball is the point g_0
    g0_norm = math.sqrt(g0_sq)
    phi = c * g0_norm
    quad = gram + RIDGE * np.eye(num)

    # The stationary case, explicitly. The multiplier lambda is the dual's optimal value
    # (multiply its KKT conditions by w), and f(w) = g_w . g_0 + phi ||g_w|| is at most
    # (1 + c) ||g_0|| ||g_w|| at the min-norm point w_m of the hull. When ||g_w_m|| <
    # norm_eps (0 in the hull: Pareto-stationary) the QPs for lambda >= 0 are unbounded
    # along w_m (the degenerate case of v = phi w / ||g_w||), so:
    # - c >= 1: f(w) >= (c - 1) ||g_0|| ||g_w|| >= 0 for every w, so w_m is optimal and
    #   g_w = 0: d = 0 (it lies in the ball and conflicts with no task);
    # - c < 1: a better w has f(w) < 0; look for lambda only below -upper (the value at
    #   w_m up to norm_eps), where every QP is bounded; none there means g_w = 0 again.
    # a_t > norm_eps ||g_0|| for all t bounds ||g_w|| >= min_t a_t / ||g_0|| from below,
    # which skips the min-norm solve in the common case.
    upper = math.inf
    if float(lin.min()) < norm_eps * g0_norm:
        w_m = min_norm_weights(gram)
        if math.sqrt(max(float(w_m @ gram @ w_m), 0.0)) < norm_eps:
            if c >= 1.0:
                return np.zeros(num)
            upper = -(1.0 + c) * g0_norm * norm_eps

    def solve(lam: float) -> tuple[np.ndarray, float]:
        v = nonneg_qp(quad, lin - lam)
        return v, math.sqrt(max(float(v @ quad @ v), 0.0)) - phi

    # Bracket the root of ||J^T v(lambda)|| - phi: below min(a), v = 0.
    low = float(lin.min())
    if low >= upper:
        return np.zeros(num)
    if math.isfinite(upper):
        high = upper
        v, excess = solve(high)
        if excess < 0.0:  # the optimum is the stationary point: g_w = 0
            return np.zeros(num)
    else:
        gap = max(phi, 1e-12)
        v, excess = solve(low + gap)
        while excess < 0.0 and gap < 1e30:
            low, gap = low + gap, 2.0 * gap
            v, excess = solve(low + gap)
        high = low + gap
    # Safeguarded search: the closed-form root on the current support when it falls
    # inside the bracket, bisection otherwise; exact as soon as that root is consistent.
    for _ in range(200):
        refined, lam = _refine(quad, lin, v, phi)
        if refined is not None and lam is not None and lam <= high:
            v = refined
            break
        if lam is None or not low < lam < high:
            lam = 0.5 * (low + high)
        v, excess = solve(lam)
        if excess >= 0.0:
            high = lam
        else:
            low = lam
        if high - low <= 1e-15 * max(1.0, abs(high)):
            v, _ = solve(high)
            break
    total = float(v.sum())
    if total <= 0.0:
        return np.zeros(num)
    w = v / total
    gw_norm = math.sqrt(max(float(w @ gram @ w), 0.0))  # relative to ||J||_F
    if gw_norm < norm_eps:
        return np.zeros(num)
    return mean + (phi / gw_norm) * w


@WEIGHTING.register("cagrad")
class CAGrad(HostGramianWeighting):
    """CAGrad: best worst-case task improvement within c ||g_0|| of the mean gradient g_0.

    ``c``: ball radius factor (official default 0.5); ``rescale``: the official output
    scaling (0: none, 1: / (1 + c^2), 2: / (1 + c)); ``norm_eps``: relative ||g_w|| below
    which the direction is zero (Pareto-stationary).
    """

    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    supports_rep: ClassVar[bool] = True

    def __init__(
        self,
        *,
        c: Annotated[float, pydantic.Field(ge=0)] = 0.5,
        rescale: Literal[0, 1, 2] = 1,
        norm_eps: Annotated[float, pydantic.Field(ge=0)] = 1e-4,
    ) -> None:
        super().__init__()
        self.c = c
        self.rescale = rescale
        self.norm_eps = norm_eps

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        host = gramian_to_host(gramian)  # the step's one host sync (solver on the host)
        weights = cagrad_weights(host, self.c, self.norm_eps)
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        return weights_to_device(weights, gramian)
