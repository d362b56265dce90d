"""strategies/weighting/aligned_mtl.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_gramian.py.)"""

from __future__ import annotations

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    F64,
    direction,
    make,
    random_jacobian,
    scale_of,
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_aligned_gradients_are_orthogonal_with_equal_norms(device, scale_mode):
    for num_tasks, dim in [(2, 5), (4, 10), (6, 30)]:
        jac = random_jacobian(num_tasks, dim, 9, device)
        strategy = make("aligned_mtl", num_tasks, device, scale_mode=scale_mode)
        d = strategy.aggregate(jac)
        eig = torch.linalg.eigvalsh(jac @ jac.T).cpu()
        scale = {"min": eig.min(), "median": eig.sort().values[(num_tasks - 1) // 2],
                 "rmse": eig.mean()}[scale_mode]
        # Row t of the aligned gradients B J is the direction for preferences e_t; B G B =
        # lambda_s I: they are orthogonal with equal norms sqrt(lambda_s).
        aligned = torch.stack([
            direction("aligned_mtl", jac, scale_mode=scale_mode,
                      pref_vector=[float(t == k) for k in range(num_tasks)])
            for t in range(num_tasks)
        ])
        expected = scale.item() * torch.eye(num_tasks, dtype=F64, device=device)
        assert torch.allclose(aligned @ aligned.T, expected, atol=1e-9 * scale_of(jac))
        assert torch.allclose(d, aligned.sum(0), atol=1e-10 * (1 + scale_of(jac)))
