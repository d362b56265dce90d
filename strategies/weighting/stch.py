"""Smooth Tchebycheff scalarization (STCH): a smooth maximum of the weighted task losses.

Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML 2024, https://arxiv.org/abs/2402.19078.

The Tchebycheff scalarization ``max_t lambda_t (f_t - z_t)`` (preference lambda, ideal
point z) is smoothed with the log-sum-exp function:

    g_mu(f | lambda) = mu * log sum_t exp(lambda_t (f_t - z_t) / mu),

which tends to the maximum as mu -> 0: ``max <= g_mu <= max + mu log T``.

For multi-task learning this follows the official code
(https://github.com/Xi-L/STCH, ``STCH_MTL/LibMTL/weighting/STCH.py``, the same as
LibMTL's ``STCH``), which has no known ideal point and works on log-losses:

- Warm-up: in epochs ``0 .. warmup_epoch`` (0-based, so ``warmup_epoch + 1`` epochs) the
  objective is ``sum_t log(L_t + 1e-20)``.
- Reference point: the mean training loss of each task over epoch ``warmup_epoch`` (the
  code's ``nadir_vector``; here the (T,) mean the harness passes to ``end_epoch``).
- From epoch ``warmup_epoch + 1`` on, with ``f_t = log(L_t / nadir_t + 1e-20)``, i.e.
  ``f_t - z_t`` with the log-loss and the log-reference as ideal point,

      L = T * mu * log sum_t exp(lambda_t f_t / mu),

  the code's ``mu * log(sum(exp(losses / mu))) * task_num`` (its max-subtraction is the
  usual log-sum-exp stabilisation, done here by ``torch.logsumexp``).

Defaults are the official code's: ``mu = 1.0``, ``warmup_epoch = 4``. The code uses the
uniform preference lambda_t = 1; ``preference`` (one non-negative value per task)
generalises it for Pareto sweeps, with ``None`` meaning all ones. A reference loss of 0
is clamped to the smallest positive float to avoid a division by zero.

``last_weights`` holds the effective weight of each task gradient, dL/dL_t:
1 / (L_t + 1e-20) in warm-up and ``T softmax_t(lambda f / mu) lambda_t / (L_t +
1e-20 nadir_t)`` afterwards.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import LossWeighting
from strategies.weighting.ls import WeightVector, weight_vector

__all__ = ["SmoothTchebycheff", "smooth_tchebycheff"]

EPS = 1e-20  # the official code's epsilon inside the logarithms


def smooth_tchebycheff(
    values: torch.Tensor, preference: torch.Tensor, mu: float
) -> torch.Tensor:
    """``mu * log sum_t exp(preference_t * values_t / mu)``: the paper's g_mu with
    ``values = f - z``. Tends to ``max_t preference_t * values_t`` as mu -> 0."""
    return mu * torch.logsumexp(preference * values / mu, dim=0)


@WEIGHTING.register("stch")
class SmoothTchebycheff(LossWeighting):
    """Smooth Tchebycheff: L = T mu logsumexp(lambda_t log(L_t / nadir_t) / mu) after a warm-up.

    Warm-up (epochs 0..warmup_epoch): sum_t log L_t; the reference ``nadir`` is the mean
    training loss of epoch ``warmup_epoch``. ``mu``: smoothing; ``preference``: lambda.
    """

    permutation_invariant: ClassVar[bool] = True

    def __init__(
        self,
        *,
        mu: Annotated[float, pydantic.Field(gt=0, allow_inf_nan=False)] = 1.0,
        warmup_epoch: Annotated[int, pydantic.Field(ge=0)] = 4,
        preference: WeightVector = None,
    ) -> None:
        super().__init__()
        self.mu = mu
        self.warmup_epoch = warmup_epoch
        self.preference = None if preference is None else tuple(float(p) for p in preference)
        self._preference: torch.Tensor | None = None
        self._epoch = 0
        self.nadir: torch.Tensor | None = None  # reference losses, set after the warm-up

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._preference = weight_vector(
            self.preference, num_tasks, device, name="preference", owner="stch"
        )
        self._epoch = 0
        self.nadir = None

    @property
    def warming_up(self) -> bool:
        return self.nadir is None

    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        if self._epoch == self.warmup_epoch:
            work = torch.promote_types(mean_losses.dtype, torch.float32)
            nadir = mean_losses.detach().to(work).clone()
            self.nadir = nadir.clamp_min(torch.finfo(work).tiny)
        self._epoch += 1

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self._preference is None:
            raise RuntimeError("stch: call reset(num_tasks, device) before combine")
        detached = losses.detach()
        if self.nadir is None:
            self.last_weights = 1.0 / (detached + EPS)
            return torch.log(losses + EPS).sum()
        nadir = self.nadir.to(device=losses.device, dtype=losses.dtype)
        preference = self._preference.to(device=losses.device, dtype=losses.dtype)
        num = len(losses)
        values = torch.log(losses / nadir + EPS)
        soft = torch.softmax(preference * values.detach() / self.mu, dim=0)
        self.last_weights = num * soft * preference / (detached + EPS * nadir)
        return num * smooth_tchebycheff(values, preference, self.mu)
