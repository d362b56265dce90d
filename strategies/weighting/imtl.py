"""IMTL: the hybrid of IMTL-L (learned loss scales) and IMTL-G (impartial gradient weights).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr (Section 3.3, Algorithm 1).

IMTL-L scales each raw loss L_t by a learned e^{s_t} and regularises the scale,

    L_t' = e^{s_t} L_t - s_t,        s_t = 0 at the start,

so that the scaled losses stay comparable: the minimiser over s_t is s_t = -log L_t, where
e^{s_t} L_t = 1 (the paper's loss-balance condition). The s_t are trained by the model's
optimizer on the gradient of sum_t L_t' (d/ds_t = e^{s_t} L_t - 1).

IMTL-G is then applied to the gradients of the scaled losses: the shared parameters
move along d = sum_t alpha_t e^{s_t} g_t with alpha = G^+ n / sum(G^+ n) computed on the
Gramian of the scaled gradients (see ``strategies.weighting.imtl_g``), and the
task-specific parameters get the gradients of their own scaled loss L_t'.

In the harness: ``transform_losses`` returns L' (the engine differentiates it),
``parameters()`` returns s, and ``weights`` is IMTL-G's. ``last_weights`` are the
weights alpha on the rows of the Jacobian of L', i.e. on the scaled gradients.
Scale: for fixed s, d(c J) = c d(J). ``rep`` engine: as IMTL-G.
"""

from __future__ import annotations

import torch
from torch import nn

from strategies.weighting import WEIGHTING
from strategies.weighting.imtl_g import IMTLG


@WEIGHTING.register("imtl")
class IMTL(IMTLG):
    """IMTL (hybrid): learned loss scales e^s L - s (IMTL-L), then IMTL-G on their gradients.

    The log-scales s start at 0 and are returned by ``parameters()`` for the optimizer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_scales: nn.Parameter | None = None

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self.log_scales = nn.Parameter(torch.zeros(num_tasks, device=device))

    def parameters(self) -> list[torch.Tensor]:
        return [] if self.log_scales is None else [self.log_scales]

    def transform_losses(self, losses: torch.Tensor) -> torch.Tensor:
        if self.log_scales is None:
            raise RuntimeError("imtl: call reset(num_tasks, device) before training")
        s = self.log_scales.to(device=losses.device, dtype=losses.dtype)
        return torch.exp(s) * losses - s
