"""A plugin strategy that always fails: the fixture's 'error' trials."""

import torch

from strategies.weighting import WEIGHTING, LossWeighting


@WEIGHTING.register("boom")
class Boom(LossWeighting):
    """Raises on its first step."""

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: this strategy always fails")
