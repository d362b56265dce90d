"""GradNorm: learn task weights so that weighted gradient norms follow the training rates.

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018, https://arxiv.org/abs/1711.02257
(Section 3, Algorithm 1).

With task weights w (all 1 at the start), g_t the gradient of L_t (row t of J),

    G_t = ||w_t g_t||,   G_bar = mean_t G_t,
    L~_t = L_t / L_t(0),  r_t = L~_t / mean_s L~_s   (relative inverse training rate),
    L_grad = sum_t | G_t - G_bar r_t^alpha |,

where the target ``G_bar r_t^alpha`` is treated as a constant. The step uses the current
weights (direction ``w @ J``, ``last_weights = w``); then the weights take one gradient
step on L_grad, whose gradient is ``dL_grad/dw_t = sign(G_t - target_t) ||g_t||``, and are
renormalised to sum to T. A task whose loss fell less than the others' (larger r_t) gets
a larger target and its weight grows. ``alpha`` is the paper's restoring-force strength
(default 1.5, the paper's NYUv2 value and LibMTL's default). L_t(0) are the losses of
the first step (the ``losses`` argument of the first call).

Implementation notes and deviations:

- Only the norms ||g_t|| are needed, so this is a :class:`GramianWeighting`:
  ||g_t|| = sqrt(G_tt) of the Gramian J J^T (works with the ``gramian`` engine).
- The paper takes W = the last shared layer, to save computation; here the norms are
  over *all* shared parameters (the Jacobian the engines provide). The method is the
  same but the norms differ from the paper's, and so may the weights.
- The paper gives no separate learning rate for w (they are learned alongside the
  network); LibMTL trains softmax-parametrised weights with the model's optimizer. Here
  w takes a plain gradient step, ``w <- w - lr dL_grad/dw``, with ``lr = 1e-3`` (the
  harness's default model learning rate) as the default. Weights pushed below zero are
  clipped to 0 before renormalising (a zero weight gets a negative gradient, so it can
  grow back); if all reach 0 they restart at 1.
- A task with L_t(0) <= 0 gets L~_t = 1 (no training rate can be measured).

All of it runs on the device; no host synchronisation.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GramianWeighting, check_finite_on_cpu

__all__ = ["GradNorm"]


@WEIGHTING.register("gradnorm")
class GradNorm(GramianWeighting):
    """GradNorm: weights w (sum T) trained so ||w_t g_t|| tracks mean_s ||w_s g_s|| r_t^alpha.

    r_t: task t's loss ratio L_t / L_t(0) relative to the mean ratio; ``alpha``: restoring
    force; ``lr``: gradient-step size of the weights.
    """

    permutation_invariant: ClassVar[bool] = True

    def __init__(
        self,
        *,
        alpha: Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)] = 1.5,
        lr: Annotated[float, pydantic.Field(gt=0, allow_inf_nan=False)] = 1e-3,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.lr = lr
        self.task_weights: torch.Tensor | None = None  # w, used by the next step
        self.initial_losses: torch.Tensor | None = None  # L(0)

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.task_weights = torch.ones(num_tasks, device=device)
        self.initial_losses = None

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        if self.task_weights is None:
            raise RuntimeError("gradnorm: call reset(num_tasks, device) before aggregate")
        if losses is None:
            raise ValueError("gradnorm needs the task losses of the step")
        check_finite_on_cpu(gramian)  # a NaN/Inf in J reaches the Gramian (see pcgrad)
        work = torch.promote_types(gramian.dtype, torch.float32)
        num = gramian.shape[0]
        current = self.task_weights.to(device=gramian.device, dtype=work)
        losses = losses.detach().to(device=gramian.device, dtype=work)
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        initial = self.initial_losses.to(device=gramian.device, dtype=work)

        norms = gramian.detach().to(work).diagonal().clamp_min(0.0).sqrt()  # ||g_t||
        weighted = current * norms  # G_t
        positive = initial > 0
        ratio = torch.where(positive, losses / torch.where(positive, initial, 1.0), 1.0)
        mean_ratio = ratio.mean()
        relative = torch.where(mean_ratio > 0, ratio / mean_ratio, 1.0)  # r_t
        target = weighted.mean() * relative.pow(self.alpha)  # a constant in L_grad
        grad = torch.sign(weighted - target) * norms  # dL_grad / dw_t
        updated = (current - self.lr * grad).clamp_min(0.0)
        total = updated.sum()
        self.task_weights = torch.where(
            total > 0, num * updated / torch.where(total > 0, total, 1.0), 1.0
        )
        return current
