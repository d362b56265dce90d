"""Gradient engines and the training step."""

from __future__ import annotations

import pytest
import torch

from bench.assembly import require_engine, step_context
from bench.engine import ENGINES, apply_gradients, losses_follow_outputs, task_parameter_split
from bench.tasks import Task
from strategies import sharing, weighting
from strategies.weighting import WEIGHTING, GradientWeighting, GramianWeighting

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TASKS = (Task("a", "regression"), Task("b", "multiclass", 3), Task("c", "binary"))


def _setup(device, seed=0, strategy="ew", engine="loop"):
    torch.manual_seed(seed)
    model = sharing.get("hps", (5,), TASKS).to(device)
    shared = model.shared_parameters()
    eng = ENGINES[engine]()
    eng.prepare(model, shared)  # before the forward (train_step does it)
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
    ctx = step_context(model, strat, eng, torch.optim.SGD(model.parameters(), lr=0.1), shared)
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


@pytest.mark.parametrize("engine", ["loop", "vmap", "gramian", "autogram", "auto"])
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
        ENGINES["gramian"]().require_support(NotGramian, SHARING.get("hps"))
    with pytest.raises(ValueError, match="engine 'autogram' needs"):
        ENGINES["autogram"]().require_support(NotGramian, SHARING.get("hps"))
    with pytest.raises(ValueError, match="engine 'rep' is not defined"):
        ENGINES["rep"]().require_support(NotGramian, SHARING.get("hps"))
    NotGramian.supports_rep = True
    with pytest.raises(ValueError, match="has none"):
        ENGINES["rep"]().require_support(NotGramian, SHARING.get("stl"))
    # The old name still works: the read-only shared/tools/peer_speed.py calls it.
    with pytest.raises(ValueError, match="has none"):
        ENGINES["rep"]().check(NotGramian, SHARING.get("stl"))


def test_every_trainable_parameter_gets_a_gradient_for_every_strategy():
    for name in WEIGHTING.names():
        model, losses, ctx = _setup("cpu", strategy=name)
        losses_per_batch = [losses] * ctx.strategy.batches_per_step
        apply_gradients(losses_per_batch, ctx)
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------ O(T) backward (issue 13)

from bench.engine import TaskFeatures, TaskLosses, head_gradients, train_step  # noqa: E402
from strategies.sharing.base import BackboneSpec  # noqa: E402

MLP = BackboneSpec(hidden=(8, 8), tower=(4,))
CNN = BackboneSpec(hidden=(8,), tower=(4,), kind="cnn", channels=(3, 4))


def _arch_cases():
    for name in sharing.names():
        if name == "landscape":  # objective tasks, no data (tests/unit/test_capacity_and_toy.py)
            continue
        yield name, ((1, 6, 8), CNN) if name == "mtan" else ((5,), MLP)


@pytest.mark.parametrize(("arch", "shape_spec"), list(_arch_cases()),
                         ids=[a for a, _ in _arch_cases()])
@pytest.mark.parametrize("transform", [False, True], ids=["plain", "log-losses"])
def test_engines_agree_on_every_architecture_with_recorded_features(arch, shape_spec, transform):
    # The batched engines split the Jacobian at the towers' inputs (T per-task backwards,
    # one batched backward through the trunk); it must equal the loop engine's, which
    # differentiates each task's loss straight to the shared parameters.
    shape, spec = shape_spec
    torch.manual_seed(0)
    model = sharing.get(arch, shape, TASKS, spec)
    shared = model.shared_parameters()
    if not shared:  # soft sharing and single-task: every parameter belongs to one task
        assert arch in {"soft", "stl"}
        return
    tap = TaskFeatures(model, shared)
    x = torch.randn(12, *shape)
    y = {"a": torch.randn(12), "b": torch.randint(0, 3, (12,)),
         "c": torch.randint(0, 2, (12,)).float()}
    out = model(x)
    raw = torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])
    features = tap.of(out)
    assert features is not None, "every built-in architecture exposes its towers' inputs"
    transformed = torch.log(raw + 1e-8) if transform else raw
    with_features = TaskLosses(raw, transformed, features)
    without = TaskLosses(raw, transformed)
    ref = ENGINES["loop"]().task_gradients(without, shared)
    rows = [torch.autograd.grad(transformed[t], shared, retain_graph=True, allow_unused=True)
            for t in range(3)]
    for i, p in enumerate(shared):
        direct = torch.stack([r[i] if r[i] is not None else torch.zeros_like(p) for r in rows])
        torch.testing.assert_close(ref[i], direct)
    for engine in ("vmap", "gramian"):
        for losses in (with_features, without):
            got = ENGINES[engine]().task_gradients(losses, shared)
            for g, r in zip(got, ref, strict=True):
                torch.testing.assert_close(g, r)


