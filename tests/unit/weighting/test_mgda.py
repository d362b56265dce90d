"""strategies/weighting/mgda.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting.py, test_weighting_gramian.py.)"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from strategies.weighting.mgda import frank_wolfe
from unit.weighting._inputs import (
    DEVICES,
    F64,
    direction,
    jacobian_arrays,
    make,
    random_jacobian,
    scale_of,
)

# MGDA solved to (near) machine precision: the default active-set solver is exact, and
# Frank-Wolfe with away steps converges linearly.
EXACT = {}


FW_EXACT = {"solver": "frank_wolfe", "away_steps": True, "tol": 1e-14, "max_iter": 10_000}


FW = {"solver": "frank_wolfe"}


fast = settings(max_examples=40, deadline=None)


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


def assert_min_norm_kkt(jac: torch.Tensor, alpha: torch.Tensor, d: torch.Tensor, rtol: float):
    scale = scale_of(jac)
    assert (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1.0, abs=1e-12)
    dots = jac @ d
    assert (dots >= d @ d - rtol * scale).all()  # KKT: g_t . d >= ||d||^2
    assert (dots >= -rtol * scale).all()  # hence no conflict with any task


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


def test_mgda_two_tasks_on_the_cpu_raise_too():
    jac = random_jacobian(2, 6, 0)
    jac[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        direction("mgda", jac)


@pytest.mark.parametrize("device", DEVICES)
@fast
@given(jac=jacobian_arrays(st.integers(2, 7), st.integers(1, 8)))
def test_mgda_returns_the_min_norm_point(device, jac):
    jacobian = torch.from_numpy(jac).to(device)
    mgda = make("mgda", jac.shape[0], device)
    d = mgda.aggregate(jacobian)
    assert_min_norm_kkt(jacobian, mgda.last_weights, d, rtol=1e-12)
    # No vertex or convex combination of two gradients is shorter.
    for i, j in itertools.combinations(range(jac.shape[0]), 2):
        grid = np.linspace(0.0, 1.0, 101)[:, None]
        best = ((grid * jac[i] + (1 - grid) * jac[j]) ** 2).sum(1).min()
        assert (d @ d).item() <= best + 1e-12 * (1 + scale_of(jacobian))
