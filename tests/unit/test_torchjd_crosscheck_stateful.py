"""Cross-check against torchjd 0.18 (a test-only oracle) for the methods it also has:
PCGrad, GradDrop, GradVac, FairGrad, ExcessMTL, and the weightings MoDoWeighting and
SDMGradWeighting. MoCo has no torchjd counterpart.

Directions are compared by cosine (>= 0.9999 for closed forms, >= 0.999 for iterative
solvers); where both sides expose weights with the same scale convention they are
compared too. Conventions that differ, and how the comparison bridges them:

- Randomised methods (PCGrad, GradVac: random task orders from torchjd's global RNG;
  GradDrop: uniform draws) are compared where randomness cannot matter (T = 2 for the
  orders; non-conflicting rows for GradDrop) and, for GradDrop on the CPU, with the same
  random stream (``torch.manual_seed(seed)`` for torchjd, ``reset(seed=seed)`` here).
- GradVac: torchjd's default beta is 0.5, ours the paper's 1e-2; both are passed
  explicitly.
- FairGrad: same equation and solver family; at alpha = 0 torchjd returns 1/T, we
  return 1 (the alpha -> 0 limit): same direction, scale T.
- ExcessMTL: torchjd updates the weights with the raw first excess risk on its first
  call; the official code (and we) only record the baseline then. torchjd with
  ``n_warmup_steps=1`` matches. Both keep weights on the simplex (LibMTL: sum T).
- MoDo / SDMGrad: torchjd's weightings take the (T, T) matrix J_1 J_2^T of the two
  lambda/w batches; we take the Jacobians and use the step batch ourselves. SDMGrad's
  ``lr``, ``momentum``, ``n_iter``, ``lambda_`` are our ``beta``, ``momentum``,
  ``niter``, ``lamda``.
"""

from __future__ import annotations

import pytest
import torch
from torchjd.aggregation import (
    ExcessMTLWeighting,
    FairGrad,
    GradDrop,
    GradVac,
    MoDoWeighting,
    PCGrad,
    SDMGradWeighting,
)

from unit.weighting._inputs import DEVICES, F64, cosine, make, random_jacobian

CLOSED_FORM, ITERATIVE = 0.9999, 0.999


@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad(device):
    for seed in range(10):  # T = 2: the order of the other tasks is irrelevant
        jac = random_jacobian(2, 15, seed, device)
        assert cosine(make("pcgrad", 2, device).aggregate(jac), PCGrad()(jac)) >= CLOSED_FORM
    for num_tasks in (3, 5):  # no conflicts: every order gives the sum
        jac = random_jacobian(num_tasks, 15, num_tasks, device).abs()
        ours = make("pcgrad", num_tasks, device).aggregate(jac)
        assert cosine(ours, PCGrad()(jac)) >= CLOSED_FORM


@pytest.mark.parametrize("device", DEVICES)
def test_graddrop(device):
    for leak in (0.0, 0.4):
        for seed in range(4):
            jac = random_jacobian(4, 40, seed, device)
            signs = torch.where(torch.arange(40, device=device) % 2 == 0, 1.0, -1.0)
            agreeing = jac.abs() * signs.to(F64)  # one sign per coordinate: no randomness
            ours = make("graddrop", 4, device, seed=seed, leak=leak).aggregate(agreeing)
            theirs = GradDrop(leak=torch.full((4,), leak, dtype=F64, device=device))(agreeing)
            assert cosine(ours, theirs) >= CLOSED_FORM
            if device == "cpu":  # the same uniform draws: the same masks
                ours = make("graddrop", 4, device, seed=seed, leak=leak).aggregate(jac)
                torch.manual_seed(seed)
                theirs = GradDrop(leak=torch.full((4,), leak, dtype=F64))(jac)
                assert cosine(ours, theirs) >= CLOSED_FORM


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beta", [0.01, 0.5])
def test_gradvac_over_a_sequence_of_steps(device, beta):
    ours, theirs = make("gradvac", 2, device, beta=beta), GradVac(beta=beta)
    for seed in range(8):  # the targets evolve on both sides
        jac = random_jacobian(2, 12, seed, device)
        assert cosine(ours.aggregate(jac), theirs(jac)) >= CLOSED_FORM


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
def test_fairgrad(device, alpha):
    for num_tasks, dim in [(2, 6), (3, 12), (5, 30), (6, 6)]:
        jac = random_jacobian(num_tasks, dim, num_tasks + dim, device)
        ours = make("fairgrad", num_tasks, device, alpha=alpha)
        d = ours.aggregate(jac)
        theirs = FairGrad(alpha=alpha)
        assert cosine(d, theirs(jac)) >= ITERATIVE
        reference = theirs.gramian_weighting(jac @ jac.T)
        assert torch.allclose(ours.last_weights, reference, rtol=1e-3)
    jac = random_jacobian(3, 8, 0, device)
    d = make("fairgrad", 3, device, alpha=0.0).aggregate(jac)
    assert cosine(d, FairGrad(alpha=0.0)(jac)) >= CLOSED_FORM  # scale differs by T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eta", [0.01, 1.0])
def test_excess_mtl_over_a_sequence_of_steps(device, eta):
    ours = make("excess_mtl", 3, device, robust_step_size=eta)
    theirs = ExcessMTLWeighting(robust_step_size=eta, n_warmup_steps=1)
    for seed in range(6):
        jac = random_jacobian(3, 20, seed, device)
        d = ours.aggregate(jac)
        weights = theirs(jac)
        assert cosine(d, weights @ jac) >= CLOSED_FORM
        assert torch.allclose(ours.last_weights, weights, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_modo_over_a_sequence_of_steps(device):
    ours, theirs = make("modo", 3, device, gamma=0.05, rho=0.1), MoDoWeighting(gamma=0.05, rho=0.1)
    for seed in range(6):
        step_batch, first, second = (random_jacobian(3, 10, 3 * seed + k, device) for k in range(3))
        d = ours.aggregate_batches([step_batch, first, second], [None] * 3)
        weights = theirs(first @ second.T)
        assert cosine(d, weights @ step_batch) >= CLOSED_FORM
        assert torch.allclose(ours.last_weights, weights, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lamda", [0.0, 0.3, 2.0])
def test_sdmgrad_over_a_sequence_of_steps(device, lamda):
    ours = make("sdmgrad", 3, device, lamda=lamda)
    theirs = SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=lamda)
    for seed in range(5):
        step_batch, first, second = (random_jacobian(3, 10, 3 * seed + k, device) for k in range(3))
        d = ours.aggregate_batches([step_batch, first, second], [None] * 3)
        weights = theirs(first @ second.T)
        assert cosine(d, weights @ step_batch) >= ITERATIVE
        assert torch.allclose(ours.last_weights, weights, atol=1e-6)
