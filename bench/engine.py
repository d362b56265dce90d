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
- ``rep``: J of the shared representation (MGDA-UB style, approximate, cheap);
  the direction is backpropagated through the shared trunk. Only for strategies
  declaring ``supports_rep`` on architectures exposing a representation.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from strategies.weighting.base import GradientWeighting, GramianWeighting, WeightingStrategy

__all__ = [
    "ENGINES",
    "GradientEngine",
    "LayerTap",
    "NullTimer",
    "StepContext",
    "TaskFeatures",
    "TaskLosses",
    "Timer",
    "apply_gradients",
    "head_gradients",
    "loss_handles",
    "train_step",
]


class Timer(Protocol):
    """Receives phase boundaries: ``mark(name)`` closes the phase called ``name``."""

    def mark(self, name: str) -> None: ...


class NullTimer:
    """Timer that records nothing (the default: no overhead in ordinary trials)."""

    def mark(self, name: str) -> None:
        pass


@dataclass
class StepContext:
    """What one training step works on.

    ``heads`` decides the gradient of the task-specific parameters under gradient-based
    strategies: ``"own"`` (each task's parameters get the gradient of that task's own
    loss, as torchjd's ``mtl_backward``), ``"weighted"`` (of ``w_t L_t`` with the
    strategy's task weights, as the official Nash-MTL, FairGrad and ExcessMTL codes
    backpropagate ``sum_t w_t L_t``), or ``"method"`` (the strategy's declared
    ``head_gradients``)."""

    model: nn.Module
    strategy: WeightingStrategy
    engine: GradientEngine
    optimizer: torch.optim.Optimizer
    shared: list[nn.Parameter]
    task_specific: list[nn.Parameter]
    heads: HeadGradients = "method"


HeadGradients = Literal["method", "own", "weighted"]


def _zeros_if_none(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


# ---------------------------------------------------------------- per-task loss handles

LossHandle = torch.Tensor | GradientEdge


def loss_handles(losses: torch.Tensor) -> list[LossHandle]:
    """One differentiable handle per task loss of the (T,) vector ``losses``.

    Differentiating ``losses[t]`` runs backward through ``torch.stack`` into every
    task's head (zeros for all but one), so T such calls cost O(T^2) head backwards.
    When ``losses`` is a stack of T scalars, the handles are the stack's input edges
    instead: each task's backward then traverses only its own head and the trunk."""
    fn = losses.grad_fn
    if (
        losses.dim() == 1
        and fn is not None
        and type(fn).__name__ == "StackBackward0"
        and len(fn.next_functions) == losses.shape[0]
        and all(node is not None for node, _ in fn.next_functions)
    ):
        return [GradientEdge(node, nr) for node, nr in fn.next_functions]
    return [losses[t] for t in range(losses.shape[0])]


def _grad(
    handle: LossHandle, inputs: Sequence[torch.Tensor], scale: torch.Tensor
) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(handle, inputs, grad_outputs=scale, retain_graph=True,
                                    allow_unused=True))


