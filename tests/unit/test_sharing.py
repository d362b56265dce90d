"""Sharing architectures: shapes, parameter partition, diagnostics, equal capacity, and every
architecture x every registered weighting strategy through the training step."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from bench.assembly import require_engine, step_context
from bench.config import load_spec
from bench.engine import ENGINES, train_step
from bench.grid import expand
from bench.tasks import Task
from bench.trial import execute
from strategies import sharing, weighting
from strategies.sharing._common import (
    REFERENCE_CNN,
    REFERENCE_MLP,
    count_parameters,
    match_params,
    reference_parameter_counts,
)
from strategies.sharing.backbones import backbone, output_dim, stage_shapes
from strategies.sharing.base import BackboneSpec
from strategies.sharing.cross_stitch import cross_stitch_init
from strategies.sharing.dselect_k import DSelectKGate, smooth_step
from strategies.weighting.base import GradientWeighting

TASKS = (Task("reg", "regression"), Task("bin", "binary"), Task("cls", "multiclass", 3))
MLP_SHAPE = (10,)
IMAGE_SHAPE = (1, 6, 8)
MLP = BackboneSpec(hidden=(8, 8), tower=(4,))
CNN = BackboneSpec(hidden=(8,), tower=(4,), kind="cnn", channels=(3, 4))
CNN_ONLY = {"mtan"}
GATED = {"mmoe", "omoe", "cgc", "ple", "dselect_k"}
# `landscape` moves a point on objective tasks (toy2), not data: tests/unit/test_capacity_and_toy.py.
ARCHS = [n for n in sharing.names() if n != "landscape"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _configs(name: str):
    """(input_shape, spec) pairs the architecture supports."""
    cnn = [(IMAGE_SHAPE, CNN)]
    return cnn if name in CNN_ONLY else [(MLP_SHAPE, MLP), *cnn]


CASES = [(name, shape, spec) for name in ARCHS for shape, spec in _configs(name)]
CASE_IDS = [f"{name}-{spec.kind}" for name, _, spec in CASES]


def _build(name, shape, spec, tasks=TASKS, **hp):
    torch.manual_seed(0)
    return sharing.get(name, shape, tasks, spec, **hp)


def _x(shape, n=5):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "shape", "spec"), CASES, ids=CASE_IDS)
def test_outputs_have_the_tasks_shapes(name, shape, spec):
    model = _build(name, shape, spec)
    out = model(_x(shape))
    assert set(out) == {t.name for t in TASKS}
    assert out["reg"].shape == (5, 1) and out["bin"].shape == (5, 1) and out["cls"].shape == (5, 3)
    assert all(torch.isfinite(o).all() for o in out.values())
    # `mtlbench list sharing` shows the first docstring line: it must be the whole summary.
    lines = inspect.getdoc(sharing.SHARING.get(name)).splitlines()
    assert lines[0].endswith(".") and (len(lines) == 1 or not lines[1].strip())


@pytest.mark.parametrize(("name", "shape", "spec"), CASES, ids=CASE_IDS)
def test_shared_and_task_parameters_partition_the_model(name, shape, spec):
    model = _build(name, shape, spec)
    groups = [model.shared_parameters()] + [model.task_parameters(t.name) for t in TASKS]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)), "a parameter is listed twice"
    assert set(ids) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(("name", "shape", "spec"), CASES, ids=CASE_IDS)
def test_task_parameters_reach_only_their_task(name, shape, spec):
    """What the engine relies on: a task parameter's gradient comes from its own task only;
    a shared one feeds several tasks."""
    model = _build(name, shape, spec)
    out = model(_x(shape))
    params = list(model.parameters())
    reaches = {id(p): set() for p in params}
    for t in TASKS:
        grads = torch.autograd.grad(out[t.name].sum(), params, retain_graph=True,
                                    allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                reaches[id(p)].add(t.name)
    for t in TASKS:
        for p in model.task_parameters(t.name):
            assert reaches[id(p)] == {t.name}
    for p in model.shared_parameters():
        assert len(reaches[id(p)]) > 1


@pytest.mark.parametrize("name", sorted(GATED))
def test_expert_utilisation_sums_to_one_per_task(name):
    model = _build(name, MLP_SHAPE, MLP)
    model.reset_stats()
    model(_x(MLP_SHAPE))  # training forward: not counted
    assert not model.stats()["expert_utilisation"]
    model.eval()
    with torch.no_grad():
        model(_x(MLP_SHAPE, 7))
        model(_x(MLP_SHAPE, 3))
    stats = model.stats()
    util = stats["expert_utilisation"]
    assert set(util) == {t.name for t in TASKS}
    for weights in util.values():
        assert len(weights) >= 2 and all(w >= 0 for w in weights)
        assert math.isclose(sum(weights), 1.0, rel_tol=1e-5)
    levels = stats.get("expert_utilisation_by_level", [])
    for j, level in enumerate(levels):  # the last level has no shared gate
        assert set(level) == {t.name for t in TASKS} | ({"shared"} if j < len(levels) - 1 else set())
        assert all(math.isclose(sum(w), 1.0, rel_tol=1e-5) for w in level.values())
    model.reset_stats()
    assert not model.stats()["expert_utilisation"]


def test_ple_reports_every_level_and_names_the_experts():
    model = _build("ple", MLP_SHAPE, MLP, num_levels=2, num_shared_experts=1, num_task_experts=2)
    model.eval()
    model(_x(MLP_SHAPE))
    stats = model.stats()
    assert len(stats["expert_utilisation_by_level"]) == 2
    assert stats["experts"]["reg"] == ["reg/0", "reg/1", "shared/0"]
    assert len(stats["experts"]["shared"]) == len(stats["expert_utilisation_by_level"][0]["shared"])
    with pytest.raises(ValueError, match="num_levels=3 needs at least 3 backbone layers"):
        _build("ple", MLP_SHAPE, MLP, num_levels=3)


def test_mtan_needs_a_convolutional_backbone():
    with pytest.raises(ValueError, match=r"MTAN needs a convolutional backbone \(model.backbone = \"cnn\""):
        sharing.get("mtan", MLP_SHAPE, TASKS, MLP)


def test_cnn_backbone_shapes_and_inputs():
    spec = BackboneSpec(hidden=(5,), kind="cnn", channels=(2, 3, 4))
    assert stage_shapes((1, 8, 12), spec) == [(2, 4, 6), (3, 2, 3), (4, 1, 1), (5,)]
    net = backbone((8, 12), spec)  # (H, W): one channel
    assert net(torch.randn(2, 8, 12)).shape == (2, output_dim((8, 12), spec))
    assert backbone((1, 8, 12), BackboneSpec(hidden=(), kind="cnn", channels=(2,)))(
        torch.randn(2, 1, 8, 12)).shape == (2, 2 * 4 * 6)
    with pytest.raises(ValueError, match="cnn backbone needs image inputs"):
        backbone((10,), spec)


def test_cross_stitch_units_start_near_identity():
    alpha = cross_stitch_init(3, 0.9)
    assert torch.allclose(alpha.diagonal(), torch.full((3,), 0.9))
    assert torch.allclose(alpha.sum(1), torch.ones(3))
    model = _build("cross_stitch", MLP_SHAPE, MLP)
    assert len(model.units) == len(MLP.hidden)


def test_dselect_k_gate_is_a_sparse_convex_combination():
    t = torch.linspace(-1, 1, 101)
    s = smooth_step(t, 1.0)
    assert s[t <= -0.5].eq(0).all() and s[t >= 0.5].eq(1).all() and math.isclose(s[50], 0.5, abs_tol=1e-6)
    torch.manual_seed(0)
    for n in (4, 5, 8):  # 5: codes 5..7 fold onto experts 0..2
        gate = DSelectKGate(6, n, k=2, gamma=1.0)
        weights, selectors = gate(torch.randn(9, 6))
        assert weights.shape == (9, n)
        assert torch.allclose(weights.sum(-1), torch.ones(9), atol=1e-6)
        assert torch.allclose(selectors.sum(-1), torch.ones(9, 2), atol=1e-6)
        with torch.no_grad():  # saturated selectors: at most k experts per example
            gate.z.weight.zero_()
            gate.z.bias.copy_(torch.tensor([3.0, -3.0, 3.0, 3.0, 3.0, -3.0])[: gate.z.bias.numel()])
        weights, _ = gate(torch.randn(9, 6))
        assert ((weights > 0).sum(-1) <= 2).all()


def test_regularization_hooks():
    soft = _build("soft", MLP_SHAPE, MLP, l2=0.5)
    penalty = soft.regularization()
    assert penalty > 0
    penalty.backward()
    assert all(p.grad is not None for c in soft.columns.values() for p in c.parameters())
    names = list(soft.columns)
    soft.columns[names[1]].load_state_dict(soft.columns[names[0]].state_dict())
    soft.columns[names[2]].load_state_dict(soft.columns[names[0]].state_dict())
    assert soft.regularization() == 0
    dsk = _build("dselect_k", MLP_SHAPE, MLP, entropy_reg=0.1)
    dsk(_x(MLP_SHAPE))
    reg = dsk.regularization()
    assert reg > 0 and reg.requires_grad
    assert _build("dselect_k", MLP_SHAPE, MLP).regularization() == 0


@pytest.mark.parametrize("name", [n for n in ARCHS if sharing.SHARING.get(n).has_representation])
def test_representation_carries_every_shared_gradient(name):
    """The ``rep`` engine backpropagates a direction from ``model.representation`` to the shared
    parameters; with the direction sum_t J_t it must equal the gradient of sum_t L_t."""

    class SumRep(GradientWeighting):
        supports_rep = True

        def aggregate(self, jacobian, losses=None):
            return jacobian.sum(0)

    model = _build(name, MLP_SHAPE, MLP)
    engine = ENGINES["rep"]()
    engine.require_support(SumRep, type(model))
    x = _x(MLP_SHAPE, 16)
    out = model(x)
    losses = torch.stack([out[t.name].square().mean() for t in TASKS])
    shared = model.shared_parameters()
    expected = torch.autograd.grad(losses.sum(), shared, retain_graph=True)
    ctx = step_context(model, SumRep(), engine, None, shared)
    engine.shared_gradients([losses], SumRep(), ctx, timer=type("T", (), {"mark": lambda *a: None})())
    for p, g in zip(shared, expected, strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("name", ARCHS)
def test_match_params_lands_within_ten_percent(name):
    ref = REFERENCE_CNN if name in CNN_ONLY else REFERENCE_MLP
    target = count_parameters("hps", **ref)
    spec = match_params(name, ref["input_shape"], ref["tasks"], ref["backbone"], target)
    assert len(spec.hidden) == len(ref["backbone"].hidden) and spec.kind == ref["backbone"].kind
    got = count_parameters(name, ref["input_shape"], ref["tasks"], spec)
    assert abs(got - target) <= 0.1 * target, (spec, got, target)


def test_match_params_keeps_a_spec_that_already_matches():
    ref = REFERENCE_MLP
    target = count_parameters("hps", **ref)
    assert match_params("hps", ref["input_shape"], ref["tasks"], ref["backbone"], target) == ref["backbone"]
    bigger = match_params("mmoe", ref["input_shape"], ref["tasks"], ref["backbone"], 10 * target,
                          num_experts=2)
    assert bigger.hidden[0] > ref["backbone"].hidden[0]


def test_reference_parameter_counts():
    counts = reference_parameter_counts()
    assert set(counts) == set(ARCHS)
    assert counts["hps"] == sharing.get("hps", **REFERENCE_MLP).parameter_count()
    assert counts["mtan"] == sharing.get("mtan", **REFERENCE_CNN).parameter_count()
    assert counts["stl"] > counts["hps"]


# ---------------------------------------------------------------------------------------
# Every architecture x every registered weighting strategy, through the training step.

N = 48
STEPS = 5


def _dataset(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, *shape, generator=g)
    proj = torch.randn(math.prod(shape), 5, generator=g) / math.sqrt(math.prod(shape))
    z = x.flatten(1) @ proj
    y = {"reg": z[:, 0], "bin": (z[:, 1] > 0).float(), "cls": z[:, 2:5].argmax(1)}
    return x, y


def _losses(out, y):
    return torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])


TRAIN_CASES = [
    (arch, strat) for arch in ARCHS for strat in weighting.names()
]


@pytest.mark.parametrize(("arch", "strat"), TRAIN_CASES, ids=[f"{a}-{s}" for a, s in TRAIN_CASES])
def test_every_architecture_trains_with_every_strategy(arch, strat):
    shape, spec = (IMAGE_SHAPE, CNN) if arch in CNN_ONLY else (MLP_SHAPE, MLP)
    x, y = _dataset(shape)
    model = _build(arch, shape, spec)
    strategy = weighting.get(strat)
    strategy.reset(len(TASKS), torch.device("cpu"), seed=0)
    engine = ENGINES["loop"]()
    require_engine(engine, strategy, model)
    ctx = step_context(model, strategy, engine,
                       torch.optim.Adam([*model.parameters(), *strategy.parameters()], lr=0.02))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        before = _losses(model(x), y).sum()
    touched = {id(p): False for p in model.parameters()}
    for _ in range(STEPS):
        batches = [(x, y)]
        for _ in range(strategy.batches_per_step - 1):
            idx = torch.randint(N, (N,), generator=g)
            batches.append((x[idx], {k: v[idx] for k, v in y.items()}))
        losses = train_step(ctx, batches, _losses)
        assert torch.isfinite(losses).all()
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
            touched[id(p)] |= bool(p.grad.abs().sum() > 0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(touched.values()), [names[i] for i, t in touched.items() if not t]
    with torch.no_grad():
        after = _losses(model(x), y).sum()
    assert after < before


TRIAL_SPEC = """
name = "sharing"
seeds = [0]
datasets = [{{ name = "{dataset}", num_train = 96, num_val = 32, num_test = 32 }}]
sharing = ["{arch}"]
weighting = ["ew"]

[model]
hidden = [8, 8]
backbone = "{backbone}"
channels = [4, 4]

[train]
epochs = 1
batch_size = 32
"""


@pytest.mark.parametrize(("arch", "dataset", "kind"), [
    ("ple", "mmoe_synthetic", "mlp"),
    ("mtan", "multi_digits", "cnn"),
])
def test_trials_record_architecture_stats(write_spec, arch, dataset, kind):
    text = TRIAL_SPEC.format(arch=arch, dataset=dataset, backbone=kind)
    spec = next(t for t in expand(load_spec(write_spec(text))) if t.sharing.name == arch)
    rec = execute(spec).to_dict()
    assert rec["status"] == "ok", rec.get("traceback")
    if arch in GATED:
        util = rec["architecture_stats"]["expert_utilisation"]
        assert all(math.isclose(sum(w), 1.0, rel_tol=1e-4) for w in util.values())
