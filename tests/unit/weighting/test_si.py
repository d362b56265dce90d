"""strategies/weighting/si.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings

from unit.weighting._inputs import (
    DEVICES,
    F64,
    grad_of,
    loss_lists,
    make,
    tensor,
)

fast = settings(max_examples=25, deadline=None)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(values=loss_lists)
def test_si_is_the_sum_of_logs_with_gradient_one_over_loss(device, values):
    si = make("si", len(values), device)
    losses = tensor(values, device, grad=True)
    total = si.combine(losses)
    assert total.item() == pytest.approx(sum(math.log(v) for v in values), rel=1e-9, abs=1e-9)
    expected = [1.0 / v for v in values]
    assert grad_of(total, losses).tolist() == pytest.approx(expected, rel=1e-9)
    assert si.last_weights.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_si_is_invariant_to_rescaling_a_loss(device):
    losses = tensor([0.5, 2.0], device, grad=True)
    scaled = losses * torch.tensor([1.0, 1000.0], dtype=F64, device=device)
    si = make("si", 2, device)
    assert torch.allclose(grad_of(si.combine(scaled), losses), grad_of(si.combine(losses), losses))
