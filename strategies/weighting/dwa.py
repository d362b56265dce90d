"""Dynamic weight average (DWA): weight tasks by how slowly their loss decreases.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
https://arxiv.org/abs/1803.10704 (Section 3.3, "Dynamic Weight Average").

With K tasks and L_k(t) the mean training loss of task k over epoch t, the weights
used during epoch t are

    w_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T),   r_k(t-1) = L_k(t-1) / L_k(t-2),

and w_k(t) = 1 for the first two epochs (no ratio is available yet). T is the
temperature (paper: T = 2); the weights sum to K. The combined loss is
``sum_k w_k(t) L_k``. The mean epoch losses arrive through ``end_epoch``; the weights
are recomputed there, once per epoch, on the device of the losses.

The paper assumes positive losses. A ratio whose denominator L_k(t-2) is not
positive is taken as 1 (no change), so a zero loss never produces inf/NaN weights.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting


@WEIGHTING.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average: w_k = K softmax_k(r_k / T), r_k = L_k(t-1) / L_k(t-2).

    L_k(t) is task k's mean training loss in epoch t; all weights are 1 in the first
    two epochs. ``temperature`` is the paper's T.
    """

    permutation_invariant: ClassVar[bool] = True

    def __init__(self, *, temperature: Annotated[float, pydantic.Field(gt=0)] = 2.0) -> None:
        super().__init__()
        self.temperature = temperature
        self._weights: torch.Tensor | None = None
        self._previous: torch.Tensor | None = None  # L(t-1): last epoch's mean losses
        self._before: torch.Tensor | None = None  # L(t-2)

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._weights = torch.ones(num_tasks, device=device)
        self._previous = None
        self._before = None

    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        self._before = self._previous
        work = torch.promote_types(mean_losses.dtype, torch.float32)
        self._previous = mean_losses.detach().to(work).clone()
        if self._before is None:  # only one finished epoch: weights stay 1
            return
        num = self._previous
        den = self._before.to(device=num.device, dtype=num.dtype)
        positive = den > 0
        ratio = torch.where(positive, num / torch.where(positive, den, 1.0), 1.0)
        self._weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self._weights is None:
            raise RuntimeError("dwa: call reset(num_tasks, device) before combine")
        weights = self._weights.to(device=losses.device, dtype=losses.dtype)
        self.last_weights = weights
        return (weights * losses).sum()
