"""SDMGrad: stochastic direction-oriented MGDA, regularised toward the average gradient.

Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
Stochastic Algorithms", NeurIPS 2023, https://arxiv.org/abs/2305.18409 (Algorithm 1).

SDMGrad looks for weights w on the simplex W minimising
1/2 ||g_w + lamda g_0||^2 (g_w = J^T w, g_0 = J^T 1/T the average gradient), so the
direction stays within a neighbourhood of g_0 whose size shrinks as lamda grows. Per
step it runs S = ``niter`` projected stochastic gradient steps on w with two independent
minibatches xi, xi' (an unbiased estimate of the objective's gradient), warm-started
from the previous step's w, then updates the model with a third batch zeta:

    w_{s+1} = Proj_W(w_s - beta J_xi J_xi'^T (w_s + lamda / T 1)),     s = 0..S-1
    d       = J_zeta^T (w_S + lamda / T 1) / (1 + lamda).

As in the official code (and LibMTL/torchjd), A = J_xi J_xi'^T is first divided by
s^2 + 1e-8 with s the mean of sqrt(max(A_ii, 0)), which makes the step size ``beta``
independent of the gradient scale, and the inner steps use heavy-ball momentum
(``momentum``, restarted every outer step). The 1/(1 + lamda) factor is the code's: the
weights (w + lamda/T) / (1 + lamda) sum to 1, and ``last_weights`` holds them.

Defaults: lamda = 0.3 and niter = 20 (the paper's experiments, the official NYUv2 script
``experiments/nyuv2/run.sh`` of https://github.com/OptMN-Lab/sdmgrad, and LibMTL's
defaults; the official ``SDMGrad`` class itself defaults to lamda = 0.6, which its
scripts override); beta = 10, momentum = 0.5 (official code and torchjd; LibMTL uses
beta = 5).
lamda = 0 is a stochastic MGDA; lamda -> infinity the plain average.

Harness mapping: ``batches_per_step = 3``; ``aggregate_batches([J_a, J_b, J_c])`` uses
J_b, J_c (the extra, independently drawn batches) as xi, xi' and J_a (the epoch's
ordered batch, whose losses are recorded) as zeta. ``aggregate(J)`` (the gradient
engines' single-batch call) uses the same J for all three roles. The state (w) is on the
device and cleared by ``reset``; the projection is a sort-based closed form, so the
inner loop runs without host syncs (the official code projects on the host with NumPy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GradientWeighting, check_finite
from strategies.weighting.moco import project_to_simplex


@WEIGHTING.register("sdmgrad")
class SDMGrad(GradientWeighting):
    """SDMGrad: MGDA weights pulled toward the average direction (lamda), on 3 batches per step.

    ``niter`` projected SGD steps (step ``beta``, ``momentum``) on w with two batches,
    then the direction (J^T w + lamda g_0) / (1 + lamda) on a third.
    """

    permutation_invariant: ClassVar[bool] = True
    batches_per_step: ClassVar[int] = 3

    def __init__(
        self,
        *,
        lamda: Annotated[float, pydantic.Field(ge=0.0)] = 0.3,
        niter: Annotated[int, pydantic.Field(ge=1)] = 20,
        beta: Annotated[float, pydantic.Field(gt=0.0)] = 10.0,
        momentum: Annotated[float, pydantic.Field(ge=0.0, lt=1.0)] = 0.5,
    ) -> None:
        super().__init__()
        self.lamda = lamda
        self.niter = niter
        self.beta = beta
        self.momentum = momentum
        self.w: torch.Tensor | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.w = torch.full((num_tasks,), 1.0 / num_tasks, device=device)

    def update(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Run the inner loop on w from the two (T, P) Jacobians xi, xi'; returns w_S."""
        num = first.shape[0]
        work = torch.promote_types(torch.promote_types(first.dtype, second.dtype), torch.float32)
        products = first.to(work) @ second.to(work).T
        scale = products.diagonal().clamp_min(0.0).sqrt().mean()
        products = products / (scale * scale + 1e-8)
        w = self.w
        if w is None or w.shape != (num,):
            w = torch.full((num,), 1.0 / num)
        w = w.to(device=first.device, dtype=work)
        pull = self.lamda / num  # lamda times the average's weights 1/T
        velocity = torch.zeros_like(w)
        for _ in range(self.niter):
            grad = products @ (w + pull)
            velocity = self.momentum * velocity + grad
            w = project_to_simplex(w - self.beta * velocity)
        self.w = w
        return w

    def aggregate_batches(
        self, jacobians: Sequence[torch.Tensor], losses: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if len(jacobians) != 3:
            raise ValueError(f"sdmgrad needs 3 Jacobians per step, got {len(jacobians)}")
        for jacobian in jacobians:
            if jacobian.device.type == "cpu":  # elsewhere a host sync; see pcgrad's notes
                check_finite(jacobian)
        step_batch, first, second = jacobians
        w = self.update(first, second)
        weights = (w + self.lamda / len(w)) / (1.0 + self.lamda)
        self.last_weights = weights
        return (weights @ step_batch.to(weights.dtype)).to(step_batch.dtype)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        return self.aggregate_batches([jacobian] * 3, [losses] * 3)  # type: ignore[list-item]
