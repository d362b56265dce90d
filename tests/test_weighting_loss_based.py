"""LS, SI, GLS, RLW, STCH, FAMO, DB-MTL and GradNorm: registry entries, formulas against hand
computations, the update rules of the adaptive methods, and short training runs.
Runs on CPU, and on CUDA too when available."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.config import load_spec
from bench.engine import ENGINES, StepContext, apply_gradients
from bench.errors import ConfigError
from bench.grid import expand
from bench.trial import execute
from strategies.weighting import WEIGHTING, GradientWeighting, GramianWeighting, LossWeighting, get
from strategies.weighting.famo import softmax_vjp
from strategies.weighting.stch import smooth_tchebycheff

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64
LOSS_BASED = ["ls", "si", "gls", "rlw", "stch", "famo"]
GRADIENT_BASED = ["db_mtl", "gradnorm"]
NAMES = LOSS_BASED + GRADIENT_BASED

fast = settings(max_examples=25, deadline=None)
positive = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)
loss_lists = st.lists(positive, min_size=1, max_size=6)


def make(name: str, num_tasks: int, device: str, seed: int = 0, **hyper):
    strategy = get(name, **hyper)
    strategy.reset(num_tasks, torch.device(device), seed)
    return strategy


def tensor(values, device: str, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, device=device, requires_grad=grad)


def grad_of(total: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(total, losses)
    return grad


# --------------------------------------------------------------------------- registry


def test_registered_with_summaries_papers_and_kinds():
    for name in NAMES:
        assert name in WEIGHTING
        cls = WEIGHTING.get(name)
        summary = WEIGHTING.summary(name)
        assert summary and summary == cls.__doc__.strip().splitlines()[0]
        assert "arxiv.org/abs/" in importlib.import_module(cls.__module__).__doc__
    for name in LOSS_BASED:
        assert issubclass(WEIGHTING.get(name), LossWeighting)
    assert issubclass(WEIGHTING.get("db_mtl"), GradientWeighting)
    assert issubclass(WEIGHTING.get("gradnorm"), GramianWeighting)
    assert WEIGHTING.get("famo").wants_post_step_losses
    assert not any(WEIGHTING.get(n).supports_rep for n in GRADIENT_BASED)


def test_resolve_fills_defaults():
    assert WEIGHTING.resolve("ls", {}) == {"weights": None}
    for name in ["si", "gls", "rlw"]:
        assert WEIGHTING.resolve(name, {}) == {}
    assert WEIGHTING.resolve("stch", {}) == {"mu": 1.0, "warmup_epoch": 4, "preference": None}
    assert WEIGHTING.resolve("famo", {}) == {"gamma": 0.01, "w_lr": 0.025, "min_losses": None}
    assert WEIGHTING.resolve("db_mtl", {}) == {"beta": 0.9, "beta_sigma": 0.0}
    assert WEIGHTING.resolve("gradnorm", {}) == {"alpha": 1.5, "lr": 1e-3}
    # A TOML list (or a replayed JSON array) becomes a tuple; integers become floats.
    assert WEIGHTING.resolve("ls", {"weights": [1, 2.5]}) == {"weights": (1.0, 2.5)}
    assert WEIGHTING.resolve("stch", {"preference": [0.5, 0.5]})["preference"] == (0.5, 0.5)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ls", {"weights": [-1.0, 1.0]}),
        ("ls", {"weights": ["1.0"]}),
        ("ls", {"weights": [True]}),
        ("ls", {"weights": []}),
        ("ls", {"weights": [float("inf")]}),
        ("ls", {"weights": "1,2"}),
        ("si", {"eps": 1e-8}),
        ("gls", {"weights": [1.0]}),
        ("rlw", {"dist": "Normal"}),
        ("stch", {"mu": 0.0}),
        ("stch", {"mu": -1.0}),
        ("stch", {"warmup_epoch": -1}),
        ("stch", {"warmup_epoch": 1.5}),
        ("stch", {"preference": [-0.5]}),
        ("famo", {"gamma": -0.1}),
        ("famo", {"w_lr": 0.0}),
        ("famo", {"max_norm": 1.0}),
        ("db_mtl", {"beta": 1.5}),
        ("db_mtl", {"beta_sigma": -1.0}),
        ("gradnorm", {"alpha": -1.0}),
        ("gradnorm", {"lr": 0.0}),
        ("gradnorm", {"lr": "0.1"}),
    ],
)
def test_bad_hyperparameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)


@pytest.mark.parametrize("device", DEVICES)
def test_weight_vectors_must_match_the_number_of_tasks(device):
    with pytest.raises(ValueError, match="ls: weights has 2 entries but there are 3 tasks"):
        make("ls", 3, device, weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="stch: preference has 1 entries but there are 2"):
        make("stch", 2, device, preference=(1.0,))
    for name in ["ls", "stch", "famo", "rlw"]:
        with pytest.raises(RuntimeError, match="reset"):
            get(name).combine(torch.ones(2, device=device))


# --------------------------------------------------------------------------- LS / SI / GLS


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(pairs=st.lists(st.tuples(st.floats(0.0, 10.0), positive), min_size=1, max_size=6))
def test_ls_is_the_weighted_sum(device, pairs):
    weights, values = zip(*pairs, strict=True)
    ls = make("ls", len(values), device, weights=weights)
    losses = tensor(values, device, grad=True)
    total = ls.combine(losses)
    expected = sum(w * v for w, v in pairs)
    assert total.item() == pytest.approx(expected, rel=1e-6, abs=1e-12)  # float32 weights
    assert grad_of(total, losses).tolist() == pytest.approx(list(weights), rel=1e-6)
    assert ls.last_weights.tolist() == pytest.approx(list(weights), rel=1e-6)
    assert ls.last_weights.device == losses.device and not ls.last_weights.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_ls_default_is_equal_weighting(device):
    losses = tensor([0.25, 4.0, 1.5], device, grad=True)
    ls, ew = make("ls", 3, device), make("ew", 3, device)
    assert torch.equal(ls.combine(losses), ew.combine(losses))
    assert torch.equal(ls.last_weights, torch.ones(3, device=device, dtype=F64))
    # (1, 3) and (0.25, 0.75): same direction, four times the step; weights are not normalised.
    a = make("ls", 2, device, weights=(1.0, 3.0)).combine(losses[:2])
    b = make("ls", 2, device, weights=(0.25, 0.75)).combine(losses[:2])
    assert a.item() == pytest.approx(4 * b.item())


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(values=loss_lists)
def test_si_is_the_sum_of_logs_with_gradient_one_over_loss(device, values):
    si = make("si", len(values), device)
    losses = tensor(values, device, grad=True)
    total = si.combine(losses)
    assert total.item() == pytest.approx(sum(math.log(v) for v in values), rel=1e-9, abs=1e-9)
    expected = [1.0 / v for v in values]
    assert grad_of(total, losses).tolist() == pytest.approx(expected, rel=1e-9)
    assert si.last_weights.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_si_is_invariant_to_rescaling_a_loss(device):
    losses = tensor([0.5, 2.0], device, grad=True)
    scaled = losses * torch.tensor([1.0, 1000.0], dtype=F64, device=device)
    si = make("si", 2, device)
    assert torch.allclose(grad_of(si.combine(scaled), losses), grad_of(si.combine(losses), losses))


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(values=loss_lists)
def test_gls_is_the_geometric_mean_and_its_gradient(device, values):
    num = len(values)
    gls = make("gls", num, device)
    losses = tensor(values, device, grad=True)
    total = gls.combine(losses)
    geometric = math.prod(values) ** (1.0 / num)
    assert total.item() == pytest.approx(geometric, rel=1e-9)
    # d/dL_t (prod L)^(1/T) = (prod L)^(1/T) / (T L_t)
    expected = [geometric / (num * v) for v in values]
    assert grad_of(total, losses).tolist() == pytest.approx(expected, rel=1e-9)
    assert gls.last_weights.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_gls_does_not_underflow_with_many_tasks(device):
    losses = torch.full((50,), 0.1, device=device, requires_grad=True)  # float32
    assert losses.detach().prod().item() == 0.0  # the naive product underflows: 1e-50
    total = make("gls", 50, device).combine(losses)
    assert total.item() == pytest.approx(0.1, rel=1e-5)
    assert torch.allclose(grad_of(total, losses), torch.full((50,), 1 / 50, device=device))


# --------------------------------------------------------------------------- RLW


@pytest.mark.parametrize("device", DEVICES)
def test_rlw_weights_are_softmax_of_standard_normal_draws(device):
    rlw = make("rlw", 4, device, seed=7)
    reference = torch.Generator(device=device).manual_seed(7)
    losses = tensor([1.0, 2.0, 3.0, 4.0], device, grad=True)
    previous = None
    for _ in range(5):
        total = rlw.combine(losses)
        draw = torch.randn(4, generator=reference, device=device)
        expected = torch.softmax(draw, dim=0).to(F64)
        w = rlw.last_weights
        assert torch.allclose(w, expected) and w.device == losses.device
        assert (w > 0).all() and w.sum().item() == pytest.approx(1.0)
        assert total.item() == pytest.approx((w * losses.detach()).sum().item())
        assert torch.allclose(grad_of(total, losses), w)
        assert previous is None or not torch.equal(w, previous)  # new weights every step
        previous = w


@pytest.mark.parametrize("device", DEVICES)
def test_rlw_same_seed_same_weights(device):
    losses = torch.ones(3, device=device)
    first, second, other = (make("rlw", 3, device, seed=s) for s in (3, 3, 4))
    seq = []
    for _ in range(4):
        for rlw in (first, second, other):
            rlw.combine(losses)
        assert torch.equal(first.last_weights, second.last_weights)
        seq.append(first.last_weights)
    assert not torch.equal(first.last_weights, other.last_weights)
    first.reset(3, torch.device(device), seed=3)  # reset restarts the sequence
    first.combine(losses)
    assert torch.equal(first.last_weights, seq[0])


# --------------------------------------------------------------------------- STCH


@fast
@given(
    pairs=st.lists(st.tuples(st.floats(-5.0, 5.0), st.floats(0.0, 3.0)), min_size=1, max_size=6),
    mu=st.floats(1e-3, 10.0),
)
def test_smooth_tchebycheff_bounds_the_maximum(pairs, mu):
    values, preference = (tensor(list(x), "cpu") for x in zip(*pairs, strict=True))
    smooth = smooth_tchebycheff(values, preference, mu).item()
    hard = max(p * v for v, p in pairs)
    assert hard - 1e-9 <= smooth <= hard + mu * math.log(len(pairs)) + 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_smooth_tchebycheff_tends_to_the_weighted_maximum(device):
    values = tensor([0.3, -1.0, 0.2], device)  # f - z
    preference = tensor([1.0, 2.0, 1.4], device)  # products: 0.3, -2.0, 0.28
    gaps = [smooth_tchebycheff(values, preference, mu).item() - 0.3 for mu in (1.0, 0.1, 1e-2, 1e-3)]
    assert all(a > b > 0 for a, b in itertools.pairwise(gaps))
    assert gaps[-1] < 1e-3 * math.log(3)
    # mu = 1: by hand.
    expected = math.log(math.exp(0.3) + math.exp(-2.0) + math.exp(0.28))
    assert smooth_tchebycheff(values, preference, 1.0).item() == pytest.approx(expected)


@pytest.mark.parametrize("device", DEVICES)
def test_stch_warm_up_then_smooth_tchebycheff_on_normalised_log_losses(device):
    stch = make("stch", 2, device, mu=0.5, warmup_epoch=1, preference=(1.0, 2.0))
    losses = tensor([0.5, 3.0], device, grad=True)
    for epoch_mean in ([4.0, 8.0], [1.0, 2.0]):  # epochs 0 and 1 (= warmup_epoch) warm up
        assert stch.warming_up
        total = stch.combine(losses)
        assert total.item() == pytest.approx(math.log(0.5) + math.log(3.0))
        assert grad_of(total, losses).tolist() == pytest.approx([2.0, 1 / 3.0])
        assert stch.last_weights.tolist() == pytest.approx([2.0, 1 / 3.0])
        stch.end_epoch(tensor(epoch_mean, device))
    assert not stch.warming_up
    assert stch.nadir.tolist() == [1.0, 2.0]  # the mean losses of epoch `warmup_epoch`
    total = stch.combine(losses)
    # T mu log(exp(1 * log(0.5/1) / mu) + exp(2 * log(3/2) / mu))
    a, b = math.log(0.5) / 0.5, 2 * math.log(1.5) / 0.5
    assert total.item() == pytest.approx(2 * 0.5 * math.log(math.exp(a) + math.exp(b)))
    grad = grad_of(total, losses)
    soft = [math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))]
    expected = [2 * soft[0] * 1.0 / 0.5, 2 * soft[1] * 2.0 / 3.0]  # T p_t lambda_t / L_t
    assert grad.tolist() == pytest.approx(expected, rel=1e-9)
    assert stch.last_weights.tolist() == pytest.approx(expected, rel=1e-9)
    stch.end_epoch(tensor([0.1, 0.1], device))  # the reference stays fixed afterwards
    assert stch.nadir.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("device", DEVICES)
def test_stch_small_mu_is_the_tchebycheff_scalarization(device):
    stch = make("stch", 3, device, mu=1e-4, warmup_epoch=0)
    stch.end_epoch(tensor([2.0, 1.0, 0.5], device))
    losses = tensor([1.0, 1.5, 0.6], device, grad=True)
    total = stch.combine(losses)
    ratios = [math.log(1.0 / 2.0), math.log(1.5), math.log(0.6 / 0.5)]
    assert total.item() == pytest.approx(3 * max(ratios), abs=3 * 1e-4 * math.log(3))
    # All the weight on the worst task (relative to its reference): task 1.
    assert torch.allclose(grad_of(total, losses), tensor([0.0, 3 / 1.5, 0.0], device), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_stch_reset_restarts_the_warm_up(device):
    stch = make("stch", 2, device, warmup_epoch=0)
    stch.end_epoch(tensor([1.0, 1.0], device))
    assert not stch.warming_up
    stch.reset(2, torch.device(device))
    assert stch.warming_up
    stch.end_epoch(tensor([0.0, 1.0], device))  # a zero reference is clamped, not divided by
    total = stch.combine(tensor([0.5, 0.5], device))
    assert torch.isfinite(total)


# --------------------------------------------------------------------------- FAMO


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


# --------------------------------------------------------------------------- DB-MTL


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


# --------------------------------------------------------------------------- GradNorm


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_first_step_by_hand(device):
    gn = make("gradnorm", 2, device, alpha=1.5, lr=0.1)
    jac = tensor([[1.0, 0.0], [0.0, 2.0]], device)  # norms 1 and 2
    d = gn.aggregate(jac, tensor([1.0, 1.0], device))
    assert d.tolist() == [1.0, 2.0]  # the step uses w = (1, 1)
    assert gn.last_weights.tolist() == [1.0, 1.0]
    # G = (1, 2), target = 1.5 r^alpha = 1.5; dL_grad/dw = sign(G - 1.5) ||g|| = (-1, 2).
    updated = [1.0 + 0.1, 1.0 - 0.2]
    expected = [2 * u / sum(updated) for u in updated]
    assert gn.task_weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert gn.task_weights.sum().item() == pytest.approx(2.0)
    d = gn.aggregate(jac, tensor([1.0, 1.0], device))
    assert d.tolist() == pytest.approx([expected[0], 2 * expected[1]], rel=1e-6)
    assert gn.last_weights.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_moves_toward_the_task_that_trains_slower(device):
    gn = make("gradnorm", 2, device, alpha=1.5, lr=0.05)
    jac = tensor([[1.0, 0.0], [0.0, 1.0]], device)  # equal gradient norms
    gn.aggregate(jac, tensor([2.0, 4.0], device))  # L(0)
    assert gn.task_weights.tolist() == [1.0, 1.0]  # equal norms, equal rates: no change
    # Loss ratios (0.9, 0.3): r = (1.5, 0.5); task 0 trains slower, its target is larger.
    gn.aggregate(jac, tensor([1.8, 1.2], device))
    assert gn.task_weights.tolist() == pytest.approx([1.05, 0.95], rel=1e-6)
    for _ in range(5):
        gn.aggregate(jac, tensor([1.8, 1.2], device))
    w = gn.task_weights
    assert w[0] > 1.05 > 0.95 > w[1] and w.sum().item() == pytest.approx(2.0)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_equalises_weighted_gradient_norms(device):
    gn = make("gradnorm", 2, device, lr=0.01)
    gram = tensor([[1.0, 0.3], [0.3, 16.0]], device)  # norms 1 and 4
    losses = tensor([1.0, 1.0], device)  # equal rates: target = mean G for both
    for _ in range(400):
        gn.weights(gram, losses)
    # w_t ||g_t|| equal and sum w = 2: w = (1.6, 0.4), up to the step size.
    assert gn.task_weights.tolist() == pytest.approx([1.6, 0.4], abs=0.03)


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_one_task_is_its_own_gradient(device):
    gn = make("gradnorm", 1, device)
    jac = tensor([[0.5, -2.0, 3.0]], device)
    for loss in (1.0, 0.5, 0.1):
        assert torch.equal(gn.aggregate(jac, tensor([loss], device)), jac[0])
        assert gn.task_weights.tolist() == [1.0]


@pytest.mark.parametrize("device", DEVICES)
def test_gradnorm_needs_losses_and_survives_zero_losses(device):
    gn = make("gradnorm", 2, device)
    with pytest.raises(ValueError, match="losses"):
        gn.aggregate(tensor([[1.0], [2.0]], device))
    gn.aggregate(tensor([[1.0], [2.0]], device), tensor([0.0, 1.0], device))
    gn.aggregate(tensor([[1.0], [2.0]], device), tensor([0.0, 0.0], device))
    assert torch.isfinite(gn.task_weights).all()
    assert gn.task_weights.sum().item() == pytest.approx(2.0)


# --------------------------------------------------------------------------- training runs

SPEC = """
name = "loss_based"
seeds = [0]
datasets = [{{ name = "mmoe_synthetic", num_train = 96, num_val = 32, num_test = 32, input_dim = 8 }}]
sharing = ["hps"]
weighting = [{weighting}]

