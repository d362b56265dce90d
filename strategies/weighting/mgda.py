"""MGDA: the minimum-norm point of the convex hull of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
https://arxiv.org/abs/1810.04650 (Section 3.1, Algorithms 1 and 2; MGDA-UB in 3.3).

With g_t the gradient of task t's loss (row t of the (T, P) Jacobian J), MGDA solves

    alpha = argmin_{alpha in simplex} || sum_t alpha_t g_t ||^2

and updates the shared parameters along d = sum_t alpha_t g_t. Either d = 0 (a
Pareto-stationary point) or -d decreases every task loss: the optimality (KKT)
conditions of the problem are g_t . d >= ||d||^2 for every t, with equality where
alpha_t > 0. The problem only involves the Gramian G = J J^T (T x T):
||alpha^T J||^2 = alpha^T G alpha, so this is a ``GramianWeighting`` (the ``gramian``
engine applies) and, as MGDA-UB, it is defined on the Jacobian of the shared
representation (``rep`` engine).

Solvers (``solver``):

- ``"active_set"`` (default, exact): T = 2 in closed form on the device (the paper's
  Algorithm 1), gamma = clip((g_1 - g_0) . g_1 / ||g_0 - g_1||^2, 0, 1),
  alpha = (gamma, 1 - gamma); T > 2 as one non-negative least-squares problem,
  min_{x >= 0} ||J^T x||^2 + (1^T x - 1)^2, whose solution is alpha / (1 + ||d||^2),
  solved in finitely many steps by the Lawson-Hanson active-set method on the Gramian
  (``strategies.weighting._solvers.min_norm_weights``). The result is optimal up to
  rounding: its KKT residual is below ~1e-12 relative to max_t ||g_t||^2.
- ``"frank_wolfe"``: the paper's Algorithm 2. Start at alpha = 1/T; repeat: pick the
  vertex t = argmin_r (G alpha)_r, move alpha towards e_t with the exact line search of
  Algorithm 1; stop after ``max_iter`` iterations or once converged. The paper stops
  when the step is ~0; here the test is the Frank-Wolfe duality gap,
  ``||d||^2 - min_t g_t . d <= tol * max_t ||g_t||^2``, i.e. the KKT conditions up to
  ``tol`` (scale-invariant). The paper's code uses at most 250 iterations (``MAX_ITER``),
  the default. ``away_steps=True`` adds the away steps of Lacoste-Julien & Jaggi
  (NeurIPS 2015, https://arxiv.org/abs/1511.05932): plain Frank-Wolfe converges as
  O(1/k) and zig-zags when the optimum is on a face of the simplex; with away steps it
  converges linearly. ``max_iter``, ``tol`` and ``away_steps`` only apply to this solver.

``normalization="l2"`` divides each gradient by its norm before solving (an option of
the paper's code, not of the paper): the direction is the min-norm point of the unit
gradients, d = sum_t alpha_t g_t / ||g_t||, so ``last_weights`` reports alpha_t / ||g_t||,
the weights on the original gradients (a zero gradient keeps weight alpha_t). The
paper's code instead applies alpha to the unnormalised losses.

Scale: d(c J) = c d(J) for c > 0 (alpha is invariant). ``last_weights`` holds the
weights w with d = w @ J (alpha unless normalised).

Host synchronisation: T = 1 and T = 2 stay on the device (no sync; there, NaN/Inf in J
give a NaN direction on an accelerator, caught by the trial's divergence check, and
raise ``FloatingPointError`` on the CPU where checking is free); T > 2 copies the
T x T Gramian to the host once per step (one sync), where NaN/Inf raise
``FloatingPointError``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import (
    NON_FINITE_MESSAGE,
    HostGramianWeighting,
    gramian_to_host,
    min_norm_weights,
    weights_to_device,
)


def segment_min_norm(uu: float, uv: float, vv: float) -> float:
    """The paper's Algorithm 1: gamma in [0, 1] minimising ||(1 - gamma) u + gamma v||^2.

    Takes the inner products uu = u.u, uv = u.v, vv = v.v.
    """
    if uv >= uu:  # u is already the closest point of the segment to the origin
        return 0.0
    if uv >= vv:  # v is
        return 1.0
    return (uu - uv) / (uu - 2.0 * uv + vv)


def frank_wolfe(
    gram: np.ndarray, max_iter: int = 250, tol: float = 1e-8, away_steps: bool = False
) -> np.ndarray:
    """Simplex weights alpha minimising alpha^T G alpha, by the paper's Algorithm 2.

    ``gram`` is the (T, T) Gramian of the gradients. Stops after ``max_iter``
    iterations or when the duality gap ||d||^2 - min_t g_t . d is at most
    ``tol * max_t ||g_t||^2``. ``away_steps`` adds Lacoste-Julien & Jaggi's away steps.
    Returns NaN weights for a non-finite Gramian.
    """
    gram = np.asarray(gram, dtype=np.float64)
    num = gram.shape[0]
    if not np.isfinite(gram).all():
        return np.full(num, np.nan)
    alpha = np.full(num, 1.0 / num)
    threshold = tol * max(float(gram.diagonal().max()), 0.0)
    for _ in range(max_iter):
        dots = gram @ alpha  # dots[t] = g_t . d
        sq_norm = float(alpha @ dots)  # ||d||^2
        toward = int(np.argmin(dots))
        fw_gap = sq_norm - float(dots[toward])
        if fw_gap <= threshold:
            break
        if away_steps:
            support = alpha > 0.0
            away = int(np.argmax(np.where(support, dots, -np.inf)))
            away_gap = float(dots[away]) - sq_norm
            if away_gap > fw_gap and alpha[away] < 1.0:
                # Move d away from g_away: alpha <- (1 + gamma) alpha - gamma e_away, with
                # gamma <= alpha_away / (1 - alpha_away) to stay in the simplex.
                max_step = alpha[away] / (1.0 - alpha[away])
                curvature = sq_norm - 2.0 * float(dots[away]) + gram[away, away]  # ||d - g_a||^2
                step = max_step if curvature <= 0.0 else min(max_step, away_gap / curvature)
                alpha = (1.0 + step) * alpha
                alpha[away] -= step
                if step == max_step:  # drop step: g_away leaves the support exactly
                    alpha[away] = 0.0
                continue
        # Frank-Wolfe step towards the vertex e_t, exact line search on the segment
        # [d, g_t] by Algorithm 1.
        step = segment_min_norm(sq_norm, float(dots[toward]), float(gram[toward, toward]))
        alpha = (1.0 - step) * alpha
        alpha[toward] += step
    return alpha


@WEIGHTING.register("mgda")
class MGDA(HostGramianWeighting):
    """MGDA: step along the min-norm point of the convex hull of the task gradients.

    Exact: closed form for 2 tasks, an active-set (non-negative least-squares) solve on
    the Gramian otherwise; or the paper's Frank-Wolfe solver (``solver="frank_wolfe"``,
    with ``max_iter`` / ``tol`` / ``away_steps``). ``normalization``: "none" or "l2"
    (unit-norm gradients before solving).
    """

    non_conflicting: ClassVar[bool] = True
    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    supports_rep: ClassVar[bool] = True

    def __init__(
        self,
        *,
        solver: Literal["active_set", "frank_wolfe"] = "active_set",
        normalization: Literal["none", "l2"] = "none",
        max_iter: Annotated[int, pydantic.Field(ge=1)] = 250,
        tol: Annotated[float, pydantic.Field(ge=0)] = 1e-8,
        away_steps: bool = False,
    ) -> None:
        super().__init__()
        self.solver = solver
        self.normalization = normalization
        self.max_iter = max_iter
        self.tol = tol
        self.away_steps = away_steps

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        num = gramian.shape[0]
        gram = gramian.to(torch.promote_types(gramian.dtype, torch.float32))
        norms = None
        if self.normalization == "l2":
            norms = gram.diagonal().clamp_min(0.0).sqrt()
            norms = torch.where(norms > 0, norms, torch.ones_like(norms))
            gram = gram / (norms[:, None] * norms[None, :])
        if num <= 2:
            if gram.device.type == "cpu" and not bool(torch.isfinite(gram).all()):
                raise FloatingPointError(NON_FINITE_MESSAGE)  # free on the CPU: no sync
            alpha = self._closed_form(gram)
        else:
            # One device -> host transfer (a sync) per step: the solvers branch on the
            # Gramian's values, and on the tiny T x T matrix a float64 host solve is both
            # more exact and faster than many small kernel launches.
            host = gramian_to_host(gram)
            if self.solver == "active_set":
                solution = min_norm_weights(host)
            else:
                solution = frank_wolfe(host, self.max_iter, self.tol, self.away_steps)
            alpha = weights_to_device(solution, gram)
        return alpha if norms is None else alpha / norms

    @staticmethod
    def _closed_form(gram: torch.Tensor) -> torch.Tensor:
        """alpha for T <= 2 on the device, without host round trip (Algorithm 1)."""
        if gram.shape[0] == 1:
            return torch.ones(1, dtype=gram.dtype, device=gram.device)
        # The weight on g_0 of the closest point of [g_0, g_1] is
        # clip((g_1 - g_0) . g_1 / ||g_0 - g_1||^2, 0, 1); when g_0 = g_1 every gamma gives
        # the same point and 1/2 keeps the weights symmetric.
        g00, g01, g11 = gram[0, 0], gram[0, 1], gram[1, 1]
        den = g00 - 2.0 * g01 + g11
        safe = torch.where(den > 0, den, torch.ones_like(den))
        gamma = torch.where(den > 0, ((g11 - g01) / safe).clamp(0.0, 1.0), 0.5)
        return torch.stack([gamma, 1.0 - gamma])
