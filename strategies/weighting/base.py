"""Contracts for weighting strategies.

A strategy declares what it needs and the training step (``bench.engine``)
provides exactly that; nothing in the training loop names a method.

- :class:`LossWeighting` maps the (T,) vector of task losses to one scalar.
- :class:`GradientWeighting` maps the (T, P) Jacobian of the task losses with
  respect to the shared parameters (or, with the ``rep`` engine, the shared
  representation) to a (P,) update direction. ``aggregate`` is a function of
  ``J``, the detached losses and the strategy's own state: it never calls autograd.
- :class:`GramianWeighting` is a gradient strategy whose direction is ``w @ J``
  with weights ``w`` computed from the (T, T) Gramian ``J J^T`` alone; the
  ``gramian`` engine uses that to avoid materialising J as one matrix.

Optional needs, declared as class attributes:

- ``batches_per_step``: k > 1 means each step draws k independent minibatches
  and calls ``aggregate_batches`` with one Jacobian per batch (SDMGrad, MoDo).
- ``supports_rep``: the method is defined on representation-level Jacobians.
- ``wants_post_step_losses``: after the optimizer step the task losses on the
  same batch are recomputed (no graph) and passed to ``post_step`` (FAMO).
- ``transform_losses``: a differentiable map applied to the losses before the
  Jacobian is taken (e.g. IMTL's learnable loss scales, DB-MTL's log-losses);
  the strategy's own ``parameters()`` get the gradient of their sum.

Properties, declared as class attributes (``False`` unless a method sets them; each one
set holds with the default hyperparameters, over a whole run from ``reset``, and is checked
on every registered strategy by tests/unit/weighting/test_properties.py). ``d`` is the
update direction as a function of the (T, P) Jacobian ``J`` (for a
:class:`LossWeighting`, ``(d combine / d losses) @ J`` at fixed losses):

- ``non_conflicting``: ``J d >= 0``, no task's loss increases to first order (MGDA,
  UPGrad, DualProj, FairGrad).
- ``permutation_invariant``: permuting the tasks (rows of J, losses) keeps ``d`` and
  permutes the weights (where they are unique); false for methods that draw a random task
  order (PCGrad, GradVac) or per-task random weights (RLW).
- ``linear_under_scaling`` (torchjd's): for c1, c2 > 0 and a, b > 0,
  ``d(diag(a c1 + b c2) J) = a d(diag(c1) J) + b d(diag(c2) J)``; true of every loss
  weighting (its weights do not depend on J), PCGrad, ConFIG and ExcessMTL.
- ``scale_equivariant``: ``d(c J) = c d(J)`` for c > 0 (implied by the previous one).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch

__all__ = [
    "GradientWeighting",
    "GramianWeighting",
    "LossWeighting",
    "Need",
    "WeightingStrategy",
    "check_finite",
    "check_finite_on_cpu",
]

Need = Literal["losses", "jacobian"]


def check_finite(jacobian: torch.Tensor) -> None:
    """Raise a clear error for NaN/Inf in J (one host sync; call outside the hot path
    or where the method needs the host anyway)."""
    if not bool(torch.isfinite(jacobian).all()):
        raise FloatingPointError("the task Jacobian contains NaN or Inf")


def check_finite_on_cpu(gramian: torch.Tensor) -> None:
    """``check_finite`` on the (T, T) Gramian where it costs no device sync (on the CPU).

    A NaN or Inf anywhere in J reaches the Gramian (row i's makes G_ii non-finite), so
    this catches a non-finite J with the same message at O(T^2) instead of O(T P)."""
    if gramian.device.type == "cpu":
        check_finite(gramian)


def _detached(method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``method`` run without autograd, its result detached (see :class:`GradientWeighting`)."""

    @functools.wraps(method)
    def wrapper(self: GradientWeighting, *args: object, **kwargs: object) -> torch.Tensor:
        with torch.no_grad():
            return method(self, *args, **kwargs).detach()

    wrapper.__detached__ = True  # type: ignore[attr-defined]
    return wrapper


class WeightingStrategy(ABC):
    """Base of all weighting strategies.

    Lifecycle: ``reset(num_tasks, device, seed)`` once before training, then per
    step ``combine`` or ``aggregate``, and ``end_epoch(mean_losses)`` after each
    epoch. ``last_weights`` holds the (T,) task weights of the latest step when
    the method has such weights (``None`` otherwise); it stays on the device.
    """

    needs: ClassVar[Need]
    batches_per_step: ClassVar[int] = 1
    supports_rep: ClassVar[bool] = False
    wants_post_step_losses: ClassVar[bool] = False
    #: ``transform_losses`` is element-wise unless a strategy says otherwise (the engines
    #: then fold it into each task's backward seed at no cost).
    transform_mixes_tasks: ClassVar[bool] = False
    #: Gradient-based methods: what the task-specific parameters (heads) are trained
    #: with by default: ``"own"``, each task's own loss (torchjd's ``mtl_backward``,
    #: the PCGrad / MGDA / CAGrad codes), or ``"weighted"``, ``w_t L_t`` with the
    #: method's task weights (the official code backpropagates ``sum_t w_t L_t``).
    #: A sweep overrides it with ``train.heads``.
    head_gradients: ClassVar[Literal["own", "weighted"]] = "own"
    #: Properties of the direction (see the module docstring); conservative defaults.
    non_conflicting: ClassVar[bool] = False
    permutation_invariant: ClassVar[bool] = False
    linear_under_scaling: ClassVar[bool] = False
    scale_equivariant: ClassVar[bool] = False

    def __init__(self) -> None:
        self.num_tasks = 0
        self.last_weights: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        """Clear all state; called before training starts."""
        self.num_tasks = num_tasks
        self.last_weights = None

    def parameters(self) -> list[torch.Tensor]:
        """Learnable parameters of the strategy itself (trained with the model's optimizer)."""
        return []

    def transform_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Differentiable map applied to the (T,) losses before they are combined or
        differentiated; identity by default."""
        return losses

    def post_step(self, losses: torch.Tensor) -> None:  # noqa: B027 (optional hook)
        """With ``wants_post_step_losses``: the (T,) losses on the same batch after the update."""

    def end_epoch(self, mean_losses: torch.Tensor) -> None:  # noqa: B027 (optional hook)
        """Called after each epoch with the (T,) mean training loss of each task."""

    def stats(self) -> dict[str, float]:
        """Per-trial diagnostics of the strategy itself (e.g. how often a solver reached its
        target), stored in the trial record under ``strategy_stats``; empty by default.
        Called once, after training."""
        return {}


class LossWeighting(WeightingStrategy):
    """A strategy that combines task losses into one scalar to backpropagate."""

    needs: ClassVar[Need] = "losses"
    # The weights depend on the losses only: at fixed losses, w @ J is linear in J.
    linear_under_scaling: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True

    @abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """Map the (T,) task losses (with graph) to a scalar loss."""


class GradientWeighting(WeightingStrategy):
    """A strategy that aggregates per-task gradients of the shared parameters.

    ``aggregate`` and ``aggregate_batches`` return a detached direction (torchjd's
    contract: the direction is an update, not a differentiable function of J; a graph
    kept through the final weighted sum would give whoever differentiates it a silently
    partial gradient). Every subclass's own definitions of the two are wrapped to run
    under ``torch.no_grad()`` and detach their result, so no strategy has to.
    """

    needs: ClassVar[Need] = "jacobian"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("aggregate", "aggregate_batches"):
            method = cls.__dict__.get(name)
            if (
                callable(method)
                and not getattr(method, "__isabstractmethod__", False)
                and not getattr(method, "__detached__", False)
            ):
                setattr(cls, name, _detached(method))

    @abstractmethod
    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        """Map the (T, P) Jacobian (row t: gradient of task t's loss) to a (P,) direction.

        ``losses`` are the (T,) detached task losses of the same step, for methods
        that use them."""

    def aggregate_batches(
        self, jacobians: Sequence[torch.Tensor], losses: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """With ``batches_per_step = k``: one (T, P) Jacobian per independent batch."""
        return self.aggregate(jacobians[0], losses[0])


class GramianWeighting(GradientWeighting):
    """A gradient strategy whose direction is ``weights(J J^T) @ J``."""

    @abstractmethod
    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        """(T,) weights from the (T, T) Gramian of the task gradients."""

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        # J J^T in at least float32: bfloat16 / float16 Gramians lose most of their digits;
        # the direction itself is accumulated in J's dtype.
        rows = jacobian.to(torch.promote_types(jacobian.dtype, torch.float32))
        w = self.weights(rows @ rows.T, losses)
        self.last_weights = w.detach()
        return w.to(jacobian.dtype) @ jacobian
