"""Nash-MTL: task weights of the Nash bargaining solution, G alpha = 1 / alpha.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022, https://arxiv.org/abs/2202.01017 (Section 3, Algorithm 1;
Section 3.3 for the solver; official code https://github.com/AvivNavon/nash-mtl).

The update d = sum_t alpha_t g_t is the Nash bargaining solution of the tasks when
alpha > 0 solves

    G alpha = 1 / alpha,   i.e.  alpha_t (G alpha)_t = 1 for every t,   G = J J^T.

Then g_t . d = 1 / alpha_t > 0 for every task, and ||d||^2 = alpha^T G alpha = T.

Solver (Section 3.3, as the official code): with phi_t(alpha) = log alpha_t +
log (G alpha)_t, a sequence of convex problems, each linearising the concave
phi(alpha) = sum_t phi_t at the previous iterate alpha_k:

    alpha_{k+1} = argmin_{alpha >= 0}  1^T G alpha + grad phi(alpha_k)^T alpha
                  subject to  phi_t(alpha) >= 0 for every t,

starting from the previous step's alpha (all ones at the first step), for at most
``optim_niter`` problems, stopping early as the official code does: when a problem has no
solution (then alpha_k is kept), when ||G_n alpha_k - 1/(alpha_k + 1e-10)|| < 1e-3 for the
Gramian G_n = G / ||G||_F, or when ||alpha_{k+1} - alpha_k|| < 1e-6 (then alpha_k is
returned). The official code normalises the Gramian by its Frobenius norm and folds the
factor back into the problem, so the problem above is in the raw G; here it is solved in
the variable beta = sqrt(||G||_F) alpha, where the constraints read beta_t (G_n beta)_t >= 1.

If the problem at alpha_k has every constraint active at its solution, that solution is
the Nash point G alpha = 1/alpha and the sequence stops there; otherwise (often, in
practice) the iterates move slowly and the step returns the last one, as the official
code (and torchjd's port) does.

Each convex problem is solved without cvxpy (whose ECOS solver the official code uses):
first the candidate with every constraint active, the solution of G alpha = 1/alpha itself
(the minimiser of the strictly convex 1/2 alpha^T G alpha - sum_t log alpha_t, by damped
Newton), accepted when its KKT multipliers are non-negative (then it is the problem's
exact solution); otherwise a log-barrier interior-point method (Newton centring,
relative duality gap 1e-10). A problem is infeasible when 0 lies in the convex hull of
the gradients (no alpha >= 0 gives G alpha > 0), detected with the exact min-norm solver,
and unbounded when an LP over the recession cone {r >= 0 : G r >= 0} says so (scipy's
HiGHS); both count as "no solution", as ECOS's infeasible / unbounded statuses do in the
official code.

``solver`` (default ``"official"``) picks how alpha is computed:

- ``"official"``: the sequence of convex problems above, as the official code, so runs
  are step-for-step comparable with the paper's.
- ``"direct"``: G alpha = 1/alpha solved directly, by the damped Newton method of
  :func:`nash_point` (the minimiser of the strictly convex 1/2 alpha^T G alpha - sum_t
  log alpha_t), warm-started from the previous alpha; when it has no solution (0 in the
  convex hull of the gradients) the previous alpha is kept, as the official sequence
  does. On badly scaled Jacobians (one task's gradient 1000x the others') the official
  sequence stops far from the Nash point (alpha_t (G alpha)_t spreads by factors of
  thousands across tasks) while this reaches it to 1e-8.

Whether each recomputation reached the Nash point, max_t |alpha_t (G alpha)_t - 1| <=
``NASH_TOL`` = 1e-3 (before clipping), is counted; ``stats()`` reports
``nash_point_reached_fraction`` (reached / recomputations) and ``nash_solves``, and the
trial record stores them under ``strategy_stats``.

Conventions:

- ``update_weights_every`` (default 1): recompute alpha every that many steps, reusing the
  previous alpha in between (as the official code; the Gramian is still formed).
- ``optim_niter`` (default 20): the most convex problems per step.
- ``max_norm`` (default 1.0; 0 disables): the official code calls
  ``clip_grad_norm_(shared_parameters, max_norm)`` after backpropagating sum_t alpha_t L_t.
  Here the weights are scaled so that ||d|| = ||alpha^T J|| <= max_norm, computed on the
  Gramian (sqrt(alpha^T G alpha)); that is the same clipping when the engine's J holds all
  the shared parameters (torchjd's ``NashMTL`` does the same), but with the ``rep`` engine
  it bounds the representation-level direction instead (so ``rep`` is not offered).
  Since ||d|| = sqrt(T) at the Nash solution, the default then clips d to norm 1.
- Scale: alpha(c J) = alpha(J) / c at the Nash solution, so d is invariant to c > 0
  there; the official sequence itself is not scale-invariant (its objective adds the
  scale-dependent 1^T G alpha to a scale-free linearisation), so neither is d in general.
- T = 1: alpha = 1 passes the official stopping test on G_n = 1, so d = g_1 (then clipped).

One host transfer of the T x T Gramian per recomputation; NaN/Inf raise
``FloatingPointError``. ``last_weights`` are the clipped weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

import numpy as np
import pydantic
import torch
from scipy.optimize import linprog

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import (
    HostGramianWeighting,
    gramian_to_host,
    min_norm_weights,
    weights_to_device,
)

NASH_TOL = 1e-3  # max_t |alpha_t (G alpha)_t - 1| at which a step counts as at the Nash point


def _line_search(
    objective: Callable[[np.ndarray], float],
    beta: np.ndarray,
    step: np.ndarray,
    value: float,
    decrement: float,
) -> tuple[np.ndarray, float] | None:
    """Backtracking (Armijo with 1/4 of the Newton decrement ``decrement``) from the
    largest step that keeps beta > 0; ``(beta', objective(beta'))``, or None when no
    step size down to 1e-16 decreases the objective enough."""
    size = 1.0
    negative = step < 0
    if negative.any():  # stay in beta > 0
        size = min(1.0, 0.99 * float((-beta[negative] / step[negative]).min()))
    while size > 1e-16:
        trial = beta + size * step
        trial_value = objective(trial)
        if trial_value <= value - 0.25 * size * decrement:
            return trial, trial_value
        size *= 0.5
    return None


def nash_point(gram: np.ndarray, start: np.ndarray, max_iter: int = 100) -> np.ndarray | None:
    """beta > 0 with beta_t (G beta)_t = 1, by damped Newton on 1/2 b^T G b - sum log b.

    None when it does not converge (no solution: 0 in the convex hull of the gradients).
    """
    beta = np.where(start > 0, start, 1.0).astype(np.float64)

    def potential(b: np.ndarray) -> float:
        return 0.5 * float(b @ gram @ b) - float(np.log(b).sum())

    value = potential(beta)
    for _ in range(max_iter):
        grad = gram @ beta - 1.0 / beta
        hess = gram + np.diag(1.0 / beta**2)
        step = np.linalg.solve(hess, -grad)
        decrement = float(-grad @ step)
        if decrement <= 1e-24 * max(1.0, abs(value)):
            break
        found = _line_search(potential, beta, step, value, decrement)
        if found is None:
            break
        beta, value = found
        if not np.isfinite(value) or float(beta.max()) > 1e12:
            return None
    residual = beta * (gram @ beta) - 1.0
    if not np.all(np.abs(residual) < 1e-8):
        return None
    return beta


def _constraints(
    gram: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phi_t(beta) = log beta_t + log (G beta)_t, their gradients (rows) and Hessians' parts."""
    g_beta = gram @ beta
    values = np.log(beta) + np.log(g_beta)
    grads = np.diag(1.0 / beta) + gram / g_beta[:, None]
    return values, grads, g_beta


