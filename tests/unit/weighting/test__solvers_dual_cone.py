"""The dual-cone QP of UPGrad / DualProj: the compiled (DAQP) path against the exact
Lawson-Hanson solver, its KKT check and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.weighting import _solvers
from strategies.weighting._solvers import dual_cone_weights, nonneg_qp

daqp = pytest.importorskip("daqp")


def gramian(num_tasks: int, dim: int, seed: int, shared: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(num_tasks, dim)) + shared * rng.normal(size=dim)
    jac *= rng.uniform(0.1, 3.0, size=(num_tasks, 1))
    return jac @ jac.T


def lawson_hanson(gram: np.ndarray, prefs: np.ndarray, reg_eps: float) -> np.ndarray:
    quad = gram + reg_eps * np.trace(gram) * np.eye(gram.shape[0])
    return np.array([u + nonneg_qp(quad, quad @ u) for u in prefs])


def never(*args, **kwargs):
    pytest.fail("this solver should not run")


@pytest.fixture(params=["one-shot", "shared-workspace"])
def workspace(request, monkeypatch):
    """Both DAQP paths: one solve per row, and one workspace for all rows."""
    monkeypatch.setattr(_solvers, "_SHARED_WORKSPACE_TASKS",
                        10**9 if request.param == "one-shot" else 2)


CASES = [
    (num_tasks, dim, seed, shared)
    for num_tasks in (2, 3, 10, 40)
    for dim in (5, 200)
    for seed in range(3)
    for shared in (0.0, 0.7)
]


@pytest.mark.parametrize(("num_tasks", "dim", "seed", "shared"), CASES)
def test_compiled_matches_lawson_hanson(workspace, num_tasks, dim, seed, shared):
    gram = gramian(num_tasks, dim, seed, shared)
    rng = np.random.default_rng(seed)
    for prefs in (np.eye(num_tasks) / num_tasks, np.full((1, num_tasks), 1 / num_tasks),
                  np.diag(rng.uniform(0.01, 5.0, num_tasks))):
        for reg_eps in (1e-4, 1e-8):
            ours = dual_cone_weights(gram, prefs, 1e-4, reg_eps)
            exact = lawson_hanson(gram, prefs, reg_eps)
            assert (ours >= prefs).all()
            # The same projections J^T v, in the Q norm: with the small ridge and a
            # rank-deficient G (P = 5 < T) Q's condition number is ~1e8 / T, and both
            # solvers are then exact only to ~1e-9 of the objective.
            quad = gram + reg_eps * np.trace(gram) * np.eye(num_tasks)
            diff = np.einsum("ki,ij,kj->k", ours - exact, quad, ours - exact)
            rtol = 1e-16 if reg_eps == 1e-4 or dim > num_tasks else 1e-8
            assert (diff <= rtol * np.einsum("ki,ij,kj->k", exact, quad, exact)).all()
            if reg_eps == 1e-4:
                assert np.allclose(ours, exact, rtol=1e-8, atol=1e-10 * np.abs(exact).max())


def test_compiled_path_is_taken(workspace, monkeypatch):
    monkeypatch.setattr(_solvers, "nonneg_qp", never)
    gram = gramian(10, 200, 0)
    prefs = np.eye(10) / 10
    weights = dual_cone_weights(gram, prefs, 1e-4, 1e-4)
    assert (weights > prefs).any()  # there were conflicts to solve


def test_rows_already_in_the_cone_are_not_solved(monkeypatch):
    monkeypatch.setattr(_solvers, "_daqp", None)
    monkeypatch.setattr(_solvers, "nonneg_qp", never)
    jac = np.abs(np.random.default_rng(0).normal(size=(5, 30)))  # no conflict
    prefs = np.eye(5) / 5
    assert np.array_equal(dual_cone_weights(jac @ jac.T, prefs, 1e-4, 1e-4), prefs)


class BrokenDaqp:
    """DAQP failing in one of the ways the KKT check or the exit flag must catch."""

    def __init__(self, failure: str):
        self.failure = failure

    def answer(self, lower):
        if self.failure == "flag":
            return lower + 1.0, 0.0, -5, {}  # iteration limit
        if self.failure == "nan":
            return np.full_like(lower, np.nan), np.nan, 1, {}
        return lower.copy(), 0.0, 1, {}  # "optimal" v = u: conflicts remain

    def solve(self, quad, lin, cons, upper, lower, **settings):
        return self.answer(lower)

    def Model(self):  # DAQP's name
        broken = self

        class Model:
            settings: dict = {}  # noqa: RUF012

            def setup(self, quad, lin, cons, upper, lower):
                self.lower = lower
                return (-1 if broken.failure == "setup" else 1), 0.0

            def update(self, blower):
                self.lower = blower

            def solve(self):
                return broken.answer(self.lower)

        return Model()


@pytest.mark.parametrize("failure", ["flag", "nan", "wrong", "setup", "missing"])
def test_falls_back_to_lawson_hanson(workspace, monkeypatch, failure):
    monkeypatch.setattr(_solvers, "_daqp", None if failure == "missing" else BrokenDaqp(failure))
    gram = gramian(10, 200, 1)
    prefs = np.eye(10) / 10
    exact = lawson_hanson(gram, prefs, 1e-4)
    assert np.allclose(dual_cone_weights(gram, prefs, 1e-4, 1e-4), exact, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reg_eps", [0.0, 1e-12])
def test_small_ridges_use_the_exact_solver(monkeypatch, reg_eps):
    monkeypatch.setattr(_solvers, "_daqp", BrokenDaqp("wrong"))
    monkeypatch.setattr(_solvers, "_dual_cone_compiled", never)
    gram = gramian(6, 4, 2)  # rank 4: singular without the ridge
    prefs = np.eye(6) / 6
    assert np.allclose(dual_cone_weights(gram, prefs, 0.0, reg_eps),
                       lawson_hanson(gram, prefs, reg_eps))


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
def test_gramian_and_preference_scales_do_not_change_the_weights(workspace, scale):
    gram = gramian(10, 200, 3)
    prefs = np.eye(10) / 10
    reference = dual_cone_weights(gram, prefs, 0.0, 1e-4)
    assert np.allclose(dual_cone_weights(scale * gram, prefs, 0.0, 1e-4), reference,
                       rtol=1e-9, atol=1e-12)
    for pref_scale in (1e-12, 1e12):
        scaled = dual_cone_weights(gram, pref_scale * prefs, 0.0, 1e-4)
        assert np.allclose(scaled / pref_scale, reference, rtol=1e-9, atol=1e-12)


def test_kkt_check():
    gram = gramian(8, 100, 4)
    quad = gram + 1e-4 * np.trace(gram) * np.eye(8)
    prefs = np.eye(8) / 8
    exact = lawson_hanson(gram, prefs, 1e-4)
    assert _solvers._dual_cone_kkt_ok(quad, prefs, exact).all()
    conflicting = ~_solvers._dual_cone_kkt_ok(quad, prefs, prefs)  # v = u
    assert (conflicting == (prefs @ quad < 0).any(axis=1)).all()
    assert conflicting.any()
    assert not _solvers._dual_cone_kkt_ok(quad, prefs, exact * (1 + 1e-6)).any()
    assert not _solvers._dual_cone_kkt_ok(quad, prefs, np.full_like(exact, np.nan)).any()
