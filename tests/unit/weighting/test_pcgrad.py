"""strategies/weighting/pcgrad.py: the method's paper formulas, update rules and fixed bugs.

(Moved from test_weighting.py, test_weighting_stateful.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unit.weighting._inputs import (
    DEVICES,
    F64,
    jacobian_arrays,
    make,
    random_jacobian,
)

fast = settings(max_examples=40, deadline=None)


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
def test_pcgrad_gramian_weights_match_the_projection(device):
    for seed in range(3):
        jac = random_jacobian(4, 10, seed, device)
        a, b = make("pcgrad", 4, device, seed=seed), make("pcgrad", 4, device, seed=seed)
        projected_sum = a.project(jac).sum(0)
        weights = b.weights(jac @ jac.T)
        assert torch.allclose(weights @ jac, projected_sum, atol=1e-10)
