"""Customized Gate Control (CGC): task-specific and shared experts with one gate per task.

Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task
Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
https://doi.org/10.1145/3383313.3412236 (Section 4.2, CGC; PLE stacks it).

Every task has ``num_task_experts`` experts of its own and all tasks share
``num_shared_experts`` experts; each expert is a full backbone (MLP or CNN, see
``backbones.py``). Task t's gate, ``softmax(W_t x)`` on the flattened input, mixes
task t's experts and the shared experts; task t's tower reads that mixture. This is
PLE (``ple.py``) with a single level, and shares its implementation.

Shared parameters: the shared experts. Task-specific: the task's experts, gate and
tower. Representation (``rep`` engine): the stacked outputs of the shared experts
``(B, num_shared_experts, d)``, through which every shared parameter acts.

Diagnostics (``stats()`` after ``reset_stats()`` and evaluation forwards):
``expert_utilisation`` = {task: mean gate weight per expert}, the task's own experts
first, then the shared ones (names in ``experts``).

Defaults: two shared experts and two experts per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import pydantic

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing.base import BackboneSpec
from strategies.sharing.ple import ProgressiveLayeredExtraction


@SHARING.register("cgc")
class CustomizedGateControl(ProgressiveLayeredExtraction):
    """CGC: per-task and shared backbone experts with one softmax gate per task (one PLE level).

    The representation (``rep`` engine) is the stacked shared-expert outputs.
    """

    has_representation = True

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        backbone: BackboneSpec,
        *,
        num_shared_experts: Annotated[int, pydantic.Field(ge=1)] = 2,
        num_task_experts: Annotated[int, pydantic.Field(ge=0)] = 2,
    ) -> None:
        super().__init__(
            input_shape,
            tasks,
            backbone,
            num_levels=1,
            num_shared_experts=num_shared_experts,
            num_task_experts=num_task_experts,
        )
