"""strategies/weighting/ls.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unit.weighting._inputs import (
    DEVICES,
    F64,
    grad_of,
    make,
    positive,
    tensor,
)

fast = settings(max_examples=25, deadline=None)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(pairs=st.lists(st.tuples(st.floats(0.0, 10.0), positive), min_size=1, max_size=6))
def test_ls_is_the_weighted_sum(device, pairs):
    weights, values = zip(*pairs, strict=True)
    ls = make("ls", len(values), device, weights=weights)
    losses = tensor(values, device, grad=True)
    total = ls.combine(losses)
    expected = sum(w * v for w, v in pairs)
    assert total.item() == pytest.approx(expected, rel=1e-6, abs=1e-12)  # float32 weights
    assert grad_of(total, losses).tolist() == pytest.approx(list(weights), rel=1e-6)
    assert ls.last_weights.tolist() == pytest.approx(list(weights), rel=1e-6)
    assert ls.last_weights.device == losses.device and not ls.last_weights.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_ls_default_is_equal_weighting(device):
    losses = tensor([0.25, 4.0, 1.5], device, grad=True)
    ls, ew = make("ls", 3, device), make("ew", 3, device)
    assert torch.equal(ls.combine(losses), ew.combine(losses))
    assert torch.equal(ls.last_weights, torch.ones(3, device=device, dtype=F64))
    # (1, 3) and (0.25, 0.75): same direction, four times the step; weights are not normalised.
    a = make("ls", 2, device, weights=(1.0, 3.0)).combine(losses[:2])
    b = make("ls", 2, device, weights=(0.25, 0.75)).combine(losses[:2])
    assert a.item() == pytest.approx(4 * b.item())