def barrier_solve(
    gram: np.ndarray, lin: np.ndarray, start: np.ndarray, rel_gap: float = 1e-10
) -> np.ndarray | None:
    """argmin lin^T beta s.t. log beta_t + log (G beta)_t >= 0, by a log-barrier method.

    ``start`` must be strictly feasible. Stops at the duality gap T / t <= ``rel_gap``
    max(1, |lin^T beta|) (ECOS, the official solver, stops at 1e-8), or when Newton's
    system becomes numerically singular after the first centring (the iterate is then
    within the previous gap). None when the problem looks unbounded.
    """
    num = lin.shape[0]
    beta = start.copy()
    # Initial barrier weight t: the least-squares fit of t lin to the barrier's gradient at
    # the start (so that the first centre is near it), at least 10 T / |lin^T start|: with
    # a small t the centre runs off (the barrier -sum log phi_t is unbounded below).
    values, grads, _ = _constraints(gram, beta)
    pull = (grads / values[:, None]).sum(axis=0)
    t = max(float(lin @ pull) / float(lin @ lin), 10.0 * num / max(abs(float(lin @ beta)), 1e-12))

    def barrier(b: np.ndarray, t: float) -> float:
        if (b <= 0).any():
            return math.inf
        with np.errstate(invalid="ignore", divide="ignore"):
            v, _, gb = _constraints(gram, b)
        if (gb <= 0).any() or not (v > 0).all():
            return math.inf
        return t * float(lin @ b) - float(np.log(v).sum())

    for outer in range(60):  # outer (centring) iterations
        value = barrier(beta, t)
        stalled = True
        for _ in range(30):  # Newton centring (converges in ~6-10 steps when it can)
            v, grads, g_beta = _constraints(gram, beta)
            grad = t * lin - (grads / v[:, None]).sum(axis=0)
            hess = (grads.T / v**2) @ grads
            # - sum_t hess(phi_t) / v_t, hess(phi_t) = -e_t e_t^T / b_t^2 - G_t G_t^T / (G b)_t^2
            hess += np.diag(1.0 / (v * beta**2))
            rows = gram / g_beta[:, None]
            hess += (rows.T / v) @ rows
            try:
                step = np.linalg.solve(hess, -grad)
            except np.linalg.LinAlgError:
                step = None
            decrement = math.nan if step is None else float(-grad @ step)
            if not np.isfinite(decrement):
                # Singular: iterates running off to infinity (unbounded), or the barrier
                # weight is so large that the previous centre is as good as it gets.
                return beta if outer > 0 else None
            if decrement <= 1e-12:  # Newton decrement^2: affine-invariant, barrier units
                stalled = False
                break
            found = _line_search(functools.partial(barrier, t=t), beta, step, value, decrement)
            if found is None:
                break
            beta, value = found
            if float(beta.max()) > 1e15:
                return None
        objective = float(lin @ beta)
        if stalled or num / t <= rel_gap * max(1.0, abs(objective)):
            break  # stalled: rounding limits the centring, the previous gap is what we get
        t *= 20.0
    return beta


