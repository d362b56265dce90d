"""Helpers shared by the sharing architectures: towers, gates, expert-utilisation meters,
and the equal-capacity tools :func:`match_params` and :func:`reference_parameter_counts`.

Equal capacity
--------------
Architectures built from the same :class:`BackboneSpec` differ a lot in size (MMoE
with 8 experts holds 8 backbones, STL one per task). To compare them at equal
capacity, :func:`match_params` rescales a spec's widths until the architecture's
parameter count is as close as possible to a target, typically the count of ``hps``
at the sweep's nominal size::

    target = count_parameters("hps", shape, tasks, spec)
    spec_mmoe = match_params("mmoe", shape, tasks, spec, target, num_experts=8)

Every width (``hidden``, ``tower``, ``channels``) is multiplied by one factor ``s``
and rounded (at least 1), so the network keeps its proportions; ``s`` is found by
bisection (the count never decreases when ``s`` grows). The two specs around the
target are then refined by changing single widths by +-1 while that brings the count
closer. Depth, dropout, the backbone kind and the architecture's hyperparameters
(number of experts, levels, ...) are kept. Models are built on the ``meta`` device,
so counting allocates no weights and takes milliseconds even for large widths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing.backbones import mlp
from strategies.sharing.base import BackboneSpec, SharingArchitecture
from strategies.sharing.registry import SHARING

__all__ = [
    "REFERENCE_CNN",
    "REFERENCE_MLP",
    "UtilisationMeter",
    "count_parameters",
    "match_params",
    "mix",
    "reference_parameter_counts",
    "tower",
    "unique_parameters",
]


def tower(in_features: int, spec: BackboneSpec, task: Task) -> nn.Sequential:
    """A task's tower: the ``tower`` widths of ``spec``, then the task's output layer."""
    return mlp(in_features, spec.tower, task.output_dim, spec.dropout)


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``sum_e weights[:, e] * experts[:, e]`` for ``weights`` (B, E), ``experts`` (B, E, ...)."""
    w = weights.reshape(*weights.shape, *([1] * (experts.dim() - 2)))
    return (w * experts).sum(1)


