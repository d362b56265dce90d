"""Gradient Vaccine (GradVac): raise each pairwise gradient cosine to an adaptive target.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021,
https://arxiv.org/abs/2010.05874 (Section 4, Algorithm 1).

For each task i: g_i' = g_i; then for each other task j, in a random order, with
phi_ij = cos(g_i', g_j) and the target phi_hat_ij:

    if phi_ij < phi_hat_ij:
        g_i' <- g_i' + ||g_i'|| (phi_hat_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi_hat_ij^2))
                       / (||g_j|| sqrt(1 - phi_hat_ij^2)) * g_j,

i.e. the multiple of g_j that, added to g_i', makes cos(g_i', g_j) exactly phi_hat_ij
(keeping g_i' in the plane of g_i' and g_j); pairs at or above their target are left alone.
After each pair the target follows the observed cosine with an exponential moving
average, phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij, starting from phi_hat = 0.
The direction is sum_i g_i'. With phi_hat = 0 the correction is PCGrad's projection,
so the first step equals PCGrad (same seed, same orders).

Defaults and conventions:

- ``beta = 0.5``, the EMA rate of LibMTL (``GradVac_beta``) and torchjd (``beta``). The
  paper defines the EMA (Section 4, Algorithm 1) without a value we could trace in its
  text; the 1e-2 this default used to be, attributed to the paper, had no source, so the
  default follows the two public implementations instead.
- The EMA is updated for every visited pair, whether or not it was corrected, as in
  torchjd and in LibMTL since its commit d2d84fa ("fix a bug in GradVac"; earlier LibMTL
  versions updated it only inside the correction branch). Ours matches LibMTL's current
  code and torchjd numerically (given the same orders).
- The paper keeps targets per layer group (and per pair); the harness hands over one
  flattened J, so this is the paper's / LibMTL's "whole model" granularity: one target
  per ordered task pair.
- Like PCGrad, every g_i' stays a combination sum_k C_ik g_k of the original gradients,
  so everything runs on the (T, T) Gramian on the device: ``weights = C.sum(0)`` (a
  :class:`GramianWeighting`, served by the ``gramian`` engine), ``last_weights`` = those
  weights. The random orders come from a generator seeded in ``reset`` on the training
  device; all tasks advance through their orders together (each round only touches row
  i of C for task i, so this equals the paper's sequential loop).
- eps = 1e-8 is added to the two denominators (as in LibMTL/torchjd); a zero g_j gets
  no correction (instead of a huge coefficient on a zero vector).
"""

from __future__ import annotations

from typing import Annotated

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GramianWeighting, check_finite_on_cpu
from strategies.weighting.pcgrad import random_orders

EPS = 1e-8


@WEIGHTING.register("gradvac")
class GradVac(GramianWeighting):
    """GradVac: lift each pairwise gradient cosine to an EMA target phi_hat, then sum.

    Pairs (i, j) with cos(g_i', g_j) below phi_hat_ij get a multiple of g_j added to g_i'
    so that the cosine becomes phi_hat_ij; ``beta`` is the EMA rate of phi_hat.
    """

    def __init__(self, *, beta: Annotated[float, pydantic.Field(ge=0.0, le=1.0)] = 0.5) -> None:
        super().__init__()
        self.beta = beta
        self._generator = torch.Generator().manual_seed(0)
        self.targets: torch.Tensor | None = None  # phi_hat, (T, T)

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._generator = torch.Generator(device=device).manual_seed(seed)
        self.targets = torch.zeros(num_tasks, num_tasks, device=device)

    def coefficients_from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        """(T, T) C with g_i' = sum_k C_ik g_k; updates the targets and draws the orders."""
        check_finite_on_cpu(gramian)  # a NaN/Inf in J reaches the Gramian (see pcgrad)
        num = gramian.shape[0]
        gram = gramian.to(torch.promote_types(gramian.dtype, torch.float32))
        targets = self.targets
        if targets is None or targets.shape != (num, num):
            targets = torch.zeros(num, num, device=gram.device)
        targets = targets.to(device=gram.device, dtype=gram.dtype)
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        coef = torch.eye(num, dtype=gram.dtype, device=gram.device)
        orders = random_orders(num, self._generator, gram.device)
        tasks = torch.arange(num, device=gram.device)
        for position in range(num - 1):
            other = orders[:, position]  # task j that each task i is vaccinated against now
            pick = (other[:, None] == tasks[None, :]).to(gram.dtype)  # one-hot of (i, j_i)
            products = coef @ gram  # (C G)_ik = g_i' . g_k
            dots = (products * pick).sum(dim=1)  # g_i' . g_j
            norm_i = (products * coef).sum(dim=1).clamp_min(0.0).sqrt()  # ||g_i'||
            norm_j = norms[other]
            cosine = dots / (norm_i * norm_j + EPS)
            target = (targets * pick).sum(dim=1)
            sin_cos = (1.0 - cosine * cosine).clamp_min(0.0).sqrt()
            sin_target = (1.0 - target * target).clamp_min(0.0).sqrt()
            step = norm_i * (target * sin_cos - cosine * sin_target) / (norm_j * sin_target + EPS)
            step = torch.where((cosine < target) & (norm_j > 0), step, 0.0)
            coef = coef + step[:, None] * pick
            targets = targets + self.beta * (cosine - target)[:, None] * pick
        self.targets = targets
        return coef

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        return self.coefficients_from_gramian(gramian).sum(dim=0)
