"""Random loss weighting (RLW): fresh random task weights at every step.

Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning" (first titled "A Closer Look at Loss Weighting in Multi-Task
Learning"), TMLR 2022, https://arxiv.org/abs/2111.10603:

    lambda~ ~ N(0, I_T),   lambda = softmax(lambda~),   L = sum_t lambda_t L_t,

drawn anew at every step. The standard normal is the paper's default distribution (and
LibMTL's, ``dist='Normal'``); the weights lie on the simplex (they sum to 1, not T).

The samples come from a ``torch.Generator`` seeded in ``reset`` with the trial's seed
and living on the training device, so drawing them never synchronises with the host and
the same seed on the same kind of device gives the same weights.
``last_weights`` holds this step's lambda.
"""

from __future__ import annotations

import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting


@WEIGHTING.register("rlw")
class RandomLossWeighting(LossWeighting):
    """Random loss weighting: L = sum_t lambda_t L_t, lambda = softmax(N(0, I)) drawn each step."""

    def __init__(self) -> None:
        super().__init__()
        self._generator: torch.Generator | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, num_tasks: int) -> torch.Tensor:
        """The (T,) weights of one step: softmax of T standard normal samples."""
        gen = self._generator
        if gen is None:
            raise RuntimeError("rlw: call reset(num_tasks, device, seed) before combine")
        return torch.softmax(torch.randn(num_tasks, generator=gen, device=gen.device), dim=0)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        weights = self.sample(len(losses)).to(device=losses.device, dtype=losses.dtype)
        self.last_weights = weights
        return (weights * losses).sum()
