"""Inputs shared by the weighting tests: random Jacobians (generic, conflicting,
rank-deficient), losses, and ``make`` / ``step`` that drive any registered strategy
the way the engines do, from its class attributes alone."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.assembly import require_engine, step_context
from bench.engine import ENGINES, apply_gradients
from bench.tasks import Task
from strategies import sharing
from strategies.weighting import WeightingStrategy, get

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


def make(name: str, num_tasks: int, device: str = "cpu", seed: int = 0, **hyper) -> WeightingStrategy:
    """A new strategy ``name`` with ``hyper``, reset for ``num_tasks`` tasks on ``device``."""
    strategy = get(name, **hyper)
    strategy.reset(num_tasks, torch.device(device), seed)
    return strategy


def direction(name: str, jac: torch.Tensor, **hyper) -> torch.Tensor:
    """One step of a fresh gradient strategy on ``jac``."""
    return make(name, jac.shape[0], jac.device.type, **hyper).aggregate(jac)


def random_jacobian(num_tasks: int, dim: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Task gradients sharing a common component, so some agree and some conflict."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen, dtype=F64)
    strength = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 2 - 0.5
    scales = torch.rand(num_tasks, 1, generator=gen, dtype=F64) * 3 + 0.1
    rows = torch.randn(num_tasks, dim, generator=gen, dtype=F64) + strength * common
    return (scales * rows).to(device)


def conflicting_jacobian(num_tasks: int, dim: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Gradients where at least one pair conflicts (a negative inner product)."""
    jac = random_jacobian(num_tasks, dim, seed, device)
    jac[-1] = -0.7 * jac[0] + 0.3 * jac[-1]
    return jac


def rank_deficient_jacobian(
    num_tasks: int, dim: int, seed: int, device: str = "cpu", rank: int = 1
) -> torch.Tensor:
    """(T, P) gradients of rank ``min(rank, T, P)``: some tasks are combinations of others."""
    gen = torch.Generator().manual_seed(seed)
    rank = max(1, min(rank, num_tasks, dim))
    left = torch.randn(num_tasks, rank, generator=gen, dtype=F64)
    right = torch.randn(rank, dim, generator=gen, dtype=F64)
    return (left @ right).to(device)


def property_jacobians(num_tasks: int, device: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The inputs every declared property is checked on: generic, conflicting and
    rank-deficient Jacobians (T > P included)."""
    for seed in range(2):
        yield f"random-{seed}", random_jacobian(num_tasks, 9, seed, device)
    yield "conflicting", conflicting_jacobian(num_tasks, 9, 5, device)
    yield "rank-deficient", rank_deficient_jacobian(num_tasks, 9, 6, device, rank=2)
    opposed = random_jacobian(num_tasks, 9, 8, device)
    opposed[1] = -2.0 * opposed[0]  # 0 in the convex hull: Pareto-stationary
    yield "opposed", opposed
    yield "more-tasks-than-params", random_jacobian(num_tasks, max(num_tasks - 1, 1), 7, device)


def random_losses(num_tasks: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Positive (T,) task losses in [0.5, 2.5)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num_tasks, generator=gen, dtype=F64) * 2 + 0.5).to(device)


def jacobian_arrays(num_tasks, dims, lo: float = -10.0):
    """Hypothesis (T, P) float64 arrays with entries in [lo, 10]."""
    elements = st.floats(lo, 10.0, allow_nan=False, allow_subnormal=False)
    shapes = st.tuples(num_tasks, dims)
    return shapes.flatmap(lambda shape: arrays(np.float64, shape, elements=elements))


def batches(strategy: WeightingStrategy, num_tasks: int, dim: int, seed: int, device: str):
    """One independent random Jacobian per batch the strategy draws in a step."""
    return [
        random_jacobian(num_tasks, dim, seed * 7 + k, device)
        for k in range(strategy.batches_per_step)
    ]


def step(strategy: WeightingStrategy, jacobians: list[torch.Tensor], losses=None) -> torch.Tensor:
    """One call the way the engines make it: all batches for multi-batch methods."""
    if strategy.batches_per_step > 1:
        losses = [losses] * len(jacobians) if not isinstance(losses, list) else losses
        return strategy.aggregate_batches(jacobians, losses)
    return strategy.aggregate(jacobians[0], losses)


def full_step(strategy: WeightingStrategy, jac: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """One training step of any strategy on the (T, P) Jacobian ``jac`` of its (transformed)
    losses, and the (P,) update direction it implies.

    A :class:`LossWeighting`'s direction is ``(d combine / d losses) @ jac`` at these losses;
    a gradient strategy gets ``jac`` once per batch it draws and the detached transformed
    losses. ``post_step`` (with the losses 10% lower) and ``end_epoch`` follow when declared
    or defined, so stateful methods move on as in training."""
    if strategy.needs == "losses":
        leaf = losses.detach().clone().requires_grad_(True)
        total = strategy.combine(strategy.transform_losses(leaf))
        (weights,) = torch.autograd.grad(total, leaf)
        d = weights.to(jac.dtype) @ jac
    else:
        transformed = strategy.transform_losses(losses.detach()).detach()
        d = step(strategy, [jac] * strategy.batches_per_step, transformed)
    if strategy.wants_post_step_losses:
        strategy.post_step(0.9 * losses.detach())
    strategy.end_epoch(losses.detach())
    return d


def scale_of(jac: torch.Tensor) -> float:
    """max_t ||g_t||^2."""
    return jac.pow(2).sum(1).max().item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def engine_grads(name: str, engine: str, device: str = "cpu", seed: int = 0, **hyper):
    """One training step of ``name`` through ``bench.engine``'s ``engine`` on a small
    three-task HPS model: the gradients of the shared parameters, and the strategy."""
    tasks = (Task("a", "regression"), Task("b", "multiclass", 3), Task("c", "binary"))
    torch.manual_seed(0)
    model = sharing.get("hps", (5,), tasks).to(device)
    x = torch.randn(16, 5, device=device)
    y = {"a": torch.randn(16, device=device), "b": torch.randint(0, 3, (16,), device=device),
         "c": torch.randint(0, 2, (16,), device=device).float()}
    out = model(x)
    losses = torch.stack([t.loss(out[t.name], y[t.name]) for t in tasks])
    strategy = make(name, 3, device, seed, **hyper)
    ctx = step_context(model, strategy, ENGINES[engine](), torch.optim.SGD(model.parameters()))
    require_engine(ctx.engine, strategy, model)
    apply_gradients([losses], ctx)
    return [p.grad.clone() for p in ctx.shared], strategy


# Loss-based strategies: losses as leaves, and d(combined) / d(losses).
positive = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)
loss_lists = st.lists(positive, min_size=1, max_size=6)


def tensor(values, device: str, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, device=device, requires_grad=grad)


def grad_of(total: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(total, losses)
    return grad
