"""strategies/weighting/fairgrad.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_stateful.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.weighting.fairgrad import solve_alpha_fair
from unit.weighting._inputs import (
    DEVICES,
    F64,
    make,
    random_jacobian,
)


def fair_residual(gram: torch.Tensor, w: torch.Tensor, alpha: float) -> float:
    target = w ** (-1.0 / alpha)
    return ((gram @ w - target).abs() / target).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_the_alpha_fair_condition(device, alpha):
    for num_tasks, dim in [(2, 5), (3, 3), (4, 20), (6, 40)]:
        jac = random_jacobian(num_tasks, dim, num_tasks, device)
        fairgrad = make("fairgrad", num_tasks, device, alpha=alpha)
        d = fairgrad.aggregate(jac)
        w = fairgrad.last_weights
        assert (w > 0).all()
        assert torch.allclose(d, w @ jac, atol=1e-12)
        assert fair_residual(jac @ jac.T, w, alpha) < 1e-9
        # Each task's rate g_i . d is w_i^(-1/alpha): the fairness condition on the rates.
        assert torch.allclose(jac @ d, w ** (-1 / alpha), rtol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_fairgrad_special_cases(device):
    # Orthogonal gradients: n_i^2 w_i = w_i^(-1/alpha), so w_i = n_i^(-2 alpha / (alpha + 1)).
    norms = torch.tensor([0.5, 2.0, 7.0], dtype=F64, device=device)
    jac = torch.diag(norms)
    for alpha in (0.5, 1.0, 2.0, 10.0):
        fairgrad = make("fairgrad", 3, device, alpha=alpha)
        fairgrad.aggregate(jac)
        expected = norms ** (-2 * alpha / (alpha + 1))
        assert torch.allclose(fairgrad.last_weights, expected, rtol=1e-9)
    jac = random_jacobian(4, 10, 1, device)
    jac = jac.abs()  # positive rates under any positive weights
    # alpha = 0: linear scalarisation, the plain sum; small alpha approaches it.
    fairgrad = make("fairgrad", 4, device, alpha=0.0)
    assert torch.equal(fairgrad.aggregate(jac), jac.sum(0))
    fairgrad = make("fairgrad", 4, device, alpha=0.01)
    fairgrad.aggregate(jac)
    assert torch.allclose(fairgrad.last_weights, torch.ones(4, dtype=F64, device=device),
                          atol=0.1)
    # alpha = 1: proportional fairness, Nash-MTL's condition w_i (G w)_i = 1.
    jac = random_jacobian(4, 10, 2, device)
    fairgrad = make("fairgrad", 4, device, alpha=1.0)
    d = fairgrad.aggregate(jac)
    assert torch.allclose(fairgrad.last_weights * (jac @ d), torch.ones(4, dtype=F64,
                          device=device), rtol=1e-9)
    # alpha -> infinity: max-min fairness, all tasks improve at (nearly) the same rate.
    d = make("fairgrad", 4, device, alpha=1000.0).aggregate(jac)
    rates = jac @ d
    assert (rates.max() / rates.min()).item() < 1.02


@pytest.mark.parametrize("device", DEVICES)
def test_fairgrad_weights_scale_as_the_equation_says(device):
    jac = random_jacobian(3, 8, 4, device)
    for alpha, factor in [(0.5, 1e-3), (1.0, 50.0), (3.0, 1e4)]:
        fairgrad = make("fairgrad", 3, device, alpha=alpha)
        fairgrad.aggregate(jac)
        w = fairgrad.last_weights
        fairgrad.aggregate(factor * jac)
        expected = w * factor ** (-2 * alpha / (alpha + 1))
        assert torch.allclose(fairgrad.last_weights, expected, rtol=1e-8)


def test_fairgrad_solver_edge_cases():
    gram = np.array([[4.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 2.0]])
    w = solve_alpha_fair(gram, 1.0)
    assert w[1] == 0.0 and (w[[0, 2]] > 0).all()
    reduced = gram[np.ix_([0, 2], [0, 2])]
    np.testing.assert_allclose(reduced @ w[[0, 2]], 1 / w[[0, 2]], rtol=1e-10)
    assert (solve_alpha_fair(np.zeros((2, 2)), 2.0) == 0).all()
    conflict = np.array([[1.0, -1.0], [-1.0, 1.0]])  # g2 = -g1: no positive solution
    assert np.isfinite(solve_alpha_fair(conflict, 1.0)).all()
