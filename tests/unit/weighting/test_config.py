"""strategies/weighting/con_fig.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_gramian.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unit.weighting._inputs import (
    DEVICES,
    F64,
    direction,
    jacobian_arrays,
    random_jacobian,
    scale_of,
)

fast = settings(max_examples=30, deadline=None)


@pytest.mark.parametrize("device", DEVICES)
def test_config_equal_cosines_and_summed_projection_length(device):
    for (num_tasks, dim), seed in itertools.product([(2, 3), (3, 7), (5, 20)], range(3)):
        jac = random_jacobian(num_tasks, dim, seed, device)
        d = direction("config", jac)
        unit = d / d.norm()
        cosines = (jac / jac.norm(dim=1, keepdim=True)) @ unit
        assert (cosines > 0).all()
        assert torch.allclose(cosines, cosines[0].expand_as(cosines), rtol=1e-9)
        assert d.norm().item() == pytest.approx((jac @ unit).sum().item(), rel=1e-10)


@fast
@given(jac=jacobian_arrays(st.integers(2, 5), st.integers(5, 9)))
def test_config_never_conflicts_with_independent_gradients(jac):
    sv = np.linalg.svd(jac, compute_uv=False)
    assume(sv.min() > 1e-3 * sv.max())
    jacobian = torch.from_numpy(jac)
    d = direction("config", jacobian)
    assert ((jacobian @ d) >= -1e-9 * scale_of(jacobian)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_config_cancelling_unit_gradients_give_zero_in_any_order(device, dtype):
    # Issue 14: rank 1, two exactly opposed pairs: the unit gradients sum to 0, so
    # U^+ 1 = 0 and the direction is 0. An absolute zero test (||U^+ 1||^2 = 3e-33 > 0)
    # returned a direction of ~||J||_F opposing two tasks, for some orders only.
    u = torch.tensor([0.3, -1.7, 0.8, 2.1, 0.05], dtype=F64)
    jac = torch.stack([1.3 * u, -0.7 * u, 2.9 * u, -0.11 * u]).to(device, dtype)
    for order in itertools.permutations(range(4)):
        d = direction("config", jac[list(order)])
        assert d.norm().item() == 0.0
