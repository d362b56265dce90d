"""Weighting strategies: registry, formulas against hand computations, optimality of MGDA,
and the gradient surgery of PCGrad. Runs on CPU, and on CUDA too when available."""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from bench.errors import ConfigError
from strategies.weighting import WEIGHTING, GradientWeighting, LossWeighting, get
from strategies.weighting.mgda import frank_wolfe

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NAMES = ["ew", "uw", "dwa", "mgda", "pcgrad"]
F64 = torch.float64

# MGDA solved to (near) machine precision: the default active-set solver is exact, and
# Frank-Wolfe with away steps converges linearly.
EXACT = {}
FW_EXACT = {"solver": "frank_wolfe", "away_steps": True, "tol": 1e-14, "max_iter": 10_000}
FW = {"solver": "frank_wolfe"}

fast = settings(max_examples=40, deadline=None)


def jacobian_arrays(num_tasks: st.SearchStrategy[int], dims: st.SearchStrategy[int], lo=-10.0):
    """Hypothesis (T, P) float64 arrays with entries in [lo, 10]."""
    elements = st.floats(lo, 10.0, allow_nan=False, allow_subnormal=False)
    shapes = st.tuples(num_tasks, dims)
    return shapes.flatmap(lambda shape: arrays(np.float64, shape, elements=elements))


