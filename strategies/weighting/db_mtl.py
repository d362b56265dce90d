"""DB-MTL: dual balancing, log-transformed losses and max-norm gradient balancing.

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang & Kwok, "Dual-Balancing for Multi-Task
Learning", https://arxiv.org/abs/2308.12029. Implemented after the authors' code in
LibMTL (``LibMTL/weighting/DB_MTL.py``, https://github.com/median-research-group/LibMTL).

1. Loss-scale balancing: every task loss is replaced by ``log(L_t + 1e-8)``
   (:meth:`DBMTL.transform_losses`), so the engine's Jacobian J has rows
   ``g_t = grad log(L_t + eps) = grad L_t / (L_t + eps)``; the task-specific parameters
   get the gradients of these log-losses too.
2. Gradient-magnitude balancing: an exponential moving average of each task's
   log-loss gradient, at step k = 1, 2, ...

       g^_t <- beta_k g^_t + (1 - beta_k) g_t,    beta_k = beta / k^beta_sigma,

   starting from g^_t = 0 (no bias correction, as in the code), then every averaged
   gradient is rescaled to the largest norm:

       d = sum_t alpha_t g^_t,    alpha_t = max_s ||g^_s|| / (||g^_t|| + 1e-8).

Defaults are LibMTL's (the authors' library): ``beta = 0.9``, ``beta_sigma = 0`` (a constant
beta). ``last_weights`` holds alpha, the weights on the *averaged* log-loss gradients
(``d`` is not a combination of this step's J alone). The (T, P) average lives on the
device; no host synchronisation. Not defined for representation Jacobians (as in
LibMTL), so the ``rep`` engine is refused.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GradientWeighting, check_finite

__all__ = ["DBMTL"]

LOG_EPS = 1e-8  # inside the log-transform
NORM_EPS = 1e-8  # in the max-norm ratio


@WEIGHTING.register("db_mtl")
class DBMTL(GradientWeighting):
    """DB-MTL: log-losses, EMA of task gradients, each rescaled to the largest norm, summed.

    ``beta``: EMA coefficient; ``beta_sigma``: its decay exponent, beta_k = beta / k^sigma.
    """

    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True

    def __init__(
        self,
        *,
        beta: Annotated[float, pydantic.Field(ge=0, le=1)] = 0.9,
        beta_sigma: Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)] = 0.0,
    ) -> None:
        super().__init__()
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.step = 0
        self.grad_buffer: torch.Tensor | None = None  # (T, P) EMA of the log-loss gradients

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.step = 0
        self.grad_buffer = None

    def transform_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.log(losses + LOG_EPS)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        work = torch.promote_types(jacobian.dtype, torch.float32)
        grads = jacobian.detach().to(work)
        if self.grad_buffer is None:
            self.grad_buffer = torch.zeros_like(grads)
        elif self.grad_buffer.shape != grads.shape:
            raise ValueError(
                f"db_mtl: the Jacobian's shape changed from {tuple(self.grad_buffer.shape)} "
                f"to {tuple(grads.shape)} (call reset before training another model)"
            )
        self.step += 1
        beta_k = self.beta / self.step**self.beta_sigma
        buffer = grads + beta_k * (self.grad_buffer.to(grads.device) - grads)
        self.grad_buffer = buffer
        norms = buffer.norm(dim=1)
        if norms.device.type == "cpu":  # elsewhere a host sync; see pcgrad's notes
            check_finite(norms)  # a NaN or Inf in a row of J reaches that row's norm
        alpha = norms.max() / (norms + NORM_EPS)
        self.last_weights = alpha
        return (alpha @ buffer).to(jacobian.dtype)
