"""strategies/weighting/imtl.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_gramian.py.)"""

from __future__ import annotations

import pytest
import torch

from strategies.weighting import WEIGHTING, GramianWeighting, get
from unit.weighting._inputs import (
    DEVICES,
    F64,
    direction,
    make,
    random_jacobian,
)


@pytest.mark.parametrize("device", DEVICES)
def test_imtl_hybrid_scales_losses_and_learns_the_scales(device):
    imtl = make("imtl", 3, device)
    (s,) = imtl.parameters()
    assert isinstance(s, torch.nn.Parameter) and torch.equal(s.detach(), torch.zeros(3, device=device))
    with torch.no_grad():
        s.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    losses = torch.tensor([0.5, 2.0, 4.0], device=device, requires_grad=True)
    scaled = imtl.transform_losses(losses)
    assert torch.allclose(scaled, torch.exp(s.detach()) * losses.detach() - s.detach())
    grad_s, grad_l = torch.autograd.grad(scaled.sum(), [s, losses])
    assert torch.allclose(grad_s, torch.exp(s.detach()) * losses.detach() - 1)
    assert torch.allclose(grad_l, torch.exp(s.detach()))
    # Trained by an optimizer, e^s L -> 1 (s -> -log L), the paper's balance condition.
    optimizer = torch.optim.Adam(imtl.parameters(), lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        imtl.transform_losses(losses.detach()).sum().backward()
        optimizer.step()
    assert torch.allclose(s.detach(), -losses.detach().log(), atol=1e-2)
    # Shared parameters: IMTL-G on the scaled gradients.
    jac = random_jacobian(3, 8, 0, device)
    scaled_jac = torch.exp(s.detach()).to(F64)[:, None] * jac
    assert torch.allclose(imtl.aggregate(scaled_jac), direction("imtl_g", scaled_jac))


def test_imtl_needs_reset():
    with pytest.raises(RuntimeError, match="reset"):
        get("imtl").transform_losses(torch.ones(2))


def test_imtl_declares_its_own_learnable_parameters():
    assert WEIGHTING.get("imtl").parameters is not GramianWeighting.parameters