class _HeadCounter:
    """Counts backward passes through each tower's output (one per autograd call, batched
    or not, that reaches the tower)."""

    def __init__(self, model):
        self.calls = 0
        for tower in model.towers.values():
            tower.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if output.requires_grad:
            output.register_hook(self._count)

    def _count(self, grad):
        self.calls += 1


@pytest.mark.parametrize(("engine", "strategy"), [
    ("loop", "upgrad"), ("vmap", "upgrad"), ("gramian", "upgrad"), ("autogram", "upgrad"),
    ("loop", "db_mtl"), ("vmap", "db_mtl"),  # db_mtl: a loss transform (log-losses)
])
def test_each_task_backward_traverses_only_its_own_head(engine, strategy):
    # Before: differentiating row t of the stacked losses ran backward through every
    # head (T^2 head backwards per step: 100 at T=10).
    num_tasks = 10
    tasks = tuple(Task(f"t{i}", "regression") for i in range(num_tasks))
    torch.manual_seed(0)
    model = sharing.get("hps", (6,), tasks, MLP)
    counter = _HeadCounter(model)
    strat = weighting.get(strategy)
    strat.reset(num_tasks, torch.device("cpu"), seed=0)
    ctx = step_context(model, strat, ENGINES[engine](),
                       torch.optim.SGD(model.parameters(), lr=0.1), tasks=[t.name for t in tasks])
    x = torch.randn(16, 6)
    y = {t.name: torch.randn(16) for t in tasks}

    def losses_of(out, y):
        return torch.stack([t.loss(out[t.name], y[t.name]) for t in tasks])

    train_step(ctx, [(x, y)], losses_of)
    # One backward per task, which also gives that task's head its gradient (a loss
    # transform's own backward stops at the losses).
    assert counter.calls == num_tasks, counter.calls
    assert all(p.grad is not None for p in ctx.task_specific)


def test_weighted_heads_get_the_strategy_weights():
    _, losses, ctx = _setup("cpu", strategy="mgda")
    apply_gradients([losses], ctx)
    own = [p.grad.clone() for p in ctx.task_specific]
    weights = ctx.strategy.last_weights
    model2, losses2, ctx2 = _setup("cpu", strategy="mgda")
    ctx2.heads = "weighted"
    apply_gradients([losses2], ctx2)
    for (name, p), g_own in zip(
        [(n, p) for n, p in model2.named_parameters() if any(p is q for q in ctx2.task_specific)],
        own, strict=True,
    ):
        task = name.split(".")[1]
        w = weights[[t.name for t in TASKS].index(task)]
        torch.testing.assert_close(p.grad, w * g_own)


def test_head_gradients_follow_the_method_unless_the_sweep_overrides():
    _, _, ctx = _setup("cpu", strategy="nash_mtl")
    assert head_gradients(ctx) == "weighted"
    ctx.heads = "own"
    assert head_gradients(ctx) == "own"
    _, _, ctx = _setup("cpu", strategy="graddrop")  # a sign mask, no task weights
    assert head_gradients(ctx) == "own"
    ctx.heads = "weighted"
    with pytest.raises(ValueError, match="needs task weights"):
        apply_gradients([_setup("cpu")[1]], ctx)


# ------------------------------------------------------------ autogram engine (issue 13)

from torch import nn  # noqa: E402

from bench.engine import NullTimer  # noqa: E402
from bench.engine.autogram import _LAYER_TAPS  # noqa: E402


