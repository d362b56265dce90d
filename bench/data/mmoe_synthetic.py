"""Synthetic regression tasks with controllable label correlation (MMoE, section 3.2).

Source: J. Ma, Z. Zhao, X. Yi, J. Chen, L. Hong, E. H. Chi, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, https://doi.org/10.1145/3219819.3220007, section 3.2.

The paper's recipe for two tasks: pick two orthogonal unit vectors ``u1, u2`` in
``R^d`` and set ``w1 = c*u1``, ``w2 = c*(p*u1 + sqrt(1 - p^2)*u2)``, so that
``cos(w1, w2) = p``. Draw ``x ~ N(0, I_d)`` and

    y_i = w_i^T x + sum_{k=1..m} sin(alpha_k * w_i^T x + beta_k) + eps_i,

with ``eps_i ~ N(0, 0.01)`` (variance 0.01) and ``alpha_k, beta_k ~ N(0, 1)``
shared by all tasks (paper defaults: ``d = 100``, ``c = 1``, ``m = 10``).

Generalisation to ``T`` tasks: with ``T + 1`` orthonormal vectors ``u0..uT``, set
``w_t = c*(sqrt(p)*u0 + sqrt(1 - p)*u_t)``. Every ``w_t`` has norm ``c`` and every
pair has cosine ``p``. For ``T = 2`` the Gram matrix of ``(w1, w2)`` equals the
paper's, and since ``x`` is isotropic the joint distribution of
``(w1^T x, w2^T x)`` -- hence of the labels -- is the same as the paper's
(the weight vectors agree up to a rotation).

Targets are standardised per task with the train split's mean and (population)
standard deviation; val/test use the same train statistics.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from bench.data import DATASETS, MAX_INPUT_DIM, MAX_SAMPLES, MTLDataset, Split
from bench.errors import ConfigError
from bench.tasks import Task

__all__ = ["mmoe_synthetic", "task_weights"]


def task_weights(
    rng: np.random.Generator, num_tasks: int, input_dim: int, correlation: float, scale: float
) -> np.ndarray:
    """Weight vectors ``(num_tasks, input_dim)`` with norm ``scale`` and pairwise cosine ``p``."""
    # Random orthonormal columns u0..uT from the QR decomposition of a Gaussian matrix.
    q, _ = np.linalg.qr(rng.standard_normal((input_dim, num_tasks + 1)))
    u = q.T  # (T + 1, d), orthonormal rows
    shared = np.sqrt(correlation) * u[0]
    return scale * (shared[None, :] + np.sqrt(1.0 - correlation) * u[1:])


@DATASETS.register("mmoe_synthetic")
def mmoe_synthetic(
    *,
    correlation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
    num_tasks: Annotated[int, Field(ge=2, le=64)] = 2,
    input_dim: Annotated[int, Field(ge=3, le=MAX_INPUT_DIM)] = 100,
    scale: Annotated[float, Field(gt=0.0)] = 1.0,
    num_sin: Annotated[int, Field(ge=0)] = 10,
    num_train: Annotated[int, Field(ge=2, le=MAX_SAMPLES)] = 8000,
    num_val: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1000,
    num_test: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1000,
    data_seed: Annotated[int, Field(ge=0)] = 0,
) -> MTLDataset:
    """Synthetic regression tasks with tunable correlation (Ma et al., KDD 2018)."""
    if input_dim < num_tasks + 1:
        raise ConfigError(
            f"dataset 'mmoe_synthetic': input_dim must be >= num_tasks + 1 = {num_tasks + 1} "
            f"(got {input_dim})"
        )
    rng = np.random.default_rng(data_seed)
    weights = task_weights(rng, num_tasks, input_dim, correlation, scale)  # (T, d)
    alpha = rng.standard_normal(num_sin)
    beta = rng.standard_normal(num_sin)

    def generate(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, input_dim))
        z = x @ weights.T  # (n, T)
        y = z + np.sin(alpha[None, None, :] * z[:, :, None] + beta[None, None, :]).sum(-1)
        y = y + rng.normal(0.0, 0.1, size=y.shape)  # noise variance 0.01
        return x, y

    sizes = {"train": num_train, "val": num_val, "test": num_test}
    raw = {split: generate(n) for split, n in sizes.items()}  # generated in this order
    mean = raw["train"][1].mean(axis=0)
    std = raw["train"][1].std(axis=0)
    std = np.where(std > 0, std, 1.0)

    names = [f"t{i + 1}" for i in range(num_tasks)]

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        y = (y - mean) / std
        return Split(
            torch.from_numpy(x.astype(np.float32)),
            {t: torch.from_numpy(y[:, i].astype(np.float32)) for i, t in enumerate(names)},
        )

    return MTLDataset(
        name="mmoe_synthetic",
        tasks=tuple(Task(t, "regression") for t in names),
        train=to_split(*raw["train"]),
        val=to_split(*raw["val"]),
        test=to_split(*raw["test"]),
    )
