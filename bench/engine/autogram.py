"""The ``autogram`` engine: J J^T without J (Algorithm 3 of Quinton & Rey, "Jacobian
Descent for Multi-Objective Optimization", 2024), from per-layer hooks on the shared
Linear / Conv2d layers (:class:`LayerTap`) and per-layer Gramians."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from bench.engine.base import _zeros_if_none
from bench.engine.losses import LossHandle, TaskLosses, as_task_losses
from bench.engine.vmap import GramianEngine, _feature_seeds, _gramian_weights
from strategies.weighting.base import GradientWeighting, GramianWeighting

if TYPE_CHECKING:
    from bench.engine.step import StepContext, Timer

__all__ = ["AutogramEngine", "LayerTap", "recorded_fraction"]

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


def recorded_fraction(model: nn.Module, shared: Sequence[torch.Tensor]) -> float:
    """Fraction of the elements of ``shared`` held by the layers the model's
    :class:`LayerTap` records (0 before :meth:`AutogramEngine.prepare` installed one);
    the rest get explicit per-task gradients in the autogram engine."""
    tap = _LAYER_TAPS.get(model)
    recorded = {id(p) for layer in (tap.calls if tap is not None else ())
                for p in layer.parameters(recurse=False)}
    total = sum(p.numel() for p in shared)
    return sum(p.numel() for p in shared if id(p) in recorded) / total if total else 0.0


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
        weights = _gramian_weights(strategy, gramian, losses, timer)
        # Row weights of the raw losses' Jacobian: J_transformed = M J_raw.
        v = weights.to(gramian.dtype)
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