class TaskFeatures:
    """Records the input of each task's tower during the forward pass.

    Every architecture maps the shared computation to one tensor per task and applies
    that task's tower to it (``outputs[t] = towers[t](feature_t)``). When the towers
    hold only task-specific parameters, a task's loss reaches the shared parameters only
    through its feature, so the Jacobian splits into T small per-task backwards (loss to
    feature, through one tower) and one batched backward through the trunk: O(T) work,
    as torchjd's ``mtl_backward``. The record is used only when each output of the
    forward is the tower output it recorded (checked by identity, no host sync)."""

    def __init__(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> None:
        towers = getattr(model, "towers", None)
        shared_ids = {id(p) for p in shared}
        self.usable = isinstance(towers, nn.ModuleDict) and not any(
            id(p) in shared_ids for p in towers.parameters()
        )
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        if self.usable:
            for name, tower in towers.items():
                tower.register_forward_hook(self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, output: object) -> None:
            if len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(
                output, torch.Tensor
            ):
                self.inputs[name], self.outputs[name] = args[0], output
            else:
                self.inputs.pop(name, None)
        return record

    def of(self, outputs: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
        """The features of the forward that returned ``outputs``, in its task order."""
        if not self.usable:
            return None
        features = []
        for name, out in outputs.items():
            feature = self.inputs.get(name)
            if feature is None or self.outputs.get(name) is not out or not feature.requires_grad:
                return None
            features.append(feature)
        return features


# ---------------------------------------------------------------- engines


@dataclass
class TaskLosses:
    """The (T,) task losses of one minibatch as the engines differentiate them.

    ``raw``: as the trial computed them (a stack of per-task losses); ``transformed``:
    after the strategy's ``transform_losses`` (the rows of J are its gradients);
    ``features``: each task's tower input when the forward recorded them (else None)."""

    raw: torch.Tensor
    transformed: torch.Tensor
    features: list[torch.Tensor] | None = None
    elementwise: bool = True

    def __post_init__(self) -> None:
        self.handles = loss_handles(self.raw)
        self.scales, self.mixing = self._transform_jacobian()

    def _transform_jacobian(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-task backward seeds, and a (T, T) matrix to apply afterwards if the
        transform mixes tasks. An element-wise transform (IMTL, DB-MTL) becomes the seed
        of each task's backward, so it costs nothing."""
        raw, out = self.raw, self.transformed
        ones = [torch.ones((), dtype=raw.dtype, device=raw.device)] * len(raw)
        if out is raw or not out.requires_grad:
            return ones, None
        if isinstance(self.handles[0], torch.Tensor):
            # Rows of ``raw`` (no stack to split): differentiate ``transformed`` itself.
            self.handles = [out[t] for t in range(len(out))]
            return ones, None
        if self.elementwise:
            (diagonal,) = torch.autograd.grad(out, raw, grad_outputs=torch.ones_like(out),
                                              retain_graph=True)
            return list(diagonal.unbind()), None
        eye = torch.eye(len(raw), dtype=out.dtype, device=out.device)
        (mixing,) = torch.autograd.grad(out, raw, grad_outputs=eye, retain_graph=True,
                                        is_grads_batched=True)
        return ones, mixing

    def mix(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of the raw losses' gradients -> rows of the transformed losses'."""
        return rows if self.mixing is None else self.mixing.to(rows.dtype) @ rows


def as_task_losses(losses: Sequence[TaskLosses | torch.Tensor]) -> list[TaskLosses]:
    """Plain (T,) loss vectors are taken untransformed."""
    return [x if isinstance(x, TaskLosses) else TaskLosses(x, x) for x in losses]


class GradientEngine(ABC):
    """Produces the shared parameters' gradients of a gradient-based strategy."""

    name: str = ""
    #: Whether the engine uses the recorded tower inputs (``TaskFeatures``).
    uses_features: ClassVar[bool] = False

    def check(  # noqa: B027 (most engines serve every strategy)
        self, strategy: type[WeightingStrategy], model: type[nn.Module]
    ) -> None:
        """Raise ``ValueError`` if this engine cannot serve the strategy class on the
        architecture class (checked when the grid is built, before anything runs)."""

    def prepare(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> None:  # noqa: B027
        """Called by :func:`train_step` before the step's forward passes (gradient-based
        strategies only): an engine that records the forward installs its hooks here."""

    @abstractmethod
    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per parameter tensor, the (T, *shape) stack of the T tasks' gradients of the
        transformed losses. Keeps the graph alive."""

    def jacobian(self, losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(T, P): row t is the flattened gradient of ``losses[t]`` w.r.t. ``params``."""
        return self.task_jacobian(TaskLosses(losses, losses), params)

    def task_jacobian(self, losses: TaskLosses, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(T, P) Jacobian of the transformed losses w.r.t. ``params`` (flattened, in order)."""
        per_param = self.task_gradients(losses, params)
        return torch.cat([g.reshape(len(losses.raw), -1) for g in per_param], 1)

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        """Set ``.grad`` of the shared parameters from the strategy's direction."""
        losses_per_batch = as_task_losses(losses_per_batch)
        jacobians = []
        for losses in losses_per_batch:
            jacobians.append(self.task_jacobian(losses, ctx.shared))
        timer.mark("jacobian")
        detached = [losses.transformed.detach() for losses in losses_per_batch]
        if len(jacobians) == 1:
            direction = strategy.aggregate(jacobians[0], detached[0])
        else:
            direction = strategy.aggregate_batches(jacobians, detached)
        timer.mark("aggregate")
        offset = 0
        for p in ctx.shared:
            n = p.numel()
            p.grad = direction[offset : offset + n].view_as(p).to(p.dtype).detach()
            offset += n


class LoopEngine(GradientEngine):
    """One ``autograd.grad`` call per task, each through that task's head only."""

    name = "loop"

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        rows = [
            _zeros_if_none(_grad(handle, params, scale), params)
            for handle, scale in zip(losses.handles, losses.scales, strict=True)
        ]
        per_param = [torch.stack(gs) for gs in zip(*rows, strict=True)]
        if losses.mixing is not None:
            per_param = [_mix_rows(losses, g) for g in per_param]
        return per_param

    def task_jacobian(self, losses: TaskLosses, params: Sequence[torch.Tensor]) -> torch.Tensor:
        # Each task's gradients are copied once, straight into their row of J.
        first = params[0]
        jac = torch.empty(len(losses.handles), sum(p.numel() for p in params),
                          dtype=first.dtype, device=first.device)
        for row, handle, scale in zip(jac, losses.handles, losses.scales, strict=True):
            torch.cat([g.reshape(-1) for g in _zeros_if_none(_grad(handle, params, scale), params)],
                      out=row)
        return losses.mix(jac)


def _mix_rows(losses: TaskLosses, g: torch.Tensor) -> torch.Tensor:
    return losses.mix(g.reshape(len(g), -1)).reshape(g.shape)


def _batched_grads(
    outputs: Sequence[LossHandle | torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    num_tasks: int,
) -> list[torch.Tensor]:
    """Per parameter tensor, the (T, *shape) stack of per-task gradients (one vmapped
    backward; ``grad_outputs`` are batched over tasks)."""
    grads = torch.autograd.grad(
        outputs, params, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True,
        is_grads_batched=True,
    )
    return [
        g if g is not None else torch.zeros(num_tasks, *p.shape, device=p.device, dtype=p.dtype)
        for g, p in zip(grads, params, strict=True)
    ]


class VmapEngine(GradientEngine):
    """Batched (vmapped) backward for all tasks.

    With the towers' inputs recorded (every built-in architecture), each task's loss is
    first differentiated w.r.t. its own feature (T small backwards, one tower each), then
    one batched backward carries the T feature gradients through the shared trunk.
    Otherwise one batched backward from the losses (every head sees all T seeds)."""

    name = "vmap"
    uses_features = True

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        num_tasks = len(losses.raw)
        if losses.features is not None:
            outputs, seeds = _feature_seeds(losses)
        else:
            outputs = losses.handles
            eye = torch.eye(num_tasks, dtype=losses.raw.dtype, device=losses.raw.device)
            seeds = [eye[t] * scale for t, scale in enumerate(losses.scales)]
        per_param = _batched_grads(outputs, seeds, params, num_tasks)
        if losses.mixing is not None:
            per_param = [_mix_rows(losses, g) for g in per_param]
        return per_param


def _feature_seeds(losses: TaskLosses) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Unique task features and their (T, *shape) batched seeds: seed row t is the
    gradient of task t's loss w.r.t. the feature (zero rows for the other tasks)."""
    assert losses.features is not None
    num_tasks = len(losses.features)
    unique: dict[int, int] = {}
    outputs: list[torch.Tensor] = []
    rows: list[list[tuple[int, torch.Tensor]]] = []
    for t, (handle, scale, feature) in enumerate(
        zip(losses.handles, losses.scales, losses.features, strict=True)
    ):
        (g,) = _zeros_if_none(_grad(handle, [feature], scale), [feature])
        k = unique.setdefault(id(feature), len(outputs))
        if k == len(outputs):
            outputs.append(feature)
            rows.append([])
        rows[k].append((t, g))
    seeds = []
    for feature, grads in zip(outputs, rows, strict=True):
        if len(grads) == num_tasks:  # one feature read by every task (hps): no zero rows
            seeds.append(torch.stack([g for _, g in grads]))
            continue
        seed = feature.new_zeros(num_tasks, *feature.shape)
        for t, g in grads:
            seed[t] = g
        seeds.append(seed)
    return outputs, seeds


class GramianEngine(VmapEngine):
    """Batched backward reduced straight to the Gramian; J is never concatenated."""

    name = "gramian"

    def check(self, strategy: type[WeightingStrategy], model: type[nn.Module]) -> None:
        if not issubclass(strategy, GramianWeighting) or strategy.batches_per_step != 1:
            raise ValueError(
                f"engine '{self.name}' needs a strategy whose direction is weights(J J^T) @ J; "
                f"'{getattr(strategy, 'registry_name', strategy.__name__)}' is not one "
                "(use engine 'loop' or 'vmap')"
            )

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        assert isinstance(strategy, GramianWeighting)
        losses = as_task_losses(losses_per_batch)[0]
        per_param = self.task_gradients(losses, ctx.shared)
        num_tasks = len(losses.raw)
        wide = torch.promote_types(per_param[0].dtype, torch.float32) if per_param else None
        flat = [g.reshape(num_tasks, -1).to(wide) for g in per_param]
        gramian = sum(f @ f.T for f in flat)
        timer.mark("jacobian")
        weights = strategy.weights(gramian, losses.transformed.detach())
        strategy.last_weights = weights.detach()
        timer.mark("aggregate")
        for p, g in zip(ctx.shared, per_param, strict=True):
            p.grad = torch.tensordot(weights.detach().to(g.dtype), g, dims=1)


class RepEngine(GradientEngine):
    """Jacobian w.r.t. the shared representation (MGDA-UB, Sener & Koltun 2018)."""

    name = "rep"

    def check(self, strategy: type[WeightingStrategy], model: type[nn.Module]) -> None:
        name = getattr(strategy, "registry_name", strategy.__name__)
        if not strategy.supports_rep:
            raise ValueError(f"engine 'rep' is not defined for strategy '{name}'")
        if not getattr(model, "has_representation", False):
            raise ValueError(
                f"engine 'rep' needs an architecture with one shared representation; "
                f"'{getattr(model, 'registry_name', model.__name__)}' has none"
            )

    def task_gradients(
        self, losses: TaskLosses, params: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        return LoopEngine.task_gradients(self, losses, params)  # type: ignore[arg-type]

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        rep = ctx.model.representation  # type: ignore[attr-defined]
        losses = as_task_losses(losses_per_batch)[0]
        (jac,) = self.task_gradients(losses, [rep])
        jac = jac.reshape(len(losses.raw), -1)
        timer.mark("jacobian")
        direction = strategy.aggregate(jac, losses.transformed.detach())
        timer.mark("aggregate")
        grads = torch.autograd.grad(rep, ctx.shared, grad_outputs=direction.view_as(rep),
                                    retain_graph=True, allow_unused=True)
        for p, g in zip(ctx.shared, _zeros_if_none(grads, ctx.shared), strict=True):
            p.grad = g


# ---------------------------------------------------------------- autogram

#: Layers whose Gramian contribution is computed from their input and output gradient.
_LAYER_TYPES = (nn.Linear, nn.Conv2d)


@dataclass
class _Call:
    """One call of a recorded layer: its input, the gradient edge of its output (taken at
    the call, so a later in-place op on the output changes nothing) and the input's
    version (an in-place change of the input after the call is detected)."""

    input: torch.Tensor
    output: GradientEdge
    version: int


class LayerTap:
    """Records the input and output of every call of the model's shared Linear and Conv2d
    layers during its latest forward pass with autograd on (a forward pre-hook on the
    model clears the previous record).

    A layer is recorded when it is exactly ``nn.Linear`` or ``nn.Conv2d`` (subclasses
    may use their weights outside ``forward``), every parameter of it that requires a
    gradient is shared, no other module holds any of them (tied weights need cross
    terms between modules), and, for Conv2d, ``groups = 1``, zero padding given as
    numbers. The model must use these layers' parameters only by calling the layers
    (as torchjd's autogram engine requires). ``covered`` are the ids of the recorded
    layers' parameters; every other shared parameter is differentiated explicitly."""

    def __init__(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> None:
        shared_ids = {id(p) for p in shared}
        holders: dict[int, int] = {}
        for module in model.modules():
            for p in module.parameters(recurse=False):
                holders[id(p)] = holders.get(id(p), 0) + 1
        self.calls: dict[nn.Module, list[_Call]] = {}
        for module in model.modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if (
                type(module) in _LAYER_TYPES
                and params
                and all(id(p) in shared_ids and holders[id(p)] == 1 for p in params)
                and _unfoldable(module)
            ):
                self.calls[module] = []
                module.register_forward_hook(self._recorder(module))
        model.register_forward_pre_hook(self._clear)

    def _clear(self, module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():
            self.clear()

    def clear(self) -> None:
        """Drop the record (it holds the layers' inputs)."""
        for calls in self.calls.values():
            calls.clear()

    def _recorder(self, layer: nn.Module) -> Callable[..., None]:
        calls = self.calls[layer]

        def record(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad and args:
                calls.append(_Call(args[0], get_gradient_edge(output), args[0]._version))
        return record

    def recorded(self) -> list[tuple[nn.Module, _Call]]:
        """(layer, call) of every call of the latest forward, layer by layer."""
        return [(layer, call) for layer, calls in self.calls.items() for call in calls]


def _unfoldable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return (module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))
    return True


_LAYER_TAPS: weakref.WeakKeyDictionary[nn.Module, LayerTap] = weakref.WeakKeyDictionary()


def _rows(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer call as a linear map per row: ``X`` (N, in) and per-task ``dY`` (T, N, out)
    such that task t's weight gradient is ``dY_t^T X`` (flattened like the weight) and its
    bias gradient ``sum_n dY_t[n]``. A convolution's rows are its input patches."""
    num_tasks = dy.shape[0]
    if isinstance(layer, nn.Conv2d):
        if x.dim() == 3:  # unbatched (C, H, W)
            x, dy = x.unsqueeze(0), dy.unsqueeze(1)
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation,
                           padding=layer.padding, stride=layer.stride)  # (N, C k k, L)
        x = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        dy = dy.flatten(3).transpose(2, 3).reshape(num_tasks, -1, dy.shape[2])
        return x, dy
    return x.reshape(-1, x.shape[-1]), dy.reshape(num_tasks, -1, dy.shape[-1])


def _layer_gramian(x: torch.Tensor, dy: torch.Tensor, weight: bool, bias: bool) -> torch.Tensor:
    """(T, T) Gramian of the per-task gradients of a linear map's weight ``dY_t^T X`` (if
    ``weight``) and bias ``sum_n dY_t[n]`` (if ``bias``), for ``x`` (N, in), ``dy``
    (T, N, out), taken the cheaper of two ways: form the (T, out, in) per-task weight
    gradients and their Gramian, or through the (N, N) kernel ``K = X X^T`` (+1 for the
    bias): ``G[s, t] = <dY_s, K dY_t>`` (Quinton & Rey 2024, Algorithm 3, per layer)."""
    num_tasks, n, out = dy.shape
    width = x.shape[1]
    direct = num_tasks * n * out * width + num_tasks * num_tasks * out * width
    kernel = n * n * width + num_tasks * n * n * out + num_tasks * num_tasks * n * out
    if not (weight or bias):
        return dy.new_zeros(num_tasks, num_tasks)
    if weight and kernel < direct and n * n <= num_tasks * out * width:
        k = x @ x.T
        if bias:
            k = k + 1
        z = torch.matmul(k, dy)  # (T, N, out)
        g = dy.reshape(num_tasks, -1) @ z.reshape(num_tasks, -1).T
        return (g + g.T) / 2
    if weight:
        if bias:  # a column of ones in X makes the bias gradient a row of the product
            x = torch.cat([x, x.new_ones(n, 1)], 1)
            width += 1
        # (T, in, out): the transposed weight gradients (a batched GEMM of one strided X^T).
        per_task = torch.bmm(x.T.expand(num_tasks, width, n), dy).reshape(num_tasks, -1)
        return per_task @ per_task.T
    s = dy.sum(1)
    return s @ s.T


class AutogramEngine(GramianEngine):
    """The Gramian J J^T without J, then the update ``sum_t w_t grad L_t``: Algorithm 3 of
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
    (https://arxiv.org/abs/2406.16232).

    During the forward, :class:`LayerTap` records the inputs and outputs of the shared
    Linear / Conv2d layers. One batched (vmapped over tasks) backward gives each task's
    gradient w.r.t. every recorded output (from the towers' inputs when recorded, as the
    ``vmap`` engine does; no parameter gradient is computed), and each layer adds the
    Gramian of its per-task parameter gradients, ``dY_t^T X`` and ``sum_n dY_t[n]``, one
    layer at a time (:func:`_layer_gramian`): no (T, P) matrix and no per-task copy of
    all the parameters is ever held. Shared parameters outside such layers (cross-stitch
    units, ...) get explicit per-task gradients in the same backward. The strategy's
    weights ``w`` of that Gramian give the shared parameters' gradient ``sum_t w_t grad
    L_t``: with ``update="backward"`` by one backward of ``sum_t w_t L_t`` as in the
    paper; by default (``"layers"``) from the same factors, which is what that backward
    computes for each recorded layer (``(sum_t w_t dY_t)^T X``) without traversing the
    graph again (:meth:`_Factors.combine`). The published implementation is torchjd's
    ``torchjd.autogram.Engine``."""

    name = "autogram"

    def __init__(self, update: Literal["layers", "backward"] = "layers") -> None:
        self.update = update

    def prepare(self, model: nn.Module, shared: Sequence[torch.Tensor]) -> None:
        if model not in _LAYER_TAPS:
            _LAYER_TAPS[model] = LayerTap(model, shared)

    def gramian(
        self, losses: TaskLosses, model: nn.Module, shared: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, _Factors]:
        """The (T, T) Gramian of the transformed losses' Jacobian w.r.t. ``shared``, and
        the per-layer factors it was made of (for the update)."""
        tap = _LAYER_TAPS.get(model)
        if tap is None:
            raise RuntimeError(
                "engine 'autogram' records the shared layers during the forward: call "
                "engine.prepare(model, shared) before it (train_step does)"
            )
        num_tasks = len(losses.raw)
        if losses.features is not None:
            outputs, seeds = _feature_seeds(losses)
        else:
            outputs = list(losses.handles)
            eye = torch.eye(num_tasks, dtype=losses.raw.dtype, device=losses.raw.device)
            seeds = [eye[t] * scale for t, scale in enumerate(losses.scales)]
        calls = tap.recorded()
        covered = {id(p) for layer, _ in calls for p in layer.parameters(recurse=False)}
        others = [p for p in shared if id(p) not in covered]
        grads = torch.autograd.grad(
            outputs, [call.output for _, call in calls] + others, grad_outputs=seeds,
            retain_graph=True, allow_unused=True, is_grads_batched=True,
        )
        tap.clear()
        if calls and all(g is None for g in grads[: len(calls)]):
            raise RuntimeError(
                "engine 'autogram': the recorded layers are not in these losses' graph "
                "(the losses come from an earlier forward than the latest one)"
            )
        factors = _Factors(outputs, seeds, [], [])
        shared_ids = {id(p) for p in shared}
        by_layer: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for (layer, call), dy in zip(calls, grads, strict=False):
            if call.input._version != call.version:
                raise RuntimeError(f"engine 'autogram': the input of {layer} was modified "
                                   "in place after the layer used it")
            if dy is not None:
                by_layer.setdefault(layer, []).append(_rows(layer, call.input, dy))
        wide = torch.promote_types(losses.raw.dtype, torch.float32)
        gramian = torch.zeros(num_tasks, num_tasks, dtype=wide, device=losses.raw.device)
        for layer, rows in by_layer.items():
            x = torch.cat([r[0] for r in rows]) if len(rows) > 1 else rows[0][0]
            dy = torch.cat([r[1] for r in rows], 1) if len(rows) > 1 else rows[0][1]
            weight = layer.weight if id(layer.weight) in shared_ids else None
            bias = getattr(layer, "bias", None)
            bias = bias if bias is not None and id(bias) in shared_ids else None
            factors.layers.append((weight, bias, x, dy))
            gramian += _layer_gramian(x.to(wide), dy.to(wide), weight=weight is not None,
                                      bias=bias is not None)
        for p, g in zip(others, grads[len(calls):], strict=True):
            if g is not None:
                factors.explicit.append((p, g))
                flat = g.reshape(num_tasks, -1).to(wide)
                gramian += flat @ flat.T
        if losses.mixing is not None:
            mixing = losses.mixing.to(wide)
            gramian = mixing @ gramian @ mixing.T
        return gramian, factors

    def shared_gradients(
        self,
        losses_per_batch: Sequence[TaskLosses | torch.Tensor],
        strategy: GradientWeighting,
        ctx: StepContext,
        timer: Timer,
    ) -> None:
        assert isinstance(strategy, GramianWeighting)
        losses = as_task_losses(losses_per_batch)[0]
        gramian, factors = self.gramian(losses, ctx.model, ctx.shared)
        timer.mark("jacobian")
        weights = strategy.weights(gramian, losses.transformed.detach())
        strategy.last_weights = weights.detach()
        timer.mark("aggregate")
        # Row weights of the raw losses' Jacobian: J_transformed = M J_raw.
        v = weights.detach().to(gramian.dtype)
        if losses.mixing is not None:
            v = losses.mixing.to(v.dtype).T @ v
        if self.update == "backward":
            grads = factors.backward(v, ctx.shared)
        else:
            grads = factors.combine(v, ctx.shared)
        for p, g in zip(ctx.shared, grads, strict=True):
            p.grad = g


@dataclass
class _Factors:
    """What the autogram Gramian was made of: the outputs and (T, ...) seeds of its
    batched backward, per recorded layer (shared weight or None, shared bias or None,
    ``X`` (N, in), ``dY`` (T, N, out)), and the explicit (T, *shape) per-task gradients
    of the other shared parameters."""

    outputs: list[LossHandle | torch.Tensor]
    seeds: list[torch.Tensor]
    layers: list[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]]
    explicit: list[tuple[torch.Tensor, torch.Tensor]]

    def backward(self, v: torch.Tensor, shared: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``sum_t v_t grad L_t`` by one backward of ``sum_t v_t L_t`` (Algorithm 3)."""
        combined = [torch.tensordot(v.to(s.dtype), s, dims=1) for s in self.seeds]
        grads = torch.autograd.grad(self.outputs, shared, grad_outputs=combined,
                                    retain_graph=True, allow_unused=True)
        return _zeros_if_none(grads, shared)

    def combine(self, v: torch.Tensor, shared: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``sum_t v_t grad L_t`` from the factors, without a backward: by linearity, the
        backward of ``sum_t v_t L_t`` reaches a recorded layer's output with ``sum_t v_t
        dY_t``, so its weight gradient is ``(sum_t v_t dY_t)^T X`` and its bias gradient
        the column sums: one GEMM per layer, no input gradient to propagate."""
        out: dict[int, torch.Tensor] = {}
        for weight, bias, x, dy in self.layers:
            d = torch.tensordot(v.to(dy.dtype), dy, dims=1)  # (N, out)
            if weight is not None:
                out[id(weight)] = (d.T @ x).view_as(weight).to(weight.dtype)
            if bias is not None:
                out[id(bias)] = d.sum(0).to(bias.dtype)
        for p, g in self.explicit:
            out[id(p)] = torch.tensordot(v.to(g.dtype), g, dims=1)
        return [out[id(p)] if id(p) in out else torch.zeros_like(p) for p in shared]


ENGINES: dict[str, type[GradientEngine]] = {
    e.name: e for e in (LoopEngine, VmapEngine, GramianEngine, AutogramEngine, RepEngine)
}


def head_gradients(ctx: StepContext) -> Literal["own", "weighted"]:
    """How the task-specific parameters are trained under ``ctx`` (see StepContext)."""
    if ctx.heads == "method":
        return getattr(ctx.strategy, "head_gradients", "own")
    return ctx.heads


def apply_gradients(
    losses_per_batch: Sequence[torch.Tensor],
    ctx: StepContext,
    timer: Timer | None = None,
    features: Sequence[list[torch.Tensor] | None] | None = None,
) -> None:
    """Set ``.grad`` of every trainable parameter (model and strategy) for one step.

    ``losses_per_batch`` holds the (T,) task losses of each of the step's
    minibatches (one, unless the strategy declares ``batches_per_step``); ``features``
    optionally each batch's recorded tower inputs (see :class:`TaskFeatures`)."""
    timer = timer or NullTimer()
    strategy = ctx.strategy
    transformed = [strategy.transform_losses(losses) for losses in losses_per_batch]
    if not isinstance(strategy, GradientWeighting):
        strategy.combine(transformed[0]).backward()  # type: ignore[attr-defined]
        _add_regularization(ctx.model)
        timer.mark("backward")
        return
    features = features or [None] * len(losses_per_batch)
    if ctx.shared:
        task_losses = [
            TaskLosses(raw, out, feats, elementwise=not strategy.transform_mixes_tasks)
            for raw, out, feats in zip(losses_per_batch, transformed, features, strict=True)
        ]
        ctx.engine.shared_gradients(task_losses, strategy, ctx, timer)
    own = [p for p in (*ctx.task_specific, *strategy.parameters()) if p.requires_grad]
    if own:
        # Task parameters only feed their own task's loss, so the gradient of the sum
        # gives each its own task's gradient; strategy parameters get theirs likewise.
        per_task = torch.stack(transformed).mean(0)
        # Without shared parameters no strategy weights exist: the method's default
        # falls back to each task's own gradient (an explicit "weighted" still raises).
        weighted = head_gradients(ctx) == "weighted" and (ctx.shared or ctx.heads == "weighted")
        if weighted and ctx.task_specific:
            heads = [p for p in ctx.task_specific if p.requires_grad]
            _set_grads(heads, (per_task * _task_weights(strategy)).sum(), retain=True)
            own = [p for p in strategy.parameters() if p.requires_grad]
        if own:
            _set_grads(own, per_task.sum())
    _add_regularization(ctx.model)
    timer.mark("backward")


def _set_grads(params: Sequence[torch.Tensor], loss: torch.Tensor, retain: bool = False) -> None:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    for p, g in zip(params, _zeros_if_none(grads, params), strict=True):
        p.grad = g


def _task_weights(strategy: WeightingStrategy) -> torch.Tensor:
    weights = strategy.last_weights
    if weights is None:
        name = getattr(strategy, "registry_name", type(strategy).__name__)
        raise ValueError(f"heads = 'weighted' needs task weights, and strategy '{name}' "
                         "has none (use heads = 'own')")
    return weights.detach()


def _add_regularization(model: nn.Module) -> None:
    """Add the architecture's own penalty (e.g. soft sharing's L2 between columns) to the
    gradients the strategy produced; the strategy never weights or projects it."""
    reg = getattr(model, "regularization", None)
    penalty = reg() if reg is not None else None
    if penalty is not None and penalty.requires_grad:
        penalty.backward()  # accumulates into .grad


_TAPS: weakref.WeakKeyDictionary[nn.Module, TaskFeatures] = weakref.WeakKeyDictionary()


def _task_features(ctx: StepContext) -> TaskFeatures | None:
    """The model's tower-input recorder, installed on first use by an engine that uses it."""
    if not (isinstance(ctx.strategy, GradientWeighting) and ctx.engine.uses_features):
        return None
    tap = _TAPS.get(ctx.model)
    if tap is None:
        tap = _TAPS[ctx.model] = TaskFeatures(ctx.model, ctx.shared)
    return tap


def train_step(
    ctx: StepContext,
    batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    compute_losses: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor],
    timer: Timer | None = None,
) -> torch.Tensor:
    """One optimisation step on ``batches`` (one per ``strategy.batches_per_step``).

    Returns the (T,) detached losses of the first batch. Phases reported to
    ``timer``: forward, jacobian, aggregate, backward, optimizer (and post_step)."""
    timer = timer or NullTimer()
    tap = _task_features(ctx)
    if isinstance(ctx.strategy, GradientWeighting) and ctx.shared:
        ctx.engine.prepare(ctx.model, ctx.shared)
    losses_per_batch, features = [], []
    for x, y in batches:
        out = ctx.model(x)
        losses_per_batch.append(compute_losses(out, y))
        features.append(tap.of(out) if tap is not None else None)
    timer.mark("forward")
    ctx.optimizer.zero_grad(set_to_none=True)
    apply_gradients(losses_per_batch, ctx, timer, features)
    ctx.optimizer.step()
    timer.mark("optimizer")
    if ctx.strategy.wants_post_step_losses:
        with torch.no_grad():
            x, y = batches[0]
            ctx.strategy.post_step(compute_losses(ctx.model(x), y))
        timer.mark("post_step")
    return losses_per_batch[0].detach()
