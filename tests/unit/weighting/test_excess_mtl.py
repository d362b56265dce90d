"""strategies/weighting/excess_mtl.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_stateful.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    F64,
    make,
    random_jacobian,
)


@pytest.mark.parametrize("device", DEVICES)
def test_excess_mtl_updates_by_hand(device):
    eta = 0.7
    excess = make("excess_mtl", 3, device, robust_step_size=eta)
    squared_sum, initial, log_w = np.zeros((3, 6)), None, np.log(np.full(3, 1 / 3))
    for seed in range(4):
        jac = random_jacobian(3, 6, seed, device)
        d = excess.aggregate(jac)
        g = jac.cpu().numpy()
        squared_sum += g**2
        risks = (g**2 / np.sqrt(squared_sum + 1e-7)).sum(1)
        initial = risks if initial is None else initial
        logits = log_w + eta * risks / initial
        log_w = logits - np.log(np.exp(logits).sum())
        np.testing.assert_allclose(excess.last_weights.cpu().numpy(), np.exp(log_w), atol=1e-12)
        np.testing.assert_allclose(d.cpu().numpy(), np.exp(log_w) @ g, atol=1e-12)
        if seed == 0:  # the first step only sets the baseline: weights stay uniform
            np.testing.assert_allclose(np.exp(log_w), 1 / 3)


@pytest.mark.parametrize("device", DEVICES)
def test_excess_mtl_favours_the_task_further_from_convergence(device):
    # Task 0 keeps its gradient while task 1's shrinks (converging): weight moves to 0.
    excess = make("excess_mtl", 2, device, robust_step_size=0.5)
    base = random_jacobian(2, 10, 0, device)
    for t in range(10):
        excess.aggregate(base * torch.tensor([[1.0], [0.5**t]], dtype=F64, device=device))
    w = excess.last_weights
    assert w[0] > 0.6 and w.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_excess_mtl_zero_first_gradient_sets_baseline_later(device):
    jac = random_jacobian(2, 5, 0, device)
    excess = make("excess_mtl", 2, device)
    excess.aggregate(torch.stack([jac[0], torch.zeros_like(jac[1])]))
    assert excess.initial[1].item() == 0.0
    excess.aggregate(jac)
    assert excess.initial[1].item() > 0.0
    assert torch.isfinite(excess.last_weights).all()
