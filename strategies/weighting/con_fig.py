"""ConFIG: the conflict-free direction with equal cosine to every task gradient.

Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", 2024, https://arxiv.org/abs/2408.11104 (Section 3, Equation 2).

With unit gradients u_t = g_t / ||g_t|| stacked as the rows of U,

    g_u = U^+ p / ||U^+ p||,        d = (sum_t g_t . g_u) g_u,

where U^+ is the pseudo-inverse and p = ``pref_vector`` (default all ones): g_u solves
U g = p, so every task sees the same cosine with it (u_t . g_u = 1 / ||U^+ p|| > 0 for
p = 1 when the gradients are linearly independent): no conflict. Its length is the sum of
the projections of the gradients on it (torchjd's and the official code's convention).

On the Gramian: with D = diag(||g_t||) and the unit Gramian D^-1 G D^-1,
U^+ p = J^T w0 with w0 = D^-1 (D^-1 G D^-1)^+ p, hence ||U^+ p||^2 = w0^T G w0 and

    weights = (1^T G w0 / w0^T G w0) w0,        d = weights^T J.

Zero gradients get zero unit vectors (as torchjd's ``nan_to_num``). When U^+ p = 0 (p
orthogonal to the span of the unit gradients, e.g. unit gradients that cancel exactly)
the direction is zero; the test is relative: zero when the projection of p onto the
range of U, bounded by sqrt(trace(U U^T)) ||U^+ p||, is below sqrt(T eps) ||p||. The pseudo-inverse
treats eigenvalues of the unit Gramian below T * eps * lambda_max as zero (torchjd takes
the pseudo-inverse of the (T, P) matrix U itself; the Gramian route loses half the digits
for nearly dependent gradients: singular values below ~1e-7 of the largest count as 0 in
float64).

Scale: d(c J) = c d(J) for c > 0; T = 1 gives g_1. Permutation-invariant. One host
transfer of the T x T Gramian per step (the eigendecomposition); NaN/Inf raise
``FloatingPointError``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import (
    HostGramianWeighting,
    gramian_to_host,
    preference,
    psd_pinv,
    weights_to_device,
)


def config_weights(gramian: np.ndarray, prefs: np.ndarray, eps: float) -> np.ndarray:
    """ConFIG's weights on the rows of J from their Gramian (zeros when U^+ p = 0)."""
    num = gramian.shape[0]
    norms = np.sqrt(np.clip(gramian.diagonal(), 0.0, None))
    nonzero = norms > 0.0
    safe = np.where(nonzero, norms, 1.0)
    unit = gramian / np.outer(safe, safe)
    unit[~nonzero, :] = 0.0
    unit[:, ~nonzero] = 0.0
    w0 = (psd_pinv(unit, num * eps) @ prefs) / safe
    w0[~nonzero] = 0.0
    sq_norm = float(w0 @ gramian @ w0)  # ||U^+ p||^2
    # U^+ p = 0 exactly when p is orthogonal to the range of U, and ||U^+ p||^2 >=
    # ||P p||^2 / lambda_max(U U^T) >= ||P p||^2 / trace for the projection P p of p onto
    # that range: a projection below sqrt(T eps) ||p|| is rounding (an absolute test saw
    # 3e-33 on exactly cancelling unit gradients and returned a conflicting direction).
    if not sq_norm * float(unit.trace()) > num * eps * float(prefs @ prefs):
        return np.zeros(num)
    length_times_norm = float(np.ones(num) @ gramian @ w0)  # sum_t g_t . U^+ p
    return (length_times_norm / sq_norm) * w0


@WEIGHTING.register("config")
class ConFIG(HostGramianWeighting):
    """ConFIG: equal-cosine conflict-free direction, as long as the summed projections.

    ``pref_vector``: the target cosines' ratios (default all ones).
    """

    permutation_invariant: ClassVar[bool] = True
    linear_under_scaling: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True

    def __init__(self, *, pref_vector: list[float] | None = None) -> None:
        super().__init__()
        self.pref_vector = pref_vector

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        eps = torch.finfo(gramian.dtype).eps
        host = gramian_to_host(gramian)  # the step's one host sync (eigendecomposition)
        prefs = preference(self.pref_vector, host.shape[0], default=1.0)
        return weights_to_device(config_weights(host, prefs, eps), gramian)
