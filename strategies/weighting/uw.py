"""Uncertainty weighting (UW): task weights from learned homoscedastic uncertainty.

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018, https://arxiv.org/abs/1705.07115.

Each task t has a learned observation noise sigma_t. For a Gaussian likelihood the
paper's objective (its Eq. 7) is ``sum_t 1 / (2 sigma_t^2) L_t + log sigma_t``; as
the paper recommends for numerical stability, the network learns the log variance
``s_t := log sigma_t^2`` instead, which gives

    L = sum_t 0.5 * exp(-s_t) * L_t + 0.5 * s_t.

The ``s_t`` start at 0 (sigma_t = 1) and are trained by the model's optimizer
(returned by :meth:`UncertaintyWeighting.parameters`). The paper's classification
variant (weight ``1 / sigma^2`` instead of ``1 / (2 sigma^2)``) is not used: one
formula for all tasks, as in most re-implementations, so a task's weight does not
depend on its loss type.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting


@WEIGHTING.register("uw")
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting: L = sum_t 0.5 exp(-s_t) L_t + 0.5 s_t, learned s_t = log sigma_t^2.

    The log-variances start at 0 and are returned by ``parameters()`` for the model's
    optimizer; ``last_weights`` is 0.5 exp(-s).
    """

    permutation_invariant: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.log_vars: nn.Parameter | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        # s_t = log sigma_t^2 = 0, i.e. sigma_t = 1 and every weight 0.5 at the start.
        self.log_vars = nn.Parameter(torch.zeros(num_tasks, device=device))

    def parameters(self) -> list[torch.Tensor]:
        return [] if self.log_vars is None else [self.log_vars]

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self.log_vars is None:
            raise RuntimeError("uw: call reset(num_tasks, device) before combine")
        s = self.log_vars
        precision = torch.exp(-s)  # sigma_t^-2
        self.last_weights = 0.5 * precision.detach()
        # 0.5 (sum_t sigma_t^-2 L_t + sum_t s_t): the fewest graph nodes (this is the
        # whole per-step overhead over EW).
        return 0.5 * (torch.dot(precision.to(losses), losses) + s.sum())
