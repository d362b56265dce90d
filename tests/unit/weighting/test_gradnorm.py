"""strategies/weighting/gradnorm.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    make,
    tensor,
)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_first_step_by_hand(device):
    gn = make("gradnorm", 2, device, alpha=1.5, lr=0.1)
    jac = tensor([[1.0, 0.0], [0.0, 2.0]], device)  # norms 1 and 2
    d = gn.aggregate(jac, tensor([1.0, 1.0], device))
    assert d.tolist() == [1.0, 2.0]  # the step uses w = (1, 1)
    assert gn.last_weights.tolist() == [1.0, 1.0]
    # G = (1, 2), target = 1.5 r^alpha = 1.5; dL_grad/dw = sign(G - 1.5) ||g|| = (-1, 2).
    updated = [1.0 + 0.1, 1.0 - 0.2]
    expected = [2 * u / sum(updated) for u in updated]
    assert gn.task_weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert gn.task_weights.sum().item() == pytest.approx(2.0)
    d = gn.aggregate(jac, tensor([1.0, 1.0], device))
    assert d.tolist() == pytest.approx([expected[0], 2 * expected[1]], rel=1e-6)
    assert gn.last_weights.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_moves_toward_the_task_that_trains_slower(device):
    gn = make("gradnorm", 2, device, alpha=1.5, lr=0.05)
    jac = tensor([[1.0, 0.0], [0.0, 1.0]], device)  # equal gradient norms
    gn.aggregate(jac, tensor([2.0, 4.0], device))  # L(0)
    assert gn.task_weights.tolist() == [1.0, 1.0]  # equal norms, equal rates: no change
    # Loss ratios (0.9, 0.3): r = (1.5, 0.5); task 0 trains slower, its target is larger.
    gn.aggregate(jac, tensor([1.8, 1.2], device))
    assert gn.task_weights.tolist() == pytest.approx([1.05, 0.95], rel=1e-6)
    for _ in range(5):
        gn.aggregate(jac, tensor([1.8, 1.2], device))
    w = gn.task_weights
    assert w[0] > 1.05 > 0.95 > w[1] and w.sum().item() == pytest.approx(2.0)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_equalises_weighted_gradient_norms(device):
    gn = make("gradnorm", 2, device, lr=0.01)
    gram = tensor([[1.0, 0.3], [0.3, 16.0]], device)  # norms 1 and 4
    losses = tensor([1.0, 1.0], device)  # equal rates: target = mean G for both
    for _ in range(400):
        gn.weights(gram, losses)
    # w_t ||g_t|| equal and sum w = 2: w = (1.6, 0.4), up to the step size.
    assert gn.task_weights.tolist() == pytest.approx([1.6, 0.4], abs=0.03)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_one_task_is_its_own_gradient(device):
    gn = make("gradnorm", 1, device)
    jac = tensor([[0.5, -2.0, 3.0]], device)
    for loss in (1.0, 0.5, 0.1):
        assert torch.equal(gn.aggregate(jac, tensor([loss], device)), jac[0])
        assert gn.task_weights.tolist() == [1.0]


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_needs_losses_and_survives_zero_losses(device):
    gn = make("gradnorm", 2, device)
    with pytest.raises(ValueError, match="losses"):
        gn.aggregate(tensor([[1.0], [2.0]], device))
    gn.aggregate(tensor([[1.0], [2.0]], device), tensor([0.0, 1.0], device))
    gn.aggregate(tensor([[1.0], [2.0]], device), tensor([0.0, 0.0], device))
    assert torch.isfinite(gn.task_weights).all()
    assert gn.task_weights.sum().item() == pytest.approx(2.0)
