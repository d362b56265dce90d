"""FAMO: fast adaptive multitask optimization, balanced log-loss decrease in O(1) per step.

Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023,
https://arxiv.org/abs/2306.03792 (Algorithm 1). Implemented after the official code,
https://github.com/Cranial-XIX/FAMO (``famo.py``; the same rule as its
``methods/weight_methods.py`` and LibMTL's ``FAMO``).

Task logits xi (zeros at the start) give weights z = softmax(xi). With the minimum losses
``m`` (``min_losses``; 0 by default, as in the official code) and
``D_t = L_t - m_t + 1e-8``, each step minimises

    L = sum_t z_t log D_t / c,    c = sum_t z_t / D_t  (a constant: no gradient),

so task t's gradient is weighted by ``z_t / (c D_t)``; these effective weights sum to 1
and are what ``last_weights`` holds (``z`` holds z itself). After the model's update the
losses ``L'`` on the same batch are recomputed by the harness (``post_step``) and xi
takes one Adam step, with weight decay gamma, on

    delta_xi = J_z(xi)^T [log D(L) - log D(L')] = z * (delta - sum_s z_s delta_s),

the vector-Jacobian product of the softmax with the decrease ``delta`` of the log-losses
(the official code gets the same vector from ``autograd.grad``; it is computed in closed
form here). A task whose log-loss decreased less than the z-weighted average gets a
negative component, so its logit, and its weight, grows.

Hyperparameters and defaults are the official code's (``famo.py`` and the experiments'
argument parser): ``w_lr = 0.025`` (Adam learning rate of xi) and ``gamma = 0.01`` (Adam
weight decay of xi). LibMTL uses gamma = 1e-3, as does the official QM9 script; CelebA
uses 0.01. The Adam optimiser is ``torch.optim.Adam`` with its defaults, as in the code.

``min_losses`` must lie below every loss the task can reach: the official toy script sets
it to ``(-21 * scale, -21)`` for the CAGrad landscape, whose losses go negative, and runs
with ``gamma = 0``.

Deviation: the official code also clips the norm of the shared parameters' gradient to
``max_norm = 1.0`` after the backward pass. A loss-based strategy in this harness does not
touch gradients, so there is no clipping here.

No host synchronisation: the weights, the losses and the Adam state stay on the device.
"""

from __future__ import annotations

from typing import Annotated

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting

__all__ = ["FAMO", "softmax_vjp"]

EPS = 1e-8  # the official code's epsilon added to L - m


def softmax_vjp(logits: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``J^T v`` for the Jacobian J of ``softmax(logits)``: ``z * (v - z . v)``."""
    z = torch.softmax(logits, dim=0)
    return z * (vector - (z * vector).sum())


@WEIGHTING.register("famo")
class FAMO(LossWeighting):
    """FAMO: L = sum_t z_t log L_t / c, z = softmax(xi), xi adapted to balance log-loss decrease.

    After each step xi takes an Adam step (lr ``w_lr``, weight decay ``gamma``) on the
    softmax VJP of the log-loss decrease measured on the same batch.
    """

    wants_post_step_losses = True

    def __init__(
        self,
        *,
        gamma: Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)] = 0.01,
        w_lr: Annotated[float, pydantic.Field(gt=0, allow_inf_nan=False)] = 0.025,
        min_losses: list[Annotated[float, pydantic.Field(allow_inf_nan=False)]] | None = None,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.w_lr = w_lr
        self.min_losses_init = min_losses
        self.logits: torch.Tensor | None = None  # xi
        self.min_losses: torch.Tensor | None = None  # m
        self._optimizer: torch.optim.Adam | None = None
        self._previous: torch.Tensor | None = None  # the losses combine() last saw

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.logits = torch.zeros(num_tasks, device=device, requires_grad=True)
        if self.min_losses_init is None:
            self.min_losses = torch.zeros(num_tasks, device=device)
        elif len(self.min_losses_init) != num_tasks:
            raise ValueError(f"famo: min_losses has {len(self.min_losses_init)} values for "
                             f"{num_tasks} tasks")
        else:
            self.min_losses = torch.tensor(self.min_losses_init, device=device)
        self._optimizer = torch.optim.Adam([self.logits], lr=self.w_lr, weight_decay=self.gamma)
        self._previous = None

    @property
    def z(self) -> torch.Tensor:
        """The current task weights softmax(xi), on the simplex."""
        if self.logits is None:
            raise RuntimeError("famo: call reset(num_tasks, device) first")
        return torch.softmax(self.logits.detach(), dim=0)

    def _shifted(self, losses: torch.Tensor) -> torch.Tensor:
        assert self.min_losses is not None
        return losses - self.min_losses.to(device=losses.device, dtype=losses.dtype) + EPS

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        z = self.z.to(device=losses.device, dtype=losses.dtype)
        shifted = self._shifted(losses)
        ratio = z / shifted.detach()
        c = ratio.sum()
        self._previous = losses.detach()
        self.last_weights = ratio / c
        return (torch.log(shifted) * z).sum() / c

    def post_step(self, losses: torch.Tensor) -> None:
        if self._previous is None or self.logits is None or self._optimizer is None:
            return  # no combine() since the last update: nothing to compare with
        logits = self.logits
        current = losses.detach().to(device=logits.device, dtype=logits.dtype)
        previous = self._previous.to(device=logits.device, dtype=logits.dtype)
        delta = torch.log(self._shifted(previous)) - torch.log(self._shifted(current))
        self._optimizer.zero_grad(set_to_none=False)
        logits.grad = softmax_vjp(logits.detach(), delta)
        self._optimizer.step()
        self._previous = None
