"""The task losses as the engines differentiate them.

:func:`loss_handles` gives one differentiable handle per task loss (the stack's input
edges, so a task's backward never runs through the other tasks' heads),
:class:`TaskLosses` bundles the raw and transformed losses of one minibatch with the
seeds of their backwards, and :class:`TaskFeatures` records each task's tower input
during the forward (the split point of the batched engines)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import GradientEdge

__all__ = ["LossHandle", "TaskFeatures", "TaskLosses", "as_task_losses", "loss_handles"]

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
    #: Each task's own (task-specific) parameters, in task order, when the step wants an
    #: engine to set their gradients (of the task's own transformed loss) in the task's
    #: own backward instead of one more backward afterwards (see :meth:`own_of`).
    own: list[list[torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        self.handles = loss_handles(self.raw)
        self.scales, self.mixing = self._transform_jacobian()
        #: Set by an engine that gave every ``own`` parameter its gradient.
        self.own_filled = False

    @property
    def folds_own(self) -> bool:
        """Whether an engine should fill ``own`` in the task backwards: not when the
        transform mixes tasks (a head's gradient then depends on every task's seed)."""
        return self.own is not None and self.mixing is None

    def own_of(self, task: int) -> list[torch.Tensor]:
        """Task ``task``'s own parameters to differentiate in its backward (see
        :attr:`folds_own`)."""
        return self.own[task] if self.folds_own and self.own is not None else []

    def set_own_grads(self, task: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Give task ``task``'s own parameters their gradients (zeros where unused)."""
        for p, g in zip(self.own_of(task), grads, strict=True):
            p.grad = g if g is not None else torch.zeros_like(p)

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
