"""strategies/weighting/stch.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.weighting.stch import smooth_tchebycheff
from unit.weighting._inputs import (
    DEVICES,
    grad_of,
    make,
    tensor,
)

fast = settings(max_examples=25, deadline=None)


@fast
@given(
    pairs=st.lists(st.tuples(st.floats(-5.0, 5.0), st.floats(0.0, 3.0)), min_size=1, max_size=6),
    mu=st.floats(1e-3, 10.0),
)
def test_smooth_tchebycheff_bounds_the_maximum(pairs, mu):
    values, preference = (tensor(list(x), "cpu") for x in zip(*pairs, strict=True))
    smooth = smooth_tchebycheff(values, preference, mu).item()
    hard = max(p * v for v, p in pairs)
    assert hard - 1e-9 <= smooth <= hard + mu * math.log(len(pairs)) + 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_smooth_tchebycheff_tends_to_the_weighted_maximum(device):
    values = tensor([0.3, -1.0, 0.2], device)  # f - z
    preference = tensor([1.0, 2.0, 1.4], device)  # products: 0.3, -2.0, 0.28
    gaps = [smooth_tchebycheff(values, preference, mu).item() - 0.3 for mu in (1.0, 0.1, 1e-2, 1e-3)]
    assert all(a > b > 0 for a, b in itertools.pairwise(gaps))
    assert gaps[-1] < 1e-3 * math.log(3)
    # mu = 1: by hand.
    expected = math.log(math.exp(0.3) + math.exp(-2.0) + math.exp(0.28))
    assert smooth_tchebycheff(values, preference, 1.0).item() == pytest.approx(expected)


@pytest.mark.parametrize("device", DEVICES)
def test_stch_warm_up_then_smooth_tchebycheff_on_normalised_log_losses(device):
    stch = make("stch", 2, device, mu=0.5, warmup_epoch=1, preference=(1.0, 2.0))
    losses = tensor([0.5, 3.0], device, grad=True)
    for epoch_mean in ([4.0, 8.0], [1.0, 2.0]):  # epochs 0 and 1 (= warmup_epoch) warm up
        assert stch.warming_up
        total = stch.combine(losses)
        assert total.item() == pytest.approx(math.log(0.5) + math.log(3.0))
        assert grad_of(total, losses).tolist() == pytest.approx([2.0, 1 / 3.0])
        assert stch.last_weights.tolist() == pytest.approx([2.0, 1 / 3.0])
        stch.end_epoch(tensor(epoch_mean, device))
    assert not stch.warming_up
    assert stch.nadir.tolist() == [1.0, 2.0]  # the mean losses of epoch `warmup_epoch`
    total = stch.combine(losses)
    # T mu log(exp(1 * log(0.5/1) / mu) + exp(2 * log(3/2) / mu))
    a, b = math.log(0.5) / 0.5, 2 * math.log(1.5) / 0.5
    assert total.item() == pytest.approx(2 * 0.5 * math.log(math.exp(a) + math.exp(b)))
    grad = grad_of(total, losses)
    soft = [math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))]
    expected = [2 * soft[0] * 1.0 / 0.5, 2 * soft[1] * 2.0 / 3.0]  # T p_t lambda_t / L_t
    assert grad.tolist() == pytest.approx(expected, rel=1e-9)
    assert stch.last_weights.tolist() == pytest.approx(expected, rel=1e-9)
    stch.end_epoch(tensor([0.1, 0.1], device))  # the reference stays fixed afterwards
    assert stch.nadir.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("device", DEVICES)
def test_stch_small_mu_is_the_tchebycheff_scalarization(device):
    stch = make("stch", 3, device, mu=1e-4, warmup_epoch=0)
    stch.end_epoch(tensor([2.0, 1.0, 0.5], device))
    losses = tensor([1.0, 1.5, 0.6], device, grad=True)
    total = stch.combine(losses)
    ratios = [math.log(1.0 / 2.0), math.log(1.5), math.log(0.6 / 0.5)]
    assert total.item() == pytest.approx(3 * max(ratios), abs=3 * 1e-4 * math.log(3))
    # All the weight on the worst task (relative to its reference): task 1.
    assert torch.allclose(grad_of(total, losses), tensor([0.0, 3 / 1.5, 0.0], device), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_stch_reset_restarts_the_warm_up(device):
    stch = make("stch", 2, device, warmup_epoch=0)
    stch.end_epoch(tensor([1.0, 1.0], device))
    assert not stch.warming_up
    stch.reset(2, torch.device(device))
    assert stch.warming_up
    stch.end_epoch(tensor([0.0, 1.0], device))  # a zero reference is clamped, not divided by
    total = stch.combine(tensor([0.5, 0.5], device))
    assert torch.isfinite(total)
