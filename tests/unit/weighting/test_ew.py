"""strategies/weighting/ew.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting.py.)"""

from __future__ import annotations

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    make,
)


@pytest.mark.parametrize("device", DEVICES)
def test_ew_is_the_sum(device):
    losses = torch.tensor([0.3, 1.5, 2.25], device=device, requires_grad=True)
    ew = make("ew", 3, device)
    total = ew.combine(losses)
    assert torch.allclose(total, losses.sum())
    assert torch.equal(ew.last_weights, torch.ones(3, device=device))
    (grad,) = torch.autograd.grad(total, losses)
    assert torch.equal(grad, torch.ones(3, device=device))
