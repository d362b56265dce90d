"""The two-task toy loss landscape of the CAGrad, Nash-MTL and FAMO papers.

Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
2021, https://arxiv.org/abs/2110.14048 (appendix, "toy example"); reused by
Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022,
https://arxiv.org/abs/2202.01017, and Liu et al., "FAMO", NeurIPS 2023,
https://arxiv.org/abs/2306.03792.

With theta = (x1, x2) and c1 = max(tanh(x2/2), 0), c2 = max(tanh(-x2/2), 0):

    f1 = c1 * (log max(|0.5(-x1 - 7) - tanh(-x2)|, 5e-6) + 6)
         + c2 * (((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20)
    f2 = c1 * (log max(|0.5(-x1 + 3) + tanh(-x2) + 2|, 5e-6) + 6)
         + c2 * (((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20)

This follows the published code (the ``Toy`` problem of the CAGrad and
Nash-MTL repositories), which produced the figures of all three papers; the
CAGrad appendix's printed formula differs from it in one sign, and we follow
the code.
``scale`` multiplies f1 (Nash-MTL and FAMO use 0.1 to make the tasks unbalanced).

There is no data: each "sample" is the starting point, and the ``landscape``
architecture adds its learnable offset to it, so training moves the point
theta = start + offset under whatever weighting strategy runs; ``landscape``
records the trajectory. Starting points: the five of the Nash-MTL/FAMO code
(CAGrad used the first, (-8.5, -5) and (9, 9)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from bench.data import DATASETS, MTLDataset, Split
from bench.tasks import Task

STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0), (-8.5, -5.0),
)
LOWER = 5e-6


def toy_losses(point: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(..., 2) points -> (..., 2) values (f1, f2) of the landscape."""
    x1, x2 = point[..., 0], point[..., 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    return torch.stack([scale * (f1 * c1 + f1_sq * c2), f2 * c1 + f2_sq * c2], dim=-1)


@DATASETS.register("toy2")
def load_toy2(
    *,
    start: Annotated[int, Field(ge=0, le=len(STARTS) - 1)] = 0,
    scale: Annotated[float, Field(gt=0)] = 1.0,
    steps_per_epoch: Annotated[int, Field(ge=1, le=100_000)] = 1000,
) -> MTLDataset:
    """Two-task toy landscape of CAGrad / Nash-MTL / FAMO (no data; trains a point in R^2)."""
    point = torch.tensor([STARTS[start]], dtype=torch.float32)
    tasks = tuple(
        Task(f"f{i + 1}", "objective", 2, objective=lambda z, i=i: toy_losses(z, scale)[..., i])
        for i in range(2)
    )

    def split(rows: int) -> Split:
        x = point.repeat(rows, 1)
        return Split(x, {t.name: torch.zeros(rows) for t in tasks})

    # With batch_size 1, one epoch is steps_per_epoch optimisation steps.
    return MTLDataset("toy2", tasks, split(steps_per_epoch), split(1), split(1))


@dataclass(frozen=True)
class Front:
    """The landscape on a square grid (``xs``, ``ys``: meshgrid; ``mean_loss``: (f1 +
    f2) / 2) and its numerical Pareto set: the grid points no other grid point dominates
    (``points``, k x 2) and their objectives (``values``, k x 2)."""

    xs: np.ndarray
    ys: np.ndarray
    mean_loss: np.ndarray
    points: np.ndarray
    values: np.ndarray


class Landscape:
    """What a report needs of an objective dataset to draw its trajectories: the
    objectives' task names, a trial's starting point and the Pareto front (found by
    ``bench.report`` as ``landscape`` on the registered loader)."""

    objectives = ("f1", "f2")

    def start(self, params: Mapping[str, Any]) -> tuple[float, float]:
        return STARTS[params.get("start", 0)]

    def front(self, params: Mapping[str, Any], grid: int = 300, extent: float = 10.0
              ) -> Front:
        axis = np.linspace(-extent, extent, grid)
        xs, ys = np.meshgrid(axis, axis)
        values = toy_losses(torch.tensor(np.stack([xs, ys], -1), dtype=torch.float64),
                            params.get("scale", 1.0)).numpy()
        flat = values.reshape(-1, 2)
        order = np.lexsort((flat[:, 1], flat[:, 0]))
        best_f2, keep = np.inf, []
        for idx in order:  # sorted by f1: a point is on the front when it lowers f2
            if flat[idx, 1] < best_f2:
                best_f2 = flat[idx, 1]
                keep.append(idx)
        points = np.stack([xs.reshape(-1)[keep], ys.reshape(-1)[keep]], -1)
        return Front(xs, ys, values.mean(-1), points, flat[keep])


load_toy2.landscape = Landscape()  # type: ignore[attr-defined]
