"""Linear scalarization (LS): a fixed, user-given weight per task.

The plain weighted sum ``L = sum_t w_t L_t``. Xin, Ghorbani, Garg, Firat & Gilmer,
"Do Current Multi-Task Optimization Methods in Deep Learning Even Help?", NeurIPS 2022,
https://arxiv.org/abs/2209.11379, show that sweeping the weights of linear
scalarization traces a Pareto front that the specialised optimizers rarely beat;
``weights`` is the axis of such sweeps (one trial per weight vector).

``weights=None`` means every weight is 1 (the same objective as ``ew``). The weights
must be non-negative (checked by the registry) and their number must equal the number
of tasks (checked in :meth:`LinearScalarization.reset`, the first time the number of
tasks is known). They are not normalised: ``(1, 3)`` and ``(0.25, 0.75)`` give the same
direction, but with a step four times as large.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting

__all__ = ["LinearScalarization", "WeightVector", "weight_vector"]

# A non-negative, finite weight per task. The tuple is validated non-strictly so that a
# TOML list (or JSON array, when a stored trial spec is replayed) is accepted; every
# element stays strict (a real number, not a string or a bool).
_Weight = Annotated[float, pydantic.Field(ge=0, strict=True, allow_inf_nan=False)]
WeightVector = Annotated[tuple[_Weight, ...], pydantic.Field(strict=False, min_length=1)] | None


def weight_vector(
    weights: tuple[float, ...] | None,
    num_tasks: int,
    device: torch.device,
    name: str = "weights",
    owner: str = "ls",
) -> torch.Tensor:
    """The (T,) float32 tensor of ``weights`` on ``device`` (all ones for ``None``).

    Raises ``ValueError`` when the length is not ``num_tasks``."""
    if weights is None:
        return torch.ones(num_tasks, device=device)
    if len(weights) != num_tasks:
        raise ValueError(
            f"{owner}: {name} has {len(weights)} entries but there are {num_tasks} tasks "
            f"(give one non-negative {name[:-1] if name.endswith('s') else name} per task, "
            f"in the dataset's task order)"
        )
    if any(w < 0 for w in weights):  # direct construction bypasses the registry's check
        raise ValueError(f"{owner}: {name} must be non-negative, got {tuple(weights)}")
    return torch.tensor(weights, dtype=torch.float32, device=device)


@WEIGHTING.register("ls")
class LinearScalarization(LossWeighting):
    """Linear scalarization: L = sum_t w_t L_t with fixed weights w (default: all ones).

    ``weights``: one non-negative weight per task, in the dataset's task order.
    """

    permutation_invariant: ClassVar[bool] = True

    def __init__(self, *, weights: WeightVector = None) -> None:
        super().__init__()
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self._weights: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._weights = weight_vector(self.weights, num_tasks, device)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self._weights is None:
            raise RuntimeError("ls: call reset(num_tasks, device) before combine")
        weights = self._weights.to(device=losses.device, dtype=losses.dtype)
        self.last_weights = weights
        return (weights * losses).sum()
