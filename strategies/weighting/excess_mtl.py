"""ExcessMTL: weight tasks by their estimated excess risk, by exponentiated gradient.

He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess
Risks", ICML 2024, https://arxiv.org/abs/2402.02009 (Section 3, Eqs. 6-9, Algorithm 1).

Loss-based weighting over-weights noisy tasks (large Bayes error); ExcessMTL weights by
the *excess* risk L_i(theta) - L_i(theta_i*), the distance to convergence. A second-order
Taylor expansion around the optimum gives E_i ~ 1/2 g_i^T H_i^{-1} g_i, with the Hessian
approximated by AdaGrad's diagonal of accumulated squared gradients:

    S_i <- S_i + g_i * g_i                     (elementwise, over all steps so far)
    E_i  = sum_k g_ik^2 / sqrt(S_ik + 1e-7)    (the constant 1/2 cancels below)

Scale processing (Section 3.2) divides by each task's first estimate, r_i = E_i / E_i^0,
and the weights on the simplex take an exponentiated-gradient (mirror ascent) step

    alpha_i <- alpha_i exp(eta r_i) / sum_j alpha_j exp(eta r_j),     alpha_0 = 1/T,

with eta = ``robust_step_size``; the direction is sum_i alpha_i g_i.

Defaults and conventions:

- ``robust_step_size = 1e-2``: the official code (yifei-he/ExcessMTL) and LibMTL.
  torchjd defaults to 1.0.
- The weights sum to 1 (the paper's simplex); the official code and LibMTL keep them
  summing to T, so their direction is T times this one.
- The first step sets E^0 and, since r = 1 for every task, leaves the weights uniform,
  exactly as the official code (torchjd instead updates with the raw E on its first call;
  its ``n_warmup_steps = 1`` matches the official behaviour). The paper's suggested
  warm-up of 3 epochs for E^0 is not offered.
- A task whose first excess risk is 0 (zero gradient) keeps the first positive estimate
  that comes later as its E^0, and r_i = 0 until then (no division by 0).
- The update runs in log space (log-softmax), so a huge r saturates the weights instead
  of overflowing.
- The state S is (T, P) and tied to one Jacobian shape, so the ``rep`` engine (whose J
  depends on the batch size) is not supported (the official code sums representation
  gradients over the batch instead). All state is on the device, no host sync per step.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GradientWeighting, check_finite

HESSIAN_EPS = 1e-7


@WEIGHTING.register("excess_mtl")
class ExcessMTL(GradientWeighting):
    """ExcessMTL: exponentiated-gradient weights driven by AdaGrad-estimated excess risks.

    alpha_i <- alpha_i exp(eta E_i / E_i^0) (normalised), with E_i = g_i^T diag(sqrt(S_i))^-1 g_i
    and S_i the running sum of squared gradients; ``robust_step_size`` is eta. The task
    heads get ``alpha_t`` times their task's gradient by default, as the official code
    backpropagates ``sum_t alpha_t L_t``.
    """

    permutation_invariant: ClassVar[bool] = True
    linear_under_scaling: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    head_gradients = "weighted"

    def __init__(
        self, *, robust_step_size: Annotated[float, pydantic.Field(gt=0.0)] = 1e-2
    ) -> None:
        super().__init__()
        self.robust_step_size = robust_step_size
        self.squared_sum: torch.Tensor | None = None  # S, (T, P)
        self.initial: torch.Tensor | None = None  # E^0, (T,); 0 = not yet set
        self.log_weights: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.squared_sum = None  # allocated on the first step, when P is known
        self.initial = torch.zeros(num_tasks, device=device)
        self.log_weights = torch.full((num_tasks,), -math.log(num_tasks), device=device)

    def excess_risks(self, jacobian: torch.Tensor) -> torch.Tensor:
        """Accumulate this step's squared gradients and return the (T,) estimates E_i."""
        work = torch.promote_types(jacobian.dtype, torch.float32)
        squared = jacobian.detach().to(work).square()
        total = self.squared_sum
        if total is None:
            total = torch.zeros_like(squared)
        elif total.shape != squared.shape:
            raise ValueError(
                f"excess_mtl: Jacobian shape changed from {tuple(total.shape)} to "
                f"{tuple(squared.shape)}; call reset() between problems"
            )
        total = total.to(work).add_(squared)  # S is this strategy's own buffer
        self.squared_sum = total
        return squared.mul_((total + HESSIAN_EPS).rsqrt_()).sum(dim=1)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        num = jacobian.shape[0]
        excess = self.excess_risks(jacobian)
        if excess.device.type == "cpu":  # elsewhere a host sync; see pcgrad's notes
            # A NaN or Inf anywhere in J reaches its row's E_i (inf / inf is NaN), so the
            # (T,) risks are checked instead of the whole (T, P) matrix.
            check_finite(excess)
        work = excess.dtype
        initial, log_weights = self.initial, self.log_weights
        if initial is None or initial.shape != (num,):
            initial = torch.zeros(num)
        if log_weights is None or log_weights.shape != (num,):
            log_weights = torch.full((num,), -math.log(num))
        initial = initial.to(device=excess.device, dtype=work)
        log_weights = log_weights.to(device=excess.device, dtype=work)
        initial = torch.where(initial > 0, initial, excess)
        set_ = initial > 0
        ratio = torch.where(set_, excess / torch.where(set_, initial, 1.0), 0.0)
        log_weights = torch.log_softmax(log_weights + self.robust_step_size * ratio, dim=0)
        self.initial, self.log_weights = initial, log_weights
        weights = log_weights.exp()
        self.last_weights = weights
        return (weights @ jacobian.to(work)).to(jacobian.dtype)
