"""Cross-check of the Gramian strategies against torchjd 0.18 (a test-only oracle).

For every method torchjd also implements, the directions are compared on seeded random
matrices, T in {2, 3, 5, 10} and P in {5, 50} (T = 10, P = 5 is rank-deficient):

- closed form (IMTL-G, Aligned-MTL, ConFIG) and exact QPs on both sides (UPGrad, DualProj:
  our active-set solver vs quadprog): cosine >= 0.9999 and equal norms;
- iterative solvers: MGDA (torchjd's Frank-Wolfe, run with epsilon 1e-7 and 5000
  iterations, vs our exact solver; FW's O(1/k) convergence leaves norms within 2e-2, so
  the projection inequality ||x - d||^2 <= ||x||^2 - ||d||^2 certifies ours), CAGrad (torchjd's cvxpy/Clarabel vs our exact
  root-finding), Nash-MTL (cvxpy/ECOS vs our interior-point solver, same sequence of
  problems): cosine >= 0.999 and norms within 1e-3.

Conventions that differ (documented in the strategies' docstrings too):

- Aligned-MTL: torchjd's default preferences are the mean (1/T), the official code's and
  ours the sum (1): our direction is T times torchjd's.
- CAGrad: torchjd has no ``rescale``; it equals ``rescale=0``. Our default ``rescale=1``
  (the official code's) divides the direction by 1 + c^2.
- Nash-MTL: both clip ||d|| to ``max_norm`` (torchjd from the weights, ours from the
  Gramian, the same number). Matrices whose gradients have 0 in their convex hull are
  skipped: the problems are infeasible there, where ECOS (max 100 iterations) returns
  inaccurate iterates that torchjd keeps, and we keep the previous weights (both
  implementations otherwise agree that such a problem has no solution).
- MGDA: when the min-norm point is ~0 (0 in the hull) the cosine is meaningless; the
  directions are then compared in absolute terms (||d - d_torchjd|| <= 1e-3 max ||g_t||).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from strategies.weighting import get
from strategies.weighting._solvers import min_norm_weights
from unit.weighting._inputs import cosine
from unit.weighting._inputs import direction as ours

aggregation = pytest.importorskip("torchjd.aggregation")

F64 = torch.float64
SHAPES = list(itertools.product([2, 3, 5, 10], [5, 50]))
SEEDS = range(3)
CLOSED_FORM = 0.9999
ITERATIVE = 0.999


def _matrices():
    """Seeded (T, P) matrices: plain Gaussian and with a shared component (agreement)."""
    for (num_tasks, dim), seed in itertools.product(SHAPES, SEEDS):
        gen = torch.Generator().manual_seed(1000 * num_tasks + 10 * dim + seed)
        jac = torch.randn(num_tasks, dim, generator=gen, dtype=F64)
        if seed % 2:
            jac = jac + 1.5 * torch.randn(dim, generator=gen, dtype=F64)
        jac = jac * (torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 3 + 0.1)
        yield pytest.param(jac, id=f"T{num_tasks}-P{dim}-s{seed}")


def matrices() -> list:
    return list(_matrices())


def theirs(aggregator, jac: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aggregator(jac)


def assert_same(d: torch.Tensor, reference: torch.Tensor, min_cos: float, norm_rtol: float):
    assert cosine(d, reference) >= min_cos
    assert d.norm().item() == pytest.approx(reference.norm().item(), rel=norm_rtol)


def zero_in_hull(jac: torch.Tensor) -> bool:
    gram = (jac @ jac.T).numpy()
    alpha = min_norm_weights(gram)
    return float(alpha @ gram @ alpha) <= 1e-10 * float(gram.diagonal().max())


@pytest.mark.parametrize("jac", matrices())
def test_upgrad(jac):
    assert_same(ours("upgrad", jac), theirs(aggregation.UPGrad(), jac), CLOSED_FORM, 1e-6)


@pytest.mark.parametrize("jac", matrices())
def test_dualproj(jac):
    assert_same(ours("dualproj", jac), theirs(aggregation.DualProj(), jac), CLOSED_FORM, 1e-6)


@pytest.mark.parametrize("jac", matrices())
def test_imtl_g(jac):
    assert_same(ours("imtl_g", jac), theirs(aggregation.IMTLG(), jac), CLOSED_FORM, 1e-6)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("jac", matrices())
def test_aligned_mtl_is_t_times_torchjd(jac, scale_mode):
    reference = theirs(aggregation.AlignedMTL(scale_mode=scale_mode), jac)
    num = jac.shape[0]
    assert_same(ours("aligned_mtl", jac, scale_mode=scale_mode), num * reference, CLOSED_FORM,
                1e-6)
    mean = ours("aligned_mtl", jac, scale_mode=scale_mode, pref_vector=[1.0 / num] * num)
    assert_same(mean, reference, CLOSED_FORM, 1e-6)


@pytest.mark.parametrize("jac", matrices())
def test_config(jac):
    assert_same(ours("config", jac), theirs(aggregation.ConFIG(), jac), CLOSED_FORM, 1e-6)


@pytest.mark.parametrize("jac", matrices())
def test_mgda(jac):
    d = ours("mgda", jac)
    reference = theirs(aggregation.MGDA(epsilon=1e-7, max_iters=5000), jac)
    # torchjd's point is in the convex hull C and ours is exact, the projection of 0 onto C,
    # so ||x - d||^2 <= ||x||^2 - ||d||^2 for every x in C: whatever torchjd's accuracy.
    gap = reference.pow(2).sum() - d.pow(2).sum()
    assert (reference - d).pow(2).sum().item() <= gap.item() + 1e-12 * jac.pow(2).sum().item()
    scale = jac.norm(dim=1).max().item()
    if d.norm().item() < 1e-3 * scale:  # 0 in the hull: the cosine is meaningless
        assert (d - reference).norm().item() <= 1e-3 * scale
        return
    # Frank-Wolfe converges as O(1/k) and torchjd's stops on a small step: its norm is
    # within 2e-2 (1.6e-2 measured), its direction within the iterative threshold.
    assert_same(d, reference, ITERATIVE, 2e-2)


@pytest.mark.parametrize("c", [0.5, 0.2])
@pytest.mark.parametrize("jac", matrices())
def test_cagrad(jac, c):
    reference = theirs(aggregation.CAGrad(c=c), jac)
    d = ours("cagrad", jac, c=c, rescale=0)
    if reference.norm().item() == 0.0:  # torchjd's Pareto-stationary exit
        assert d.norm().item() == 0.0
        return
    assert_same(d, reference, ITERATIVE, 1e-3)
    assert_same(ours("cagrad", jac, c=c), reference / (1 + c**2), ITERATIVE, 1e-3)


# Matrices with 0 in the convex hull make Nash-MTL's problems infeasible; ECOS (torchjd's
# oracle) then stops at its iteration limit with inaccurate values: not comparable.
@pytest.mark.parametrize(
    "jac", [p for p in matrices() if not zero_in_hull(p.values[0])]
)
def test_nash_mtl(jac):
    num = jac.shape[0]
    for max_norm, steps in [(0.0, 3), (1.0, 1)]:
        strategy = get("nash_mtl", max_norm=max_norm)
        strategy.reset(num, jac.device)
        reference = aggregation.NashMTL(n_tasks=num, max_norm=max_norm)
        # Several steps: both warm-start from the previous step's weights.
        gen = torch.Generator().manual_seed(num)
        for step in range(steps):
            step_jac = jac * (1 + 0.1 * step) + 0.05 * step * torch.randn(
                jac.shape, generator=gen, dtype=F64
            )
            if zero_in_hull(step_jac):
                break
            assert_same(strategy.aggregate(step_jac), theirs(reference, step_jac), ITERATIVE,
                        1e-3)
