"""Gradient engines and the training step."""

from __future__ import annotations

import pytest
import torch

from bench.engine import ENGINES, StepContext, apply_gradients
from bench.tasks import Task
from strategies import sharing, weighting
from strategies.weighting import WEIGHTING, GradientWeighting, GramianWeighting

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TASKS = (Task("a", "regression"), Task("b", "multiclass", 3), Task("c", "binary"))


def _setup(device, seed=0, strategy="ew", engine="loop"):
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
    strat = weighting.get(strategy) if isinstance(strategy, str) else strategy
    strat.reset(3, torch.device(device), seed=0)
    shared = model.shared_parameters()
    ids = {id(p) for p in shared}
    ctx = StepContext(model, strat, ENGINES[engine](), torch.optim.SGD(model.parameters(), lr=0.1),
                      shared, [p for p in model.parameters() if id(p) not in ids])
    return model, losses, ctx


@pytest.mark.parametrize("device", DEVICES)
def test_loop_and_vmap_jacobians_agree_with_autograd(device):
    model, losses, _ = _setup(device)
    shared = model.shared_parameters()
    j_loop = ENGINES["loop"]().jacobian(losses, shared)
    j_vmap = ENGINES["vmap"]().jacobian(losses, shared)
    assert j_loop.shape == (3, sum(p.numel() for p in shared))
    torch.testing.assert_close(j_loop, j_vmap)
    g1 = torch.autograd.grad(losses[1], shared, retain_graph=True)
    torch.testing.assert_close(j_loop[1], torch.cat([g.reshape(-1) for g in g1]))


class _SumOfRows(GramianWeighting):
    """Test double: weights all one, so the direction is the sum of task gradients."""

    def weights(self, gramian, losses=None):
        return torch.ones(len(gramian), dtype=gramian.dtype, device=gramian.device)


@pytest.mark.parametrize("engine", ["loop", "vmap", "gramian"])
def test_gradient_path_with_sum_equals_loss_path_with_ew(engine):
    model, losses, ctx = _setup("cpu", strategy=_SumOfRows(), engine=engine)
    apply_gradients([losses], ctx)
    via_jacobian = [p.grad.clone() for p in model.parameters()]
    model2, losses2, ctx2 = _setup("cpu", strategy="ew")
    apply_gradients([losses2], ctx2)
    for g, p in zip(via_jacobian, model2.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_rep_engine_backpropagates_the_representation_direction():
    # With weights all one, the rep direction is d(sum L)/d rep, so the shared grads
    # equal plain backprop of the summed loss.
    class SumRep(_SumOfRows):
        supports_rep = True

    model, losses, ctx = _setup("cpu", strategy=SumRep(), engine="rep")
    apply_gradients([losses], ctx)
    got = [p.grad.clone() for p in model.shared_parameters()]
    model2, losses2, ctx2 = _setup("cpu", strategy="ew")
    apply_gradients([losses2], ctx2)
    for g, p in zip(got, model2.shared_parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_engines_refuse_strategies_they_cannot_serve():
    from strategies.sharing import SHARING

    class NotGramian(GradientWeighting):
        def aggregate(self, jacobian, losses=None):
            return jacobian.sum(0)

    with pytest.raises(ValueError, match="engine 'gramian' needs"):
        ENGINES["gramian"]().check(NotGramian, SHARING.get("hps"))
    with pytest.raises(ValueError, match="engine 'rep' is not defined"):
        ENGINES["rep"]().check(NotGramian, SHARING.get("hps"))
    NotGramian.supports_rep = True
    with pytest.raises(ValueError, match="has none"):
        ENGINES["rep"]().check(NotGramian, SHARING.get("stl"))


def test_every_trainable_parameter_gets_a_gradient_for_every_strategy():
    for name in WEIGHTING.names():
        model, losses, ctx = _setup("cpu", strategy=name)
        losses_per_batch = [losses] * ctx.strategy.batches_per_step
        apply_gradients(losses_per_batch, ctx)
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
