"""Scale-invariant loss (SI): the sum of the logarithms of the task losses.

The "scale-invariant" baseline of Navon et al., "Multi-Task Learning as a Bargaining
Game" (Nash-MTL), ICML 2022, https://arxiv.org/abs/2202.01017 (``scaleinvls`` in the
official code, https://github.com/AvivNavon/nash-mtl), also used by FAMO and by LibMTL's
benchmarks:

    L = sum_t log L_t,    dL/dL_t = 1 / L_t,

so the update is ``sum_t g_t / L_t``: multiplying a task's loss by a constant does not
change it. As in the reference code there is no epsilon: the losses must be positive
(a zero loss gives ``-inf`` and the trial is reported as diverged).
``last_weights`` holds the effective weights 1 / L_t.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting


@WEIGHTING.register("si")
class ScaleInvariant(LossWeighting):
    """Scale-invariant loss: L = sum_t log L_t (each task gradient weighted by 1 / L_t)."""

    permutation_invariant: ClassVar[bool] = True

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        self.last_weights = 1.0 / losses.detach()
        return torch.log(losses).sum()
