"""Progressive Layered Extraction (PLE): stacked levels of task-specific and shared experts.

Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task
Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
https://doi.org/10.1145/3383313.3412236.

Each level ("extraction network") has ``num_task_experts`` experts per task and
``num_shared_experts`` shared experts. At level ``j`` the gate of task ``t`` mixes
task t's experts and the shared experts, with softmax weights computed from task t's
input to the level; every level but the last also has a shared gate that mixes *all*
experts (every task's and the shared ones) from the shared input. The task-t mixture
is task t's input to the next level, the shared mixture the input of the next level's
shared experts; level 0 reads the input ``x`` everywhere. Each task's tower reads its
mixture of the last level. CGC (``cgc.py``) is PLE with one level.

Experts: the backbone's stages (MLP layers, or conv blocks then MLP layers; see
``backbones.py``) are split into ``num_levels`` contiguous groups, and the experts of
level ``j`` are copies of group ``j``, so the depth of PLE equals that of the backbone
(LibMTL builds its PLE the same way from the stages of a ResNet). ``num_levels`` must
not exceed the number of stages. Gates are linear in the flattened level input.

Shared vs task-specific parameters (what influences only task t's output): the last
level's task-t experts and gate, the task-t gate of the level before it (its output
only feeds task t's last-level experts and gate), and the tower. Everything else is
shared: shared experts and gates, and the task experts of non-final levels, which feed
the shared gate. With two or more levels there is no single tensor through which all
shared parameters act, so ``has_representation = False``.

Diagnostics after ``reset_stats()`` and evaluation forwards (``stats()``):
``expert_utilisation`` = {task: mean gate weight per expert} of the last level (same
form as CGC and MMoE), ``expert_utilisation_by_level`` = one {gate: weights} per level
(gate ``"shared"`` included), and ``experts`` = the expert names behind each weight
(own experts first, then shared; for the shared gate, the tasks' experts in task order,
then the shared ones).

Defaults: two levels, two shared experts and two experts per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import pydantic
import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing._common import GatedArchitecture, mix, tower, unique_parameters
from strategies.sharing.backbones import (
    StageDesc,
    build_stage,
    flat_dim,
    output_dim,
    prepare_input,
    stage_descs,
)
from strategies.sharing.base import BackboneSpec

SHARED = "shared"


def split_stages(descs: Sequence[StageDesc], num_levels: int) -> list[list[StageDesc]]:
    """``descs`` in ``num_levels`` contiguous groups of (nearly) equal size, larger first."""
    if num_levels > len(descs):
        raise ValueError(
            f"PLE with num_levels={num_levels} needs at least {num_levels} backbone layers "
            f"(model.hidden, plus model.channels for the cnn); this backbone has {len(descs)}"
        )
    base, extra = divmod(len(descs), num_levels)
    groups, start = [], 0
    for level in range(num_levels):
        size = base + (1 if level < extra else 0)
        groups.append(list(descs[start : start + size]))
        start += size
    return groups


class ExtractionLevel(nn.Module):
    """One level: task experts, shared experts, task gates and (optionally) a shared gate."""

    def __init__(
        self,
        stages: Sequence[StageDesc],
        tasks: Sequence[str],
        num_shared_experts: int,
        num_task_experts: int,
        shared_gate: bool,
        dropout: float,
    ) -> None:
        super().__init__()

        def expert() -> nn.Module:
            return nn.Sequential(*[build_stage(d, dropout) for d in stages])

        gate_in = flat_dim(stages[0].in_shape)
        self.shared = nn.ModuleList([expert() for _ in range(num_shared_experts)])
        self.task_experts = nn.ModuleDict(
            {t: nn.ModuleList([expert() for _ in range(num_task_experts)]) for t in tasks}
        )
        self.gates = nn.ModuleDict(
            {t: nn.Linear(gate_in, num_task_experts + num_shared_experts) for t in tasks}
        )
        self.shared_gate = (
            nn.Linear(gate_in, len(tasks) * num_task_experts + num_shared_experts)
            if shared_gate
            else None
        )


@SHARING.register("ple")
class ProgressiveLayeredExtraction(GatedArchitecture):
    """PLE: stacked levels of per-task and shared experts, with task gates and shared gates.

    The backbone's layers are split over ``num_levels`` levels; no single representation.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        num_levels: Annotated[int, pydantic.Field(ge=1)] = 2,
        num_shared_experts: Annotated[int, pydantic.Field(ge=0)] = 2,
        num_task_experts: Annotated[int, pydantic.Field(ge=0)] = 2,
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        if num_shared_experts + num_task_experts == 0:
            raise ValueError("PLE/CGC needs at least one expert per gate "
                             "(num_shared_experts + num_task_experts >= 1)")
        self.names = [t.name for t in tasks]
        groups = split_stages(stage_descs(input_shape, backbone), num_levels)
        self.levels = nn.ModuleList(
            [
                ExtractionLevel(group, self.names, num_shared_experts, num_task_experts,
                                shared_gate=j < num_levels - 1, dropout=backbone.dropout)
                for j, group in enumerate(groups)
            ]
        )
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})
        self.expert_names = {
            t: [f"{t}/{i}" for i in range(num_task_experts)]
            + [f"{SHARED}/{i}" for i in range(num_shared_experts)]
            for t in self.names
        }
        self.expert_names[SHARED] = [
            f"{t}/{i}" for t in self.names for i in range(num_task_experts)
        ] + [f"{SHARED}/{i}" for i in range(num_shared_experts)]

    def _gate(self, key: str, gate: nn.Linear, selector: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(gate(selector.flatten(1)), dim=-1)
        if not self.training:
            self.meter.update(key, weights)
        return weights

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = prepare_input(x, self.input_shape, self.backbone_spec)
        task_in = dict.fromkeys(self.names, x)
        shared_in = x
        for j, level in enumerate(self.levels):
            shared_out = [e(shared_in) for e in level.shared]
            shared_stack = torch.stack(shared_out, dim=1) if shared_out else None
            if len(self.levels) == 1:
                self.representation = shared_stack
            task_out = {t: [e(task_in[t]) for e in level.task_experts[t]] for t in self.names}
            new_in = {}
            for t in self.names:
                parts = [torch.stack(task_out[t], dim=1)] if task_out[t] else []
                if shared_stack is not None:
                    parts.append(shared_stack)
                weights = self._gate(f"{j}/{t}", level.gates[t], task_in[t])
                new_in[t] = mix(weights, torch.cat(parts, dim=1))
            if level.shared_gate is not None:
                experts = torch.stack([o for t in self.names for o in task_out[t]] + shared_out, 1)
                weights = self._gate(f"{j}/{SHARED}", level.shared_gate, shared_in)
                shared_in = mix(weights, experts)
            task_in = new_in
        return {t: self.towers[t](task_in[t].flatten(1)) for t in self.names}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        last = self.levels[-1]
        modules: list[nn.Module] = [last.task_experts[task], last.gates[task]]
        if len(self.levels) > 1:
            modules.append(self.levels[-2].gates[task])
        modules.append(self.towers[task])
        return unique_parameters(modules)

    def shared_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for t in self.names for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in own]

    def stats(self) -> dict[str, Any]:
        means = self.meter.means()
        last = len(self.levels) - 1
        out: dict[str, Any] = {
            "expert_utilisation": {
                t: means[f"{last}/{t}"] for t in self.names if f"{last}/{t}" in means
            },
        }
        if len(self.levels) > 1:
            out["expert_utilisation_by_level"] = [
                {g: means[f"{j}/{g}"] for g in [*self.names, SHARED] if f"{j}/{g}" in means}
                for j in range(len(self.levels))
            ]
        out["experts"] = {
            g: names for g, names in self.expert_names.items() if g != SHARED or last > 0
        }
        return out
