"""strategies/weighting/gls.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings

from unit.weighting._inputs import (
    DEVICES,
    grad_of,
    loss_lists,
    make,
    tensor,
)

fast = settings(max_examples=25, deadline=None)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(values=loss_lists)
def test_gls_is_the_geometric_mean_and_its_gradient(device, values):
    num = len(values)
    gls = make("gls", num, device)
    losses = tensor(values, device, grad=True)
    total = gls.combine(losses)
    geometric = math.prod(values) ** (1.0 / num)
    assert total.item() == pytest.approx(geometric, rel=1e-9)
    # d/dL_t (prod L)^(1/T) = (prod L)^(1/T) / (T L_t)
    expected = [geometric / (num * v) for v in values]
    assert grad_of(total, losses).tolist() == pytest.approx(expected, rel=1e-9)
    assert gls.last_weights.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_gls_does_not_underflow_with_many_tasks(device):
    losses = torch.full((50,), 0.1, device=device, requires_grad=True)  # float32
    assert losses.detach().prod().item() == 0.0  # the naive product underflows: 1e-50
    total = make("gls", 50, device).combine(losses)
    assert total.item() == pytest.approx(0.1, rel=1e-5)
    assert torch.allclose(grad_of(total, losses), torch.full((50,), 1 / 50, device=device))
