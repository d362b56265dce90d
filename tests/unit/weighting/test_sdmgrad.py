"""strategies/weighting/sdmgrad.py: the method's paper formulas, update rules and fixed bugs.

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
def test_sdmgrad_updates_by_hand(device):
    lamda, beta, momentum, niter = 0.4, 2.0, 0.5, 3
    sdm = make("sdmgrad", 3, device, lamda=lamda, beta=beta, momentum=momentum, niter=niter)
    w = np.full(3, 1 / 3)
    for seed in range(3):
        step_batch, first, second = (random_jacobian(3, 6, 10 * seed + k, device) for k in range(3))
        d = sdm.aggregate_batches([step_batch, first, second], [None] * 3)
        a = first.cpu().numpy() @ second.cpu().numpy().T
        a = a / (np.sqrt(np.clip(np.diag(a), 0, None)).mean() ** 2 + 1e-8)
        velocity = np.zeros(3)  # restarted every outer step; w is warm-started
        for _ in range(niter):
            velocity = momentum * velocity + a @ (w + lamda / 3)
            w = np_project(w - beta * velocity)
        weights = (w + lamda / 3) / (1 + lamda)
        np.testing.assert_allclose(sdm.last_weights.cpu().numpy(), weights, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), weights @ step_batch.cpu().numpy(),
                                   atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_sdmgrad_limits_of_lamda(device):
    jac = random_jacobian(2, 8, 3, device)
    # lamda -> infinity: the average gradient.
    d = make("sdmgrad", 2, device, lamda=1e6).aggregate(jac)
    assert torch.allclose(d, jac.mean(0), rtol=1e-5)
    # lamda = 0: (deterministic) MGDA, the min-norm point of the hull, here in closed form.
    g00, g01, g11 = (jac @ jac.T)[0, 0], (jac @ jac.T)[0, 1], (jac @ jac.T)[1, 1]
    gamma = ((g11 - g01) / (g00 - 2 * g01 + g11)).clamp(0, 1)
    expected = gamma * jac[0] + (1 - gamma) * jac[1]
    d = make("sdmgrad", 2, device, lamda=0.0, niter=2000, beta=0.05).aggregate(jac)
    assert torch.allclose(d, expected, atol=1e-6 * jac.norm().item())