class _InverseNorms(GramianWeighting):
    """Test double: weights 1 / ||g_t|| (they depend on the Gramian, so a wrong Gramian
    gives a wrong direction)."""

    def weights(self, gramian, losses=None):
        return gramian.diagonal().clamp_min(1e-12).rsqrt()


def _every_architecture():
    for name in sharing.names():
        if name == "landscape":
            continue
        if name != "mtan":
            yield name, (5,), MLP
        yield name, (1, 6, 8), CNN


AUTOGRAM_CASES = list(_every_architecture())


def _autogram_case(arch, shape, spec, engine, transform, features, seed=0, **options):
    """Shared gradients, task weights and the loop engine's J of one step of ``engine``."""
    torch.manual_seed(seed)
    model = sharing.get(arch, shape, TASKS, spec)
    shared = model.shared_parameters()
    eng = ENGINES[engine](**options)
    eng.prepare(model, shared)
    tap = TaskFeatures(model, shared)
    x = torch.randn(12, *shape)
    y = {"a": torch.randn(12), "b": torch.randint(0, 3, (12,)),
         "c": torch.randint(0, 2, (12,)).float()}
    out = model(x)
    raw = torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])
    if transform == "log":
        transformed, elementwise = torch.log(raw + 1e-8), True
    elif transform == "mixing":  # a transform that mixes tasks: rows of J are combined
        transformed, elementwise = raw + 0.3 * raw.flip(0), False
    else:
        transformed, elementwise = raw, True
    feats = tap.of(out) if features else None
    losses = TaskLosses(raw, transformed, feats, elementwise=elementwise)
    strategy = _InverseNorms()
    strategy.reset(3, torch.device("cpu"), seed=0)
    ctx = step_context(model, strategy, eng, torch.optim.SGD(model.parameters(), lr=0.1), shared)
    eng.shared_gradients([losses], strategy, ctx, NullTimer())
    jac = torch.cat([g.reshape(3, -1) for g in
                     ENGINES["loop"]().task_gradients(TaskLosses(raw, transformed,
                                                                 elementwise=elementwise),
                                                      shared)], 1)
    return [p.grad for p in shared], strategy.last_weights, jac


@pytest.mark.parametrize(("arch", "shape", "spec"), AUTOGRAM_CASES,
                         ids=[f"{a}-{s.kind}" for a, _, s in AUTOGRAM_CASES])
@pytest.mark.parametrize("transform", ["plain", "log", "mixing"])
def test_autogram_step_equals_the_gramian_engines(arch, shape, spec, transform):
    torch.manual_seed(0)
    model = sharing.get(arch, shape, TASKS, spec)
    shared = model.shared_parameters()
    if not shared:
        assert arch in {"soft", "stl"}
        return
    # update="layers" (default): sum_t w_t grad L_t from the recorded factors;
    # update="backward": one backward of sum_t w_t L_t. Both must be the same step.
    for features, update in [(True, "layers"), (False, "layers"), (True, "backward"),
                             (False, "backward")]:
        got, weights, jac = _autogram_case(arch, shape, spec, "autogram", transform, features,
                                           update=update)
        want, want_weights, _ = _autogram_case(arch, shape, spec, "gramian", transform, features)
        # The weights are 1/||g_t||: they equal the gramian engine's iff diag(G) does; the
        # full Gramian is checked below.
        torch.testing.assert_close(weights, want_weights, rtol=1e-5, atol=1e-7)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
        # And the direction is w^T J of the loop engine's J.
        direction = torch.cat([g.reshape(-1) for g in got])
        torch.testing.assert_close(direction, weights @ jac, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("arch", "shape", "spec"), AUTOGRAM_CASES,
                         ids=[f"{a}-{s.kind}" for a, _, s in AUTOGRAM_CASES])
