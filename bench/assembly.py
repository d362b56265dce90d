"""One assembly of the training step: model, strategy, engine, optimizer and
:class:`~bench.engine.StepContext`, built the same way wherever a step is trained or timed.

:func:`build_step` is used by a trial (:mod:`bench.trial`), a speed cell
(:class:`bench.speed.CellRunner`, hence ``mtlbench speed``, the regression gate's
speed part and ``run --dry-run``'s estimate) and the tests. What it does, in this
order (the order is part of a trial's result: the global RNG is seeded once, then the
model draws its initial weights and the strategy its own state):

1. ``torch.manual_seed(seed)``; the architecture for ``tasks`` on ``input_shape``
   with the widths of ``model``, moved to ``device``;
2. the strategy, reset for ``len(tasks)`` tasks on ``device`` with ``seed``;
3. the engine ``train.engine``; a gradient-based strategy it cannot serve on that
   architecture is an :class:`IncompatibleSpec` naming both;
4. the optimizer ``train.optimizer`` over the model's parameters and the strategy's
   own (UW's log-variances, IMTL's loss scales);
5. the :class:`StepContext`: the architecture's shared parameters, every other model
   parameter as task-specific, and ``train.heads``.

:func:`step_context` is step 5 alone, for a model, strategy and optimizer built
elsewhere (a user's own loop, :mod:`bench.own_loop`; tests with a hand-made model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.engine import (
    ENGINES,
    GradientEngine,
    HeadGradients,
    NullTimer,
    StepContext,
    Timer,
    task_parameter_split,
)
from bench.engine import train_step as _train_step
from bench.probes import Probe, build_probes
from bench.spec import Component, ModelSettings, ProbeSettings, TrainSettings
from bench.tasks import Task
from strategies import sharing, weighting
from strategies.sharing.base import BackboneSpec, SharingArchitecture
from strategies.weighting.base import WeightingStrategy

__all__ = [
    "IncompatibleSpec",
    "TrainingStep",
    "build_step",
    "make_optimizer",
    "require_engine",
    "step_context",
]

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]
LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


class IncompatibleSpec(ValueError):
    """The spec combines components that cannot work together (e.g. engine and strategy)."""


def make_optimizer(params: Iterable[torch.Tensor], train: TrainSettings) -> torch.optim.Optimizer:
    """``train.optimizer`` (``sgd`` with momentum, ``adam`` or ``adamw``) over ``params``.

    PyTorch's fused implementation is used where it exists for every parameter (float
    tensors on the CPU, CUDA or MPS): one kernel for all parameters instead of about ten
    per parameter tensor, 2.7x / 4.8x faster for Adam at T = 2 / 40 on issue 13's
    reference problem (CPU), and the same update up to rounding."""
    params = list(params)
    fused = {"fused": True} if _fusable(params) else {}
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
            **fused,
        )
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train.lr, weight_decay=train.weight_decay, **fused)


_FUSED_DEVICES = ("cpu", "cuda", "mps")


def _fusable(params: Sequence[torch.Tensor]) -> bool:
    return bool(params) and all(
        p.device.type in _FUSED_DEVICES and p.is_floating_point() and not p.is_sparse
        for p in params
    )


def require_engine(engine: GradientEngine, strategy: WeightingStrategy, model: nn.Module) -> None:
    """An :class:`IncompatibleSpec` when a gradient-based ``strategy`` cannot run on
    ``engine`` with ``model``'s architecture (loss-based strategies need no engine)."""
    if strategy.needs != "jacobian":
        return
    try:
        engine.require_support(type(strategy), type(model))
    except ValueError as err:
        raise IncompatibleSpec(str(err)) from None


def step_context(
    model: nn.Module,
    strategy: WeightingStrategy,
    engine: GradientEngine,
    optimizer: torch.optim.Optimizer,
    shared: Iterable[nn.Parameter] | None = None,
    heads: HeadGradients = "method",
    tasks: Sequence[str] | None = None,
) -> StepContext:
    """The :class:`StepContext` of ``model``: ``shared`` (default: the architecture's
    ``shared_parameters()``) and every other parameter of the model as task-specific.
    ``tasks``, the task names in the order of the step's losses, lets the context split
    the task-specific parameters by task (:func:`bench.engine.task_parameter_split`;
    without it, :func:`bench.engine.train_step` checks the model's own task order on
    the first step's graph)."""
    shared_list = list(shared) if shared is not None else list(model.shared_parameters())
    shared_ids = {id(p) for p in shared_list}
    task_specific = [p for p in model.parameters() if id(p) not in shared_ids]
    return StepContext(
        model=model,
        strategy=strategy,
        engine=engine,
        optimizer=optimizer,
        shared=shared_list,
        task_specific=task_specific,
        heads=heads,
        task_params=task_parameter_split(model, tasks, task_specific) if tasks else None,
    )


@dataclass
class TrainingStep:
    """A built training step (see the module docstring); :meth:`step` runs one."""

    model: SharingArchitecture
    strategy: WeightingStrategy
    engine: GradientEngine
    optimizer: torch.optim.Optimizer
    ctx: StepContext
    tasks: tuple[Task, ...]
    device: torch.device
    train: TrainSettings
    timer: Timer = field(default_factory=NullTimer)

    @property
    def shared(self) -> list[nn.Parameter]:
        return self.ctx.shared

    def step(self, batches: Sequence[Batch], compute_losses: LossFn,
             timer: Timer | None = None) -> torch.Tensor:
        """One optimisation step (:func:`bench.engine.train_step`); the (T,) losses."""
        return _train_step(self.ctx, batches, compute_losses, timer or self.timer)

    def probes(self, settings: ProbeSettings | None, total_steps: int) -> list[Probe]:
        """The training-time probes ``settings`` enable for a run of ``total_steps``."""
        if settings is None:
            return []
        return build_probes(settings.to_dict(), [t.name for t in self.tasks], self.train.lr,
                            total_steps=total_steps)


def build_step(
    architecture: Component,
    strategy: Component,
    tasks: Sequence[Task],
    input_shape: Sequence[int],
    model: ModelSettings,
    train: TrainSettings,
    device: torch.device,
    seed: int,
    *,
    timer: Timer | None = None,
) -> TrainingStep:
    """Build the training step of ``architecture`` x ``strategy`` (see the module
    docstring); raises :class:`IncompatibleSpec` for an engine that cannot serve them."""
    tasks = tuple(tasks)
    torch.manual_seed(seed)
    net = sharing.get(
        architecture.name, tuple(input_shape), tasks, BackboneSpec.of(model), **architecture.params
    ).to(device)
    method = weighting.get(strategy.name, **strategy.params)
    method.reset(len(tasks), device, seed=seed)
    engine = ENGINES[train.engine]()
    require_engine(engine, method, net)
    optimizer = make_optimizer([*net.parameters(), *method.parameters()], train)
    ctx = step_context(net, method, engine, optimizer, heads=train.heads,
                       tasks=[t.name for t in tasks])
    return TrainingStep(model=net, strategy=method, engine=engine, optimizer=optimizer, ctx=ctx,
                        tasks=tasks, device=device, train=train, timer=timer or NullTimer())
