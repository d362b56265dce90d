"""Equal weighting (EW): the plain sum of task losses.

The uniform-weight baseline every MTL paper compares against, e.g. in
Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018, https://arxiv.org/abs/1705.07115.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting


@WEIGHTING.register("ew")
class EqualWeighting(LossWeighting):
    """Equal weighting: L = sum_t L_t (every task weight is 1)."""

    permutation_invariant: ClassVar[bool] = True

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        self.last_weights = torch.ones_like(losses.detach())
        return losses.sum()
