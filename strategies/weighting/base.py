"""Contracts for weighting strategies.

A strategy declares what it needs (``needs``) and the trainer's gradient engine
provides exactly that; nothing in the training loop names a method.

- :class:`LossWeighting` maps the (T,) vector of task losses to one scalar.
- :class:`GradientWeighting` maps the (T, P) Jacobian of the task losses with
  respect to the shared parameters to a (P,) update direction. ``aggregate`` is
  a function of ``J`` and the strategy's own state only: it never calls autograd.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch

__all__ = ["GradientWeighting", "LossWeighting", "Need", "WeightingStrategy"]

Need = Literal["losses", "shared_jacobian"]


class WeightingStrategy(ABC):
    """Base of all weighting strategies.

    Lifecycle: ``reset(num_tasks, device, seed)`` once before training, then per
    step ``combine`` or ``aggregate``, and ``end_epoch(mean_losses)`` after each
    epoch. ``last_weights`` holds the (T,) task weights of the latest step when
    the method has such weights (``None`` otherwise); it stays on the device.
    """

    needs: ClassVar[Need]

    def __init__(self) -> None:
        self.num_tasks = 0
        self.last_weights: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        """Clear all state; called before training starts."""
        self.num_tasks = num_tasks
        self.last_weights = None

    def parameters(self) -> list[torch.Tensor]:
        """Learnable parameters of the strategy itself (trained with the model's optimizer)."""
        return []

    def end_epoch(self, mean_losses: torch.Tensor) -> None:  # noqa: B027 (optional hook)
        """Called after each epoch with the (T,) mean training loss of each task."""


class LossWeighting(WeightingStrategy):
    """A strategy that combines task losses into one scalar to backpropagate."""

    needs: ClassVar[Need] = "losses"

    @abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """Map the (T,) task losses (with graph) to a scalar loss."""


class GradientWeighting(WeightingStrategy):
    """A strategy that aggregates per-task gradients of the shared parameters."""

    needs: ClassVar[Need] = "shared_jacobian"

    @abstractmethod
    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """Map the (T, P) Jacobian (row t: gradient of task t's loss) to a (P,) direction."""
