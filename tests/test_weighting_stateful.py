"""Gradient-surgery and stateful weightings: PCGrad, GradDrop, GradVac, MoCo, FairGrad,
ExcessMTL, SDMGrad and MoDo, checked against the update rules of their papers (hand
computations), their state across calls, reset and seeding, degenerate Jacobians, and a
short training run of the multi-batch methods. CPU, and CUDA too when available."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.config import load_spec
from bench.engine import ENGINES, StepContext, apply_gradients
from bench.errors import ConfigError
from bench.grid import expand
from bench.tasks import Task
from bench.trial import execute
from strategies import sharing
from strategies.weighting import WEIGHTING, GradientWeighting, GramianWeighting, get
from strategies.weighting.fairgrad import solve_alpha_fair
from strategies.weighting.moco import project_to_simplex

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64
NAMES = ["pcgrad", "graddrop", "gradvac", "moco", "fairgrad", "excess_mtl", "sdmgrad", "modo"]
GRAMIAN = ["pcgrad", "gradvac", "fairgrad"]
MULTI_BATCH = ["sdmgrad", "modo"]
SIMPLEX = ["moco", "excess_mtl", "sdmgrad", "modo"]  # last_weights on the simplex
STATEFUL = ["gradvac", "moco", "excess_mtl", "sdmgrad", "modo"]
RANDOM = ["pcgrad", "graddrop", "gradvac"]

fast = settings(max_examples=25, deadline=None)


def make(name: str, num_tasks: int, device: str, seed: int = 0, **hyper):
    strategy = get(name, **hyper)
    strategy.reset(num_tasks, torch.device(device), seed)
    return strategy


def random_jacobian(num_tasks: int, dim: int, seed: int, device: str) -> torch.Tensor:
    """Task gradients sharing a common component, so some agree and some conflict."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen, dtype=F64)
    strength = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 2 - 0.5
    scales = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 3 + 0.1
    rows = torch.randn(num_tasks, dim, generator=gen, dtype=F64) + strength * common
    return (scales * rows).to(device)


def step(strategy, jacobians: list[torch.Tensor]) -> torch.Tensor:
    """One call the way the engines make it: all batches for multi-batch methods."""
    if strategy.batches_per_step > 1:
        return strategy.aggregate_batches(jacobians, [None] * len(jacobians))
    return strategy.aggregate(jacobians[0])


def batches(strategy, num_tasks, dim, seed, device) -> list[torch.Tensor]:
    return [
        random_jacobian(num_tasks, dim, seed * 7 + k, device)
        for k in range(strategy.batches_per_step)
    ]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


# --------------------------------------------------------------------------- contracts


def test_registered_with_summaries_papers_and_declared_needs():
    for name in NAMES:
        cls = WEIGHTING.get(name)
        assert issubclass(cls, GradientWeighting)
        assert issubclass(cls, GramianWeighting) == (name in GRAMIAN)
        summary = WEIGHTING.summary(name)
        assert summary and summary == cls.__doc__.strip().splitlines()[0]
        doc = importlib.import_module(cls.__module__).__doc__
        assert "arxiv.org/abs/" in doc or "openreview.net" in doc
        assert cls.batches_per_step == (3 if name in MULTI_BATCH else 1)
        assert cls.supports_rep == (name == "graddrop")


