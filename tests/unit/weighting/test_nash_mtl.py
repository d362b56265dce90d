"""strategies/weighting/nash_mtl.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_gramian.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    F64,
    direction,
    make,
    random_jacobian,
)


def badly_scaled_jacobian(device: str) -> torch.Tensor:
    """Three correlated task gradients, the first one 1000x the others."""
    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(3, 10, generator=gen, dtype=F64)
    jac = jac + 0.5 * torch.randn(10, generator=gen, dtype=F64)
    return (jac * torch.tensor([1000.0, 1.0, 1.0], dtype=F64)[:, None]).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_is_scale_invariant_at_the_nash_solution(device):
    # Orthogonal gradients: G is diagonal and G alpha = 1/alpha gives alpha_t = 1 / ||g_t||.
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    jac = (torch.tensor([0.5, 2.0, 7.0], dtype=F64)[:, None] * basis[:3]).to(device)
    units = jac / jac.norm(dim=1, keepdim=True)
    for factor in [1e-2, 1.0, 50.0]:
        d = direction("nash_mtl", factor * jac, max_norm=0.0)
        assert torch.allclose(d, units.sum(0), atol=1e-6)
        clipped = direction("nash_mtl", factor * jac)
        assert torch.allclose(clipped, units.sum(0) / math.sqrt(3), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_reaches_g_alpha_equals_one_over_alpha(device):
    # Positively correlated gradients: the official sequence stops at the Nash solution.
    gen = torch.Generator().manual_seed(3)
    common = torch.randn(12, generator=gen, dtype=F64)
    jac = (2 * common + 0.5 * torch.randn(4, 12, generator=gen, dtype=F64)).to(device)
    jac = jac * torch.tensor([0.3, 1.0, 2.0, 5.0], dtype=F64, device=device)[:, None]
    nash = make("nash_mtl", 4, device, max_norm=0.0)
    d = nash.aggregate(jac)
    alpha = nash.last_weights
    assert (alpha > 0).all()
    assert torch.allclose((jac @ jac.T) @ alpha, 1 / alpha, rtol=1e-6)
    assert (d @ d).item() == pytest.approx(4.0, rel=1e-6)  # alpha^T G alpha = T
    assert torch.allclose(jac @ d, 1 / alpha, rtol=1e-6)  # every task gains 1/alpha_t


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_clipping_reuse_and_reset(device):
    jac = random_jacobian(3, 10, 4, device)
    nash = make("nash_mtl", 3, device)
    assert direction("nash_mtl", jac).norm().item() <= 1.0 + 1e-12
    unclipped = direction("nash_mtl", jac, max_norm=0.0)
    big = direction("nash_mtl", jac, max_norm=100.0)
    assert torch.allclose(big, unclipped)
    # update_weights_every: the weights of the first step are reused on the next ones.
    lazy = make("nash_mtl", 3, device, update_weights_every=3, max_norm=0.0)
    lazy.aggregate(jac)
    first = lazy.last_weights.clone()
    lazy.aggregate(2 * jac + 1)
    assert torch.equal(lazy.last_weights, first)
    lazy.aggregate(2 * jac + 1)
    lazy.aggregate(2 * jac + 1)  # step 3: recomputed
    assert not torch.equal(lazy.last_weights, first)
    # State: warm start from the previous step's alpha; reset forgets it.
    nash.aggregate(jac)
    nash.reset(3, torch.device(device))
    assert torch.equal(nash.aggregate(jac), direction("nash_mtl", jac))


def test_nash_mtl_without_a_solution_keeps_the_previous_weights():
    # 0 in the convex hull: no alpha >= 0 with G alpha > 0; the official code keeps alpha
    # (all ones at the first step).
    jac = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, -1.0]], dtype=F64)
    nash = make("nash_mtl", 3, max_norm=0.0)
    assert torch.allclose(nash.aggregate(jac), jac.sum(0))
    assert torch.equal(nash.last_weights, torch.ones(3, dtype=F64))


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_direct_solver_reaches_the_nash_point_on_badly_scaled_gradients(device):
    # Issue 14: with one task 1000x the others the official sequence stops where
    # alpha_t (G alpha)_t spreads by ~4600x across tasks; solver="direct" solves
    # G alpha = 1/alpha, where alpha_t (G alpha)_t = 1 for every t.
    jac = badly_scaled_jacobian(device)
    gram = jac @ jac.T
    direct = make("nash_mtl", 3, device, max_norm=0.0, solver="direct")
    official = make("nash_mtl", 3, device, max_norm=0.0)
    for _ in range(3):
        direct.aggregate(jac)
        official.aggregate(jac)
    alpha = direct.last_weights
    balance = alpha * (gram @ alpha)
    assert (alpha > 0).all()
    assert torch.allclose(balance, torch.ones_like(balance), rtol=1e-7)
    assert direct.stats() == {"nash_point_reached_fraction": 1.0, "nash_solves": 3.0}
    # The default stays the official sequence, and its stats say it missed the point.
    alpha = official.last_weights
    balance = alpha * (gram @ alpha)
    assert (balance.max() / balance.min()).item() > 100.0
    assert official.stats() == {"nash_point_reached_fraction": 0.0, "nash_solves": 3.0}


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_stats_count_recomputations_and_reset(device):
    # Well-conditioned: the official sequence reaches the Nash point; update_weights_every
    # counts recomputations only; reset clears the counts; other strategies report {}.
    jac = random_jacobian(3, 10, 4, device).abs()  # no conflict: a Nash point exists
    nash = make("nash_mtl", 3, device, update_weights_every=2)
    assert nash.stats() == {}
    for _ in range(5):
        nash.aggregate(jac)
    assert nash.stats() == {"nash_point_reached_fraction": 1.0, "nash_solves": 3.0}
    nash.reset(3, torch.device(device))
    assert nash.stats() == {}
    assert make("mgda", 3, device).stats() == {}
