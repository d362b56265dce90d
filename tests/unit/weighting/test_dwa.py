"""strategies/weighting/dwa.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from unit.weighting._inputs import (
    DEVICES,
    make,
)


@pytest.mark.parametrize("device", DEVICES)
def test_dwa_weights_follow_the_paper(device):
    dwa = make("dwa", 3, device, temperature=2.0)
    losses = torch.tensor([1.0, 1.0, 1.0], device=device)
    ones = torch.ones(3, device=device)

    dwa.combine(losses)  # epoch 1
    assert torch.equal(dwa.last_weights, ones)
    epoch_means = [[1.0, 2.0, 4.0], [0.5, 2.0, 5.0], [0.25, 3.0, 5.0]]
    dwa.end_epoch(torch.tensor(epoch_means[0], device=device))
    dwa.combine(losses)  # epoch 2
    assert torch.equal(dwa.last_weights, ones)

    for t in (1, 2):  # epochs 3 and 4 use L(t-1) / L(t-2)
        dwa.end_epoch(torch.tensor(epoch_means[t], device=device))
        ratios = [a / b for a, b in zip(epoch_means[t], epoch_means[t - 1], strict=True)]
        exps = [math.exp(r / 2.0) for r in ratios]
        expected = [3 * e / sum(exps) for e in exps]
        task_losses = torch.tensor([0.3, 0.6, 0.9], device=device, requires_grad=True)
        total = dwa.combine(task_losses)
        assert dwa.last_weights.tolist() == pytest.approx(expected, rel=1e-6)
        assert dwa.last_weights.sum().item() == pytest.approx(3.0, rel=1e-6)
        assert total.item() == pytest.approx(
            0.3 * expected[0] + 0.6 * expected[1] + 0.9 * expected[2]
        )
        (grad,) = torch.autograd.grad(total, task_losses)
        assert grad.tolist() == pytest.approx(expected, rel=1e-6)
        assert dwa.last_weights.device.type == device

    dwa.reset(3, torch.device(device))  # reset forgets the history
    dwa.end_epoch(torch.tensor([1.0, 1.0, 1.0], device=device))
    dwa.combine(losses)
    assert torch.equal(dwa.last_weights, ones)


@pytest.mark.parametrize("device", DEVICES)
def test_dwa_temperature_and_zero_losses(device):
    hot = make("dwa", 2, device, temperature=1e6)
    hot.end_epoch(torch.tensor([1.0, 1.0], device=device))
    hot.end_epoch(torch.tensor([0.1, 1.0], device=device))
    hot.combine(torch.ones(2, device=device))
    assert torch.allclose(hot.last_weights, torch.ones(2, device=device), atol=1e-5)

    zero = make("dwa", 2, device)
    zero.end_epoch(torch.tensor([0.0, 1.0], device=device))
    zero.end_epoch(torch.tensor([1.0, 1.0], device=device))
    zero.combine(torch.ones(2, device=device))
    assert torch.isfinite(zero.last_weights).all()
    assert zero.last_weights.sum().item() == pytest.approx(2.0)