def test_defaults_follow_the_papers_and_official_code():
    assert WEIGHTING.resolve("graddrop", {}) == {"leak": 0.0}
    assert WEIGHTING.resolve("gradvac", {}) == {"beta": 0.5}  # LibMTL's and torchjd's
    assert WEIGHTING.resolve("moco", {}) == {
        "variant": "authors", "beta": None, "beta_sigma": None, "gamma": None,
        "gamma_sigma": None, "rho": None,
    }
    authors, libmtl = get("moco"), get("moco", variant="libmtl")
    steps = ("beta", "beta_sigma", "gamma", "gamma_sigma", "rho")
    assert [getattr(authors, k) for k in steps] == [0.1, 0.0, 0.1, 0.0, 0.1]
    assert [getattr(libmtl, k) for k in steps] == [0.5, 0.5, 0.1, 0.5, 0.0]
    assert get("moco", variant="libmtl", rho=0.2).rho == 0.2
    assert WEIGHTING.resolve("fairgrad", {}) == {"alpha": 1.0, "max_iter": None}
    assert WEIGHTING.resolve("excess_mtl", {}) == {"robust_step_size": 1e-2}
    assert WEIGHTING.resolve("sdmgrad", {}) == {
        "lamda": 0.3, "niter": 20, "beta": 10.0, "momentum": 0.5
    }
    assert WEIGHTING.resolve("modo", {}) == {"gamma": 0.1, "rho": 0.1}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("graddrop", {"leak": 1.5}),
        ("graddrop", {"leak": -0.1}),
        ("gradvac", {"beta": 2.0}),
        ("gradvac", {"group": "layer"}),
        ("moco", {"beta": 0.0}),
        ("moco", {"gamma_sigma": -1.0}),
        ("moco", {"variant": "paper"}),
        ("fairgrad", {"alpha": -1.0}),
        ("fairgrad", {"max_iter": 0}),
        ("fairgrad", {"alpha": "1"}),
        ("excess_mtl", {"robust_step_size": 0.0}),
        ("sdmgrad", {"niter": 0}),
        ("sdmgrad", {"momentum": 1.0}),
        ("sdmgrad", {"lambda": 0.3}),
        ("modo", {"gamma": 0.0}),
        ("modo", {"rho": -0.1}),
    ],
)
def test_bad_hyperparameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
def test_shape_dtype_device_and_finite(device, name, dtype):
    strategy = make(name, 3, device)
    for seed in range(2):
        jacobians = [j.to(dtype) for j in batches(strategy, 3, 17, seed, device)]
        d = step(strategy, jacobians)
        assert d.shape == (17,) and d.dtype == dtype and d.device == jacobians[0].device
        assert torch.isfinite(d).all()
        if strategy.last_weights is not None:
            assert strategy.last_weights.shape == (3,)
            assert torch.isfinite(strategy.last_weights).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_jacobians_give_finite_output(device, name):
    base = random_jacobian(3, 8, 0, device)
    cases = {
        "zero row": torch.stack([base[0], torch.zeros_like(base[0]), base[2]]),
        "all zero": torch.zeros_like(base),
        "collinear": torch.stack([base[0], -2.0 * base[0], 0.5 * base[0]]),
        "duplicate": torch.stack([base[0], base[0], base[1]]),
        "badly scaled": base * torch.tensor([[1e-6], [1.0], [1e6]], dtype=F64, device=device),
        "tiny": base * 1e-30,
        "huge": base * 1e30,
    }
    for label, jac in cases.items():
        strategy = make(name, 3, device)
        for _ in range(3):  # also the state built from degenerate steps
            d = step(strategy, [jac] * strategy.batches_per_step)
            assert torch.isfinite(d).all(), (name, label)
            if strategy.last_weights is not None:
                assert torch.isfinite(strategy.last_weights).all(), (name, label)
        if label == "all zero":
            assert torch.equal(d, torch.zeros_like(d)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_jacobian_raises_a_clear_error(device, name, bad):
    if device != "cpu" and name != "fairgrad":
        pytest.skip("on accelerators the check is the harness's per-epoch divergence test")
    strategy = make(name, 3, device)
    jacobians = batches(strategy, 3, 6, 0, device)
    jacobians[-1][1, 2] = bad
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        step(strategy, jacobians)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_pcgrad_and_gradvac_check_the_gramian_not_j(monkeypatch, name, bad):
    # Issue 13: scanning all of J for NaN cost three times the Gramian; a NaN/Inf in J
    # reaches the (T, T) Gramian, which is checked instead, with the same message.
    shapes = []
    isfinite = torch.isfinite

    def spy(tensor):
        shapes.append(tuple(tensor.shape))
        return isfinite(tensor)

    monkeypatch.setattr(torch, "isfinite", spy)
    jac = random_jacobian(3, 50, 0, "cpu")
    make(name, 3, "cpu").aggregate(jac)
    assert shapes and all(shape == (3, 3) for shape in shapes)
    jac[1, 7] = bad
    with pytest.raises(FloatingPointError, match="the task Jacobian contains NaN or Inf"):
        make(name, 3, "cpu").aggregate(jac)
    # The gramian engine's path (weights from a Gramian) is checked too.
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        make(name, 3, "cpu").weights(jac @ jac.T)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_outputs_and_reset_clears_state(device, name):
    # SDMGrad's default inner loop converges whatever its warm start: one small step here.
    hyper = {"niter": 1, "beta": 0.1} if name == "sdmgrad" else {}
    first, second = make(name, 4, device, 5, **hyper), make(name, 4, device, 5, **hyper)
    sequence = [batches(first, 4, 12, s, device) for s in range(4)]
    outputs = [step(first, jacs) for jacs in sequence]
    for jacs, out in zip(sequence, outputs, strict=True):
        assert torch.equal(step(second, jacs), out)
    first.reset(4, torch.device(device), seed=5)  # back to a fresh state
    for jacs, out in zip(sequence, outputs, strict=True):
        assert torch.equal(step(first, jacs), out)
    if name in STATEFUL or name in RANDOM:
        # Without reset, the state (or the random stream) moves on: calls differ.
        assert any(not torch.equal(step(second, jacs), out)
                   for jacs, out in zip(sequence, outputs, strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SIMPLEX)
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
@pytest.mark.parametrize("name", NAMES)
def test_single_task(device, name):
    strategy = make(name, 1, device)
    for seed in range(3):
        # MoCo's direction tracks the gradients seen so far: keep it constant for MoCo.
        jac = random_jacobian(1, 9, 0 if name == "moco" else seed, device)
        d = step(strategy, [jac] * strategy.batches_per_step)
        if name in ("moco", "fairgrad"):  # the task's gradient, rescaled
            assert cosine(d, jac[0]) == pytest.approx(1.0, abs=1e-12)
        else:
            assert torch.allclose(d, jac[0], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- PCGrad


@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad_gramian_weights_match_the_projection(device):
    for seed in range(3):
        jac = random_jacobian(4, 10, seed, device)
        a, b = make("pcgrad", 4, device, seed=seed), make("pcgrad", 4, device, seed=seed)
        projected_sum = a.project(jac).sum(0)
        weights = b.weights(jac @ jac.T)
        assert torch.allclose(weights @ jac, projected_sum, atol=1e-10)


# --------------------------------------------------------------------------- GradDrop


def _signed_sums(jac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.where(jac > 0, jac, 0.0).sum(0), np.where(jac < 0, jac, 0.0).sum(0)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(
    jac=st.tuples(st.integers(1, 5), st.integers(1, 12)).flatmap(
        lambda s: arrays(np.float64, s, elements=st.floats(-10, 10, allow_subnormal=False))
    ),
    leak=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_graddrop_keeps_one_sign_per_coordinate(device, jac, leak, seed):
    graddrop = make("graddrop", jac.shape[0], device, seed=seed, leak=leak)
    out = graddrop.aggregate(torch.from_numpy(jac).to(device)).cpu().numpy()
    positive, negative = _signed_sums(jac)
    total = jac.sum(0)
    scale = 1e-9 * (1 + np.abs(jac).sum(0))
    keep_pos = np.abs(out - (leak * total + (1 - leak) * positive)) <= scale
    keep_neg = np.abs(out - (leak * total + (1 - leak) * negative)) <= scale
    assert (keep_pos | keep_neg).all()
    if leak == 0.0:  # the output agrees in sign with every gradient kept at that coordinate
        assert (np.where(keep_pos, out >= 0, out <= 0) | (np.abs(out) <= scale)).all()
    if leak == 1.0:
        np.testing.assert_allclose(out, total, atol=1e-12)
    assert graddrop.last_weights is None


@pytest.mark.parametrize("device", DEVICES)
def test_graddrop_picks_the_positive_sign_with_probability_purity(device):
    # Two tasks, one coordinate repeated: P = (1 + (3 - 1) / (3 + 1)) / 2 = 0.75.
    jac = torch.tensor([[3.0], [-1.0]], dtype=F64, device=device).repeat(1, 20_000)
    out = make("graddrop", 2, device, seed=1).aggregate(jac)
    assert set(out.unique().tolist()) <= {3.0, -1.0}
    frequency = (out == 3.0).double().mean().item()
    assert abs(frequency - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 20_000)


@pytest.mark.parametrize("device", DEVICES)
def test_graddrop_without_conflicts_is_the_sum(device):
    jac = random_jacobian(4, 30, 0, device).abs() * torch.tensor([1, -1] * 15, device=device)
    assert torch.allclose(make("graddrop", 4, device).aggregate(jac), jac.sum(0))


# --------------------------------------------------------------------------- GradVac


@pytest.mark.parametrize("device", DEVICES)
def test_gradvac_first_step_is_pcgrad(device):
    # phi_hat starts at 0, where the vaccine is PCGrad's projection; same seed, same orders.
    for num_tasks in (2, 3, 5):
        jac = random_jacobian(num_tasks, 12, num_tasks, device)
        pcgrad = make("pcgrad", num_tasks, device, seed=3)
        gradvac = make("gradvac", num_tasks, device, seed=3)
        assert torch.allclose(gradvac.aggregate(jac), pcgrad.aggregate(jac), atol=1e-10)
    # By hand: g1 . g2 = -1, so g1' = g1 + g2 / 2 and g2' = g2 + g1.
    jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64, device=device)
    gradvac = make("gradvac", 2, device, beta=0.5)
    expected = torch.tensor([0.5, 0.5], dtype=F64) + torch.tensor([0.0, 1.0], dtype=F64)
    assert torch.allclose(gradvac.aggregate(jac), expected.to(device))
    # The EMA moved both targets halfway to the observed cosine -1/sqrt(2).
    target = 0.5 * -1 / math.sqrt(2)
    assert torch.allclose(gradvac.targets, torch.tensor(
        [[0.0, target], [target, 0.0]], dtype=F64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gradvac_lifts_low_cosines_to_the_target_and_leaves_others(device):
    for angle in (0.3, 1.2, 2.0, 2.9):  # cos(angle) above, then below, the 0.5 target
        g1 = torch.tensor([2.0, 0.0], dtype=F64)
        g2 = 0.7 * torch.tensor([math.cos(angle), math.sin(angle)], dtype=F64)
        jac = torch.stack([g1, g2]).to(device)
        gradvac = make("gradvac", 2, device, beta=0.0)
        gradvac.targets = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=F64, device=device)
        coef = gradvac.coefficients_from_gramian(jac @ jac.T)
        vaccinated = coef @ jac
        if math.cos(angle) >= 0.5:
            assert torch.equal(coef, torch.eye(2, dtype=F64, device=device))
        else:
            for i, j in ((0, 1), (1, 0)):
                # Exact up to the eps = 1e-8 in the denominators.
                assert cosine(vaccinated[i], jac[j]) == pytest.approx(0.5, abs=1e-7)
                # Closed form of the paper's correction coefficient.
                phi = math.cos(angle)
                ni, nj = jac[i].norm().item(), jac[j].norm().item()
                w = ni * (0.5 * math.sqrt(1 - phi**2) - phi * math.sqrt(0.75)) / (
                    nj * math.sqrt(0.75))
                assert coef[i, j].item() == pytest.approx(w, rel=1e-6)
        assert torch.equal(gradvac.targets[0, 1], torch.tensor(0.5, dtype=F64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gradvac_targets_follow_the_ema_of_observed_cosines(device):
    beta = 0.2
    gradvac = make("gradvac", 2, device, beta=beta)
    expected = 0.0
    for seed in range(5):
        jac = random_jacobian(2, 6, seed, device)
        phi = cosine(jac[0], jac[1])  # with T = 2 the pair sees the original g_i
        gradvac.aggregate(jac)
        expected = (1 - beta) * expected + beta * phi
        assert gradvac.targets[0, 1].item() == pytest.approx(expected, abs=1e-8)  # eps
        assert gradvac.targets[1, 0].item() == pytest.approx(expected, abs=1e-8)


# --------------------------------------------------------------------------- FairGrad


def fair_residual(gram: torch.Tensor, w: torch.Tensor, alpha: float) -> float:
    target = w ** (-1.0 / alpha)
    return ((gram @ w - target).abs() / target).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_the_alpha_fair_condition(device, alpha):
    for num_tasks, dim in [(2, 5), (3, 3), (4, 20), (6, 40)]:
        jac = random_jacobian(num_tasks, dim, num_tasks, device)
        fairgrad = make("fairgrad", num_tasks, device, alpha=alpha)
        d = fairgrad.aggregate(jac)
        w = fairgrad.last_weights
        assert (w > 0).all()
        assert torch.allclose(d, w @ jac, atol=1e-12)
        assert fair_residual(jac @ jac.T, w, alpha) < 1e-9
        # Each task's rate g_i . d is w_i^(-1/alpha): the fairness condition on the rates.
        assert torch.allclose(jac @ d, w ** (-1 / alpha), rtol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_fairgrad_special_cases(device):
    # Orthogonal gradients: n_i^2 w_i = w_i^(-1/alpha), so w_i = n_i^(-2 alpha / (alpha + 1)).
    norms = torch.tensor([0.5, 2.0, 7.0], dtype=F64, device=device)
    jac = torch.diag(norms)
    for alpha in (0.5, 1.0, 2.0, 10.0):
        fairgrad = make("fairgrad", 3, device, alpha=alpha)
        fairgrad.aggregate(jac)
        expected = norms ** (-2 * alpha / (alpha + 1))
        assert torch.allclose(fairgrad.last_weights, expected, rtol=1e-9)
    jac = random_jacobian(4, 10, 1, device)
    jac = jac.abs()  # positive rates under any positive weights
    # alpha = 0: linear scalarisation, the plain sum; small alpha approaches it.
    fairgrad = make("fairgrad", 4, device, alpha=0.0)
    assert torch.equal(fairgrad.aggregate(jac), jac.sum(0))
    fairgrad = make("fairgrad", 4, device, alpha=0.01)
    fairgrad.aggregate(jac)
    assert torch.allclose(fairgrad.last_weights, torch.ones(4, dtype=F64, device=device),
                          atol=0.1)
    # alpha = 1: proportional fairness, Nash-MTL's condition w_i (G w)_i = 1.
    jac = random_jacobian(4, 10, 2, device)
    fairgrad = make("fairgrad", 4, device, alpha=1.0)
    d = fairgrad.aggregate(jac)
    assert torch.allclose(fairgrad.last_weights * (jac @ d), torch.ones(4, dtype=F64,
                          device=device), rtol=1e-9)
    # alpha -> infinity: max-min fairness, all tasks improve at (nearly) the same rate.
    d = make("fairgrad", 4, device, alpha=1000.0).aggregate(jac)
    rates = jac @ d
    assert (rates.max() / rates.min()).item() < 1.02


@pytest.mark.parametrize("device", DEVICES)
def test_fairgrad_weights_scale_as_the_equation_says(device):
    jac = random_jacobian(3, 8, 4, device)
    for alpha, factor in [(0.5, 1e-3), (1.0, 50.0), (3.0, 1e4)]:
        fairgrad = make("fairgrad", 3, device, alpha=alpha)
        fairgrad.aggregate(jac)
        w = fairgrad.last_weights
        fairgrad.aggregate(factor * jac)
        expected = w * factor ** (-2 * alpha / (alpha + 1))
        assert torch.allclose(fairgrad.last_weights, expected, rtol=1e-8)


def test_fairgrad_solver_edge_cases():
    gram = np.array([[4.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 2.0]])
    w = solve_alpha_fair(gram, 1.0)
    assert w[1] == 0.0 and (w[[0, 2]] > 0).all()
    reduced = gram[np.ix_([0, 2], [0, 2])]
    np.testing.assert_allclose(reduced @ w[[0, 2]], 1 / w[[0, 2]], rtol=1e-10)
    assert (solve_alpha_fair(np.zeros((2, 2)), 2.0) == 0).all()
    conflict = np.array([[1.0, -1.0], [-1.0, 1.0]])  # g2 = -g1: no positive solution
    assert np.isfinite(solve_alpha_fair(conflict, 1.0)).all()


# --------------------------------------------------------------------------- MoCo


def np_project(v: np.ndarray) -> np.ndarray:
    """Simplex projection by bisection on the threshold (independent of the sort formula)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(v - mid, 0, None).sum() > 1 else (lo, mid)
    return np.clip(v - (lo + hi) / 2, 0, None)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(v=arrays(np.float64, st.integers(1, 7), elements=st.floats(-50, 50)))
def test_simplex_projection(device, v):
    projected = project_to_simplex(torch.from_numpy(v).to(device)).cpu().numpy()
    np.testing.assert_allclose(projected, np_project(v), atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_updates_by_hand(device):
    hyper = {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.3, "gamma_sigma": 1.0, "rho": 0.1}
    moco = make("moco", 3, device, **hyper)
    tracked, lambd = np.zeros((3, 5)), np.full(3, 1 / 3)
    for t in range(1, 5):
        jac = random_jacobian(3, 5, t, device)
        d = moco.aggregate(jac)
        beta_t, gamma_t = 0.5 / t**0.5, 0.3 / t**1.0
        tracked = tracked - beta_t * (tracked - jac.cpu().numpy())
        lambd = np_project(lambd - gamma_t * (tracked @ tracked.T + 0.1 * np.eye(3)) @ lambd)
        np.testing.assert_allclose(moco.tracked.cpu().numpy(), tracked, atol=1e-12)
        np.testing.assert_allclose(moco.last_weights.cpu().numpy(), lambd, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ tracked, atol=1e-9)
    moco.reset(3, torch.device(device))
    assert moco.step == 0 and moco.tracked is None
    assert torch.equal(moco.lambd.cpu(), torch.full((3,), 1 / 3))


@pytest.mark.parametrize("device", DEVICES)
def test_moco_default_is_the_authors_update(device):
    # Issue 14: the default is the authors' code (Trade-Off-MOL's grad_moco / MoCo.py):
    # y <- y - 0.1 (y - g); lambda <- Proj(lambda - 0.1 (y y^T lambda + 0.1 lambda)),
    # constant steps; it was LibMTL's decaying 0.5 / t^0.5 and 0.1 / t^0.5 with rho = 0.
    moco = make("moco", 3, device)
    tracked, lambd = np.zeros((3, 5)), np.full(3, 1 / 3)
    for t in range(1, 6):
        jac = random_jacobian(3, 5, t, device)
        d = moco.aggregate(jac)
        tracked = tracked - 0.1 * (tracked - jac.cpu().numpy())
        lambd = np_project(lambd - 0.1 * (tracked @ (tracked.T @ lambd) + 0.1 * lambd))
        np.testing.assert_allclose(moco.tracked.cpu().numpy(), tracked, atol=1e-12)
        np.testing.assert_allclose(moco.last_weights.cpu().numpy(), lambd, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ tracked, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_libmtl_variant_by_hand(device):
    # LibMTL's MoCo: g_i / (||g_i|| + 1e-8) * L_i, decaying steps, softmax for lambda.
    moco = make("moco", 3, device, variant="libmtl")
    tracked, lambd = np.zeros((3, 5)), np.full(3, 1 / 3)
    for t in range(1, 6):
        jac = random_jacobian(3, 5, t, device)
        losses = torch.tensor([0.5, 2.0, 1.3], dtype=F64, device=device)
        d = moco.aggregate(jac, losses)
        grads = jac.cpu().numpy()
        grads = grads / (np.linalg.norm(grads, axis=1, keepdims=True) + 1e-8)
        grads = grads * losses.cpu().numpy()[:, None]
        tracked = tracked - 0.5 / t**0.5 * (tracked - grads)
        moved = lambd - 0.1 / t**0.5 * (tracked @ tracked.T) @ lambd
        lambd = np.exp(moved) / np.exp(moved).sum()
        np.testing.assert_allclose(moco.last_weights.cpu().numpy(), lambd, atol=1e-12)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ tracked, atol=1e-12)
    with pytest.raises(ValueError, match="losses"):
        make("moco", 3, device, variant="libmtl").aggregate(jac)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_tracks_a_constant_gradient(device):
    # One task, the same gradient every step: Y_t = (1 - prod_s (1 - beta_s)) g -> g.
    jac = random_jacobian(1, 6, 0, device)
    moco = make("moco", 1, device, beta_sigma=0.5, beta=0.5)
    remaining = 1.0
    for t in range(1, 101):
        d = moco.aggregate(jac)
        remaining *= 1 - 0.5 / t**0.5
        assert torch.allclose(d, (1 - remaining) * jac[0], rtol=1e-10)
    assert torch.allclose(d, jac[0], rtol=1e-3)


# --------------------------------------------------------------------------- MoDo


@pytest.mark.parametrize("device", DEVICES)
def test_modo_updates_by_hand(device):
    modo = make("modo", 3, device, gamma=0.05, rho=0.2)
    lambd = np.full(3, 1 / 3)
    for seed in range(4):
        step_batch, first, second = (random_jacobian(3, 6, 10 * seed + k, device) for k in range(3))
        d = modo.aggregate_batches([step_batch, first, second], [None] * 3)
        a, b = first.cpu().numpy(), second.cpu().numpy()
        lambd = np_project(lambd - 0.05 * (a @ b.T @ lambd + 0.2 * lambd))
        np.testing.assert_allclose(modo.last_weights.cpu().numpy(), lambd, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), lambd @ step_batch.cpu().numpy(), atol=1e-9)
    # A single Jacobian plays all three roles.
    jac = random_jacobian(3, 6, 99, device)
    x, y = make("modo", 3, device), make("modo", 3, device)
    assert torch.equal(x.aggregate(jac), y.aggregate_batches([jac] * 3, [None] * 3))


# --------------------------------------------------------------------------- SDMGrad


@pytest.mark.parametrize("device", DEVICES)
def test_sdmgrad_updates_by_hand(device):
    lamda, beta, momentum, niter = 0.4, 2.0, 0.5, 3
    sdm = make("sdmgrad", 3, device, lamda=lamda, beta=beta, momentum=momentum, niter=niter)
    w = np.full(3, 1 / 3)
    for seed in range(3):
        step_batch, first, second = (random_jacobian(3, 6, 10 * seed + k, device) for k in range(3))
        d = sdm.aggregate_batches([step_batch, first, second], [None] * 3)
        a = first.cpu().numpy() @ second.cpu().numpy().T
        a = a / (np.sqrt(np.clip(np.diag(a), 0, None)).mean() ** 2 + 1e-8)
        velocity = np.zeros(3)  # restarted every outer step; w is warm-started
        for _ in range(niter):
            velocity = momentum * velocity + a @ (w + lamda / 3)
            w = np_project(w - beta * velocity)
        weights = (w + lamda / 3) / (1 + lamda)
        np.testing.assert_allclose(sdm.last_weights.cpu().numpy(), weights, atol=1e-9)
        np.testing.assert_allclose(d.cpu().numpy(), weights @ step_batch.cpu().numpy(),
                                   atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_sdmgrad_limits_of_lamda(device):
    jac = random_jacobian(2, 8, 3, device)
    # lamda -> infinity: the average gradient.
    d = make("sdmgrad", 2, device, lamda=1e6).aggregate(jac)
    assert torch.allclose(d, jac.mean(0), rtol=1e-5)
    # lamda = 0: (deterministic) MGDA, the min-norm point of the hull, here in closed form.
    g00, g01, g11 = (jac @ jac.T)[0, 0], (jac @ jac.T)[0, 1], (jac @ jac.T)[1, 1]
    gamma = ((g11 - g01) / (g00 - 2 * g01 + g11)).clamp(0, 1)
    expected = gamma * jac[0] + (1 - gamma) * jac[1]
    d = make("sdmgrad", 2, device, lamda=0.0, niter=2000, beta=0.05).aggregate(jac)
    assert torch.allclose(d, expected, atol=1e-6 * jac.norm().item())


# --------------------------------------------------------------------------- ExcessMTL


@pytest.mark.parametrize("device", DEVICES)
def test_excess_mtl_updates_by_hand(device):
    eta = 0.7
    excess = make("excess_mtl", 3, device, robust_step_size=eta)
    squared_sum, initial, log_w = np.zeros((3, 6)), None, np.log(np.full(3, 1 / 3))
    for seed in range(4):
        jac = random_jacobian(3, 6, seed, device)
        d = excess.aggregate(jac)
        g = jac.cpu().numpy()
        squared_sum += g**2
        risks = (g**2 / np.sqrt(squared_sum + 1e-7)).sum(1)
        initial = risks if initial is None else initial
        logits = log_w + eta * risks / initial
        log_w = logits - np.log(np.exp(logits).sum())
        np.testing.assert_allclose(excess.last_weights.cpu().numpy(), np.exp(log_w), atol=1e-12)
        np.testing.assert_allclose(d.cpu().numpy(), np.exp(log_w) @ g, atol=1e-12)
        if seed == 0:  # the first step only sets the baseline: weights stay uniform
            np.testing.assert_allclose(np.exp(log_w), 1 / 3)


@pytest.mark.parametrize("device", DEVICES)
def test_excess_mtl_favours_the_task_further_from_convergence(device):
    # Task 0 keeps its gradient while task 1's shrinks (converging): weight moves to 0.
    excess = make("excess_mtl", 2, device, robust_step_size=0.5)
    base = random_jacobian(2, 10, 0, device)
    for t in range(10):
        excess.aggregate(base * torch.tensor([[1.0], [0.5**t]], dtype=F64, device=device))
    w = excess.last_weights
    assert w[0] > 0.6 and w.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_excess_mtl_zero_first_gradient_sets_baseline_later(device):
    jac = random_jacobian(2, 5, 0, device)
    excess = make("excess_mtl", 2, device)
    excess.aggregate(torch.stack([jac[0], torch.zeros_like(jac[1])]))
    assert excess.initial[1].item() == 0.0
    excess.aggregate(jac)
    assert excess.initial[1].item() > 0.0
    assert torch.isfinite(excess.last_weights).all()


# --------------------------------------------------------------------------- engines and trials


TASKS = (Task("a", "regression"), Task("b", "multiclass", 3), Task("c", "binary"))


def _engine_grads(name: str, engine: str, **hyper) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = sharing.get("hps", (5,), TASKS)
    x = torch.randn(16, 5)
    y = {"a": torch.randn(16), "b": torch.randint(0, 3, (16,)),
         "c": torch.randint(0, 2, (16,)).float()}
    out = model(x)
    losses = torch.stack([t.loss(out[t.name], y[t.name]) for t in TASKS])
    strategy = make(name, 3, "cpu", seed=2, **hyper)
    shared = model.shared_parameters()
    ids = {id(p) for p in shared}
    ctx = StepContext(model, strategy, ENGINES[engine](), torch.optim.SGD(model.parameters()),
                      shared, [p for p in model.parameters() if id(p) not in ids])
    apply_gradients([losses], ctx)
    return [p.grad.clone() for p in shared]


@pytest.mark.parametrize("name", GRAMIAN)
def test_gramian_engine_matches_the_loop_engine(name):
    for loop, gram in zip(_engine_grads(name, "loop"), _engine_grads(name, "gramian"),
                          strict=True):
        torch.testing.assert_close(gram, loop, rtol=1e-4, atol=1e-6)


def test_graddrop_runs_on_the_representation():
    # leak = 1 keeps every gradient: the rep engine then reproduces backprop of the sum.
    ENGINES["rep"]().require_support(WEIGHTING.get("graddrop"), sharing.SHARING.get("hps"))
    ew = _engine_grads("graddrop", "loop", leak=1.0)
    rep = _engine_grads("graddrop", "rep", leak=1.0)
    for a, b in zip(ew, rep, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in _engine_grads("graddrop", "rep"))


def test_multi_batch_methods_train_through_trials(write_spec):
    spec = write_spec("""
        name = "multi"
        seeds = [0]
        datasets = [{ name = "mmoe_synthetic", num_train = 128, num_val = 32, num_test = 32, input_dim = 8 }]
        sharing = ["hps"]
        weighting = ["sdmgrad", "modo"]

        [model]
        hidden = [8]

        [train]
        epochs = 2
        batch_size = 32
        lr = 0.01
    """)
    trials = [t for t in expand(load_spec(spec)) if not t.is_baseline]
    assert {t.weighting.name for t in trials} == {"sdmgrad", "modo"}
    for trial in trials:
        record = execute(trial)
        assert record["status"] == "ok", record.get("traceback")
        assert len(record["history"]) == 2
        for entry in record["history"]:
            assert sum(entry["weights"].values()) == pytest.approx(1.0, abs=1e-5)


def test_trials_record_strategy_stats(write_spec):
    # Issue 14: the record keeps strategy.stats() (Nash-MTL: how often each step reached
    # the Nash point); strategies without diagnostics record {}.
    spec = write_spec("""
        name = "stats"
        seeds = [0]
        datasets = [{ name = "mmoe_synthetic", num_train = 64, num_val = 32, num_test = 32, input_dim = 8 }]
        sharing = ["hps"]
        weighting = ["nash_mtl", "pcgrad"]

        [model]
        hidden = [8]

        [train]
        epochs = 2
        batch_size = 32
        lr = 0.01
    """)
    trials = [t for t in expand(load_spec(spec)) if not t.is_baseline]
    records = {t.weighting.name: execute(t) for t in trials}
    for record in records.values():
        assert record["status"] == "ok", record.get("traceback")
    nash = records["nash_mtl"]["strategy_stats"]
    assert nash["nash_solves"] == 4.0  # 2 epochs x 2 steps
    assert 0.0 <= nash["nash_point_reached_fraction"] <= 1.0
    assert records["pcgrad"]["strategy_stats"] == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_paths_do_not_synchronize_with_the_host():
    # FairGrad solves on the host by design; every other method stays on the device.
    device = "cuda"
    strategies = {name: make(name, 4, device) for name in NAMES if name != "fairgrad"}
    inputs = {name: batches(s, 4, 64, 0, device) for name, s in strategies.items()}

    def run():
        for name, strategy in strategies.items():
            step(strategy, inputs[name])

    run()  # warm-up: lazy CUDA / cuBLAS initialisation and first-step allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["graddrop", "excess_mtl"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("leak", [0.0, 1.0])
def test_non_finite_jacobian_still_raises_from_the_reduced_check(name, bad, leak):
    # Both check a reduction of J (GradDrop its direction, ExcessMTL its (T,) risks)
    # instead of scanning the whole (T, P) matrix; every bad entry must still surface,
    # including one that GradDrop's mask multiplies by zero.
    strategy = get(name, leak=leak) if name == "graddrop" else get(name)
    strategy.reset(3, torch.device("cpu"), seed=0)
    for column in range(6):
        jac = torch.randn(3, 6, generator=torch.Generator().manual_seed(column))
        jac[1, column] = bad
        with pytest.raises(FloatingPointError, match="NaN or Inf"):
            strategy.aggregate(jac, torch.ones(3))
