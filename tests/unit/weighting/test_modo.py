"""strategies/weighting/modo.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_stateful.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    make,
    random_jacobian,
)


def np_project(v: np.ndarray) -> np.ndarray:
    """Simplex projection by bisection on the threshold (independent of the sort formula)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(v - mid, 0, None).sum() > 1 else (lo, mid)
    return np.clip(v - (lo + hi) / 2, 0, None)


@pytest.mark.parametrize("device", DEVICES)
def test_modo_updates_by_hand(device):
    modo = make("modo", 3, device, gamma=0.05, rho=0.2)
    lambd = np.full(3, 1 / 3)
    for seed in range(4):
        step_batch, first, second = (random_jacobian(3, 6, 10 * seed + k, device) for k in range(3))
        d = modo.aggregate_batches([step_batch, first, second], [None] * 3)
        a, b = first.cpu().numpy(), second.cpu().numpy()
        lambd = np_project(lambd - 0.05 * (a @ b.T @ lambd + 0.2 * lambd))
        np.testing.assert_allclose(modo.last_weights.cpu().numpy(), lambd, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ step_batch.cpu().numpy(), atol=1e-9)
    # A single Jacobian plays all three roles.
    jac = random_jacobian(3, 6, 99, device)
    x, y = make("modo", 3, device), make("modo", 3, device)
    assert torch.equal(x.aggregate(jac), y.aggregate_batches([jac] * 3, [None] * 3))