def solve_subproblem(
    gram: np.ndarray, lin: np.ndarray, prev: np.ndarray, feasible: np.ndarray | None
) -> np.ndarray | None:
    """argmin lin^T beta s.t. beta_t (G beta)_t >= 1 (beta >= 0); None when not solvable."""
    if not np.isfinite(lin).all() or feasible is None:
        return None
    point = nash_point(gram, prev)
    if point is not None:
        # KKT with every constraint active: lin = sum_t mu_t grad phi_t(point), mu >= 0.
        _, grads, _ = _constraints(gram, point)
        try:
            mu = np.linalg.solve(grads.T, lin)
        except np.linalg.LinAlgError:
            mu = None
        if mu is not None and (mu >= -1e-10 * np.abs(mu).max(initial=1.0)).all():
            return point
    if unbounded(gram, lin):
        return None
    # Strictly feasible start: prev scaled up if G prev > 0, else the feasible point.
    base = prev if (gram @ prev > 0).all() and (prev > 0).all() else feasible
    values, _, _ = _constraints(gram, base)
    start = base * math.exp(max(0.0, (1.0 - float(values.min())) / 2.0))
    return barrier_solve(gram, lin, start)


def unbounded(gram: np.ndarray, lin: np.ndarray) -> bool:
    """Whether lin^T beta is unbounded below on {beta : beta_t (G beta)_t >= 1}.

    The recession cone of that set is {r >= 0 : G r >= 0}, so it is unbounded iff the LP
    min lin^T r over that cone with 1^T r = 1 is negative (scipy's HiGHS).
    """
    num = lin.shape[0]
    result = linprog(
        lin, A_ub=-gram, b_ub=np.zeros(num), A_eq=np.ones((1, num)), b_eq=[1.0],
        bounds=[(0.0, None)] * num, method="highs",
    )
    return result.status == 0 and result.fun < -1e-9 * float(np.abs(lin).max())


def feasible_point(gram: np.ndarray) -> np.ndarray | None:
    """Some beta > 0 with G beta > 0, from the min-norm point; None if 0 is in the hull."""
    alpha = min_norm_weights(gram)
    dots = gram @ alpha  # g_t . d* >= ||d*||^2
    sq_norm = float(alpha @ dots)
    if not sq_norm > 1e-12 * float(gram.diagonal().max(initial=0.0)):
        return None
    # Shift alpha into the open orthant while keeping G beta > 0.
    spread = float(np.abs(gram).sum(axis=1).max())
    shift = 0.5 * sq_norm / max(spread, 1e-300)
    return alpha + shift


