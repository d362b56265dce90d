"""strategies/weighting/imtl_g.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_gramian.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    make,
    random_jacobian,
)


@pytest.mark.parametrize("device", DEVICES)
def test_imtl_g_equal_projections_on_unit_gradients(device):
    for (num_tasks, dim), seed in itertools.product([(2, 3), (3, 5), (5, 20), (8, 8)], range(3)):
        jac = random_jacobian(num_tasks, dim, seed, device)
        imtl = make("imtl_g", num_tasks, device)
        d = imtl.aggregate(jac)
        assert imtl.last_weights.sum().item() == pytest.approx(1.0)
        projections = (jac / jac.norm(dim=1, keepdim=True)) @ d
        assert torch.allclose(projections, projections[0].expand_as(projections), rtol=1e-8)


def test_imtl_g_matches_the_papers_formula():
    # alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:T}.
    jac = random_jacobian(4, 9, 6)
    units = jac / jac.norm(dim=1, keepdim=True)
    diff_g, diff_u = jac[:1] - jac[1:], units[:1] - units[1:]
    tail = jac[0] @ diff_u.T @ torch.linalg.inv(diff_g @ diff_u.T)
    alpha = torch.cat([1 - tail.sum().reshape(1), tail])
    imtl = make("imtl_g", 4)
    imtl.aggregate(jac)
    assert torch.allclose(imtl.last_weights, alpha, atol=1e-10)
