"""Geometric loss strategy (GLS): the geometric mean of the task losses.

Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation
and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019,
https://arxiv.org/abs/1904.08492:

    L = (prod_t L_t)^(1/T),    dL/dL_t = L / (T L_t),

so task t's gradient is weighted by L / (T L_t): a task with a small loss gets a large
weight, and rescaling one task's loss rescales L but not the direction.

Computed as ``exp(mean_t log L_t)``, which is the same value and gradient for positive
losses but does not underflow: in float32 the product of 50 losses of 0.1 rounds to 0,
while their geometric mean is 0.1. The losses must be positive.
``last_weights`` holds the effective weights L / (T L_t).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting


@WEIGHTING.register("gls")
class GeometricLossStrategy(LossWeighting):
    """Geometric loss strategy: L = (prod_t L_t)^(1/T), the geometric mean of the losses."""

    permutation_invariant: ClassVar[bool] = True

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        total = torch.exp(torch.log(losses).mean())
        detached = losses.detach()
        self.last_weights = total.detach() / (len(detached) * detached)
        return total
