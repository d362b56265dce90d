"""strategies/weighting/famo.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_loss_based.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import load_spec
from bench.errors import ConfigError
from bench.grid import expand
from strategies.weighting.famo import softmax_vjp
from unit.weighting._inputs import (
    DEVICES,
    F64,
    grad_of,
    make,
    tensor,
)


def official_famo_logit_gradient(logits, prev, curr, min_losses):
    """The official code's ``update``: autograd VJP of softmax with the log-loss decrease."""
    delta = (prev - min_losses + 1e-8).log() - (curr - min_losses + 1e-8).log()
    w = logits.detach().clone().requires_grad_(True)
    (d,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta.detach())
    return d


def adam_by_hand(grads, lr, weight_decay, num):
    """xi after Adam steps with the given per-step gradient functions, from xi = 0."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    xi, m, v = [0.0] * num, [0.0] * num, [0.0] * num
    for step, grad_fn in enumerate(grads, start=1):
        g = [gi + weight_decay * x for gi, x in zip(grad_fn(xi), xi, strict=True)]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        xi = [
            x - lr * (mi / (1 - b1**step)) / (math.sqrt(vi / (1 - b2**step)) + eps)
            for x, mi, vi in zip(xi, m, v, strict=True)
        ]
    return xi


def softmax_list(xs):
    exps = [math.exp(x - max(xs)) for x in xs]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("device", DEVICES)
def test_famo_combine_matches_the_official_weighted_loss(device):
    famo = make("famo", 3, device)
    assert torch.allclose(famo.z, torch.full((3,), 1 / 3, device=device))
    values = [1.0, 2.0, 0.5]
    losses = tensor(values, device, grad=True)
    total = famo.combine(losses)
    shifted = [v + 1e-8 for v in values]
    c = sum((1 / 3) / d for d in shifted)
    assert total.item() == pytest.approx(sum((1 / 3) * math.log(d) for d in shifted) / c)
    expected = [(1 / 3) / (c * d) for d in shifted]  # z_t / (c D_t): on the simplex
    assert grad_of(total, losses).tolist() == pytest.approx(expected, rel=1e-6)
    assert famo.last_weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert famo.last_weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_famo_logit_updates_follow_the_official_rule(device):
    famo = make("famo", 3, device, gamma=0.01, w_lr=0.025)
    before = [[1.0, 2.0, 0.5], [0.9, 1.0, 0.49]]
    after = [[0.9, 1.0, 0.49], [0.85, 0.9, 0.45]]
    zeros = torch.zeros(3, dtype=F64, device=device)
    hand_grads = []
    for prev, curr in zip(before, after, strict=True):
        logits = famo.logits.detach().to(F64)
        famo.combine(tensor(prev, device))
        famo.post_step(tensor(curr, device))
        # The closed-form VJP is the official autograd one.
        delta = [math.log(p + 1e-8) - math.log(c + 1e-8) for p, c in zip(prev, curr, strict=True)]
        official = official_famo_logit_gradient(
            logits, tensor(prev, device), tensor(curr, device), zeros
        )
        assert torch.allclose(softmax_vjp(logits, tensor(delta, device)), official)

        def grad_fn(xi, delta=delta):  # softmax VJP z * (delta - z . delta), by hand
            z = softmax_list(xi)
            mean = sum(zi * di for zi, di in zip(z, delta, strict=True))
            return [zi * (di - mean) for zi, di in zip(z, delta, strict=True)]

        hand_grads.append(grad_fn)
        expected = adam_by_hand(hand_grads, lr=0.025, weight_decay=0.01, num=3)
        assert famo.logits.detach().tolist() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    z = famo.z
    assert (z > 0).all() and z.sum().item() == pytest.approx(1.0)
    # Task 2's log-loss fell least and task 1's most: 2 gains weight, 1 loses it.
    assert z[2] > 1 / 3 > z[1]
    assert famo.logits.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_famo_balances_a_task_that_lags(device):
    famo = make("famo", 2, device, w_lr=0.1, gamma=0.0)
    losses = tensor([1.0, 1.0], device)
    for _ in range(20):  # task 0 improves by 10% per step, task 1 by 1%
        famo.combine(losses)
        losses = losses * tensor([0.9, 0.99], device)
        famo.post_step(losses)
        w = famo.last_weights
        assert w.sum().item() == pytest.approx(1.0)
    assert famo.z[1] > 0.8  # weight moved to the lagging task
    famo.post_step(losses)  # no combine() since the last update: ignored
    assert famo.z[1] > 0.8
    famo.reset(2, torch.device(device))
    assert torch.equal(famo.logits.detach(), torch.zeros(2, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_famo_min_losses_shift_the_log_losses(device):
    """With min_losses m, FAMO works on log(L - m + eps): negative losses stay finite."""
    m = [-21.0, -2.5]
    famo = make("famo", 2, device, min_losses=m)
    values = [-19.0, -1.5]  # below zero, above the minimum
    losses = tensor(values, device, grad=True)
    total = famo.combine(losses)
    shifted = [v - mi + 1e-8 for v, mi in zip(values, m, strict=True)]
    c = sum(0.5 / d for d in shifted)
    assert total.item() == pytest.approx(sum(0.5 * math.log(d) for d in shifted) / c)
    prev, curr = tensor(values, device), tensor([-19.5, -1.875], device)
    logits = famo.logits.detach().to(F64)
    famo.post_step(curr)
    official = official_famo_logit_gradient(logits, prev, curr, tensor(m, device))
    assert torch.isfinite(famo.logits).all()
    # The first Adam step moves each logit by -lr * sign(gradient).
    assert torch.equal(torch.sign(famo.logits.detach().to(F64)), -torch.sign(official))


def test_famo_min_losses_must_match_the_task_count(write_spec):

    spec = write_spec("""
        name = "famo_m"
        datasets = [{ name = "conflict", num_tasks = 3, num_train = 64 }]
        sharing = ["hps"]
        weighting = [{ name = "famo", min_losses = [0.0, 0.0] }]
    """)
    with pytest.raises(ConfigError, match="min_losses has 2 values for 3 tasks"):
        expand(load_spec(spec))
