"""strategies/weighting/gradvac.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_stateful.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    F64,
    cosine,
    make,
    random_jacobian,
)


@pytest.mark.parametrize("device", DEVICES)
def test_gradvac_first_step_is_pcgrad(device):
    # phi_hat starts at 0, where the vaccine is PCGrad's projection; same seed, same orders.
    for num_tasks in (2, 3, 5):
        jac = random_jacobian(num_tasks, 12, num_tasks, device)
        pcgrad = make("pcgrad", num_tasks, device, seed=3)
        gradvac = make("gradvac", num_tasks, device, seed=3)
        assert torch.allclose(gradvac.aggregate(jac), pcgrad.aggregate(jac), atol=1e-10)
    # By hand: g1 . g2 = -1, so g1' = g1 + g2 / 2 and g2' = g2 + g1.
    jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64, device=device)
    gradvac = make("gradvac", 2, device, beta=0.5)
    expected = torch.tensor([0.5, 0.5], dtype=F64) + torch.tensor([0.0, 1.0], dtype=F64)
    assert torch.allclose(gradvac.aggregate(jac), expected.to(device))
    # The EMA moved both targets halfway to the observed cosine -1/sqrt(2).
    target = 0.5 * -1 / math.sqrt(2)
    assert torch.allclose(gradvac.targets, torch.tensor(
        [[0.0, target], [target, 0.0]], dtype=F64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gradvac_lifts_low_cosines_to_the_target_and_leaves_others(device):
    for angle in (0.3, 1.2, 2.0, 2.9):  # cos(angle) above, then below, the 0.5 target
        g1 = torch.tensor([2.0, 0.0], dtype=F64)
        g2 = 0.7 * torch.tensor([math.cos(angle), math.sin(angle)], dtype=F64)
        jac = torch.stack([g1, g2]).to(device)
        gradvac = make("gradvac", 2, device, beta=0.0)
        gradvac.targets = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=F64, device=device)
        coef = gradvac.coefficients_from_gramian(jac @ jac.T)
        vaccinated = coef @ jac
        if math.cos(angle) >= 0.5:
            assert torch.equal(coef, torch.eye(2, dtype=F64, device=device))
        else:
            for i, j in ((0, 1), (1, 0)):
                # Exact up to the eps = 1e-8 in the denominators.
                assert cosine(vaccinated[i], jac[j]) == pytest.approx(0.5, abs=1e-7)
                # Closed form of the paper's correction coefficient.
                phi = math.cos(angle)
                ni, nj = jac[i].norm().item(), jac[j].norm().item()
                w = ni * (0.5 * math.sqrt(1 - phi**2) - phi * math.sqrt(0.75)) / (
                    nj * math.sqrt(0.75))
                assert coef[i, j].item() == pytest.approx(w, rel=1e-6)
        assert torch.equal(gradvac.targets[0, 1], torch.tensor(0.5, dtype=F64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gradvac_targets_follow_the_ema_of_observed_cosines(device):
    beta = 0.2
    gradvac = make("gradvac", 2, device, beta=beta)
    expected = 0.0
    for seed in range(5):
        jac = random_jacobian(2, 6, seed, device)
        phi = cosine(jac[0], jac[1])  # with T = 2 the pair sees the original g_i
        gradvac.aggregate(jac)
        expected = (1 - beta) * expected + beta * phi
        assert gradvac.targets[0, 1].item() == pytest.approx(expected, abs=1e-8)  # eps
        assert gradvac.targets[1, 0].item() == pytest.approx(expected, abs=1e-8)