def random_jacobian(num_tasks: int, dim: int, seed: int, device: str) -> torch.Tensor:
    """Task gradients sharing a common component, so some agree and some conflict."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen, dtype=F64)
    strength = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 2 - 0.5
    scales = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 3 + 0.1
    rows = torch.randn(num_tasks, dim, generator=gen, dtype=F64) + strength * common
    return (scales * rows).to(device)


def make(name: str, num_tasks: int, device: str, seed: int = 0, **hyper):
    strategy = get(name, **hyper)
    strategy.reset(num_tasks, torch.device(device), seed)
    return strategy


# --------------------------------------------------------------------------- registry


def test_all_builtins_registered_with_summaries_and_papers():
    for name in NAMES:
        assert name in WEIGHTING
        cls = WEIGHTING.get(name)
        summary = WEIGHTING.summary(name)
        assert summary and summary == cls.__doc__.strip().splitlines()[0]
        assert "arxiv.org/abs/" in importlib.import_module(cls.__module__).__doc__
    for name in ["ew", "uw", "dwa"]:
        assert issubclass(WEIGHTING.get(name), LossWeighting)
    for name in ["mgda", "pcgrad"]:
        assert issubclass(WEIGHTING.get(name), GradientWeighting)


def test_resolve_fills_defaults():
    assert WEIGHTING.resolve("ew", {}) == {}
    assert WEIGHTING.resolve("uw", {}) == {}
    assert WEIGHTING.resolve("pcgrad", {}) == {}
    assert WEIGHTING.resolve("dwa", {}) == {"temperature": 2.0}
    assert WEIGHTING.resolve("dwa", {"temperature": 0.5}) == {"temperature": 0.5}
    assert WEIGHTING.resolve("mgda", {"normalization": "l2"}) == {
        "solver": "active_set",
        "normalization": "l2",
        "max_iter": 250,
        "tol": 1e-8,
        "away_steps": False,
    }
    assert get("dwa", temperature=3.0).temperature == 3.0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("dwa", {"temperature": -1.0}),
        ("dwa", {"temperature": 0.0}),
        ("dwa", {"temperature": "2"}),
        ("dwa", {"temprature": 2.0}),
        ("uw", {"lr": 0.1}),
        ("ew", {"scale": 1.0}),
        ("mgda", {"normalization": "l1"}),
        ("mgda", {"max_iter": 0}),
        ("mgda", {"max_iter": 2.5}),
        ("mgda", {"tol": -1e-3}),
        ("mgda", {"solver": "cvxpy"}),
        ("pcgrad", {"seed": 1}),
    ],
)
def test_bad_hyperparameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)
    with pytest.raises(ConfigError):
        get(name, **params)


def gradient_strategy_names() -> list[str]:
    return [n for n in WEIGHTING.names() if issubclass(WEIGHTING.get(n), GradientWeighting)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [1, 3])
def test_every_gradient_strategy_returns_a_detached_direction(device, num_tasks):
    # Issue 14, torchjd's contract: the direction carries no autograd graph, whatever J
    # carries (several strategies returned w @ J with J's graph attached).
    names = gradient_strategy_names()
    assert {"mgda", "pcgrad", "cagrad", "upgrad", "moco"} <= set(names)
    for name in names:
        strategy = make(name, num_tasks, device)
        for step in range(2):
            leaves = [
                random_jacobian(num_tasks, 7, 10 * step + k, device).requires_grad_()
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


# --------------------------------------------------------------------------- EW / UW / DWA


@pytest.mark.parametrize("device", DEVICES)
def test_ew_is_the_sum(device):
    losses = torch.tensor([0.3, 1.5, 2.25], device=device, requires_grad=True)
    ew = make("ew", 3, device)
    total = ew.combine(losses)
    assert torch.allclose(total, losses.sum())
    assert torch.equal(ew.last_weights, torch.ones(3, device=device))
    (grad,) = torch.autograd.grad(total, losses)
    assert torch.equal(grad, torch.ones(3, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_uw_parameters_are_zero_initialised_log_variances(device):
    uw = make("uw", 4, device)
    (s,) = uw.parameters()
    assert isinstance(s, torch.nn.Parameter) and s.requires_grad
    assert s.shape == (4,) and s.device.type == device
    assert torch.equal(s.detach(), torch.zeros(4, device=device))
    uw.reset(2, torch.device(device))  # reset creates fresh parameters
    assert uw.parameters()[0].shape == (2,)


@pytest.mark.parametrize("device", DEVICES)
def test_uw_value_and_gradients_match_the_formula(device):
    uw = make("uw", 3, device)
    (s,) = uw.parameters()
    with torch.no_grad():
        s.copy_(torch.tensor([-1.0, 0.0, 0.7]))
    losses = torch.tensor([0.5, 2.0, 3.0], device=device, requires_grad=True)
    total = uw.combine(losses)
    expected = sum(
        0.5 * math.exp(-sv) * lv + 0.5 * sv
        for sv, lv in zip([-1.0, 0.0, 0.7], [0.5, 2.0, 3.0], strict=True)
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    grad_s, grad_l = torch.autograd.grad(total, [s, losses])
    assert torch.allclose(grad_s, 0.5 - 0.5 * torch.exp(-s.detach()) * losses.detach())
    assert torch.allclose(grad_l, 0.5 * torch.exp(-s.detach()))
    assert torch.allclose(uw.last_weights, 0.5 * torch.exp(-s.detach()))
    assert not uw.last_weights.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_uw_trained_by_an_optimizer_converges_to_log_loss(device):
    # d/ds (0.5 exp(-s) L + 0.5 s) = 0  <=>  s = log L.
    uw = make("uw", 3, device)
    optimizer = torch.optim.Adam(uw.parameters(), lr=0.05)
    losses = torch.tensor([0.2, 1.0, 5.0], device=device)
    for _ in range(600):
        optimizer.zero_grad()
        uw.combine(losses).backward()
        optimizer.step()
    assert torch.allclose(uw.parameters()[0].detach(), losses.log(), atol=1e-2)


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


# --------------------------------------------------------------------------- MGDA


def min_norm_reference(jac: np.ndarray) -> np.ndarray:
    """Min-norm point of the convex hull of the rows of ``jac``, by SLSQP on the simplex."""
    gram = jac @ jac.T
    num = len(gram)
    result = minimize(
        lambda a: a @ gram @ a,
        np.full(num, 1.0 / num),
        jac=lambda a: 2.0 * gram @ a,
        bounds=[(0.0, 1.0)] * num,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(num)}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    alpha = np.clip(result.x, 0.0, None)
    return (alpha / alpha.sum()) @ jac


def assert_min_norm_optimal(jac: torch.Tensor, alpha: torch.Tensor, d: torch.Tensor, rtol: float):
    """alpha in the simplex, d = alpha @ J, and the KKT conditions g_t . d >= ||d||^2."""
    scale = jac.pow(2).sum(1).max().item()
    assert alpha.shape == (jac.shape[0],) and alpha.device == jac.device
    assert (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(d, alpha.to(jac.dtype) @ jac, atol=1e-9 * (1 + scale**0.5))
    assert ((jac @ d) >= d @ d - rtol * scale).all()


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(jac=jacobian_arrays(st.just(2), st.integers(1, 8)))
def test_mgda_two_tasks_is_the_exact_closed_form(device, jac):
    jacobian = torch.from_numpy(jac).to(device)
    mgda = make("mgda", 2, device)
    d = mgda.aggregate(jacobian)
    assert_min_norm_optimal(jacobian, mgda.last_weights, d, rtol=1e-10)
    grid = np.linspace(0.0, 1.0, 2001)[:, None]
    best = ((grid * jac[0] + (1 - grid) * jac[1]) ** 2).sum(1).min()
    assert (d @ d).item() <= best + 1e-10 * (1 + (jac**2).sum(1).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("num_tasks", "dim"), [(3, 4), (4, 10), (5, 50), (6, 6), (8, 300)])
def test_mgda_matches_scipy_and_satisfies_kkt(device, num_tasks, dim):
    for seed, hyper in itertools.product(range(4), (EXACT, FW_EXACT)):
        jac = random_jacobian(num_tasks, dim, seed, device)
        mgda = make("mgda", num_tasks, device, **hyper)
        d = mgda.aggregate(jac)
        assert d.shape == (dim,) and d.dtype == F64 and d.device == jac.device
        assert_min_norm_optimal(jac, mgda.last_weights, d, rtol=1e-12 if not hyper else 1e-10)
        reference = torch.from_numpy(min_norm_reference(jac.cpu().numpy())).to(device)
        scale = jac.pow(2).sum(1).max().item()
        assert (d @ d).item() <= (reference @ reference).item() + 1e-10 * scale
        assert torch.allclose(d, reference, atol=1e-5 * scale**0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_mgda_paper_solver_defaults(device):
    # Plain Frank-Wolfe (Algorithm 2): iterates stay in the simplex, the objective only
    # decreases from alpha = 1/T, and after k exact-line-search steps it is within
    # 2 C_f / (k + 2) of the optimum (Jaggi, ICML 2013), C_f <= 2 max ||g_i - g_j||^2.
    for num_tasks, dim in [(3, 5), (5, 40), (7, 200)]:
        jac = random_jacobian(num_tasks, dim, 11, device)
        mgda = make("mgda", num_tasks, device, **FW)
        d = mgda.aggregate(jac)
        alpha = mgda.last_weights
        assert (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1.0)
        assert torch.allclose(d, alpha @ jac)
        optimum = min_norm_reference(jac.cpu().numpy())
        diameter_sq = torch.cdist(jac, jac).max().item() ** 2
        assert (d @ d).item() <= jac.mean(0).pow(2).sum().item() + 1e-12
        assert (d @ d).item() <= optimum @ optimum + 4 * diameter_sq / 252
        # With a tolerance it can reach, the stopping test certifies the KKT conditions.
        certified = make("mgda", num_tasks, device, tol=1e-4, max_iter=100_000, **FW)
        d = certified.aggregate(jac)
        assert_min_norm_optimal(jac, certified.last_weights, d, rtol=1e-4)


def test_frank_wolfe_on_the_gramian_directly():
    # Orthonormal gradients: the min-norm point is their mean, already optimal at 1/T.
    assert frank_wolfe(np.eye(4)) == pytest.approx(np.full(4, 0.25))
    # Two opposite gradients and a third: 0 is in the hull.
    jac = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    alpha = frank_wolfe(jac @ jac.T, away_steps=True, tol=1e-14, max_iter=10_000)
    assert np.linalg.norm(alpha @ jac) < 1e-6
    assert np.isnan(frank_wolfe(np.array([[np.inf, 0.0], [0.0, 1.0]]))).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_mgda_is_permutation_invariant(device, num_tasks):
    for seed in range(3):
        jac = random_jacobian(num_tasks, 12, seed, device)
        perm = torch.randperm(num_tasks, generator=torch.Generator().manual_seed(seed))
        mgda = make("mgda", num_tasks, device, **EXACT)
        d = mgda.aggregate(jac)
        alpha = mgda.last_weights
        d_perm = mgda.aggregate(jac[perm.to(device)])
        scale = jac.pow(2).sum(1).max().item() ** 0.5
        assert torch.allclose(d_perm, d, atol=1e-6 * scale)
        assert torch.allclose(mgda.last_weights, alpha[perm.to(device)], atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("num_tasks", "dim"), [(2, 3), (3, 5), (4, 10), (6, 40)])
def test_mgda_zero_gradient_gives_zero_direction(device, num_tasks, dim):
    for seed in range(3):
        jac = random_jacobian(num_tasks, dim, seed, device)
        jac[seed % num_tasks] = 0.0
        scale = jac.pow(2).sum(1).max().item()
        for hyper in (FW, {"normalization": "l2", **FW}, EXACT, FW_EXACT):
            mgda = make("mgda", num_tasks, device, **hyper)
            d = mgda.aggregate(jac)
            assert torch.isfinite(d).all() and torch.isfinite(mgda.last_weights).all()
            if num_tasks == 2:  # closed form: exactly the zero gradient
                assert torch.equal(d, torch.zeros_like(d))
            else:
                # The stopping certificate 0 . d >= ||d||^2 - tol max_t ||g_t||^2, on the unit
                # gradients (max norm 1) with l2 normalisation.
                tol = hyper.get("tol", 1e-13 if hyper is EXACT else 1e-8)
                bound = tol * (1.0 if "normalization" in hyper else scale)
                assert (d @ d).item() <= bound * (1 + 1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [2, 4])
@pytest.mark.parametrize("factor", [1e-3, 7.5, 1e4])
def test_mgda_scales_with_the_gradients(device, num_tasks, factor):
    jac = random_jacobian(num_tasks, 20, 3, device)
    for hyper in (FW, EXACT, FW_EXACT):
        mgda = make("mgda", num_tasks, device, **hyper)
        d = mgda.aggregate(jac)
        alpha = mgda.last_weights
        d_scaled = mgda.aggregate(factor * jac)
        assert torch.allclose(d_scaled, factor * d, rtol=1e-6, atol=1e-9 * factor)
        assert torch.allclose(mgda.last_weights, alpha, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [2, 4])
def test_mgda_l2_normalization(device, num_tasks):
    jac = random_jacobian(num_tasks, 15, 5, device)
    norms = jac.norm(dim=1)
    mgda = make("mgda", num_tasks, device, normalization="l2", **EXACT)
    d = mgda.aggregate(jac)
    # The min-norm point of the unit-normalised gradients, expressed on the originals.
    plain = make("mgda", num_tasks, device, **EXACT)
    d_unit = plain.aggregate(jac / norms[:, None])
    assert torch.allclose(d, d_unit, atol=1e-9)
    assert torch.allclose(mgda.last_weights, plain.last_weights / norms, atol=1e-9)
    assert torch.allclose(d, mgda.last_weights @ jac, atol=1e-9)
    assert ((jac @ d) > 0).all()  # a common descent direction
    # Invariant to rescaling each task's gradient.
    factors = torch.tensor([0.01, 100.0, 3.0, 0.5][:num_tasks], device=device, dtype=F64)
    rescaled = factors[:, None] * jac
    assert torch.allclose(mgda.aggregate(rescaled), d, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_gradient_methods_keep_device_and_dtype(device, dtype, num_tasks):
    jac = random_jacobian(num_tasks, 32, 0, device).to(dtype)
    for name in ["mgda", "pcgrad"]:
        strategy = make(name, num_tasks, device)
        d = strategy.aggregate(jac)
        assert d.shape == (32,) and d.dtype == dtype and d.device == jac.device
        assert torch.isfinite(d).all()
        if num_tasks == 1:
            assert torch.equal(d, jac[0])
    mgda = make("mgda", num_tasks, device, **EXACT)
    d = mgda.aggregate(jac.float())
    assert_min_norm_optimal(jac.float(), mgda.last_weights, d, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(jac=jacobian_arrays(st.integers(3, 6), st.integers(1, 6)))
def test_mgda_iterates_stay_feasible_and_improve(device, jac):
    jacobian = torch.from_numpy(jac).to(device)
    for hyper in (FW, {"away_steps": True, **FW}, {"normalization": "l2"}, EXACT):
        mgda = make("mgda", jac.shape[0], device, **hyper)
        d = mgda.aggregate(jacobian)
        weights = mgda.last_weights
        assert torch.isfinite(d).all() and (weights >= 0).all()
        assert torch.allclose(d, weights @ jacobian, atol=1e-9 * (1 + np.abs(jac).max()))
        if "normalization" not in hyper:
            assert weights.sum().item() == pytest.approx(1.0)
            assert (d @ d).item() <= (jac.mean(0) ** 2).sum() * (1 + 1e-12) + 1e-12


# --------------------------------------------------------------------------- PCGrad


def pcgrad_reference(jac: torch.Tensor, orders) -> torch.Tensor:
    """The paper's Algorithm 1 on the vectors, for given orders of the other tasks."""
    projected = []
    for i, order in enumerate(orders):
        g = jac[i].clone()
        for j in order:
            dot = g @ jac[j]
            if dot < 0:
                g = g - dot / (jac[j] @ jac[j]) * jac[j]
        projected.append(g)
    return torch.stack(projected)


