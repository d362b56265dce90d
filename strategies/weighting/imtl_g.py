"""IMTL-G: the combination of task gradients with equal projections on every unit gradient.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr (Section 3.2, IMTL-G, and
Algorithm 1). The pseudo-inverse generalisation used here is from Quinton & Rey,
"Jacobian Descent for Multi-Objective Optimization", https://arxiv.org/abs/2406.16232.

With g_t the task gradients and u_t = g_t / ||g_t||, IMTL-G looks for the direction
d = sum_t alpha_t g_t with sum_t alpha_t = 1 whose projections on every u_t are equal,
d . u_1 = ... = d . u_T, so that no task dominates the update. The paper solves it with
D = [g_1 - g_t]_t and U = [u_1 - u_t]_t (t = 2..T): alpha_{2:T} = g_1 U^T (D U^T)^{-1}.

On the Gramian G = J J^T with n_t = ||g_t|| = sqrt(G_tt), the same weights are

    v = G^+ n,        alpha = v / sum(v),

since J J^T G^{-1} n = n gives g_t . d = ||g_t|| / sum(v), i.e. d . u_t = 1 / sum(v) for
every t. With the pseudo-inverse G^+ this also covers linearly dependent gradients
(Quinton & Rey's generalisation, as in torchjd). The pseudo-inverse treats eigenvalues
below T * eps * lambda_max as zero (eps of the dtype the Gramian was computed in, the
cut-off of ``torch.linalg.pinv``). When sum(v) vanishes (|sum(v)| max_t n_t <= 1e-12,
e.g. all gradients zero) the weights are zero (torchjd uses an absolute 1e-12 on sum(v),
which is not scale-invariant).

Scale: d(c J) = c d(J) for c > 0 (alpha is invariant); T = 1 gives g_1. Invariant to
permutations of the tasks. The paper computes IMTL-G on the gradients of the shared
representation z (its "IMTL-G on z" speed-up), so the ``rep`` engine applies. One host
transfer of the T x T Gramian per step (the eigendecomposition; on an accelerator
``torch.linalg.pinv`` synchronises as well); NaN/Inf raise ``FloatingPointError``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import (
    HostGramianWeighting,
    gramian_to_host,
    psd_pinv,
    weights_to_device,
)


def imtl_g_weights(gramian: np.ndarray, eps: float) -> np.ndarray:
    """alpha = G^+ n / sum(G^+ n) with n_t = sqrt(G_tt); zeros when the sum vanishes."""
    num = gramian.shape[0]
    norms = np.sqrt(np.clip(gramian.diagonal(), 0.0, None))
    v = psd_pinv(gramian, num * eps) @ norms
    total = float(v.sum())
    if not np.isfinite(total) or abs(total) * float(norms.max(initial=0.0)) <= 1e-12:
        return np.zeros(num)
    return v / total


@WEIGHTING.register("imtl_g")
class IMTLG(HostGramianWeighting):
    """IMTL-G: weights summing to 1 whose direction projects equally on every unit gradient.

    alpha = G^+ n / 1^T G^+ n with n_t = ||g_t||, from the Gramian (no hyperparameters).
    """

    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    supports_rep: ClassVar[bool] = True

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        eps = torch.finfo(gramian.dtype).eps
        host = gramian_to_host(gramian)  # the step's one host sync (eigendecomposition)
        return weights_to_device(imtl_g_weights(host, eps), gramian)
