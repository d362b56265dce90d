"""strategies/weighting/moco.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_stateful.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies.weighting.moco import project_to_simplex
from unit.weighting._inputs import (
    DEVICES,
    F64,
    make,
    random_jacobian,
)

fast = settings(max_examples=25, deadline=None)


def np_project(v: np.ndarray) -> np.ndarray:
    """Simplex projection by bisection on the threshold (independent of the sort formula)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(v - mid, 0, None).sum() > 1 else (lo, mid)
    return np.clip(v - (lo + hi) / 2, 0, None)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(v=arrays(np.float64, st.integers(1, 7), elements=st.floats(-50, 50)))
def test_simplex_projection(device, v):
    projected = project_to_simplex(torch.from_numpy(v).to(device)).cpu().numpy()
    np.testing.assert_allclose(projected, np_project(v), atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_updates_by_hand(device):
    hyper = {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.3, "gamma_sigma": 1.0, "rho": 0.1}
    moco = make("moco", 3, device, **hyper)
    tracked, lambd = np.zeros((3, 5)), np.full(3, 1 / 3)
    for t in range(1, 5):
        jac = random_jacobian(3, 5, t, device)
        d = moco.aggregate(jac)
        beta_t, gamma_t = 0.5 / t**0.5, 0.3 / t**1.0
        tracked = tracked - beta_t * (tracked - jac.cpu().numpy())
        lambd = np_project(lambd - gamma_t * (tracked @ tracked.T + 0.1 * np.eye(3)) @ lambd)
        np.testing.assert_allclose(moco.tracked.cpu().numpy(), tracked, atol=1e-12)
        np.testing.assert_allclose(moco.last_weights.cpu().numpy(), lambd, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ tracked, atol=1e-9)
    moco.reset(3, torch.device(device))
    assert moco.step == 0 and moco.tracked is None
    assert torch.equal(moco.lambd.cpu(), torch.full((3,), 1 / 3))


@pytest.mark.parametrize("device", DEVICES)
def test_moco_default_is_the_authors_update(device):
    # Issue 14: the default is the authors' code (Trade-Off-MOL's grad_moco / MoCo.py):
    # y <- y - 0.1 (y - g); lambda <- Proj(lambda - 0.1 (y y^T lambda + 0.1 lambda)),
    # constant steps; it was LibMTL's decaying 0.5 / t^0.5 and 0.1 / t^0.5 with rho = 0.
    moco = make("moco", 3, device)
    tracked, lambd = np.zeros((3, 5)), np.full(3, 1 / 3)
    for t in range(1, 6):
        jac = random_jacobian(3, 5, t, device)
        d = moco.aggregate(jac)
        tracked = tracked - 0.1 * (tracked - jac.cpu().numpy())
        lambd = np_project(lambd - 0.1 * (tracked @ (tracked.T @ lambd) + 0.1 * lambd))
        np.testing.assert_allclose(moco.tracked.cpu().numpy(), tracked, atol=1e-12)
        np.testing.assert_allclose(moco.last_weights.cpu().numpy(), lambd, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ tracked, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_libmtl_variant_by_hand(device):
    # LibMTL's MoCo: g_i / (||g_i|| + 1e-8) * L_i, decaying steps, softmax for lambda.
    moco = make("moco", 3, device, variant="libmtl")
    tracked, lambd = np.zeros((3, 5)), np.full(3, 1 / 3)
    for t in range(1, 6):
        jac = random_jacobian(3, 5, t, device)
        losses = torch.tensor([0.5, 2.0, 1.3], dtype=F64, device=device)
        d = moco.aggregate(jac, losses)
        grads = jac.cpu().numpy()
        grads = grads / (np.linalg.norm(grads, axis=1, keepdims=True) + 1e-8)
        grads = grads * losses.cpu().numpy()[:, None]
        tracked = tracked - 0.5 / t**0.5 * (tracked - grads)
        moved = lambd - 0.1 / t**0.5 * (tracked @ tracked.T) @ lambd
        lambd = np.exp(moved) / np.exp(moved).sum()
        np.testing.assert_allclose(moco.last_weights.cpu().numpy(), lambd, atol=1e-12)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ tracked, atol=1e-12)
    with pytest.raises(ValueError, match="losses"):
        make("moco", 3, device, variant="libmtl").aggregate(jac)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_tracks_a_constant_gradient(device):
    # One task, the same gradient every step: Y_t = (1 - prod_s (1 - beta_s)) g -> g.
    jac = random_jacobian(1, 6, 0, device)
    moco = make("moco", 1, device, beta_sigma=0.5, beta=0.5)
    remaining = 1.0
    for t in range(1, 101):
        d = moco.aggregate(jac)
        remaining *= 1 - 0.5 / t**0.5
        assert torch.allclose(d, (1 - remaining) * jac[0], rtol=1e-10)
    assert torch.allclose(d, jac[0], rtol=1e-3)
