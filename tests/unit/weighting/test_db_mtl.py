"""strategies/weighting/db_mtl.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from bench.engine import ENGINES, StepContext, apply_gradients
from unit.weighting._inputs import (
    DEVICES,
    F64,
    make,
    tensor,
)


def db_direction_by_hand(buffer):
    norms = [math.sqrt(sum(x * x for x in row)) for row in buffer]
    top = max(norms)
    alpha = [top / (n + 1e-8) for n in norms]
    return [sum(a * row[j] for a, row in zip(alpha, buffer, strict=True)) for j in range(3)], alpha


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beta_sigma", [0.0, 0.5])
def test_db_mtl_direction_by_hand(device, beta_sigma):
    j1 = [[3.0, 0.0, 4.0], [0.0, 1.0, 0.0]]
    j2 = [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]
    db = make("db_mtl", 2, device, beta=0.9, beta_sigma=beta_sigma)
    buffer = [[0.0] * 3, [0.0] * 3]
    for k, jac in enumerate([j1, j2], start=1):
        beta_k = 0.9 / k**beta_sigma
        buffer = [
            [beta_k * b + (1 - beta_k) * g for b, g in zip(brow, grow, strict=True)]
            for brow, grow in zip(buffer, jac, strict=True)
        ]
        expected, alpha = db_direction_by_hand(buffer)
        d = db.aggregate(tensor(jac, device), tensor([1.0, 1.0], device))
        assert d.tolist() == pytest.approx(expected, rel=1e-9)
        assert db.last_weights.tolist() == pytest.approx(alpha, rel=1e-9)
        assert d.device.type == db.last_weights.device.type == device
    # Step 1: 0.1 J1, norms (0.5, 0.1): both rescaled to 0.5, d = 0.5 (0.6, 0, 0.8) + 0.5 (0, 1, 0).
    db.reset(2, torch.device(device))
    assert db.aggregate(tensor(j1, device)).tolist() == pytest.approx([0.3, 0.5, 0.4], rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_db_mtl_rescales_every_average_to_the_largest_norm(device):
    gen = torch.Generator().manual_seed(0)
    db = make("db_mtl", 4, device)
    for _ in range(3):
        scales = torch.tensor([[0.01], [1.0], [10.0], [100.0]], dtype=F64)
        jac = (torch.randn(4, 7, generator=gen, dtype=F64) * scales).to(device)
        d = db.aggregate(jac)
        scaled = db.last_weights[:, None] * db.grad_buffer
        norms = scaled.norm(dim=1)  # equal up to the 1e-8 in alpha's denominator
        assert torch.allclose(norms, norms.max().expand(4), rtol=1e-5)
        assert torch.allclose(d, scaled.sum(0))
    with pytest.raises(ValueError, match="shape changed"):
        db.aggregate(torch.ones(4, 3, dtype=F64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_db_mtl_takes_the_jacobian_of_the_log_losses(device):
    # Two tasks on one shared scalar weight s, each with a task head h_t: L_t = (a_t s h_t)^2.
    torch.manual_seed(0)
    shared = torch.nn.Parameter(torch.tensor([1.5], dtype=F64, device=device))
    heads = [torch.nn.Parameter(torch.tensor([v], dtype=F64, device=device)) for v in (0.5, 2.0)]
    a = [1.0, 10.0]
    db = make("db_mtl", 2, device, beta=0.0)  # beta = 0: no averaging, the raw log-gradients
    ctx = StepContext(
        model=torch.nn.Module(), strategy=db, engine=ENGINES["loop"](),
        optimizer=torch.optim.SGD([shared, *heads], lr=0.1), shared=[shared], task_specific=heads,
    )
    losses = torch.stack([(a[t] * shared * heads[t]).pow(2).sum() for t in range(2)])
    apply_gradients([losses], ctx)
    # d/ds log(L_t) = 2 / s for both tasks: equal norms, alpha = 1, direction 4 / s.
    assert shared.grad.item() == pytest.approx(2 * 2 / 1.5, rel=1e-6)
    for head in heads:  # task parameters: gradient of their own log-loss, 2 / h_t
        assert head.grad.item() == pytest.approx(2 / head.item(), rel=1e-6)
    assert torch.allclose(db.transform_losses(losses), torch.log(losses + 1e-8))
