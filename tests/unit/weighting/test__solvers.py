"""strategies/weighting/_solvers.py: the exact QP solvers behind the Gramian methods.

(Moved from test_weighting_gramian.py.)"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from strategies.weighting._solvers import dual_cone_weights, min_norm_weights, nonneg_qp, psd_pinv
from unit.weighting._inputs import (
    random_jacobian,
)

fast = settings(max_examples=30, deadline=None)


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