def unique_parameters(modules: Iterable[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    """Parameters of ``modules`` (or the parameters themselves), each once, in order."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in modules:
        params = [m] if isinstance(m, nn.Parameter) else list(m.parameters())
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class UtilisationMeter:
    """Mean gate weight per expert, per gate, over the samples of evaluation forwards.

    ``update`` is called by gated architectures with the (B, E) softmax/selector
    weights of one gate; sums stay on the device (no host sync until ``means``).
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def update(self, key: str, weights: torch.Tensor) -> None:
        w = weights.detach().reshape(-1, weights.shape[-1]).float()
        total = w.sum(0)
        if key in self._sums:
            self._sums[key] = self._sums[key] + total
            self._counts[key] += w.shape[0]
        else:
            self._sums[key] = total
            self._counts[key] = w.shape[0]

    def means(self) -> dict[str, list[float]]:
        return {
            key: (s / max(self._counts[key], 1)).cpu().tolist() for key, s in self._sums.items()
        }


class GatedArchitecture(SharingArchitecture):
    """Base of the gated expert architectures (MMoE, OMoE, PLE/CGC, DSelect-k): a
    :class:`UtilisationMeter` filled by evaluation forwards, reported by ``stats()`` as
    ``{"expert_utilisation": {gate: [mean weight of each expert]}}``."""

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        self.meter = UtilisationMeter()

    def reset_stats(self) -> None:
        self.meter.reset()

    def stats(self) -> dict[str, Any]:
        return {"expert_utilisation": self.meter.means()}


# ---------------------------------------------------------------------------------------
# Equal capacity


def count_parameters(
    name: str,
    input_shape: Sequence[int],
    tasks: Sequence[Task],
    backbone: BackboneSpec,
    **hyperparameters: Any,
) -> int:
    """Parameter count of architecture ``name`` (built on the ``meta`` device: no memory)."""
    with torch.device("meta"):
        model = SHARING.create(name, input_shape, tasks, backbone, **hyperparameters)
    return model.parameter_count()


def _scaled(spec: BackboneSpec, s: float) -> BackboneSpec:
    def scale(widths: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(1, round(w * s)) for w in widths)

    return dataclasses.replace(
        spec, hidden=scale(spec.hidden), tower=scale(spec.tower), channels=scale(spec.channels)
    )


def _width_fields(spec: BackboneSpec) -> list[str]:
    fields = ["hidden", "tower"]
    if spec.kind == "cnn":
        fields.append("channels")
    return fields


def match_params(
    name: str,
    input_shape: Sequence[int],
    tasks: Sequence[Task],
    backbone: BackboneSpec,
    target: int,
    **hyperparameters: Any,
) -> BackboneSpec:
    """The rescaled ``backbone`` whose ``name`` network has the parameter count closest to
    ``target`` (see the module docstring for the method).

    Only the widths change; a spec without widths is returned unchanged. A target below
    the smallest network (all widths 1) gives that smallest network.
    """
    if target < 1:
        raise ValueError(f"match_params: target must be positive, got {target}")
    fields = _width_fields(backbone)
    if not any(getattr(backbone, f) for f in fields):
        return backbone

    memo: dict[BackboneSpec, int] = {}

    def count(spec: BackboneSpec) -> int:
        if spec not in memo:
            memo[spec] = count_parameters(name, input_shape, tasks, spec, **hyperparameters)
        return memo[spec]

    widest = max(max(getattr(backbone, f), default=1) for f in fields)
    lo, hi = 0.0, 1.0
    while count(_scaled(backbone, hi)) < target:
        lo, hi = hi, hi * 2
        if hi * widest > 1 << 22:
            raise ValueError(f"match_params: cannot reach {target} parameters for '{name}'")
    # Bisection on the scale: count(lo) < target <= count(hi) (lo = 0: all widths 1).
    for _ in range(40):
        mid = (lo + hi) / 2
        if count(_scaled(backbone, mid)) < target:
            lo = mid
        else:
            hi = mid
        if _scaled(backbone, lo) == _scaled(backbone, hi):
            break
    candidates = {_scaled(backbone, lo), _scaled(backbone, hi)}
    best = min(candidates, key=lambda s: (abs(count(s) - target), s.hidden))
    best_err = abs(count(best) - target)
    # Refine: single widths +-1 while that gets closer (bounded; every step improves).
    for _ in range(64):
        improved = False
        for field in fields:
            widths = getattr(best, field)
            for i in range(len(widths)):
                for delta in (-1, 1):
                    w = widths[i] + delta
                    if w < 1:
                        continue
                    trial = dataclasses.replace(
                        best, **{field: (*widths[:i], w, *widths[i + 1 :])}
                    )
                    err = abs(count(trial) - target)
                    if err < best_err:
                        best, best_err, improved = trial, err, True
                        break
                if improved:
                    break
            if improved:
                break
        if not improved:
            break
    return best


# The configurations of `reference_parameter_counts` (what `mtlbench list sharing` shows).
REFERENCE_MLP: Mapping[str, Any] = {
    "input_shape": (100,),
    "tasks": (Task("t1", "regression"), Task("t2", "regression")),
    "backbone": BackboneSpec(hidden=(64, 64)),
}
REFERENCE_CNN: Mapping[str, Any] = {
    "input_shape": (1, 8, 12),
    "tasks": (Task("t1", "regression"), Task("t2", "regression")),
    "backbone": BackboneSpec(hidden=(64, 64), kind="cnn", channels=(16, 32)),
}


def reference_parameter_counts() -> dict[str, int]:
    """{architecture: parameter count} at its default hyperparameters, for 2 regression
    tasks: input (100,) with the MLP backbone hidden (64, 64) (:data:`REFERENCE_MLP`), or,
    for architectures that refuse the MLP backbone (``mtan``), input (1, 8, 12) with the
    CNN backbone channels (16, 32) and hidden (64, 64) (:data:`REFERENCE_CNN`);
    architectures defined on neither (``landscape``) are left out."""
    counts: dict[str, int] = {}
    for name in SHARING.names():
        for reference in (REFERENCE_MLP, REFERENCE_CNN):
            try:
                counts[name] = count_parameters(name, **reference)
                break
            except ValueError:  # not defined for this reference (e.g. mtan, landscape)
                continue
    return counts
