"""strategies/weighting/graddrop.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting_stateful.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.engine import ENGINES
from strategies import sharing
from strategies.weighting import WEIGHTING, get
from unit.weighting._inputs import (
    DEVICES,
    F64,
    engine_grads,
    make,
    random_jacobian,
)

fast = settings(max_examples=25, deadline=None)


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


def test_graddrop_runs_on_the_representation():
    # leak = 1 keeps every gradient: the rep engine then reproduces backprop of the sum.
    ENGINES["rep"]().require_support(WEIGHTING.get("graddrop"), sharing.SHARING.get("hps"))
    ew, _ = engine_grads("graddrop", "loop", seed=2, leak=1.0)
    rep, _ = engine_grads("graddrop", "rep", seed=2, leak=1.0)
    for a, b in zip(ew, rep, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in engine_grads("graddrop", "rep", seed=2)[0])


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("leak", [0.0, 0.3, 1.0])
def test_graddrop_direction_is_the_masked_sum_of_the_paper(device, leak):
    # aggregate() never forms the (T, P) mask; the same seed must give the same draw, and
    # the direction must be sum_i (l + (1 - l) M_i) g_i with M from mask() (Eqs. 1-3).
    jac = random_jacobian(5, 4_000, 3, device)
    jac[:, :50] = 0.0  # columns of zeros keep nothing
    fast = make("graddrop", 5, device, seed=7, leak=leak).aggregate(jac)
    mask = make("graddrop", 5, device, seed=7, leak=leak).mask(jac).to(jac.dtype)
    expected = ((leak + (1 - leak) * mask) * jac).sum(0)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
