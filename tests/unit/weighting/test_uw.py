"""strategies/weighting/uw.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    make,
)


@pytest.mark.parametrize("device", DEVICES)
def test_uw_parameters_are_zero_initialised_log_variances(device):
    uw = make("uw", 4, device)
    (s,) = uw.parameters()
    assert isinstance(s, torch.nn.Parameter) and s.requires_grad
    assert s.shape == (4,) and s.device.type == device
    assert torch.equal(s.detach(), torch.zeros(4, device=device))
    uw.reset(2, torch.device(device))  # reset creates fresh parameters
    assert uw.parameters()[0].shape == (2,)


@pytest.mark.parametrize("device", DEVICES)
def test_uw_value_and_gradients_match_the_formula(device):
    uw = make("uw", 3, device)
    (s,) = uw.parameters()
    with torch.no_grad():
        s.copy_(torch.tensor([-1.0, 0.0, 0.7]))
    losses = torch.tensor([0.5, 2.0, 3.0], device=device, requires_grad=True)
    total = uw.combine(losses)
    expected = sum(
        0.5 * math.exp(-sv) * lv + 0.5 * sv
        for sv, lv in zip([-1.0, 0.0, 0.7], [0.5, 2.0, 3.0], strict=True)
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    grad_s, grad_l = torch.autograd.grad(total, [s, losses])
    assert torch.allclose(grad_s, 0.5 - 0.5 * torch.exp(-s.detach()) * losses.detach())
    assert torch.allclose(grad_l, 0.5 * torch.exp(-s.detach()))
    assert torch.allclose(uw.last_weights, 0.5 * torch.exp(-s.detach()))
    assert not uw.last_weights.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_uw_trained_by_an_optimizer_converges_to_log_loss(device):
    # d/ds (0.5 exp(-s) L + 0.5 s) = 0  <=>  s = log L.
    uw = make("uw", 3, device)
    optimizer = torch.optim.Adam(uw.parameters(), lr=0.05)
    losses = torch.tensor([0.2, 1.0, 5.0], device=device)
    for _ in range(600):
        optimizer.zero_grad()
        uw.combine(losses).backward()
        optimizer.step()
    assert torch.allclose(uw.parameters()[0].detach(), losses.log(), atol=1e-2)
