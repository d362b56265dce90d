"""Gramian-based weighting strategies: the properties each paper defines, on CPU (and CUDA).

MGDA, UPGrad, DualProj, IMTL-G / IMTL, CAGrad, Nash-MTL, Aligned-MTL and ConFIG; their
exact solvers in ``strategies.weighting._solvers``; shared contract checks (Gramian
contract, T = 1, permutations, scaling, degenerate and non-finite inputs).

Scale conventions checked here (d(c J) for c > 0):

- equivariant, d(c J) = c d(J): mgda, upgrad and dualproj (while ||J||_F^2 >= norm_eps),
  imtl_g, imtl (fixed loss scales), cagrad, aligned_mtl, config;
- nash_mtl: invariant at the Nash solution G alpha = 1/alpha (||d||^2 = T there), and then
  clipped to ``max_norm``; in general the official sequence of convex problems is not
  scale-invariant (its objective mixes 1^T G alpha with a scale-free linearisation).
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from bench.errors import ConfigError
from strategies.weighting import WEIGHTING, GramianWeighting, get
from strategies.weighting._solvers import (
    dual_cone_weights,
    min_norm_weights,
    nonneg_qp,
    psd_pinv,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64
METHODS = [
    "mgda", "upgrad", "dualproj", "imtl_g", "imtl", "cagrad", "nash_mtl", "aligned_mtl", "config",
]
SUPPORTS_REP = {"mgda", "upgrad", "dualproj", "imtl_g", "imtl", "cagrad", "aligned_mtl"}
SCALE_EQUIVARIANT = ["mgda", "upgrad", "dualproj", "imtl_g", "imtl", "cagrad", "aligned_mtl",
                     "config"]
# Methods whose direction does not depend on the order of the tasks (all deterministic).
PERMUTATION_INVARIANT = METHODS

fast = settings(max_examples=30, deadline=None)


def jacobian_arrays(num_tasks, dims, lo=-10.0):
    """Hypothesis (T, P) float64 arrays with entries in [lo, 10]."""
    elements = st.floats(lo, 10.0, allow_nan=False, allow_subnormal=False)
    shapes = st.tuples(num_tasks, dims)
    return shapes.flatmap(lambda shape: arrays(np.float64, shape, elements=elements))


def random_jacobian(num_tasks: int, dim: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Task gradients sharing a common component, so some agree and some conflict."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen, dtype=F64)
    strength = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 2 - 0.5
    scales = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 3 + 0.1
    rows = torch.randn(num_tasks, dim, generator=gen, dtype=F64) + strength * common
    return (scales * rows).to(device)


def make(name: str, num_tasks: int, device: str = "cpu", seed: int = 0, **hyper):
    strategy = get(name, **hyper)
    strategy.reset(num_tasks, torch.device(device), seed)
    return strategy


def direction(name: str, jac: torch.Tensor, **hyper) -> torch.Tensor:
    return make(name, jac.shape[0], jac.device.type, **hyper).aggregate(jac)


def scale_of(jac: torch.Tensor) -> float:
    return jac.pow(2).sum(1).max().item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


# --------------------------------------------------------------------------- registry


def test_registered_with_summaries_papers_and_needs():
    names = WEIGHTING.names()
    for name in METHODS:
        assert name in names
        cls = WEIGHTING.get(name)
        assert issubclass(cls, GramianWeighting)
        summary = WEIGHTING.summary(name)
        assert summary and summary == cls.__doc__.strip().splitlines()[0]
        doc = importlib.import_module(cls.__module__).__doc__
        assert "arxiv.org/abs/" in doc or "openreview.net" in doc
        assert cls.supports_rep == (name in SUPPORTS_REP)
    assert WEIGHTING.get("imtl").parameters is not GramianWeighting.parameters


def test_resolve_fills_paper_defaults():
    assert WEIGHTING.resolve("mgda", {})["solver"] == "active_set"
    assert WEIGHTING.resolve("upgrad", {}) == {"pref_vector": None, "norm_eps": 1e-4,
                                               "reg_eps": 1e-4}
    assert WEIGHTING.resolve("dualproj", {}) == {"pref_vector": None, "norm_eps": 1e-4,
                                                 "reg_eps": 1e-4}
    assert WEIGHTING.resolve("imtl_g", {}) == {}
    assert WEIGHTING.resolve("imtl", {}) == {}
    assert WEIGHTING.resolve("cagrad", {}) == {"c": 0.5, "rescale": 1, "norm_eps": 1e-4}
    assert WEIGHTING.resolve("nash_mtl", {}) == {
        "update_weights_every": 1, "optim_niter": 20, "max_norm": 1.0, "solver": "official",
    }
    assert WEIGHTING.resolve("aligned_mtl", {}) == {"scale_mode": "min", "pref_vector": None}
    assert WEIGHTING.resolve("config", {}) == {"pref_vector": None}
    assert WEIGHTING.resolve("upgrad", {"pref_vector": [1.0, 2]})["pref_vector"] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cagrad", {"c": -0.1}),
        ("cagrad", {"rescale": 3}),
        ("cagrad", {"alpha": 0.5}),
        ("nash_mtl", {"optim_niter": 0}),
        ("nash_mtl", {"update_weights_every": 1.5}),
        ("nash_mtl", {"max_norm": -1.0}),
        ("nash_mtl", {"solver": "cvxpy"}),
        ("aligned_mtl", {"scale_mode": "max"}),
        ("upgrad", {"pref_vector": "mean"}),
        ("upgrad", {"reg_eps": -1e-4}),
        ("dualproj", {"norm_eps": -1.0}),
        ("config", {"pref_vector": [1, "a"]}),
        ("imtl_g", {"c": 1.0}),
    ],
)
def test_bad_hyperparameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)


def test_pref_vector_of_the_wrong_length_raises():
    jac = random_jacobian(3, 5, 0)
    for name in ["upgrad", "dualproj", "aligned_mtl", "config"]:
        with pytest.raises(ValueError, match="pref_vector has 2 entries for 3 tasks"):
            direction(name, jac, pref_vector=[1.0, 2.0])


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", METHODS)
def test_low_precision_keeps_device_and_dtype(device, dtype, name):
    jac = random_jacobian(3, 16, 2, device).to(dtype)
    d = make(name, 3, device).aggregate(jac)
    assert d.shape == (16,) and d.dtype == dtype and d.device == jac.device
    assert torch.isfinite(d).all()


@pytest.mark.parametrize("device", DEVICES)
def test_single_task(device):
    jac = random_jacobian(1, 9, 3, device)
    g = jac[0]
    for name in ["mgda", "upgrad", "dualproj", "imtl_g", "imtl", "aligned_mtl", "config"]:
        assert torch.allclose(direction(name, jac), g, rtol=1e-12, atol=1e-12), name
    # CAGrad: the ball around g has radius c ||g||: d = (1 + c) g, then the official rescale.
    assert torch.allclose(direction("cagrad", jac, rescale=0), 1.5 * g)
    assert torch.allclose(direction("cagrad", jac), 1.5 / 1.25 * g)
    # Nash-MTL, as the official code: alpha = 1 passes its stopping test on the normalised
    # Gramian (G / ||G||_F = 1), so d = g, then clipped to max_norm = 1.
    assert torch.allclose(direction("nash_mtl", jac, max_norm=0.0), g)
    assert g.norm() > 1 and torch.allclose(direction("nash_mtl", jac), g / g.norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
def test_permuting_the_tasks_keeps_the_direction(device, name):
    for num_tasks, seed in [(3, 0), (5, 1)]:
        jac = random_jacobian(num_tasks, 12, seed, device)
        perm = torch.randperm(num_tasks, generator=torch.Generator().manual_seed(seed))
        d = direction(name, jac)
        d_perm = direction(name, jac[perm.to(device)])
        assert torch.allclose(d_perm, d, atol=1e-7 * (1 + scale_of(jac) ** 0.5)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SCALE_EQUIVARIANT)
@pytest.mark.parametrize("factor", [1e-1, 3.0, 1e3])
def test_scaling_the_gradients_scales_the_direction(device, name, factor):
    jac = random_jacobian(4, 20, 5, device)  # ||J||_F^2 >> norm_eps even at factor 0.1
    d = direction(name, jac)
    d_scaled = direction(name, factor * jac)
    assert torch.allclose(d_scaled, factor * d, rtol=1e-7, atol=1e-9 * factor), name


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_is_scale_invariant_at_the_nash_solution(device):
    # Orthogonal gradients: G is diagonal and G alpha = 1/alpha gives alpha_t = 1 / ||g_t||.
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    jac = (torch.tensor([0.5, 2.0, 7.0], dtype=F64)[:, None] * basis[:3]).to(device)
    units = jac / jac.norm(dim=1, keepdim=True)
    for factor in [1e-2, 1.0, 50.0]:
        d = direction("nash_mtl", factor * jac, max_norm=0.0)
        assert torch.allclose(d, units.sum(0), atol=1e-6)
        clipped = direction("nash_mtl", factor * jac)
        assert torch.allclose(clipped, units.sum(0) / math.sqrt(3), atol=1e-6)


# --------------------------------------------------------------------------- degenerate input


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
    return {
        "zero_row": zero_row,
        "all_zero": torch.zeros_like(base),
        "collinear": collinear,
        "identical": base[:1].repeat(4, 1),
        "badly_scaled": badly_scaled,
        "more_tasks_than_params": random_jacobian(6, 3, 8, device),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS)
def test_degenerate_gradients_give_finite_directions(device, name):
    for case, jac in degenerate_jacobians(device).items():
        strategy = make(name, jac.shape[0], device)
        d = strategy.aggregate(jac)
        assert torch.isfinite(d).all() and torch.isfinite(strategy.last_weights).all(), case
        if case == "all_zero":
            assert torch.equal(d, torch.zeros_like(d)), case


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_jacobian_raises_a_clear_error(device, name, bad):
    jac = random_jacobian(3, 6, 0, device)
    jac[1, 2] = bad
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        make(name, 3, device).aggregate(jac)


def test_mgda_two_tasks_on_the_cpu_raise_too():
    jac = random_jacobian(2, 6, 0)
    jac[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        direction("mgda", jac)


def test_overflowing_gramian_raises():
    jac = torch.full((3, 4), 1e200, dtype=F64)
    with pytest.raises(FloatingPointError, match="overflowed"):
        direction("upgrad", jac)


# --------------------------------------------------------------------------- solvers


@fast
@given(
    mat=st.tuples(st.integers(1, 10), st.integers(1, 8)).flatmap(
        # 4 decimals: no products that underflow (then Q = 0 and the QP is unbounded).
        lambda shape: arrays(np.float64, shape, elements=st.floats(-5, 5).map(lambda v: round(v, 4)))
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_nonneg_qp_satisfies_kkt(mat, seed):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=mat.shape[0])
    quad, lin = mat.T @ mat, -mat.T @ target
    x = nonneg_qp(quad, lin)
    dual = -(quad @ x + lin)
    scale = max(np.abs(quad).max(initial=0), np.abs(lin).max(initial=0), 1e-300)
    assert (x >= 0).all()
    assert (dual <= 1e-9 * scale).all()  # no improving direction off the support
    assert np.allclose(dual[x > 0], 0.0, atol=1e-9 * scale)  # stationary on it


def test_nonneg_qp_matches_scipy_nnls():
    from scipy.optimize import nnls

    rng = np.random.default_rng(0)
    for _ in range(200):
        t, p = rng.integers(1, 9), rng.integers(1, 12)
        mat, target = rng.normal(size=(p, t)), rng.normal(size=p)
        x = nonneg_qp(mat.T @ mat, -mat.T @ target)
        reference, _ = nnls(mat, target)
        assert np.sum((mat @ x - target) ** 2) <= np.sum((mat @ reference - target) ** 2) + 1e-10


def test_psd_pinv_drops_the_null_space():
    jac = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    gram = jac @ jac.T
    pinv = psd_pinv(gram, 3 * np.finfo(float).eps)
    assert np.allclose(pinv, np.linalg.pinv(gram))
    assert np.array_equal(psd_pinv(np.zeros((2, 2)), 1e-15), np.zeros((2, 2)))


# --------------------------------------------------------------------------- MGDA


def assert_min_norm_kkt(jac: torch.Tensor, alpha: torch.Tensor, d: torch.Tensor, rtol: float):
    scale = scale_of(jac)
    assert (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1.0, abs=1e-12)
    dots = jac @ d
    assert (dots >= d @ d - rtol * scale).all()  # KKT: g_t . d >= ||d||^2
    assert (dots >= -rtol * scale).all()  # hence no conflict with any task


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


def test_min_norm_weights_against_slsqp():
    rng = np.random.default_rng(1)
    for _ in range(30):
        t, p = rng.integers(3, 9), rng.integers(2, 40)
        jac = rng.normal(size=(t, p)) + rng.normal(size=p) * rng.uniform(-0.5, 1.5)
        gram = jac @ jac.T
        alpha = min_norm_weights(gram)
        result = minimize(lambda a, g=gram: a @ g @ a, np.full(t, 1 / t),
                          jac=lambda a, g=gram: 2 * g @ a, bounds=[(0, 1)] * t, method="SLSQP",
                          options={"ftol": 1e-15},
                          constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}])
        assert alpha @ gram @ alpha <= result.fun + 1e-12 * gram.diagonal().max()


# --------------------------------------------------------------------------- UPGrad / DualProj


# A nearly degenerate cone (g1 and g2 almost opposite, g3 across): its only point is 0,
# reached with weights ~3e6. Found by hypothesis; dividing G by its trace erased the
# deciding 1e-14 eigenvalue and left a conflict of 1.3e-3.
NEARLY_DEGENERATE = np.array([[-1.0, 0.0], [1.0, 1.1920929e-07], [0.0, -1.0]])


# Derandomized: on nearly degenerate cones (condition numbers of 1e10 and more) the
# rounding of G = J J^T itself bounds what any Gramian method can reach, so a random
# search eventually finds inputs beyond 1e-9; the fixed examples plus the one above
# keep the check exact and the run reproducible (see upgrad's docstring).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@settings(fast, derandomize=True)
@given(jac=jacobian_arrays(st.integers(2, 7), st.integers(1, 8)))
@example(jac=NEARLY_DEGENERATE)
def test_dual_cone_methods_do_not_conflict(device, name, jac):
    jacobian = torch.from_numpy(jac).to(device)
    scale = max(scale_of(jacobian), 1e-300)
    # Exact projection (no ridge): g_t . d >= 0 up to rounding. d = J^T v carries the
    # rounding of weights v of any size (~eps |v|_1 scale), on top of 1e-9 relative.
    strategy = make(name, jacobian.shape[0], device, reg_eps=0.0, norm_eps=0.0)
    d = strategy.aggregate(jacobian)
    weight_size = float(strategy.last_weights.abs().sum())
    rounding = 64 * np.finfo(np.float64).eps * weight_size
    assert ((jacobian @ d) >= -(1e-9 + rounding) * scale).all()
    # torchjd's default ridge: the projection is onto a slightly larger cone.
    d = direction(name, jacobian)
    assert ((jacobian @ d) >= -1e-3 * scale * jac.shape[0]).all()


def test_dual_cone_projection_kkt():
    # pi(J^T u) = J^T v, v >= u: J pi >= 0, lambda = v - u >= 0, lambda_t (J pi)_t = 0.
    for seed in range(10):
        jac = random_jacobian(5, 4 + seed, seed).numpy()
        gram = jac @ jac.T
        prefs = np.eye(5)
        weights = dual_cone_weights(gram, prefs, norm_eps=0.0, reg_eps=0.0)
        for u, v in zip(prefs, weights, strict=True):
            proj = v @ jac
            lam = v - u
            assert (jac @ proj >= -1e-9 * gram.trace()).all()
            assert (lam >= -1e-12).all()
            assert np.allclose(lam * (jac @ proj), 0.0, atol=1e-9 * gram.trace())


@pytest.mark.parametrize("device", DEVICES)
def test_upgrad_is_the_mean_of_projections_and_dualproj_the_projected_mean(device):
    jac = random_jacobian(4, 10, 3, device)
    host = jac.cpu().numpy()
    gram = host @ host.T
    w = dual_cone_weights(gram, np.eye(4) / 4, 1e-4, 1e-4).sum(0)
    assert np.allclose(direction("upgrad", jac).cpu().numpy(), w @ host)
    w = dual_cone_weights(gram, np.full((1, 4), 0.25), 1e-4, 1e-4)[0]
    assert np.allclose(direction("dualproj", jac).cpu().numpy(), w @ host)
    # No conflict: the gradients already in the dual cone are kept.
    agreeing = jac.abs()
    assert torch.allclose(direction("dualproj", agreeing, reg_eps=0.0), agreeing.mean(0))
    assert torch.allclose(direction("upgrad", agreeing, reg_eps=0.0), agreeing.mean(0))


def test_upgrad_small_gradients_fall_back_to_the_mean():
    # torchjd's norm_eps: when ||J||_F^2 < norm_eps the Gramian counts as zero.
    jac = random_jacobian(3, 5, 4) * 1e-4
    assert torch.allclose(direction("upgrad", jac), jac.mean(0))


# --------------------------------------------------------------------------- IMTL-G / IMTL


@pytest.mark.parametrize("device", DEVICES)
def test_imtl_g_equal_projections_on_unit_gradients(device):
    for (num_tasks, dim), seed in itertools.product([(2, 3), (3, 5), (5, 20), (8, 8)], range(3)):
        jac = random_jacobian(num_tasks, dim, seed, device)
        imtl = make("imtl_g", num_tasks, device)
        d = imtl.aggregate(jac)
        assert imtl.last_weights.sum().item() == pytest.approx(1.0)
        projections = (jac / jac.norm(dim=1, keepdim=True)) @ d
        assert torch.allclose(projections, projections[0].expand_as(projections), rtol=1e-8)


def test_imtl_g_matches_the_papers_formula():
    # alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:T}.
    jac = random_jacobian(4, 9, 6)
    units = jac / jac.norm(dim=1, keepdim=True)
    diff_g, diff_u = jac[:1] - jac[1:], units[:1] - units[1:]
    tail = jac[0] @ diff_u.T @ torch.linalg.inv(diff_g @ diff_u.T)
    alpha = torch.cat([1 - tail.sum().reshape(1), tail])
    imtl = make("imtl_g", 4)
    imtl.aggregate(jac)
    assert torch.allclose(imtl.last_weights, alpha, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_imtl_hybrid_scales_losses_and_learns_the_scales(device):
    imtl = make("imtl", 3, device)
    (s,) = imtl.parameters()
    assert isinstance(s, torch.nn.Parameter) and torch.equal(s.detach(), torch.zeros(3, device=device))
    with torch.no_grad():
        s.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    losses = torch.tensor([0.5, 2.0, 4.0], device=device, requires_grad=True)
    scaled = imtl.transform_losses(losses)
    assert torch.allclose(scaled, torch.exp(s.detach()) * losses.detach() - s.detach())
    grad_s, grad_l = torch.autograd.grad(scaled.sum(), [s, losses])
    assert torch.allclose(grad_s, torch.exp(s.detach()) * losses.detach() - 1)
    assert torch.allclose(grad_l, torch.exp(s.detach()))
    # Trained by an optimizer, e^s L -> 1 (s -> -log L), the paper's balance condition.
    optimizer = torch.optim.Adam(imtl.parameters(), lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        imtl.transform_losses(losses.detach()).sum().backward()
        optimizer.step()
    assert torch.allclose(s.detach(), -losses.detach().log(), atol=1e-2)
    # Shared parameters: IMTL-G on the scaled gradients.
    jac = random_jacobian(3, 8, 0, device)
    scaled_jac = torch.exp(s.detach()).to(F64)[:, None] * jac
    assert torch.allclose(imtl.aggregate(scaled_jac), direction("imtl_g", scaled_jac))


def test_imtl_needs_reset():
    with pytest.raises(RuntimeError, match="reset"):
        get("imtl").transform_losses(torch.ones(2))


# --------------------------------------------------------------------------- CAGrad


def cagrad_primal_reference(jac: np.ndarray, c: float) -> float:
    """max_{||d - g0|| <= c ||g0||} min_t g_t . d by SLSQP on (d, s)."""
    g0 = jac.mean(0)
    radius = c * np.linalg.norm(g0)
    x0 = np.concatenate([g0, [(jac @ g0).min()]])
    result = minimize(
        lambda x: -x[-1], x0, method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000},
        constraints=[
            {"type": "ineq", "fun": lambda x: jac @ x[:-1] - x[-1]},
            {"type": "ineq", "fun": lambda x: radius**2 - np.sum((x[:-1] - g0) ** 2)},
        ],
    )
    return -result.fun


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_maximises_the_worst_improvement_in_the_ball(device, c):
    for (num_tasks, dim), seed in itertools.product([(2, 4), (3, 6), (5, 12), (6, 3)], range(2)):
        jac = random_jacobian(num_tasks, dim, seed, device)
        d = direction("cagrad", jac, c=c, rescale=0)
        g0 = jac.mean(0)
        radius = c * g0.norm().item()
        host = jac.cpu().numpy()
        if d.norm() == 0:  # Pareto-stationary: 0 in the hull
            assert min_norm_weights(host @ host.T) @ (host @ host.T) @ min_norm_weights(
                host @ host.T) < 1e-8 * scale_of(jac)
            continue
        assert (d - g0).norm().item() == pytest.approx(radius, rel=1e-9)  # on the sphere
        worst = (jac @ d).min().item()
        assert worst >= cagrad_primal_reference(host, c) - 1e-7 * scale_of(jac)


# Issue 14: float32, 0 in the convex hull of the rows (Pareto-stationary). At c = 2 the
# answer is d = 0; solving on the float32 Gramian as it came (smallest eigenvalue
# -8.8e-10 trace) gave d = (0.0306, -0.2479, -0.2839), J d = (-0.0118, 0.0045, 0.0045,
# 0.0045).
CAGRAD_STATIONARY_F32 = [
    [0.1608773, -0.2045673, 0.2376609],
    [-0.4520861, 0.0088962, -0.0722393],
    [0.5180578, -0.7720912, 0.7143717],
    [0.3074577, 0.4764639, -0.3985753],
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", [1.0, 2.0, 5.0])
def test_cagrad_stationary_float32_gives_zero(device, c):
    jac = torch.tensor(CAGRAD_STATIONARY_F32, dtype=torch.float32, device=device)
    for dtype in (torch.float32, F64):
        d = direction("cagrad", jac.to(dtype), c=c, rescale=0)
        assert d.norm().item() <= 1e-6 * jac.norm().item()
        assert (jac.to(dtype) @ d).min().item() >= -1e-6 * scale_of(jac)


def stationary_jacobians(count: int):
    """Float32 10 x 5 Gaussian matrices whose rows have 0 in their convex hull."""
    seed = 0
    while count:
        jac = torch.randn(10, 5, generator=torch.Generator().manual_seed(seed))
        seed += 1
        host = jac.double().numpy()
        gram = host @ host.T
        w = min_norm_weights(gram)
        if w @ gram @ w < 1e-20 * np.trace(gram):
            count -= 1
            yield jac


@pytest.mark.parametrize("device", DEVICES)
def test_cagrad_float32_agrees_with_float64_when_zero_is_in_the_hull(device):
    # Issue 14: at c = 0.9 the cosine between the float32 and float64 answers fell to 0.94
    # (0.74 on one of these); each is checked against the primal optimum too.
    for jac in stationary_jacobians(60):
        d32 = direction("cagrad", jac.to(device), c=0.9, rescale=0).double()
        d64 = direction("cagrad", jac.double().to(device), c=0.9, rescale=0)
        if d64.norm() == 0:
            assert d32.norm().item() <= 1e-3 * jac.norm().item()
            continue
        assert cosine(d32, d64) >= 1 - 1e-6
        assert d32.norm().item() == pytest.approx(d64.norm().item(), rel=1e-3)
        host = jac.double().numpy()
        worst = (jac.double().to(device) @ d64).min().item()
        assert worst >= cagrad_primal_reference(host, 0.9) - 1e-7 * scale_of(jac)


@pytest.mark.parametrize("device", DEVICES)
def test_cagrad_rescale_and_c_zero(device):
    jac = random_jacobian(4, 10, 2, device)
    plain = direction("cagrad", jac, rescale=0, c=0.4)
    assert torch.allclose(direction("cagrad", jac, rescale=1, c=0.4), plain / 1.16)
    assert torch.allclose(direction("cagrad", jac, rescale=2, c=0.4), plain / 1.4)
    assert torch.allclose(direction("cagrad", jac, c=0.0), jac.mean(0))


# --------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_reaches_g_alpha_equals_one_over_alpha(device):
    # Positively correlated gradients: the official sequence stops at the Nash solution.
    gen = torch.Generator().manual_seed(3)
    common = torch.randn(12, generator=gen, dtype=F64)
    jac = (2 * common + 0.5 * torch.randn(4, 12, generator=gen, dtype=F64)).to(device)
    jac = jac * torch.tensor([0.3, 1.0, 2.0, 5.0], dtype=F64, device=device)[:, None]
    nash = make("nash_mtl", 4, device, max_norm=0.0)
    d = nash.aggregate(jac)
    alpha = nash.last_weights
    assert (alpha > 0).all()
    assert torch.allclose((jac @ jac.T) @ alpha, 1 / alpha, rtol=1e-6)
    assert (d @ d).item() == pytest.approx(4.0, rel=1e-6)  # alpha^T G alpha = T
    assert torch.allclose(jac @ d, 1 / alpha, rtol=1e-6)  # every task gains 1/alpha_t


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_clipping_reuse_and_reset(device):
    jac = random_jacobian(3, 10, 4, device)
    nash = make("nash_mtl", 3, device)
    assert direction("nash_mtl", jac).norm().item() <= 1.0 + 1e-12
    unclipped = direction("nash_mtl", jac, max_norm=0.0)
    big = direction("nash_mtl", jac, max_norm=100.0)
    assert torch.allclose(big, unclipped)
    # update_weights_every: the weights of the first step are reused on the next ones.
    lazy = make("nash_mtl", 3, device, update_weights_every=3, max_norm=0.0)
    lazy.aggregate(jac)
    first = lazy.last_weights.clone()
    lazy.aggregate(2 * jac + 1)
    assert torch.equal(lazy.last_weights, first)
    lazy.aggregate(2 * jac + 1)
    lazy.aggregate(2 * jac + 1)  # step 3: recomputed
    assert not torch.equal(lazy.last_weights, first)
    # State: warm start from the previous step's alpha; reset forgets it.
    nash.aggregate(jac)
    nash.reset(3, torch.device(device))
    assert torch.equal(nash.aggregate(jac), direction("nash_mtl", jac))


def test_nash_mtl_without_a_solution_keeps_the_previous_weights():
    # 0 in the convex hull: no alpha >= 0 with G alpha > 0; the official code keeps alpha
    # (all ones at the first step).
    jac = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, -1.0]], dtype=F64)
    nash = make("nash_mtl", 3, max_norm=0.0)
    assert torch.allclose(nash.aggregate(jac), jac.sum(0))
    assert torch.equal(nash.last_weights, torch.ones(3, dtype=F64))


def badly_scaled_jacobian(device: str) -> torch.Tensor:
    """Three correlated task gradients, the first one 1000x the others."""
    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(3, 10, generator=gen, dtype=F64)
    jac = jac + 0.5 * torch.randn(10, generator=gen, dtype=F64)
    return (jac * torch.tensor([1000.0, 1.0, 1.0], dtype=F64)[:, None]).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_direct_solver_reaches_the_nash_point_on_badly_scaled_gradients(device):
    # Issue 14: with one task 1000x the others the official sequence stops where
    # alpha_t (G alpha)_t spreads by ~4600x across tasks; solver="direct" solves
    # G alpha = 1/alpha, where alpha_t (G alpha)_t = 1 for every t.
    jac = badly_scaled_jacobian(device)
    gram = jac @ jac.T
    direct = make("nash_mtl", 3, device, max_norm=0.0, solver="direct")
    official = make("nash_mtl", 3, device, max_norm=0.0)
    for _ in range(3):
        direct.aggregate(jac)
        official.aggregate(jac)
    alpha = direct.last_weights
    balance = alpha * (gram @ alpha)
    assert (alpha > 0).all()
    assert torch.allclose(balance, torch.ones_like(balance), rtol=1e-7)
    assert direct.stats() == {"nash_point_reached_fraction": 1.0, "nash_solves": 3.0}
    # The default stays the official sequence, and its stats say it missed the point.
    alpha = official.last_weights
    balance = alpha * (gram @ alpha)
    assert (balance.max() / balance.min()).item() > 100.0
    assert official.stats() == {"nash_point_reached_fraction": 0.0, "nash_solves": 3.0}


@pytest.mark.parametrize("device", DEVICES)
def test_nash_mtl_stats_count_recomputations_and_reset(device):
    # Well-conditioned: the official sequence reaches the Nash point; update_weights_every
    # counts recomputations only; reset clears the counts; other strategies report {}.
    jac = random_jacobian(3, 10, 4, device).abs()  # no conflict: a Nash point exists
    nash = make("nash_mtl", 3, device, update_weights_every=2)
    assert nash.stats() == {}
    for _ in range(5):
        nash.aggregate(jac)
    assert nash.stats() == {"nash_point_reached_fraction": 1.0, "nash_solves": 3.0}
    nash.reset(3, torch.device(device))
    assert nash.stats() == {}
    assert make("mgda", 3, device).stats() == {}


# --------------------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_aligned_gradients_are_orthogonal_with_equal_norms(device, scale_mode):
    for num_tasks, dim in [(2, 5), (4, 10), (6, 30)]:
        jac = random_jacobian(num_tasks, dim, 9, device)
        strategy = make("aligned_mtl", num_tasks, device, scale_mode=scale_mode)
        d = strategy.aggregate(jac)
        eig = torch.linalg.eigvalsh(jac @ jac.T).cpu()
        scale = {"min": eig.min(), "median": eig.sort().values[(num_tasks - 1) // 2],
                 "rmse": eig.mean()}[scale_mode]
        # Row t of the aligned gradients B J is the direction for preferences e_t; B G B =
        # lambda_s I: they are orthogonal with equal norms sqrt(lambda_s).
        aligned = torch.stack([
            direction("aligned_mtl", jac, scale_mode=scale_mode,
                      pref_vector=[float(t == k) for k in range(num_tasks)])
            for t in range(num_tasks)
        ])
        expected = scale.item() * torch.eye(num_tasks, dtype=F64, device=device)
        assert torch.allclose(aligned @ aligned.T, expected, atol=1e-9 * scale_of(jac))
        assert torch.allclose(d, aligned.sum(0), atol=1e-10 * (1 + scale_of(jac)))


# --------------------------------------------------------------------------- ConFIG


@pytest.mark.parametrize("device", DEVICES)
def test_config_equal_cosines_and_summed_projection_length(device):
    for (num_tasks, dim), seed in itertools.product([(2, 3), (3, 7), (5, 20)], range(3)):
        jac = random_jacobian(num_tasks, dim, seed, device)
        d = direction("config", jac)
        unit = d / d.norm()
        cosines = (jac / jac.norm(dim=1, keepdim=True)) @ unit
        assert (cosines > 0).all()
        assert torch.allclose(cosines, cosines[0].expand_as(cosines), rtol=1e-9)
        assert d.norm().item() == pytest.approx((jac @ unit).sum().item(), rel=1e-10)


@fast
@given(jac=jacobian_arrays(st.integers(2, 5), st.integers(5, 9)))
def test_config_never_conflicts_with_independent_gradients(jac):
    sv = np.linalg.svd(jac, compute_uv=False)
    assume(sv.min() > 1e-3 * sv.max())
    jacobian = torch.from_numpy(jac)
    d = direction("config", jacobian)
    assert ((jacobian @ d) >= -1e-9 * scale_of(jacobian)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_config_cancelling_unit_gradients_give_zero_in_any_order(device, dtype):
    # Issue 14: rank 1, two exactly opposed pairs: the unit gradients sum to 0, so
    # U^+ 1 = 0 and the direction is 0. An absolute zero test (||U^+ 1||^2 = 3e-33 > 0)
    # returned a direction of ~||J||_F opposing two tasks, for some orders only.
    u = torch.tensor([0.3, -1.7, 0.8, 2.1, 0.05], dtype=F64)
    jac = torch.stack([1.3 * u, -0.7 * u, 2.9 * u, -0.11 * u]).to(device, dtype)
    for order in itertools.permutations(range(4)):
        d = direction("config", jac[list(order)])
        assert d.norm().item() == 0.0


# --------------------------------------------------------------------------- in the harness


def _step(name: str, engine: str, device: str):
    from bench.engine import ENGINES, StepContext, apply_gradients
    from bench.tasks import Task
    from strategies import sharing

    tasks = (Task("a", "regression"), Task("b", "multiclass", 3), Task("c", "binary"))
    torch.manual_seed(0)
    model = sharing.get("hps", (5,), tasks).to(device)
    x = torch.randn(16, 5, device=device)
    y = {"a": torch.randn(16, device=device), "b": torch.randint(0, 3, (16,), device=device),
         "c": torch.randint(0, 2, (16,), device=device).float()}
    out = model(x)
    losses = torch.stack([t.loss(out[t.name], y[t.name]) for t in tasks])
    strategy = make(name, 3, device)
    ENGINES[engine]().require_support(type(strategy), type(model))
    shared = model.shared_parameters()
    ids = {id(p) for p in shared}
    ctx = StepContext(model, strategy, ENGINES[engine](), torch.optim.SGD(model.parameters()),
                      shared, [p for p in model.parameters() if id(p) not in ids])
    apply_gradients([losses], ctx)
    return [p.grad.clone() for p in shared], strategy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS)
def test_engines_vmap_and_gramian_agree_and_rep_runs(device, name):
    by_vmap, strategy = _step(name, "vmap", device)
    by_gramian, _ = _step(name, "gramian", device)
    for a, b in zip(by_vmap, by_gramian, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert strategy.last_weights is not None and torch.isfinite(strategy.last_weights).all()
    if name in SUPPORTS_REP:
        by_rep, _ = _step(name, "rep", device)
        assert all(torch.isfinite(g).all() for g in by_rep)
    if name == "imtl":
        (s,) = strategy.parameters()
        assert s.grad is not None and torch.isfinite(s.grad).all()
