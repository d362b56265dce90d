"""MoDo: stochastic MGDA with double sampling for the weight update.

Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning:
Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023,
https://arxiv.org/abs/2305.20057 (Algorithm 1; JMLR 2024 version, Eq. 2.9).

The gradient of the MGDA subproblem 1/2 ||J^T lambda||^2 in lambda is J J^T lambda; MoDo
estimates it without bias from two independent minibatches z1, z2 and takes one
projected step per iteration, then updates the model with a third batch z3:

    lambda_{t+1} = Proj_simplex(lambda_t - gamma (J_z1 J_z2^T lambda_t + rho lambda_t)),
    d_t          = J_z3^T lambda_{t+1},           lambda_0 = 1/T.

``gamma`` is the weight step size and ``rho`` the l2 regularisation of the subproblem.
Defaults gamma = 0.1, rho = 0.1: the official code's (Trade-Off-MOL, and torchjd's);
LibMTL uses gamma = 1e-3.

Harness mapping: ``batches_per_step = 3``; ``aggregate_batches([J_a, J_b, J_c])`` uses
J_b, J_c (the two extra, independently drawn batches) as z1, z2 and J_a (the epoch's
ordered batch, whose losses are the ones recorded) as z3, as LibMTL does with three
batches. The official code's two-batch variant updates the model with the mean of z1 and
z2 instead; not offered here. ``aggregate(J)`` (the gradient engines' single-batch call,
and ``batches_per_step = 1`` callers) uses the same J for all three roles, i.e. the
biased single-sample estimate J J^T lambda.

``last_weights`` is lambda_{t+1}; the state (lambda) is on the device and cleared by
``reset``; the projection is a sort-based closed form, no host sync per step. With
T = 1, lambda = 1 and the direction is the task's own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GradientWeighting, check_finite
from strategies.weighting.moco import project_to_simplex


@WEIGHTING.register("modo")
class MoDo(GradientWeighting):
    """MoDo: lambda <- Proj(lambda - gamma (J1 J2^T + rho I) lambda) on 2 batches, step on a 3rd.

    Three independent minibatches per step (double sampling for an unbiased lambda
    update); ``gamma`` is the step size of lambda and ``rho`` its l2 regularisation.
    """

    permutation_invariant: ClassVar[bool] = True
    batches_per_step: ClassVar[int] = 3

    def __init__(
        self,
        *,
        gamma: Annotated[float, pydantic.Field(gt=0.0)] = 0.1,
        rho: Annotated[float, pydantic.Field(ge=0.0)] = 0.1,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.rho = rho
        self.lambd: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.lambd = torch.full((num_tasks,), 1.0 / num_tasks, device=device)

    def update(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """One step of lambda from the two (T, P) Jacobians of the double sample."""
        num = first.shape[0]
        work = torch.promote_types(torch.promote_types(first.dtype, second.dtype), torch.float32)
        lambd = self.lambd
        if lambd is None or lambd.shape != (num,):
            lambd = torch.full((num,), 1.0 / num)
        lambd = lambd.to(device=first.device, dtype=work)
        # J_z1 (J_z2^T lambda): O(T P), the (T, T) product is never needed.
        estimate = first.to(work) @ (second.to(work).T @ lambd)
        self.lambd = project_to_simplex(lambd - self.gamma * (estimate + self.rho * lambd))
        return self.lambd

    def aggregate_batches(
        self, jacobians: Sequence[torch.Tensor], losses: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if len(jacobians) != 3:
            raise ValueError(f"modo needs 3 Jacobians per step, got {len(jacobians)}")
        for jacobian in jacobians:
            if jacobian.device.type == "cpu":  # elsewhere a host sync; see pcgrad's notes
                check_finite(jacobian)
        step_batch, first, second = jacobians
        lambd = self.update(first, second)
        self.last_weights = lambd
        return (lambd @ step_batch.to(lambd.dtype)).to(step_batch.dtype)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        return self.aggregate_batches([jacobian] * 3, [losses] * 3)  # type: ignore[list-item]