def test_autogram_gramian_equals_the_loop_jacobians(arch, shape, spec):
    torch.manual_seed(0)
    model = sharing.get(arch, shape, TASKS, spec)
    shared = model.shared_parameters()
    if not shared:
        return
    engine = ENGINES["autogram"]()
    engine.prepare(model, shared)
    tap = TaskFeatures(model, shared)
    x = torch.randn(12, *shape)
    y = {"a": torch.randn(12), "b": torch.randint(0, 3, (12,)),
         "c": torch.randint(0, 2, (12,)).float()}
    for features in (True, False):
        out = model(x)  # the record is dropped after each use: one forward each
        raw = torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])
        feats = tap.of(out) if features else None
        assert (feats is not None) == features
        jac = ENGINES["loop"]().jacobian(raw, shared)
        gramian, _ = engine.gramian(TaskLosses(raw, raw, feats), model, shared)
        torch.testing.assert_close(gramian, jac @ jac.T, rtol=1e-5, atol=1e-7)


class _Odd(nn.Module):
    """Layers the tap must get right or leave to the explicit fallback: a strided, dilated
    convolution, a Linear on 3-D input called twice (cross terms between calls), a tied
    weight (two modules), a grouped convolution, a LayerNorm; no towers (no features)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, dilation=2, padding=2)
        self.grouped = nn.Conv2d(3, 3, kernel_size=1, groups=3)
        self.proj = nn.Linear(9, 5)
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5, bias=False)
        self.b.weight = self.a.weight
        self.norm = nn.LayerNorm(5)
        self.heads = nn.ModuleList([nn.Linear(5 * 3, 1) for _ in range(3)])

    def forward(self, x):
        h = torch.relu(self.grouped(torch.relu(self.conv(x))))  # (B, 3, 3, 3)
        h = h.flatten(2)  # (B, 3, 9): Linear on a 3-D input
        h = torch.tanh(self.proj(h)) + torch.sigmoid(self.proj(h * 0.5))
        h = self.norm(torch.tanh(self.a(h)) + self.b(h))
        return {t.name: head(h.flatten(1)).squeeze(-1) for t, head in zip(TASKS, self.heads, strict=True)}


def test_autogram_on_strided_convolutions_repeated_calls_tied_weights_and_norms():
    torch.manual_seed(0)
    model = _Odd()
    heads = {id(p) for p in model.heads.parameters()}
    shared = [p for p in model.parameters() if id(p) not in heads]
    engine = ENGINES["autogram"]()
    engine.prepare(model, shared)
    recorded = set(_LAYER_TAPS[model].calls)
    assert recorded == {model.conv, model.proj}  # tied, grouped: explicit fallback
    x = torch.randn(7, 2, 6, 6)
    out = model(x)
    y = torch.randn(7)
    raw = torch.stack([torch.nn.functional.mse_loss(out[t.name] * (i + 1), y)
                       for i, t in enumerate(TASKS)])
    assert len(_LAYER_TAPS[model].calls[model.proj]) == 2
    jac = ENGINES["loop"]().jacobian(raw, shared)
    gramian, factors = engine.gramian(TaskLosses(raw, raw), model, shared)
    torch.testing.assert_close(gramian, jac @ jac.T, rtol=1e-5, atol=1e-6)
    # The update from the factors and by one backward are both w^T J.
    w = torch.tensor([0.5, -1.0, 2.0])
    for grads in (factors.combine(w, shared), factors.backward(w, shared)):
        torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads]), w @ jac,
                                   rtol=1e-5, atol=1e-6)


def test_autogram_needs_the_forward_recorded():
    model = sharing.get("hps", (5,), TASKS, MLP)
    shared = model.shared_parameters()
    x = torch.randn(4, 5)
    y = {"a": torch.randn(4), "b": torch.randint(0, 3, (4,)), "c": torch.ones(4)}

    def losses_of(out):
        return torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])

    engine = ENGINES["autogram"]()
    with pytest.raises(RuntimeError, match=r"call engine\.prepare"):
        engine.gramian(TaskLosses(*[losses_of(model(x))] * 2), model, shared)
    engine.prepare(model, shared)
    stale = losses_of(model(x))
    model(x)  # a later forward replaces the record
    with pytest.raises(RuntimeError, match="earlier forward"):
        engine.gramian(TaskLosses(stale, stale), model, shared)


@pytest.mark.parametrize("name", [n for n in weighting.names()
                                  if issubclass(WEIGHTING.get(n), GramianWeighting)
                                  and WEIGHTING.get(n).batches_per_step == 1])
def test_every_gramian_strategy_trains_with_the_autogram_engine(name):
    tasks = tuple(Task(f"t{i}", "regression") for i in range(4))
    torch.manual_seed(0)
    model = sharing.get("hps", (6,), tasks, MLP)
    strat = weighting.get(name)
    strat.reset(len(tasks), torch.device("cpu"), seed=0)
    engine = ENGINES["autogram"]()
    require_engine(engine, strat, model)
    ctx = step_context(model, strat, engine,
                       torch.optim.Adam([*model.parameters(), *strat.parameters()], lr=0.01))
    x = torch.randn(32, 6)
    y = {t.name: torch.randn(32) for t in tasks}

    def losses_of(out, y):
        return torch.stack([t.loss(out[t.name], y[t.name]) for t in tasks])

    for _ in range(3):
        losses = train_step(ctx, [(x, y)], losses_of)
        assert torch.isfinite(losses).all()
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert strat.last_weights is not None


@pytest.mark.parametrize(("engine", "strategy"), [
    ("loop", "upgrad"), ("vmap", "upgrad"), ("gramian", "upgrad"), ("autogram", "upgrad"),
    ("loop", "db_mtl"), ("vmap", "db_mtl"),  # db_mtl: a loss transform (Gramian engines: no)
    ("auto", "upgrad"), ("auto", "db_mtl"),
])
@pytest.mark.parametrize(("arch", "shape", "spec"), AUTOGRAM_CASES,
                         ids=[f"{a}-{len(s)}d" for a, s, _ in AUTOGRAM_CASES])
def test_heads_filled_in_the_task_backwards_equal_a_separate_backward(
    engine, strategy, arch, shape, spec
):
    # With the task order known (declared to step_context, or the model's own order seen
    # in the first step's graph) the engines give each task's own parameters their
    # gradient inside that task's backward; otherwise one backward of the sum of the
    # task losses does. Every way must set every parameter's gradient alike.
    grads = {}
    for mode in ("separate", "declared", "derived"):
        model, ctx = _heads_case(arch, shape, spec, engine, strategy,
                                 tasks=[t.name for t in TASKS] if mode == "declared" else None)
        ctx.task_order_checked = mode == "separate"
        _step_on_fixed_batch(ctx, shape, TASKS)
        # Without shared parameters (stl, soft) there is no engine and nothing to derive.
        expect_split = mode == "declared" or (mode == "derived" and bool(ctx.shared))
        assert (ctx.task_params is not None) == expect_split, mode
        grads[mode] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for mode in ("declared", "derived"):
        assert grads[mode].keys() == grads["separate"].keys()
        for name, g in grads["separate"].items():
            assert grads[mode][name] is not None, (mode, name)
            torch.testing.assert_close(grads[mode][name], g, rtol=1e-5, atol=1e-7,
                                       msg=f"{mode}: {name}")


def _heads_case(arch, shape, spec, engine, strategy, tasks=None):
    torch.manual_seed(3)
    model = sharing.get(arch, shape, TASKS, spec)
    strat = weighting.get(strategy)
    strat.reset(3, torch.device("cpu"), seed=0)
    ctx = step_context(model, strat, ENGINES[engine](),
                       torch.optim.SGD(model.parameters(), lr=0.0), tasks=tasks)
    return model, ctx


def _step_on_fixed_batch(ctx, shape, order):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, *shape, generator=gen)
    y = {"a": torch.randn(12, generator=gen), "b": torch.randint(0, 3, (12,), generator=gen),
         "c": torch.randint(0, 2, (12,), generator=gen).float()}
    train_step(ctx, [(x, y)],
               lambda out, y: torch.stack([t.loss(out[t.name], y[t.name]) for t in order]))


@pytest.mark.parametrize("engine", ["loop", "autogram"])
def test_losses_in_another_order_than_the_model_keep_the_separate_head_backward(engine):
    # The losses list the tasks as (c, a, b): the model's order (a, b, c) is not theirs,
    # so no split is derived and each head still gets its own task's gradient.
    order = (TASKS[2], TASKS[0], TASKS[1])
    model, ctx = _heads_case("hps", (5,), MLP, engine, "upgrad")
    _step_on_fixed_batch(ctx, (5,), order)
    assert ctx.task_order_checked and ctx.task_params is None
    reference, ref_ctx = _heads_case("hps", (5,), MLP, engine, "upgrad",
                                     tasks=[t.name for t in order])
    _step_on_fixed_batch(ref_ctx, (5,), order)
    assert ref_ctx.task_params is not None
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_losses_follow_outputs_reads_the_graph():
    a = torch.randn(4, requires_grad=True)
    outputs = {"x": a * 2, "y": a * 3}
    names = ["x", "y"]
    own = torch.stack([outputs["x"].square().mean(), outputs["y"].abs().sum()])
    assert losses_follow_outputs(own, outputs, names)
    assert not losses_follow_outputs(own, outputs, ["y", "x"])
    mixed = torch.stack([(outputs["x"] * outputs["y"]).sum(), outputs["y"].sum()])
    assert not losses_follow_outputs(mixed, outputs, names)
    # A task without a loss this step (a constant) says nothing; the other must match.
    assert losses_follow_outputs(torch.stack([outputs["x"].sum(), torch.zeros(())]),
                                 outputs, names)
    assert not losses_follow_outputs(torch.zeros(2), outputs, names)
    assert not losses_follow_outputs(own, outputs, ["x"])


def test_task_parameter_split_refuses_overlapping_or_incomplete_lists():
    model = sharing.get("hps", (5,), TASKS)
    names = [t.name for t in TASKS]
    specific = [p for p in model.parameters()
                if all(p is not q for q in model.shared_parameters())]
    split = task_parameter_split(model, names, specific)
    assert split is not None and [len(ps) for ps in split] == [2, 2, 2]
    assert task_parameter_split(model, names[:2], specific) is None  # task c's head missing
    assert task_parameter_split(model, [*names, "a"], specific) is None  # a's listed twice
    assert task_parameter_split(torch.nn.Linear(2, 2), names, specific) is None


@pytest.mark.parametrize(("strategy", "num_tasks", "expected"), [
    ("upgrad", 10, "autogram"), ("imtl_g", 8, "autogram"),  # Gramian, from 8 tasks on
    ("upgrad", 4, "loop"),  # too few tasks: loop is measured faster
    ("graddrop", 10, "loop"), ("excess_mtl", 10, "loop"),  # not Gramian strategies
])
def test_auto_engine_runs_autogram_only_where_it_is_the_faster_engine(
    strategy, num_tasks, expected
):
    tasks = tuple(Task(f"t{i}", "regression") for i in range(num_tasks))
    runs = {}
    for engine in ("auto", expected):
        torch.manual_seed(0)
        model = sharing.get("hps", (6,), tasks, MLP)
        strat = weighting.get(strategy)
        strat.reset(num_tasks, torch.device("cpu"), seed=0)
        eng = ENGINES[engine]()
        ctx = step_context(model, strat, eng, torch.optim.SGD(model.parameters(), lr=0.1))
        x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
        y = {t.name: torch.ones(16) for t in tasks}
        train_step(ctx, [(x, y)],
                   lambda out, y: torch.stack([t.loss(out[t.name], y[t.name]) for t in tasks]))
        if engine == "auto":
            assert eng.choice(strat, num_tasks, model, ctx.shared).name == expected
        runs[engine] = [p.grad for p in model.parameters()]
    for a, b in zip(runs["auto"], runs[expected], strict=True):
        assert torch.equal(a, b)  # the very step of the chosen engine


def test_auto_engine_keeps_loop_when_few_shared_parameters_are_recorded():
    # A shared parameter outside Linear / Conv2d layers (here: all of them) would get
    # explicit per-task gradients in autogram; auto keeps loop for such a model.
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(6))

    model = Scaled()
    engine = ENGINES["auto"]()
    engine.prepare(model, [model.scale])
    strat = weighting.get("upgrad")
    assert engine.choice(strat, 12, model, [model.scale]).name == "loop"
