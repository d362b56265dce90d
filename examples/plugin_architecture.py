"""An architecture plugin: hard sharing with a learned gate per task on the shared
features, registered as ``gated_hps``."""

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING, BackboneSpec, SharingArchitecture
from strategies.sharing.backbones import backbone, output_dim


@SHARING.register("gated_hps")
class GatedHPS(SharingArchitecture):
    """One shared backbone; each task scales its features by its own sigmoid gate."""

    def __init__(self, input_shape: Sequence[int], tasks: Sequence[Task], spec: BackboneSpec,
                 *, gate_init: Annotated[float, Field(ge=-10, le=10)] = 2.0) -> None:
        super().__init__(input_shape, tasks, spec)
        self.backbone = backbone(input_shape, spec)  # the sweep's [model] widths
        dim = output_dim(input_shape, spec)
        self.gates = nn.ParameterDict(
            {t.name: nn.Parameter(torch.full((dim,), gate_init)) for t in tasks})
        self.towers = nn.ModuleDict({t.name: nn.Linear(dim, t.output_dim) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.backbone(x)
        return {t.name: self.towers[t.name](h * torch.sigmoid(self.gates[t.name]))
                for t in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [self.gates[task], *self.towers[task].parameters()]