[model]
hidden = [8]

[train]
epochs = 3
batch_size = 32
lr = 0.01
engine = "{engine}"
device = "{device}"
"""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("weighting", "engine"),
    [
        ('{ name = "ls", weights = [1.0, 3] }', "loop"),
        ('"si"', "loop"),
        ('"gls"', "loop"),
        ('"rlw"', "loop"),
        ('{ name = "stch", warmup_epoch = 0, mu = 0.5 }', "loop"),
        ('"famo"', "loop"),
        ('"db_mtl"', "vmap"),
        ('"gradnorm"', "loop"),
        ('{ name = "gradnorm", lr = 0.01 }', "gramian"),
    ],
)
def test_strategies_train(write_spec, device, weighting, engine):
    text = SPEC.format(weighting=weighting, engine=engine, device=device)
    trials = [t for t in expand(load_spec(write_spec(text))) if not t.is_baseline]
    (trial,) = trials
    record = execute(trial)
    assert record["status"] == "ok", record.get("traceback", record["error"])
    history = record["history"]
    assert len(history) == 3
    assert all(math.isfinite(v) for h in history for v in h["train_loss"].values())
    weights = history[-1]["weights"]
    assert set(weights) == {"t1", "t2"} and all(math.isfinite(w) for w in weights.values())


# --------------------------------------------------------------------------- no host sync


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_paths_do_not_synchronize_with_the_host():
    device = torch.device("cuda")
    losses = torch.rand(3, device=device) + 0.1
    jac = torch.randn(3, 64, device=device)
    mean_losses = torch.rand(3, device=device) + 0.5
    loss_based = [
        make("ls", 3, "cuda", weights=(1.0, 2.0, 3.0)), make("si", 3, "cuda"),
        make("gls", 3, "cuda"), make("rlw", 3, "cuda"),
        make("stch", 3, "cuda", warmup_epoch=0), make("famo", 3, "cuda"),
    ]
    gradient_based = [make("db_mtl", 3, "cuda"), make("gradnorm", 3, "cuda")]

    def step():
        for strategy in loss_based:
            strategy.combine(strategy.transform_losses(losses))
            strategy.post_step(losses * 0.9)
            strategy.end_epoch(mean_losses)
        for strategy in gradient_based:
            strategy.aggregate(jac, strategy.transform_losses(losses))
            strategy.end_epoch(mean_losses)

    step()  # warm-up: lazy CUDA initialisation may synchronise; STCH leaves its warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


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
    from bench.config import load_spec
    from bench.errors import ConfigError
    from bench.grid import expand

    spec = write_spec("""
        name = "famo_m"
        datasets = [{ name = "conflict", num_tasks = 3, num_train = 64 }]
        sharing = ["hps"]
        weighting = [{ name = "famo", min_losses = [0.0, 0.0] }]
    """)
    with pytest.raises(ConfigError, match="min_losses has 2 values for 3 tasks"):
        expand(load_spec(spec))
