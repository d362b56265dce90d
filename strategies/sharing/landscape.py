"""A point moving on a loss landscape: the "architecture" of the toy problems.

Used with objective tasks such as ``toy2`` (the two-task landscape of Liu et
al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021,
https://arxiv.org/abs/2110.14048): the only parameter is an offset theta shared
by every task; the model's output for each task is the point ``x + theta``, and
each task's objective scores that point. Training therefore moves the point
from its start ``x`` exactly as the weighting strategy directs, and the
trajectory (recorded every ``record_every`` training forwards) is what the
CAGrad / Nash-MTL / FAMO papers draw over the landscape's contours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing.backbones import flat_dim
from strategies.sharing.base import BackboneSpec, SharingArchitecture


@SHARING.register("landscape")
class Landscape(SharingArchitecture):
    """A single shared point offset (for objective tasks like toy2); records its trajectory."""

    has_representation = True

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        record_every: Annotated[int, Field(ge=1)] = 100,
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        dim = flat_dim(input_shape)
        for t in tasks:
            if t.kind != "objective" or t.output_dim != dim:
                raise ValueError(
                    f"landscape needs objective tasks over the input space (e.g. dataset "
                    f"'toy2'); task '{t.name}' is {t.kind}"
                )
        self.offset = nn.Parameter(torch.zeros(dim))
        self.record_every = record_every
        self._calls = 0
        self._trajectory: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        point = x.flatten(1) + self.offset
        if self.training:
            if self._calls % self.record_every == 0:
                self._trajectory.append(point[0].detach().clone())
            self._calls += 1
        self.representation = point
        return {t.name: point for t in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.offset]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []

    def stats(self) -> dict[str, Any]:
        # The trajectory is a training-time record: reset_stats (before evaluation) keeps it.
        if not self._trajectory:
            return {}
        return {
            "trajectory": torch.stack(self._trajectory).cpu().tolist(),
            "trajectory_every": self.record_every,
        }