def all_orders(num_tasks: int):
    per_task = [
        list(itertools.permutations([j for j in range(num_tasks) if j != i]))
        for i in range(num_tasks)
    ]
    return itertools.product(*per_task)


@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad_two_conflicting_tasks_by_hand(device):
    jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], device=device)
    pcgrad = make("pcgrad", 2, device)
    # g1 . g2 = -1: g1' = g1 + g2 / 2 = (0.5, 0.5), g2' = g2 + g1 = (0, 1).
    assert torch.allclose(
        pcgrad.project(jac), torch.tensor([[0.5, 0.5], [0.0, 1.0]], device=device)
    )
    assert torch.allclose(pcgrad.aggregate(jac), torch.tensor([0.5, 1.5], device=device))
    # The direction as weights on the original gradients: 2 g1 + 1.5 g2.
    assert torch.allclose(pcgrad.last_weights, torch.tensor([2.0, 1.5], device=device))


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(jac=jacobian_arrays(st.just(2), st.integers(1, 8)))
def test_pcgrad_two_tasks_formula(device, jac):
    jacobian = torch.from_numpy(jac).to(device)
    pcgrad = make("pcgrad", 2, device)
    projected = pcgrad.project(jacobian)
    g0, g1 = jac
    dot = min(g0 @ g1, 0.0)
    n0, n1 = g0 @ g0, g1 @ g1
    expected0 = g0 - (dot / n1 if n1 > 0 else 0.0) * g1
    expected1 = g1 - (dot / n0 if n0 > 0 else 0.0) * g0
    scale = 1.0 + np.abs(jac).max()
    np.testing.assert_allclose(projected[0].cpu().numpy(), expected0, atol=1e-9 * scale)
    np.testing.assert_allclose(projected[1].cpu().numpy(), expected1, atol=1e-9 * scale)
    # After surgery a task's gradient no longer conflicts with the other original gradient.
    assert (projected[0] @ jacobian[1]).item() >= -1e-9 * scale**2
    assert (projected[1] @ jacobian[0]).item() >= -1e-9 * scale**2
    np.testing.assert_allclose(
        pcgrad.aggregate(jacobian).cpu().numpy(), expected0 + expected1, atol=1e-9 * scale
    )


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(jac=jacobian_arrays(st.integers(1, 6), st.integers(1, 8), lo=0.0))
def test_pcgrad_without_conflicts_is_the_sum(device, jac):
    jacobian = torch.from_numpy(jac).to(device)  # non-negative entries: all dots >= 0
    pcgrad = make("pcgrad", jac.shape[0], device)
    assert torch.allclose(pcgrad.aggregate(jacobian), jacobian.sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [3, 4])