@WEIGHTING.register("nash_mtl")
class NashMTL(HostGramianWeighting):
    """Nash-MTL: weights of the Nash bargaining solution G alpha = 1/alpha, norm-clipped.

    Solved as the paper's sequence of convex problems (``optim_niter`` at most;
    ``solver="official"``) or directly (``solver="direct"``: damped Newton on
    G alpha = 1/alpha), reused for ``update_weights_every`` steps; ``max_norm`` clips
    ||alpha^T J|| (0: off). ``stats()``: how often a recomputation reached the Nash point.
    The task heads get ``alpha_t`` times their task's gradient by default, as the official
    code backpropagates ``sum_t alpha_t L_t`` (``train.heads = "own"`` to change it).
    """

    permutation_invariant: ClassVar[bool] = True
    head_gradients = "weighted"

    def __init__(
        self,
        *,
        update_weights_every: Annotated[int, pydantic.Field(ge=1)] = 1,
        optim_niter: Annotated[int, pydantic.Field(ge=1)] = 20,
        max_norm: Annotated[float, pydantic.Field(ge=0)] = 1.0,
        solver: Literal["official", "direct"] = "official",
    ) -> None:
        super().__init__()
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.max_norm = max_norm
        self.solver = solver
        self._step = 0
        self._alpha: np.ndarray | None = None
        self._solves = 0
        self._reached = 0

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._step = 0
        self._alpha = None
        self._solves = 0
        self._reached = 0

    def stats(self) -> dict[str, float]:
        """Fraction of the recomputations of alpha that reached the Nash point
        (max_t |alpha_t (G alpha)_t - 1| <= ``NASH_TOL``), and their number."""
        if self._solves == 0:
            return {}
        return {
            "nash_point_reached_fraction": self._reached / self._solves,
            "nash_solves": float(self._solves),
        }

    def solve_direct(self, gram: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """G alpha = 1/alpha by damped Newton from ``alpha``; ``alpha`` if none exists."""
        norm = float(np.linalg.norm(gram))
        if norm == 0.0:
            return alpha
        root = math.sqrt(norm)
        beta = nash_point(gram / norm, alpha * root)  # beta_t (G_n beta)_t = 1
        return alpha if beta is None else beta / root

    def solve(self, gram: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The official loop of convex problems from ``alpha`` on the raw Gramian."""
        norm = float(np.linalg.norm(gram))
        if norm == 0.0:
            return alpha
        gram_n = gram / norm
        root = math.sqrt(norm)
        feasible = feasible_point(gram_n)
        for _ in range(self.optim_niter):
            prev = alpha * root  # beta of the linearisation point
            g_prev = gram_n @ prev
            with np.errstate(divide="ignore", invalid="ignore"):
                grad_phi = 1.0 / prev + gram_n @ (1.0 / g_prev)
            lin = root * gram_n.sum(axis=0) + grad_phi
            beta = solve_subproblem(gram_n, lin, prev, feasible)
            if beta is None:
                break
            new = beta / root
            with np.errstate(divide="ignore"):
                balance = gram_n @ alpha - 1.0 / (alpha + 1e-10)
            if np.linalg.norm(balance) < 1e-3 or np.linalg.norm(new - alpha) < 1e-6:
                break
            alpha = new
        return alpha

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        num = gramian.shape[0]
        if self._alpha is None or self._alpha.shape[0] != num:
            self._alpha = np.ones(num)
        if self._step % self.update_weights_every == 0:
            host = gramian_to_host(gramian)  # the step's one host sync (solver on the host)
            if self.solver == "direct":
                self._alpha = self.solve_direct(host, self._alpha)
            else:
                self._alpha = self.solve(host, self._alpha)
            balance = self._alpha * (host @ self._alpha)  # 1 for every task at the Nash point
            self._solves += 1
            self._reached += int(bool(np.all(np.abs(balance - 1.0) <= NASH_TOL)))
        self._step += 1
        alpha = weights_to_device(self._alpha, gramian)
        if self.max_norm > 0:
            # ||alpha^T J|| from the Gramian, on the device (no sync): scale down to max_norm.
            gram = gramian.to(alpha.dtype)
            norm = (alpha @ gram @ alpha).clamp_min(0.0).sqrt()
            alpha = alpha * torch.clamp(self.max_norm / norm.clamp_min(1e-30), max=1.0)
        return alpha
