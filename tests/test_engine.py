"""Gradient engines and the trainer's gradient path."""

from __future__ import annotations

import pytest
import torch

from bench.engine import BatchedEngine, LoopEngine, apply_gradients
from bench.tasks import Task
from strategies import sharing, weighting
from strategies.weighting import WEIGHTING, GradientWeighting

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TASKS = (Task("a", "regression"), Task("b", "multiclass", 3), Task("c", "binary"))


def _setup(device, seed=0):
    torch.manual_seed(seed)
    model = sharing.get("hps", (5,), TASKS).to(device)
    x = torch.randn(16, 5, device=device)
    y = {
        "a": torch.randn(16, device=device),
        "b": torch.randint(0, 3, (16,), device=device),
        "c": torch.randint(0, 2, (16,), device=device).float(),
    }
    out = model(x)
    losses = torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])
    return model, losses


@pytest.mark.parametrize("device", DEVICES)
def test_loop_and_batched_engines_agree_with_autograd(device):
    model, losses = _setup(device)
    shared = model.shared_parameters()
    j_loop = LoopEngine().jacobian(losses, shared)
    j_batched = BatchedEngine().jacobian(losses, shared)
    assert j_loop.shape == (3, sum(p.numel() for p in shared))
    torch.testing.assert_close(j_loop, j_batched)
    g1 = torch.autograd.grad(losses[1], shared, retain_graph=True)
    torch.testing.assert_close(j_loop[1], torch.cat([g.reshape(-1) for g in g1]))


class _SumOfRows(GradientWeighting):
    """Test double: aggregate = sum of rows, which must equal plain backprop of the sum."""

    def aggregate(self, jacobian):
        return jacobian.sum(0)


@pytest.mark.parametrize("engine", [LoopEngine(), BatchedEngine()])
def test_gradient_path_with_sum_equals_loss_path_with_ew(engine):
    model, losses = _setup("cpu")
    shared = model.shared_parameters()
    task_specific = [p for n, p in model.named_parameters() if n.startswith("towers")]
    apply_gradients(losses, _SumOfRows(), shared, task_specific, engine)
    via_jacobian = [p.grad.clone() for p in model.parameters()]

    model2, losses2 = _setup("cpu")
    apply_gradients(losses2, weighting.get("ew"), model2.shared_parameters(), [], engine)
    for g, p in zip(via_jacobian, model2.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_every_trainable_parameter_gets_a_gradient_for_every_strategy():
    for name in WEIGHTING.names():
        model, losses = _setup("cpu")
        strategy = weighting.get(name)
        strategy.reset(3, torch.device("cpu"), seed=0)
        shared = model.shared_parameters()
        ids = {id(p) for p in shared}
        task_specific = [p for p in model.parameters() if id(p) not in ids]
        apply_gradients(losses, strategy, shared, task_specific, LoopEngine())
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
