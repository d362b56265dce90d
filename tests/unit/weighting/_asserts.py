"""Checks of the properties a strategy declares (see ``WeightingStrategy``), run on fresh
instances over a few steps so that stateful methods are held to them too."""

from __future__ import annotations

import torch

from unit.weighting._inputs import F64, full_step, make, random_losses, scale_of

STEPS = 3


def steps(jac: torch.Tensor, seed: int = 0):
    """A short deterministic sequence of (J_k, losses_k): the gradients grow, losses fall."""
    losses = random_losses(jac.shape[0], seed, jac.device.type)
    for k in range(STEPS):
        yield jac * (1 + 0.2 * k), losses * 0.8**k


def _close(actual: torch.Tensor, expected: torch.Tensor, reference: torch.Tensor, rtol: float):
    """``actual`` equals ``expected`` up to ``rtol`` of the size of ``reference`` (the
    Jacobian, or the weights) plus that of ``expected``."""
    size = reference.norm().item() + expected.norm().item()
    assert torch.allclose(actual, expected, rtol=0.0, atol=rtol * (size + 1e-12)), (
        (actual - expected).norm().item(), size)


def assert_structure(name: str, jac: torch.Tensor, seed: int = 0, **hyper) -> None:
    """A (P,) detached direction in J's dtype, on J's device, finite; (T,) finite weights."""
    num_tasks, dim = jac.shape
    strategy = make(name, num_tasks, jac.device.type, seed, **hyper)
    for step_jac, losses in steps(jac, seed):
        d = full_step(strategy, step_jac, losses)
        assert d.shape == (dim,) and d.dtype == jac.dtype and d.device == jac.device
        assert torch.isfinite(d).all()
        weights = strategy.last_weights
        if weights is not None:
            assert weights.shape == (num_tasks,) and weights.device == jac.device
            assert torch.isfinite(weights).all() and not weights.requires_grad


def assert_non_conflicting(name: str, jac: torch.Tensor, rtol: float = 1e-3, **hyper) -> None:
    """J d >= 0 for every task (up to ``rtol`` T max_t ||g_t||^2: UPGrad's and DualProj's
    ridge projects onto a slightly larger cone)."""
    strategy = make(name, jac.shape[0], jac.device.type, **hyper)
    for step_jac, losses in steps(jac):
        d = full_step(strategy, step_jac, losses)
        bound = rtol * jac.shape[0] * scale_of(step_jac)
        assert ((step_jac @ d) >= -bound).all(), (step_jac @ d).tolist()


def assert_permutation_invariant(name: str, jac: torch.Tensor, seed: int = 0,
                                 rtol: float = 1e-6, **hyper) -> None:
    """Permuting the tasks (rows of J, losses) keeps the direction and permutes the weights
    (where they are unique)."""
    num_tasks, device = jac.shape[0], jac.device.type
    perm = torch.randperm(num_tasks, generator=torch.Generator().manual_seed(seed)).to(device)
    plain, permuted = (make(name, num_tasks, device, **hyper) for _ in range(2))
    for step_jac, losses in steps(jac, seed):
        d = full_step(plain, step_jac, losses)
        d_perm = full_step(permuted, step_jac[perm], losses[perm])
        _close(d_perm, d, step_jac, rtol)
        # Weights are unique only for linearly independent gradients (else e.g. MGDA's
        # min-norm point has many convex weights).
        independent = torch.linalg.matrix_rank(step_jac).item() == num_tasks
        if plain.last_weights is not None and independent:
            _close(permuted.last_weights, plain.last_weights[perm], plain.last_weights, rtol)


def assert_linear_under_scaling(name: str, jac: torch.Tensor, seed: int = 0,
                                rtol: float = 1e-6, **hyper) -> None:
    """torchjd's property: for c1, c2 > 0 and a, b > 0,
    d(diag(a c1 + b c2) J) = a d(diag(c1) J) + b d(diag(c2) J) (losses fixed)."""
    num_tasks, device = jac.shape[0], jac.device.type
    gen = torch.Generator().manual_seed(seed)
    c1, c2 = (torch.rand(num_tasks, 1, generator=gen, dtype=F64).to(device) + 0.1 for _ in "12")
    a, b = (torch.rand((), generator=gen, dtype=F64).item() + 0.1 for _ in "ab")
    first, second, both = (make(name, num_tasks, device, **hyper) for _ in range(3))
    for step_jac, losses in steps(jac, seed):
        x1 = full_step(first, c1.to(jac.dtype) * step_jac, losses)
        x2 = full_step(second, c2.to(jac.dtype) * step_jac, losses)
        x = full_step(both, (a * c1 + b * c2).to(jac.dtype) * step_jac, losses)
        _close(x, a * x1 + b * x2, (a * c1 + b * c2).to(jac.dtype) * step_jac, rtol)


def assert_scale_equivariant(name: str, jac: torch.Tensor, factors=(0.1, 3.0, 1e3),
                             rtol: float = 1e-6, **hyper) -> None:
    """d(c J) = c d(J) for c > 0 (losses fixed)."""
    num_tasks, device = jac.shape[0], jac.device.type
    for factor in factors:
        plain, scaled = (make(name, num_tasks, device, **hyper) for _ in range(2))
        for step_jac, losses in steps(jac):
            d = full_step(plain, step_jac, losses)
            d_scaled = full_step(scaled, factor * step_jac, losses)
            _close(d_scaled, factor * d, factor * step_jac, rtol)


PROPERTY_CHECKS = {
    "non_conflicting": assert_non_conflicting,
    "permutation_invariant": assert_permutation_invariant,
    "linear_under_scaling": assert_linear_under_scaling,
    "scale_equivariant": assert_scale_equivariant,
}
