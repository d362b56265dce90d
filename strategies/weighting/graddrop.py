"""GradDrop: per coordinate, keep only the task gradients of one randomly chosen sign.

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing
Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020,
https://arxiv.org/abs/2010.06808 (Algorithm 1, Eqs. 1-3).

With g_i the gradient of task i (row i of J), per coordinate k the Gradient Positive
Sign Purity is

    P_k = 1/2 (1 + sum_i g_ik / sum_i |g_ik|)      in [0, 1],

one U_k ~ Uniform[0, 1) is drawn, and task i's gradient survives at k iff

    M_ik = 1[P_k > U_k] 1[g_ik > 0] + 1[P_k <= U_k] 1[g_ik < 0],

i.e. with probability P_k only the positive gradients pass, otherwise only the negative
ones. The direction is sum_i (l + (1 - l) M_i) * g_i with the ``leak`` l (paper: a leak
per task, 0 by default; here one value for all tasks, as in LibMTL). With l = 0 every
coordinate of the output has the sign of the gradients kept there; l = 1 gives the plain
sum. The paper's monotone f(P) is the identity (its default).

Conventions and deviations:

- The paper (and LibMTL) apply GradDrop to a layer's activations A, with purity computed
  from sign(A) * dL_i/dA summed over the batch, one mask per feature. J here is already
  flattened (parameters, or the ``rep`` engine's (batch x features) representation), so
  the purity and the draw are per coordinate of J, without the sign(A) factor and
  without summing over the batch (as torchjd's ``GradDrop``). GradDrop is defined at
  the representation, so ``supports_rep`` is set; on parameters it is the common
  generalisation.
- A coordinate where every task gradient is 0 gets P = 1/2 (its output is 0 anyway).
- The negative branch uses P <= U (the paper and torchjd write P < U): with U drawn from
  [0, 1), a coordinate whose gradients are all negative (P = 0) is then always kept, even
  on a draw of exactly U = 0 (likely somewhere in a large float32 J every few steps).
- U is drawn from a ``torch.Generator`` seeded in ``reset`` and living on the training
  device (no host round trip), in the working dtype (float64 for float64 J, else
  float32); the same seed on the same kind of device gives the same masks, and on the
  CPU with a float64 J the draws equal torchjd's after ``torch.manual_seed(seed)``.
- ``last_weights`` stays ``None``: the masks are per coordinate, not task weights.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydantic
import torch

from strategies.weighting import WEIGHTING
from strategies.weighting.base import GradientWeighting, check_finite


@WEIGHTING.register("graddrop")
class GradDrop(GradientWeighting):
    """GradDrop: per coordinate keep only positive or only negative task gradients, then sum.

    The sign is drawn with probability given by the purity P = (1 + sum g / sum |g|) / 2;
    ``leak`` in [0, 1] lets that fraction of every dropped gradient through (1: plain sum).
    """

    permutation_invariant: ClassVar[bool] = True
    scale_equivariant: ClassVar[bool] = True
    supports_rep = True

    def __init__(self, *, leak: Annotated[float, pydantic.Field(ge=0.0, le=1.0)] = 0.0) -> None:
        super().__init__()
        self.leak = leak
        self._generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, device: torch.device, seed: int = 0) -> None:
        super().reset(num_tasks, device, seed)
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def mask(self, jacobian: torch.Tensor) -> torch.Tensor:
        """(T, P) boolean mask M of the gradients that survive (draws this step's U): the
        paper's per-gradient form, which :meth:`aggregate` reduces without forming it."""
        work = torch.promote_types(jacobian.dtype, torch.float32)
        rows = jacobian.to(work)
        total = rows.sum(dim=0)
        magnitude = rows.abs().sum(dim=0)
        nonzero = magnitude > 0
        purity = torch.where(
            nonzero, 0.5 * (1.0 + total / torch.where(nonzero, magnitude, 1.0)), 0.5
        )
        gen = self._generator
        draw = torch.rand(rows.shape[1], generator=gen, device=gen.device, dtype=work)
        positive = purity > draw.to(rows.device)  # True: keep the positive gradients here
        return (positive & (rows > 0)) | (~positive & (rows < 0))

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        # The gradients kept at k sum to column k's positive part or its negative part, so
        # the (T, P) mask is never formed: two signed column sums and one draw suffice.
        # P_k > U_k  <=>  total_k > (2 U_k - 1) |g|_k  when |g|_k > 0; a column of zeros
        # then keeps its negative part, 0, as the mask would.
        work = torch.promote_types(jacobian.dtype, torch.float32)
        rows = jacobian.to(work)
        positive_part = rows.clamp(min=0).sum(dim=0)
        negative_part = rows.clamp(max=0).sum(dim=0)
        total = positive_part + negative_part
        # Every entry of J reaches its column's total (an Inf as Inf or NaN), so the sum of
        # the (P,) totals is finite when J is; only a non-finite sum (also reached by an
        # overflow) pays for the exact check. Off the CPU it would be a host sync (pcgrad).
        if total.device.type == "cpu" and not torch.isfinite(total.sum()):
            check_finite(total)
        gen = self._generator
        # In place from here: each fresh (P,) tensor costs more than the arithmetic.
        threshold = torch.rand(rows.shape[1], generator=gen, device=gen.device, dtype=work)
        magnitude = positive_part - negative_part
        threshold = threshold.to(rows.device).mul_(2.0).sub_(1.0).mul_(magnitude)
        # negative + [keep positive] * magnitude; torch.where on a random condition is
        # several times slower on the CPU (its kernel branches).
        kept = negative_part.add_(magnitude.mul_(total > threshold))
        if self.leak == 0.0:
            return kept.to(jacobian.dtype)
        return (self.leak * total + (1.0 - self.leak) * kept).to(jacobian.dtype)
