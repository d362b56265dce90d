"""strategies/weighting/rlw.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    F64,
    grad_of,
    make,
    tensor,
)


@pytest.mark.parametrize("device", DEVICES)
def test_rlw_weights_are_softmax_of_standard_normal_draws(device):
    rlw = make("rlw", 4, device, seed=7)
    reference = torch.Generator(device=device).manual_seed(7)
    losses = tensor([1.0, 2.0, 3.0, 4.0], device, grad=True)
    previous = None
    for _ in range(5):
        total = rlw.combine(losses)
        draw = torch.randn(4, generator=reference, device=device)
        expected = torch.softmax(draw, dim=0).to(F64)
        w = rlw.last_weights
        assert torch.allclose(w, expected) and w.device == losses.device
        assert (w > 0).all() and w.sum().item() == pytest.approx(1.0)
        assert total.item() == pytest.approx((w * losses.detach()).sum().item())
        assert torch.allclose(grad_of(total, losses), w)
        assert previous is None or not torch.equal(w, previous)  # new weights every step
        previous = w


@pytest.mark.parametrize("device", DEVICES)
def test_rlw_same_seed_same_weights(device):
    losses = torch.ones(3, device=device)
    first, second, other = (make("rlw", 3, device, seed=s) for s in (3, 3, 4))
    seq = []
    for _ in range(4):
        for rlw in (first, second, other):
            rlw.combine(losses)
        assert torch.equal(first.last_weights, second.last_weights)
        seq.append(first.last_weights)
    assert not torch.equal(first.last_weights, other.last_weights)
    first.reset(3, torch.device(device), seed=3)  # reset restarts the sequence
    first.combine(losses)
    assert torch.equal(first.last_weights, seq[0])
