"""The training step and its gradient engines.

What a strategy declares decides the path, never its name:

- loss-based (``needs == "losses"``): backpropagate ``strategy.combine(losses)``;
- gradient-based (``needs == "jacobian"``): an engine computes the per-task
  Jacobian J of the shared parameters (or of the shared representation), the
  strategy maps it to a direction that becomes the shared parameters' gradient,
  and each task's own parameters get the gradient of that task's loss (as in
  torchjd's ``mtl_backward``).

Engines differ in how J is obtained, so their cost is an ablation axis:

- ``loop``: one ``autograd.grad`` call per task;
- ``vmap``: one batched (vmapped) backward over the identity grad-outputs;
- ``gramian``: the batched backward, but per parameter tensor; only the (T, T)
  Gramian is reduced and the direction is ``sum_t w_t J_t`` per tensor, so no
  (T, P) matrix is ever concatenated (``GramianWeighting`` strategies only);
- ``autogram``: J J^T without J: per-layer contributions of the shared Linear / Conv2d
  layers from their recorded inputs and per-task output gradients, then one backward
  of ``sum_t w_t L_t`` (Algorithm 3 of Quinton & Rey, "Jacobian Descent for
  Multi-Objective Optimization", 2024; ``GramianWeighting`` strategies only);
- ``auto``: ``autogram`` for Gramian strategies from 8 tasks on (where it is measured
  faster), ``loop`` otherwise;
- ``rep``: J of the shared representation (MGDA-UB style, approximate, cheap);
  the direction is backpropagated through the shared trunk. Only for strategies
  declaring ``supports_rep`` on architectures exposing a representation.

Modules: ``step`` (``train_step``, ``apply_gradients``, ``StepContext``, timers),
``losses`` (``TaskLosses``, ``loss_handles``, ``TaskFeatures``), ``base``
(``GradientEngine``: ``require_support``, ``task_gradients``, ``shared_gradients``),
one per engine: ``loop``, ``vmap`` (``vmap`` and ``gramian``), ``autogram``, ``auto``,
``rep``.
``ENGINES`` below maps each engine's name to its class.
"""

from __future__ import annotations

from bench.engine.auto import AutoEngine
from bench.engine.autogram import AutogramEngine, LayerTap
from bench.engine.base import GradientEngine
from bench.engine.loop import LoopEngine
from bench.engine.losses import LossHandle, TaskFeatures, TaskLosses, as_task_losses, loss_handles
from bench.engine.rep import RepEngine
from bench.engine.step import (
    HeadGradients,
    NullTimer,
    StepContext,
    Timer,
    apply_gradients,
    head_gradients,
    losses_follow_outputs,
    task_parameter_split,
    train_step,
)
from bench.engine.vmap import GramianEngine, VmapEngine

__all__ = [
    "ENGINES",
    "AutoEngine",
    "AutogramEngine",
    "GradientEngine",
    "GramianEngine",
    "HeadGradients",
    "LayerTap",
    "LoopEngine",
    "LossHandle",
    "NullTimer",
    "RepEngine",
    "StepContext",
    "TaskFeatures",
    "TaskLosses",
    "Timer",
    "VmapEngine",
    "apply_gradients",
    "as_task_losses",
    "head_gradients",
    "loss_handles",
    "losses_follow_outputs",
    "task_parameter_split",
    "train_step",
]

#: The engines by name (``train.engine`` in a spec).
ENGINES: dict[str, type[GradientEngine]] = {
    e.name: e
    for e in (LoopEngine, VmapEngine, GramianEngine, AutogramEngine, AutoEngine, RepEngine)
}
