"""Cross-stitch networks: one network column per task, mixed by learned cross-stitch units.

Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task Learning",
CVPR 2016, https://arxiv.org/abs/1604.03539.

Every task has its own copy of the backbone (a *column*; MLP or CNN stages, see
``backbones.py``). After each stage ``j`` a cross-stitch unit, a learned T x T matrix
``alpha_j``, replaces the columns' activations by linear combinations of them:

    h_t <- sum_s alpha_j[t, s] * h_s

(one scalar per task pair and stage, applied to every activation of the stage): the
paper's unit generalised from two to T tasks. As in the paper's initialisation, each
row starts as a convex combination, ``alpha_same`` on the diagonal (paper: 0.9) and
``(1 - alpha_same) / (T - 1)`` elsewhere, so training starts close to separate networks.
Each task's tower reads its own column's output.

Shared vs task-specific parameters: the units *and every column* are shared. Although
column t is "task t's network", from the first cross-stitch unit on its activations
feed every task's output, so its gradient is a mixture of all tasks' gradients; the
harness gives task-specific parameters the gradient of the summed task losses, which
would bypass a gradient-based strategy for the columns. Only the towers are
task-specific (this is also how LibMTL splits its cross-stitch encoder and decoders).
There is no single shared representation (``has_representation = False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import pydantic
import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing._common import tower
from strategies.sharing.backbones import build_stages, output_dim, prepare_input
from strategies.sharing.base import BackboneSpec, SharingArchitecture


def cross_stitch_init(num_tasks: int, alpha_same: float) -> torch.Tensor:
    """T x T matrix with ``alpha_same`` on the diagonal and rows summing to 1."""
    if num_tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - alpha_same) / (num_tasks - 1)
    alpha = torch.full((num_tasks, num_tasks), other)
    alpha.fill_diagonal_(alpha_same)
    return alpha


@SHARING.register("cross_stitch")
class CrossStitch(SharingArchitecture):
    """Cross-stitch network: a backbone column per task, mixed after every layer by learned units.

    ``alpha_same``: initial diagonal of each T x T unit (rows start summing to 1).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        alpha_same: Annotated[float, pydantic.Field(ge=0.0, le=1.0)] = 0.9,
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        self.names = [t.name for t in tasks]
        self.columns = nn.ModuleDict(
            {t.name: nn.ModuleList(build_stages(input_shape, backbone)) for t in tasks}
        )
        num_stages = len(self.columns[self.names[0]])
        self.units = nn.ParameterList(
            [nn.Parameter(cross_stitch_init(len(tasks), alpha_same)) for _ in range(num_stages)]
        )
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = prepare_input(x, self.input_shape, self.backbone_spec)
        hs = [x] * len(self.names)
        for j, alpha in enumerate(self.units):
            outs = [self.columns[n][j](h) for n, h in zip(self.names, hs, strict=True)]
            stacked = torch.stack(outs)  # (T, B, ...)
            hs = list(torch.tensordot(alpha, stacked, dims=1).unbind(0))
        return {n: self.towers[n](h.flatten(1)) for n, h in zip(self.names, hs, strict=True)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.columns.parameters(), *self.units.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.towers[task].parameters())
