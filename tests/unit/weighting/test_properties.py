"""Every registered weighting strategy (``WEIGHTING.names()``), parametrised: the properties
it declares (``non_conflicting``, ``permutation_invariant``, ``linear_under_scaling``,
``scale_equivariant``: see ``strategies/weighting/base.py``), and the contract every one
must keep (documentation, shape / dtype / device, finite output, no autograd graph, reset,
degenerate and non-finite input, reproducibility). A new method is covered without
editing this file; its special needs (``batches_per_step``, ``transform_losses``,
``post_step``) are met from its class attributes by ``_inputs.full_step``."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from strategies.weighting import WEIGHTING, GradientWeighting, GramianWeighting, LossWeighting
from strategies.weighting._solvers import HostGramianWeighting
from unit.weighting._asserts import PROPERTY_CHECKS, assert_structure
from unit.weighting._inputs import (
    DEVICES,
    F64,
    batches,
    cosine,
    direction,
    engine_grads,
    full_step,
    make,
    property_jacobians,
    random_jacobian,
    random_losses,
    scale_of,
    step,
)

NAMES = WEIGHTING.names()
PROPERTIES = list(PROPERTY_CHECKS)


def of_kind(base: type) -> list[str]:
    return [n for n in NAMES if issubclass(WEIGHTING.get(n), base)]


GRADIENT = of_kind(GradientWeighting)
GRAMIAN = of_kind(GramianWeighting)
HOST_GRAMIAN = of_kind(HostGramianWeighting)
DECLARED = [(n, p) for n in NAMES for p in PROPERTIES if getattr(WEIGHTING.get(n), p)]


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", NAMES)
def test_documented_with_summary_and_paper(name):
    cls = WEIGHTING.get(name)
    summary = WEIGHTING.summary(name)
    assert summary and summary == cls.__doc__.strip().splitlines()[0]
    doc = importlib.import_module(cls.__module__).__doc__
    assert "arxiv.org/abs/" in doc or "openreview.net" in doc


# Built-ins and what they declare to the engines (kind, supports_rep, batches_per_step,
# wants_post_step_losses): a change here changes how the harness trains them.
DECLARED_NEEDS = {
    "aligned_mtl": ("host", True, 1, False), "cagrad": ("host", True, 1, False),
    "config": ("host", False, 1, False), "db_mtl": ("gradient", False, 1, False),
    "dualproj": ("host", True, 1, False), "dwa": ("loss", False, 1, False),
    "ew": ("loss", False, 1, False), "excess_mtl": ("gradient", False, 1, False),
    "fairgrad": ("gramian", False, 1, False), "famo": ("loss", False, 1, True),
    "gls": ("loss", False, 1, False), "graddrop": ("gradient", True, 1, False),
    "gradnorm": ("gramian", False, 1, False), "gradvac": ("gramian", False, 1, False),
    "imtl": ("host", True, 1, False), "imtl_g": ("host", True, 1, False),
    "ls": ("loss", False, 1, False), "mgda": ("host", True, 1, False),
    "moco": ("gradient", False, 1, False), "modo": ("gradient", False, 3, False),
    "nash_mtl": ("host", False, 1, False), "pcgrad": ("gramian", False, 1, False),
    "rlw": ("loss", False, 1, False), "sdmgrad": ("gradient", False, 3, False),
    "si": ("loss", False, 1, False), "stch": ("loss", False, 1, False),
    "upgrad": ("host", True, 1, False), "uw": ("loss", False, 1, False),
}


@pytest.mark.parametrize("name", sorted(DECLARED_NEEDS))
def test_builtins_registered_with_their_declared_needs(name):
    assert name in WEIGHTING
    cls = WEIGHTING.get(name)
    kind = ("host" if issubclass(cls, HostGramianWeighting) else "gramian"
            if issubclass(cls, GramianWeighting) else "loss"
            if issubclass(cls, LossWeighting) else "gradient")
    assert (kind, cls.supports_rep, cls.batches_per_step, cls.wants_post_step_losses) == (
        DECLARED_NEEDS[name])
    assert (cls.needs == "losses") == issubclass(cls, LossWeighting)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "prop"), DECLARED)
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_declared_property_holds(device, name, prop, num_tasks):
    for label, jac in property_jacobians(num_tasks, device):
        try:
            PROPERTY_CHECKS[prop](name, jac)
        except AssertionError as error:
            raise AssertionError(f"{name} is not {prop} on {label} (T={num_tasks})") from error


def test_the_properties_are_declared_where_expected():
    # Pinned from the papers / torchjd and checked numerically above; a method that loses
    # one of these must say so here.
    assert {n for n, p in DECLARED if p == "non_conflicting"} >= {"mgda", "upgrad", "dualproj"}
    invariant = {n for n, p in DECLARED if p == "permutation_invariant"}
    assert {"pcgrad", "gradvac", "rlw"}.isdisjoint(invariant)  # random task orders / draws
    assert set(HOST_GRAMIAN) <= invariant
    assert {n for n, p in DECLARED if p == "linear_under_scaling"} >= {"pcgrad", "ew", "config"}
    equivariant = {n for n, p in DECLARED if p == "scale_equivariant"}
    assert {n for n, p in DECLARED if p == "linear_under_scaling"} <= equivariant
    assert {"mgda", "upgrad", "dualproj", "imtl_g", "imtl", "cagrad", "aligned_mtl",
            "config"} <= equivariant


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_reset_then_steps_for_several_task_counts(device, name):
    strategy = make(name, 2, device)
    for num_tasks in (2, 3, 7):
        strategy.reset(num_tasks, torch.device(device), 0)
        for seed in range(2):
            jac, losses = random_jacobian(num_tasks, 11, seed, device), random_losses(num_tasks, seed, device)
            d = full_step(strategy, jac, losses)
            assert d.shape == (11,) and torch.isfinite(d).all()
            weights = strategy.last_weights
            assert weights is None or (weights.shape == (num_tasks,) and torch.isfinite(weights).all())
        assert_structure(name, random_jacobian(num_tasks, 11, 9, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", of_kind(LossWeighting))
def test_loss_strategy_keeps_the_graph_to_the_losses_only(device, name):
    strategy = make(name, 3, device)
    losses = random_losses(3, 0, device).requires_grad_(True)
    total = strategy.combine(strategy.transform_losses(losses))
    assert total.shape == () and torch.isfinite(total)
    (grad,) = torch.autograd.grad(total, losses)
    assert torch.isfinite(grad).all()
    weights = strategy.last_weights
    assert weights is None or (not weights.requires_grad and weights.device == losses.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [1, 3])
@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_strategy_returns_a_detached_direction(device, num_tasks, name):
    # Issue 14, torchjd's contract: the direction carries no autograd graph, whatever J
    # carries (several strategies returned w @ J with J's graph attached).
    assert {"mgda", "pcgrad", "cagrad", "upgrad", "moco"} <= set(GRADIENT)
    strategy = make(name, num_tasks, device)
    for step_index in range(2):
        leaves = [
            random_jacobian(num_tasks, 7, 10 * step_index + k, device).requires_grad_()
            for k in range(strategy.batches_per_step)
        ]
        jacobians = [2.0 * leaf for leaf in leaves]  # non-leaf, with a graph
        losses = [torch.rand(num_tasks, dtype=F64, device=device) + 0.5 for _ in leaves]
        if strategy.batches_per_step > 1:
            d = strategy.aggregate_batches(jacobians, losses)
        else:
            d = strategy.aggregate(jacobians[0], losses[0])
        assert d.shape == (7,), name
        assert d.grad_fn is None and not d.requires_grad, name
        weights = strategy.last_weights
        assert weights is None or not weights.requires_grad, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADIENT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
def test_shape_dtype_device_and_finite(device, name, dtype):
    strategy = make(name, 3, device)
    losses = torch.ones(3, dtype=F64, device=device)
    for seed in range(2):
        jacobians = [j.to(dtype) for j in batches(strategy, 3, 17, seed, device)]
        d = step(strategy, jacobians, losses)
        assert d.shape == (17,) and d.dtype == dtype and d.device == jacobians[0].device
        assert torch.isfinite(d).all()
        if strategy.last_weights is not None:
            assert strategy.last_weights.shape == (3,)
            assert torch.isfinite(strategy.last_weights).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", HOST_GRAMIAN)
def test_direction_is_weights_of_the_gramian_times_j(device, name):
    for num_tasks, dim in [(2, 7), (4, 30)]:
        jac = random_jacobian(num_tasks, dim, 1, device)
        strategy = make(name, num_tasks, device)
        d = strategy.aggregate(jac)
        assert d.shape == (dim,) and d.dtype == F64 and d.device == jac.device
        w = strategy.last_weights
        assert w.shape == (num_tasks,) and w.device == jac.device
        assert torch.allclose(d, w @ jac, atol=1e-12 * (1 + scale_of(jac)))
        # The gramian engine only calls weights(G): same direction.
        again = make(name, num_tasks, device).weights(jac @ jac.T)
        assert torch.allclose(again, w, atol=1e-10)


def degenerate_jacobians(device: str) -> dict[str, torch.Tensor]:
    base = random_jacobian(4, 10, 7, device)
    zero_row = base.clone()
    zero_row[2] = 0.0
    collinear = base.clone()
    collinear[1] = 3.0 * base[0]
    collinear[3] = -0.5 * base[0]
    badly_scaled = base.clone()
    badly_scaled[0] *= 1e-6
    badly_scaled[1] *= 1e6
    small = random_jacobian(3, 8, 0, device)
    return {
        "zero_row": zero_row,
        "all_zero": torch.zeros_like(base),
        "collinear": collinear,
        "identical": base[:1].repeat(4, 1),
        "badly_scaled": badly_scaled,
        "more_tasks_than_params": random_jacobian(6, 3, 8, device),
        "3 zero row": torch.stack([small[0], torch.zeros_like(small[0]), small[2]]),
        "3 all zero": torch.zeros_like(small),
        "3 collinear": torch.stack([small[0], -2.0 * small[0], 0.5 * small[0]]),
        "3 duplicate": torch.stack([small[0], small[0], small[1]]),
        "3 badly scaled": small * torch.tensor([[1e-6], [1.0], [1e6]], dtype=F64, device=device),
        "3 tiny": small * 1e-30,
        "3 huge": small * 1e30,
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADIENT)
def test_degenerate_jacobians_give_finite_output(device, name):
    for label, jac in degenerate_jacobians(device).items():
        strategy = make(name, jac.shape[0], device)
        losses = torch.ones(jac.shape[0], dtype=F64, device=device)
        for _ in range(3):  # also the state built from degenerate steps
            d = step(strategy, [jac] * strategy.batches_per_step, losses)
            assert torch.isfinite(d).all(), (name, label)
            if strategy.last_weights is not None:
                assert torch.isfinite(strategy.last_weights).all(), (name, label)
        if "all zero" in label or label == "all_zero":
            assert torch.equal(d, torch.zeros_like(d)), (name, label)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADIENT)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_jacobian_raises_a_clear_error(device, name, bad):
    # Host-Gramian methods (and FairGrad) copy to the host anyway and check there; on
    # accelerators the others leave it to the harness's per-epoch divergence test.
    if device != "cpu" and not (name in HOST_GRAMIAN or name == "fairgrad"):
        pytest.skip("on accelerators the check is the harness's per-epoch divergence test")
    strategy = make(name, 3, device)
    jacobians = batches(strategy, 3, 6, 0, device)
    jacobians[-1][1, 2] = bad
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        step(strategy, jacobians, torch.ones(3, dtype=F64, device=device))


# Strategies whose output depends on their state or random stream: without reset, the
# same inputs give different outputs.
MOVES_ON = {"pcgrad", "graddrop", "gradvac", "moco", "excess_mtl", "sdmgrad", "modo"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_outputs_and_reset_clears_state(device, name):
    # SDMGrad's default inner loop converges whatever its warm start: one small step here.
    hyper = {"niter": 1, "beta": 0.1} if name == "sdmgrad" else {}
    first, second = make(name, 4, device, 5, **hyper), make(name, 4, device, 5, **hyper)
    sequence = [(random_jacobian(4, 12, s, device), random_losses(4, s, device)) for s in range(4)]
    outputs = [full_step(first, *inputs) for inputs in sequence]
    for inputs, out in zip(sequence, outputs, strict=True):
        assert torch.equal(full_step(second, *inputs), out)
    first.reset(4, torch.device(device), seed=5)  # back to a fresh state
    for inputs, out in zip(sequence, outputs, strict=True):
        assert torch.equal(full_step(first, *inputs), out)
    if name in MOVES_ON:
        # Without reset, the state (or the random stream) moves on: calls differ.
        assert any(not torch.equal(full_step(second, *inputs), out)
                   for inputs, out in zip(sequence, outputs, strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["moco", "excess_mtl", "sdmgrad", "modo"])
def test_weights_stay_on_the_simplex(device, name):
    strategy = make(name, 4, device)
    for seed in range(6):
        jacobians = batches(strategy, 4, 10, seed, device)
        d = step(strategy, jacobians)
        w = strategy.last_weights
        assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-9)
        if name != "moco":  # MoCo's direction is lambda @ Y, checked separately
            assert torch.allclose(d, w @ jacobians[0], atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADIENT)
def test_single_task_follows_its_gradient(device, name):
    # Every method moves along the only task's gradient; most return it as it is.
    strategy = make(name, 1, device)
    for seed in range(3):
        # MoCo's and DB-MTL's directions track the gradients seen so far: keep it constant.
        jac = random_jacobian(1, 9, 0 if name in ("moco", "db_mtl") else seed, device)
        d = step(strategy, [jac] * strategy.batches_per_step, torch.ones(1, dtype=F64, device=device))
        assert cosine(d, jac[0]) == pytest.approx(1.0, abs=1e-12)
        if name in {"pcgrad", "graddrop", "gradvac", "excess_mtl", "sdmgrad", "modo", "mgda",
                    "upgrad", "dualproj", "imtl_g", "imtl", "aligned_mtl", "config", "gradnorm"}:
            assert torch.allclose(d, jac[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_single_task_rescaled_by_cagrad_and_nash_mtl(device):
    jac = random_jacobian(1, 9, 3, device)
    g = jac[0]
    # CAGrad: the ball around g has radius c ||g||: d = (1 + c) g, then the official rescale.
    assert torch.allclose(direction("cagrad", jac, rescale=0), 1.5 * g)
    assert torch.allclose(direction("cagrad", jac), 1.5 / 1.25 * g)
    # Nash-MTL, as the official code: alpha = 1 passes its stopping test on the normalised
    # Gramian (G / ||G||_F = 1), so d = g, then clipped to max_norm = 1.
    assert torch.allclose(direction("nash_mtl", jac, max_norm=0.0), g)
    assert g.norm() > 1 and torch.allclose(direction("nash_mtl", jac), g / g.norm())


# --------------------------------------------------------------------------- engines


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRAMIAN)
def test_engines_vmap_loop_and_gramian_agree_and_rep_runs(device, name):
    by_gramian, strategy = engine_grads(name, "gramian", device, seed=2)
    for engine in ("vmap", "loop"):
        by_engine, _ = engine_grads(name, engine, device, seed=2)
        for a, b in zip(by_engine, by_gramian, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert strategy.last_weights is not None and torch.isfinite(strategy.last_weights).all()
    if strategy.supports_rep:
        by_rep, _ = engine_grads(name, "rep", device, seed=2)
        assert all(torch.isfinite(g).all() for g in by_rep)
    for parameter in strategy.parameters():  # IMTL's loss scales
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
