"""MoCo: MGDA on tracked gradients, with a single projected-gradient step on lambda per step.

Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023,
https://openreview.net/forum?id=dLAYGdKTi2 (arXiv: https://arxiv.org/abs/2210.12624,
Algorithm 1).

Stochastic MGDA directions are biased; MoCo tracks each task gradient with a variable y_i
and takes one projected step on the min-norm weights per iteration. With h_t the (T, P)
stochastic Jacobian at step t = 1, 2, ...:

    Y_t      = Y_{t-1} - beta_t (Y_{t-1} - h_t),                       Y_0 = 0
    lambda_t = Proj_simplex(lambda_{t-1} - gamma_t (Y_t Y_t^T + rho I) lambda_{t-1}),
                                                                      lambda_0 = 1/T
    d_t      = Y_t^T lambda_t,

with step sizes beta_t = beta / t^beta_sigma and gamma_t = gamma / t^gamma_sigma (the
analysis uses decaying steps; sigma = 0 keeps them constant). ``rho`` is the l2
regularisation of the lambda subproblem.

``variant`` (default ``"authors"``) picks the method and its default step sizes:

- ``"authors"``: the update above with the authors' values, constant beta = gamma = rho =
  0.1 (beta_sigma = gamma_sigma = 0): the authors' code, Fernando et al.'s
  https://github.com/heshandevaka/Trade-Off-MOL (``grad_moco`` in the toy experiments and
  ``LibMTL/weighting/MoCo.py``, ``beta_moco = gamma_moco = rho_moco = 0.1``, its gradient
  normalisation ``moco_gn`` off by default, as here).
- ``"libmtl"``: LibMTL's ``MoCo`` (https://github.com/median-research-group/LibMTL),
  which differs in the rule, not only the values: each gradient is first rescaled to
  g_i / (||g_i|| + 1e-8) * L_i (so the task losses are needed), the simplex projection
  is replaced by softmax(lambda - gamma_t (Y Y^T + rho I) lambda), and its defaults are
  beta = 0.5, beta_sigma = 0.5, gamma = 0.1, gamma_sigma = 0.5, rho = 0.

The step-size hyperparameters default to ``None``: the variant's values; any one given
overrides it. The paper's optional projection of y_i onto a ball of radius L_i (bounded
gradients) is omitted, as in both codes.

Conventions: the direction is built from Y, not from J, so MoCo is a plain
:class:`GradientWeighting`. Y starts at 0, so early directions are shrunk (with T = 1,
lambda = 1 and d_t = Y_t, an average of past gradients). ``last_weights`` is lambda_t.
The state (Y: T x P, lambda, t) lives on the device and is cleared by ``reset``; Y's
size ties it to one Jacobian shape, so the ``rep`` engine (whose J depends on the batch
size) is not supported. Everything stays on the device (the simplex projection is a
sort-based closed form), no host sync per step.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GradientWeighting, check_finite

__all__ = ["MoCo", "project_to_simplex"]


def project_to_simplex(vector: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a 1-D tensor onto the probability simplex (on its device).

    Sort-based closed form (Held et al. 1974; Duchi et al., ICML 2008): with u sorted
    decreasingly, k = max{j : u_j > (sum_{i<=j} u_i - 1) / j}, theta = (sum_{i<=k} u_i - 1) / k
    and the projection is max(v - theta, 0). No data-dependent branch, no host sync.
    """
    num = vector.shape[0]
    ordered, _ = torch.sort(vector, descending=True)
    excess = ordered.cumsum(0) - 1.0
    ranks = torch.arange(1, num + 1, device=vector.device, dtype=vector.dtype)
    support = (ordered - excess / ranks > 0).sum().clamp_min(1)  # k (>= 1 always holds)
    theta = excess.gather(0, (support - 1).reshape(1)) / support.to(vector.dtype)
    return (vector - theta).clamp_min(0.0)


VARIANT_DEFAULTS = {
    # beta, beta_sigma, gamma, gamma_sigma, rho
    "authors": (0.1, 0.0, 0.1, 0.0, 0.1),
    "libmtl": (0.5, 0.5, 0.1, 0.5, 0.0),
}


@WEIGHTING.register("moco")
class MoCo(GradientWeighting):
    """MoCo: track task gradients (rate beta), one projected step on lambda (rate gamma).

    Y <- Y - beta_t (Y - J); lambda <- Proj(lambda - gamma_t (Y Y^T + rho I) lambda); the
    direction is lambda @ Y. Step sizes decay as t^-beta_sigma and t^-gamma_sigma.
    ``variant``: ``"authors"`` (default; constant 0.1 / 0.1 / 0.1) or ``"libmtl"``
    (LibMTL's rule and step sizes); step sizes left at ``None`` take the variant's values.
    """

    permutation_invariant: ClassVar[bool] = True

    def __init__(
        self,
        *,
        variant: Literal["authors", "libmtl"] = "authors",
        beta: Annotated[float, pydantic.Field(gt=0.0, le=1.0)] | None = None,
        beta_sigma: Annotated[float, pydantic.Field(ge=0.0)] | None = None,
        gamma: Annotated[float, pydantic.Field(gt=0.0)] | None = None,
        gamma_sigma: Annotated[float, pydantic.Field(ge=0.0)] | None = None,
        rho: Annotated[float, pydantic.Field(ge=0.0)] | None = None,
    ) -> None:
        super().__init__()
        self.variant = variant
        given = (beta, beta_sigma, gamma, gamma_sigma, rho)
        values = tuple(
            default if value is None else value
            for value, default in zip(given, VARIANT_DEFAULTS[variant], strict=True)
        )
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma, self.rho = values
        self.step = 0
        self.tracked: torch.Tensor | None = None  # Y, (T, P)
        self.lambd: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.step = 0
        self.tracked = None  # allocated on the first step, when P is known
        self.lambd = torch.full((num_tasks,), 1.0 / num_tasks, device=device)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        if jacobian.device.type == "cpu":  # elsewhere a host sync; see pcgrad's notes
            check_finite(jacobian)
        num = jacobian.shape[0]
        work = torch.promote_types(jacobian.dtype, torch.float32)
        grads = jacobian.detach().to(work)
        if self.variant == "libmtl":
            if losses is None:
                raise ValueError("moco variant 'libmtl' rescales the gradients by the losses")
            scale = losses.detach().to(grads) / (grads.norm(dim=1) + 1e-8)
            grads = grads * scale.unsqueeze(1)
        tracked = self.tracked
        if tracked is None:
            tracked = torch.zeros_like(grads)
        elif tracked.shape != grads.shape:
            raise ValueError(
                f"moco: Jacobian shape changed from {tuple(tracked.shape)} to "
                f"{tuple(grads.shape)}; call reset() between problems"
            )
        lambd = self.lambd
        if lambd is None or lambd.shape != (num,):
            lambd = torch.full((num,), 1.0 / num)
        lambd = lambd.to(device=grads.device, dtype=work)
        self.step += 1
        beta_t = self.beta / self.step**self.beta_sigma
        gamma_t = self.gamma / self.step**self.gamma_sigma
        tracked = tracked.to(work) - beta_t * (tracked.to(work) - grads)
        moved = lambd - gamma_t * (tracked @ (tracked.T @ lambd) + self.rho * lambd)
        if self.variant == "libmtl":
            lambd = torch.softmax(moved, dim=0)
        else:
            lambd = project_to_simplex(moved)
        self.tracked, self.lambd = tracked, lambd
        self.last_weights = lambd
        return (lambd @ tracked).to(jacobian.dtype)
