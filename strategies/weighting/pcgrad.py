"""PCGrad: project each task gradient off the gradients it conflicts with.

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020, https://arxiv.org/abs/2001.06782 (Algorithm 1).

For each task i: g_i^PC = g_i; then for each other task j, in a random order,

    if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 * g_j,

i.e. g_i^PC is projected onto the normal plane of the *original* g_j whenever the two
conflict. The update direction is sum_i g_i^PC.

Implementation notes:

- The condition is applied without a branch: the coefficient is
  ``min(g_i^PC . g_j, 0) / ||g_j||^2``, which is 0 when the gradients do not conflict.
  A zero g_j has a zero dot product with everything, so it is divided by 1 instead of
  0 (no projection, no NaN).
- Every g_i^PC stays a combination of the original gradients, g_i^PC = sum_k C_ik g_k,
  so the surgery runs on the (T, T) Gramian G = J J^T: g_i^PC . g_j = (C G)_ij, and
  one projection only changes C_ij. All tasks i advance together, one position of their
  random orders at a time (T - 1 rounds of T x T operations on the device), and the
  direction is (sum_i C_i) @ J. Mathematically the same as projecting the (T, P)
  vectors; the Gramian is one O(T^2 P) product and each round then costs O(T^2).
  PCGrad is therefore a :class:`GramianWeighting` with weights ``w = C.sum(0)`` (the
  direction is ``w @ J``), so the ``gramian`` engine serves it without ever
  concatenating J. ``last_weights`` holds these w: the weight each *original* task
  gradient has in the direction (1 for every task when nothing conflicts).
- Each task draws its own random order of the other tasks every step (as in the paper
  and the reference PyTorch ports), from a ``torch.Generator`` seeded in ``reset`` and
  living on the training device, so the orders never cross to the device (a blocking
  host-to-device copy would stall the stream every step). The same seed on the same
  kind of device gives the same orders.
- The Gramian is formed in at least float32 (bfloat16/float16 Jacobians would lose the
  sign of small dot products); the direction comes back in J's dtype.
- A NaN/Inf in J raises ``FloatingPointError`` at once when J lives on the CPU. The
  check reads the (T, T) Gramian, not J: a NaN or Inf in row i of J makes G_ii
  non-finite, and scanning J cost three times the Gramian itself (issue 13). On an
  accelerator the check would be a host sync per step, so it is left to the harness's
  once-per-epoch divergence check (a non-finite J gives a non-finite direction, hence
  non-finite parameters and losses).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GramianWeighting, check_finite_on_cpu

__all__ = ["PCGrad", "random_orders"]


def random_orders(num: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(T, T-1) integer tensor: row i is a uniformly random order of the tasks other than i.

    Drawn on the generator's device (no host round trip when it is the training device).
    """
    keys = torch.rand(num, num, generator=generator, device=generator.device)
    keys.fill_diagonal_(2.0)  # task i sorts last and is cut off
    return keys.argsort(dim=1)[:, : num - 1].to(device)


@WEIGHTING.register("pcgrad")
class PCGrad(GramianWeighting):
    """PCGrad: project away gradient conflicts between tasks (random order), then sum.

    Each g_i is projected onto the normal plane of every other original g_j it has a
    negative dot product with; the direction is the sum of the projected gradients.
    """

    linear_under_scaling: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def coefficients_from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        """(T, T) matrix C with g_i^PC = sum_k C_ik g_k (draws this step's random orders)."""
        check_finite_on_cpu(gramian)
        num = gramian.shape[0]
        gram = gramian.to(torch.promote_types(gramian.dtype, torch.float32))
        sq_norms = gram.diagonal()
        safe_sq_norms = torch.where(sq_norms > 0, sq_norms, torch.ones_like(sq_norms))
        coef = torch.eye(num, dtype=gram.dtype, device=gram.device)
        orders = random_orders(num, self._generator, gram.device)
        tasks = torch.arange(num, device=gram.device)
        for position in range(num - 1):
            other = orders[:, position]  # task j that each task i projects against now
            dots = (coef * gram[other]).sum(dim=1)  # g_i^PC . g_j = (C G)_ij
            step = dots.clamp(max=0.0) / safe_sq_norms[other]
            # C_ij -= step_i (an elementwise mask: no scatter, deterministic, no host sync).
            coef = coef - step[:, None] * (other[:, None] == tasks[None, :])
        return coef

    def coefficients(self, jacobian: torch.Tensor) -> torch.Tensor:
        """(T, T) matrix C with g_i^PC = sum_k C_ik g_k (draws this step's random orders)."""
        rows = jacobian.to(torch.promote_types(jacobian.dtype, torch.float32))
        return self.coefficients_from_gramian(rows @ rows.T)

    def project(self, jacobian: torch.Tensor) -> torch.Tensor:
        """(T, P) projected gradients g_i^PC (draws this step's random orders)."""
        return self.coefficients(jacobian).to(jacobian.dtype) @ jacobian

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        return self.coefficients_from_gramian(gramian).sum(dim=0)