def test_pcgrad_matches_the_algorithm_for_some_random_order(device, num_tasks):
    order_matters = False
    for seed in range(4):
        jac = random_jacobian(num_tasks, 6, seed, device)
        pcgrad = make("pcgrad", num_tasks, device, seed=seed)
        projected = pcgrad.project(jac)
        candidates = [pcgrad_reference(jac, orders) for orders in all_orders(num_tasks)]
        assert any(torch.allclose(projected, c, atol=1e-10) for c in candidates)
        order_matters |= any(not torch.allclose(candidates[0], c) for c in candidates)
    assert order_matters  # so the check above is not vacuous


@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad_uses_every_order(device):
    jac = random_jacobian(3, 6, 2, device)
    pcgrad = make("pcgrad", 3, device, seed=0)
    distinct = {tuple(pcgrad.aggregate(jac).cpu().numpy().round(9)) for _ in range(64)}
    reachable = {
        tuple(pcgrad_reference(jac, orders).sum(0).cpu().numpy().round(9))
        for orders in all_orders(3)
    }
    assert distinct == reachable and len(reachable) > 1


@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad_same_seed_same_output(device):
    jac = random_jacobian(5, 10, 1, device)
    first, second = make("pcgrad", 5, device, seed=3), make("pcgrad", 5, device, seed=3)
    for _ in range(5):
        assert torch.equal(first.aggregate(jac), second.aggregate(jac))
    outputs = [make("pcgrad", 5, device, seed=s).aggregate(jac) for s in range(10)]
    assert any(not torch.allclose(outputs[0], o) for o in outputs)


