"""Aligned-MTL: align the principal components of the task gradients (equal condition number).

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023, https://arxiv.org/abs/2305.19000 (Section 4, Algorithm 1).

Gradient conflicts and dominance show up in the condition number of the linear system of
task gradients. Aligned-MTL replaces the task gradients J (rows g_t) by the closest
matrix (a Procrustes problem) with condition number 1, scaled by the smallest singular
value. On the Gramian G = J J^T = V diag(lambda) V^T (rank r, eigenvalues <= T * eps *
lambda_max dropped, as in the official code):

    B = sqrt(lambda_s) V_r diag(lambda_r)^{-1/2} V_r^T,     w = B p,     d = w^T J,

where the aligned gradients are B J (orthogonal rows of equal norm sqrt(lambda_s)) and
p = ``pref_vector`` are the task preferences. ``scale_mode`` picks lambda_s: ``"min"``
the smallest retained eigenvalue (the paper's sigma_min^2 and the official default),
``"median"`` the (lower) median, ``"rmse"`` their mean. When every eigenvalue is ~0
(all gradients zero) B = I.

Preferences: the official code (SamsungLabs/MTL, and LibMTL) sums the aligned gradients,
p = 1 (the default here); torchjd's ``AlignedMTL`` defaults to the mean, p = 1/T, so its
direction is this one divided by T (checked in tests/test_torchjd_crosscheck.py).

Scale: d(c J) = c d(J) for c > 0 (B is invariant). T = 1 gives p_1 g_1. Deterministic and
permutation-equivariant. The paper also gives Aligned-MTL-UB on the shared representation,
so the ``rep`` engine applies. One host transfer of the T x T Gramian per step (the
eigendecomposition; ``torch.linalg.eigh`` on an accelerator synchronises as well);
NaN/Inf raise ``FloatingPointError``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting._solvers import (
    HostGramianWeighting,
    gramian_to_host,
    preference,
    weights_to_device,
)


def balance_transformation(
    gramian: np.ndarray, scale_mode: Literal["min", "median", "rmse"], eps: float
) -> np.ndarray:
    """The (T, T) matrix B = sqrt(lambda_s) V_r diag(lambda_r)^{-1/2} V_r^T (I when rank 0)."""
    num = gramian.shape[0]
    eigvals, eigvecs = np.linalg.eigh(gramian)
    keep = eigvals > float(eigvals.max(initial=0.0)) * num * eps
    if not keep.any():
        return np.eye(num)
    kept, vecs = eigvals[keep], eigvecs[:, keep]
    if scale_mode == "min":
        scale = float(kept.min())
    elif scale_mode == "median":
        scale = float(np.sort(kept)[(kept.size - 1) // 2])  # lower median, as torch.median
    else:
        scale = float(kept.mean())
    return np.sqrt(scale) * (vecs / np.sqrt(kept)) @ vecs.T


@WEIGHTING.register("aligned_mtl")
class AlignedMTL(HostGramianWeighting):
    """Aligned-MTL: rescale the Gramian's eigen-directions to condition number 1, then sum.

    ``scale_mode``: eigenvalue setting the common scale ("min" as in the paper, "median",
    "rmse"); ``pref_vector``: task preferences (default all ones, as the official code).
    """

    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    supports_rep: ClassVar[bool] = True

    def __init__(
        self,
        *,
        scale_mode: Literal["min", "median", "rmse"] = "min",
        pref_vector: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.scale_mode = scale_mode
        self.pref_vector = pref_vector

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        eps = torch.finfo(gramian.dtype).eps
        host = gramian_to_host(gramian)  # the step's one host sync (eigendecomposition)
        prefs = preference(self.pref_vector, host.shape[0], default=1.0)
        balance = balance_transformation(host, self.scale_mode, eps)
        return weights_to_device(balance @ prefs, gramian)
