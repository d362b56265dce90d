"""FairGrad: task weights from the alpha-fair resource allocation condition G w = w^(-1/alpha).

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
https://arxiv.org/abs/2402.15638 (Section 3, Eq. 4 and Algorithm 1).

The update d = sum_i w_i g_i is the direction that maximises the alpha-fair utility of
the per-task improvement rates g_i . d over a ball; its optimality condition is

    G w = w^(-1/alpha),   w > 0,   G = J J^T,

i.e. g_i . d = w_i^(-1/alpha) for every task. Special cases (Section 3 of the paper):
alpha -> 0 is utility maximisation, w -> 1 (the plain sum of gradients, linear
scalarisation); alpha = 1 is proportional fairness (G w = 1/w, Nash-MTL's condition);
alpha = 2 is minimum potential delay fairness; alpha -> infinity is max-min fairness
(w^(-1/alpha) -> 1, so every task gets the same rate g_i . d).

Solver: as in the official code (and LibMTL/torchjd), scipy's ``least_squares`` on
G w - w^(-1/alpha) with bounds w >= 0, started at w = 1/T, in float64 on the host (one
device -> host copy of the T x T Gramian per step; the solver needs its values). Added
here: the analytic Jacobian G + diag(w^(-1/alpha - 1) / alpha), tight tolerances, a
rescaling of G by its mean diagonal s (then w = s^(-alpha/(1+alpha)) w~), so the solver
sees the same well-scaled problem whatever the gradient scale, and a few safeguarded
Newton steps to polish the root (the system's Jacobian is positive definite).

Edge cases: a task with a zero gradient has no finite solution (its equation reads
0 = w_i^(-1/alpha)); its weight is immaterial to the direction, so it is left out of the
system and gets weight 0. When G is singular with conflicting gradients the condition
may have no solution at all (e.g. g_2 = -g_1); the least-squares point is then used.
``alpha = 0`` returns w = 1 (the limit; torchjd returns 1/T, the same direction / T).
The weights' scale is that of the equation: d scales as c^((1 - alpha)/(1 + alpha))
when J is scaled by c (invariant for alpha = 1).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
import pydantic
import torch
from scipy.optimize import least_squares

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GramianWeighting, check_finite

__all__ = ["FairGrad", "solve_alpha_fair"]


def solve_alpha_fair(gram: np.ndarray, alpha: float, max_iter: int | None = None) -> np.ndarray:
    """Positive w with G w ~= w^(-1/alpha) (float64), by bounded least squares + Newton.

    Zero-gradient tasks (G_ii = 0) get weight 0; ``alpha = 0`` gives w = 1.
    """
    gram = np.asarray(gram, dtype=np.float64)
    num = gram.shape[0]
    weights = np.zeros(num)
    if alpha == 0.0:
        return np.ones(num)
    active = np.flatnonzero(gram.diagonal() > 0)
    if active.size == 0:
        return weights
    sub = gram[np.ix_(active, active)]
    scale = float(sub.diagonal().mean())
    sub = sub / scale
    power = -1.0 / alpha

    def residual(w: np.ndarray) -> np.ndarray:
        return sub @ w - w**power

    def jacobian(w: np.ndarray) -> np.ndarray:
        return sub + np.diag(-power * w ** (power - 1.0))

    result = least_squares(
        residual,
        np.full(active.size, 1.0 / num),
        jac=jacobian,
        bounds=(0.0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=max_iter,
    )
    w = np.maximum(result.x, np.finfo(np.float64).tiny)
    norm = np.linalg.norm(residual(w))
    for _ in range(8):  # safeguarded Newton polish: accept only steps that stay > 0 and help
        try:
            step = np.linalg.solve(jacobian(w), residual(w))
        except np.linalg.LinAlgError:
            break
        candidate = w - step
        if not (candidate > 0).all():
            break
        candidate_norm = np.linalg.norm(residual(candidate))
        if not candidate_norm < norm:
            break
        w, norm = candidate, candidate_norm
    weights[active] = w * scale ** (-alpha / (1.0 + alpha))
    return weights


@WEIGHTING.register("fairgrad")
class FairGrad(GramianWeighting):
    """FairGrad: alpha-fair task weights, the positive root of G w = w^(-1/alpha).

    ``alpha`` picks the fairness notion (0: plain sum, 1: proportional / Nash-MTL,
    2: minimum potential delay, large: max-min); ``max_iter`` caps the solver's
    function evaluations (None: scipy's default). The task heads get ``w_t`` times their
    task's gradient by default, as the official code backpropagates ``sum_t w_t L_t``.
    """

    non_conflicting: ClassVar[bool] = True
    permutation_invariant: ClassVar[bool] = True
    head_gradients = "weighted"

    def __init__(
        self,
        *,
        alpha: Annotated[float, pydantic.Field(ge=0.0)] = 1.0,
        max_iter: Annotated[int, pydantic.Field(ge=1)] | None = None,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.max_iter = max_iter

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        # One device -> host copy per step: the root finder needs the Gramian's values, and
        # the T x T float64 problem is tiny. The same copy checks for NaN/Inf.
        host = gramian.detach().to("cpu", torch.float64)
        check_finite(host)
        solution = solve_alpha_fair(host.numpy(), self.alpha, self.max_iter)
        work = torch.promote_types(gramian.dtype, torch.float32)
        return torch.as_tensor(solution, dtype=work).to(gramian.device)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        rows = jacobian.to(torch.promote_types(jacobian.dtype, torch.float32))
        weights = self.weights(rows @ rows.T, losses)
        self.last_weights = weights
        return weights.to(jacobian.dtype) @ jacobian