@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad_zero_gradient(device):
    jac = random_jacobian(3, 6, 4, device)
    jac[1] = 0.0
    pcgrad = make("pcgrad", 3, device)
    d = pcgrad.aggregate(jac)
    assert torch.isfinite(d).all()
    expected = make("pcgrad", 2, device).aggregate(jac[[0, 2]])  # order-free for 2 tasks
    assert torch.allclose(d, expected)
    assert torch.equal(pcgrad.project(jac)[1], torch.zeros(6, device=device, dtype=F64))


# --------------------------------------------------------------------------- no host sync


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_paths_do_not_synchronize_with_the_host():
    # MGDA with T > 2 copies its T x T Gramian to the host once per step, by design.
    device = torch.device("cuda")
    losses = torch.rand(3, device=device)
    mean_losses = torch.rand(3, device=device) + 0.5
    jac2, jac4 = torch.randn(2, 64, device=device), torch.randn(4, 64, device=device)
    strategies = {name: make(name, 3, "cuda") for name in ["ew", "uw", "dwa"]}
    pcgrad, mgda = make("pcgrad", 4, "cuda"), make("mgda", 2, "cuda")

    def step():
        for strategy in strategies.values():
            strategy.combine(losses)
            strategy.end_epoch(mean_losses)
        pcgrad.aggregate(jac4)
        mgda.aggregate(jac2)

    step()  # warm-up: lazy CUDA / cuBLAS initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
