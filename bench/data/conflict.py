"""Synthetic tasks with controllable conflict, label noise and per-task data imbalance.

Generator (single-input: every sample has every task's label). With orthonormal
vectors ``u0, u1`` (a shared plane) and ``p_1..p_T`` (one private factor per task) in
``R^d``, task ``t`` (``t = 1..T``) has the unit weight vector

    w_t = sqrt(1 - private) * (cos(phi_t) u0 + sin(phi_t) u1) + sqrt(private) * p_t,
    phi_t = angle * ((t - 1) / (T - 1) - 1/2),

so the task directions in the shared plane are spread evenly over an arc of ``angle``
degrees: for two tasks ``angle`` is the angle between them, and in general
``cos(w_s, w_t) = (1 - private) * cos(phi_s - phi_t)`` (180 degrees and
``private = 0``: ``w_2 = -w_1``, cosine -1; 0 degrees: identical directions). Inputs
``x ~ N(0, I_d)``, scores ``s_t = g(w_t^T x)`` with ``link`` ``g(z) = z`` ("linear") or
``g(z) = max(z, 0) - 1/sqrt(2 pi)`` ("relu", centred), and labels

- ``kind="regression"``: ``y_t = s_t + eps_t``, z-scored with the train split's mean
  and population std;
- ``kind="binary"``: ``y_t = 1[s_t + eps_t > 0]`` (float32 {0, 1}),

with ``eps_t ~ N(0, sigma_t^2)`` in every split. ``sigma_t`` goes linearly from
``noise`` (task 1) to ``noise_last`` (task T; default: ``noise``).

Imbalance: single-input datasets cannot give tasks different sample counts (every
sample has every label), so task ``t`` instead gets only a fraction ``f_t`` of
*informative* training labels: ``f_t`` goes linearly from 1 (task 1) to
``label_fraction_last`` (task T); for the other ``(1 - f_t) * num_train`` training
samples, chosen at random, the labels are permuted among themselves, which keeps the
label distribution but removes any relation to ``x``. Task ``t`` thus learns from
``f_t * num_train`` samples plus pure label noise. Val and test labels are never
permuted, so evaluation measures the real task.

Producing negative transfer on purpose:

- ``angle=180`` (``private=0``): labels are exactly opposite (correlation -1 without
  noise); any shared predictor without task-specific output layers gets both tasks
  wrong, and the per-task gradients on shared parameters point in opposite directions
  whenever the task heads agree in sign. With ``link="linear"`` task-specific towers can
  absorb a sign flip; ``link="relu"`` makes the two tasks depend on opposite
  half-spaces, which towers cannot undo;
- ``angle=90`` or a large ``private`` with a narrow shared layer: the tasks compete for
  capacity;
- a noisy (``noise_last``) or label-starved (``label_fraction_last``) task next to a
  clean one.

Sizes are per split; samples are generated in the order train, val, test from
``numpy.random.default_rng(data_seed)``.

Multi-input mode (``separate_inputs=True``): each task gets its own samples (a
:class:`~bench.data.MultiInputDataset`), drawn from the same generator; task ``t`` has
a training-set size going linearly from ``num_train`` (task 1) to ``num_train_last``
(task T; default ``num_train``), and ``num_val``/``num_test`` samples in the other
splits. Real imbalance in sample counts replaces the label permutation, which is off
(``label_fraction_last`` must stay 1). Regression targets are z-scored per task on its
own training samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from bench.data import DATASETS, MAX_INPUT_DIM, MAX_SAMPLES, MTLDataset, MultiInputDataset, Split
from bench.errors import ConfigError
from bench.tasks import Task

__all__ = ["conflict", "label_fractions", "noise_levels", "task_weights"]


def task_weights(
    rng: np.random.Generator, num_tasks: int, input_dim: int, angle: float, private: float
) -> np.ndarray:
    """Unit weight vectors ``(num_tasks, input_dim)``; see the module docstring."""
    q, _ = np.linalg.qr(rng.standard_normal((input_dim, num_tasks + 2)))
    u = q.T  # orthonormal rows: u0, u1, then one private factor per task
    phi = np.radians(angle) * (np.arange(num_tasks) / (num_tasks - 1) - 0.5)
    plane = np.cos(phi)[:, None] * u[0] + np.sin(phi)[:, None] * u[1]
    return np.sqrt(1.0 - private) * plane + np.sqrt(private) * u[2:]


def _ramp(first: float, last: float, num_tasks: int) -> np.ndarray:
    return np.linspace(first, last, num_tasks)


def noise_levels(noise: float, noise_last: float | None, num_tasks: int) -> np.ndarray:
    """Noise std of each task (linear from ``noise`` to ``noise_last``)."""
    return _ramp(noise, noise if noise_last is None else noise_last, num_tasks)


def label_fractions(label_fraction_last: float, num_tasks: int) -> np.ndarray:
    """Fraction of informative training labels of each task (linear from 1)."""
    return _ramp(1.0, label_fraction_last, num_tasks)


@DATASETS.register("conflict")
def conflict(
    *,
    num_tasks: Annotated[int, Field(ge=2, le=16)] = 2,
    angle: Annotated[float, Field(ge=0.0, le=180.0)] = 90.0,
    private: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
    noise: Annotated[float, Field(ge=0.0)] = 0.1,
    noise_last: Annotated[float, Field(ge=0.0)] | None = None,
    label_fraction_last: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0,
    kind: Literal["regression", "binary"] = "regression",
    link: Literal["linear", "relu"] = "linear",
    input_dim: Annotated[int, Field(ge=4, le=MAX_INPUT_DIM)] = 32,
    num_train: Annotated[int, Field(ge=2, le=MAX_SAMPLES)] = 4000,
    num_val: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1000,
    num_test: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1000,
    data_seed: Annotated[int, Field(ge=0)] = 0,
    separate_inputs: bool = False,
    num_train_last: Annotated[int, Field(ge=2, le=MAX_SAMPLES)] | None = None,
) -> MTLDataset | MultiInputDataset:
    """Synthetic tasks with a controllable conflict angle, label noise and label imbalance."""
    if input_dim < num_tasks + 2:
        raise ConfigError(
            f"dataset 'conflict': input_dim must be >= num_tasks + 2 = {num_tasks + 2} "
            f"(got {input_dim})"
        )
    if not separate_inputs and num_train_last is not None:
        raise ConfigError(
            "dataset 'conflict': num_train_last needs separate_inputs = true (with shared "
            "inputs every task has every sample; use label_fraction_last)"
        )
    if separate_inputs and label_fraction_last != 1.0:
        raise ConfigError(
            "dataset 'conflict': label_fraction_last applies to shared inputs only; with "
            "separate_inputs use num_train_last for imbalance"
        )
    rng = np.random.default_rng(data_seed)
    weights = task_weights(rng, num_tasks, input_dim, angle, private)
    sigma = noise_levels(noise, noise_last, num_tasks)
    offset = 1.0 / math.sqrt(2.0 * math.pi)  # E[max(z, 0)] for z ~ N(0, 1)

    def generate(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, input_dim))
        z = x @ weights.T
        score = z if link == "linear" else np.maximum(z, 0.0) - offset
        y = score + rng.standard_normal(z.shape) * sigma
        if kind == "binary":
            y = (y > 0).astype(np.float64)
        return x, y

    names = [f"t{i + 1}" for i in range(num_tasks)]
    if separate_inputs:
        last = num_train if num_train_last is None else num_train_last
        train_sizes = np.rint(_ramp(num_train, last, num_tasks)).astype(int).tolist()
        return _separate(names, kind, generate, train_sizes, num_val, num_test)

    raw = {s: generate(n) for s, n in (("train", num_train), ("val", num_val), ("test", num_test))}
    # Imbalance: permute the labels of a random (1 - f_t) share of the training samples.
    y_train = raw["train"][1]
    for t, f in enumerate(label_fractions(label_fraction_last, num_tasks)):
        k = round((1.0 - f) * num_train)
        if k > 1:
            chosen = rng.choice(num_train, size=k, replace=False)
            y_train[chosen, t] = y_train[rng.permutation(chosen), t]
    if kind == "regression":
        mean = y_train.mean(axis=0)
        std = y_train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.zeros(num_tasks), np.ones(num_tasks)

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        y = (y - mean) / std
        return Split(
            torch.from_numpy(x.astype(np.float32)),
            {t: torch.from_numpy(y[:, i].astype(np.float32)) for i, t in enumerate(names)},
        )

    return MTLDataset(
        name="conflict",
        tasks=tuple(Task(t, kind) for t in names),
        **{s: to_split(*raw[s]) for s in ("train", "val", "test")},
    )


def _separate(
    names: list[str],
    kind: str,
    generate: Callable[[int], tuple[np.ndarray, np.ndarray]],
    train_sizes: list[int],
    num_val: int,
    num_test: int,
) -> MultiInputDataset:
    """Multi-input variant: task ``t`` keeps only its own label column of its own samples."""
    splits: dict[str, dict[str, Split]] = {"train": {}, "val": {}, "test": {}}
    for t, name in enumerate(names):
        raw = {s: generate(n)
               for s, n in (("train", train_sizes[t]), ("val", num_val), ("test", num_test))}
        y_train = raw["train"][1][:, t]
        mean, std = (y_train.mean(), y_train.std() or 1.0) if kind == "regression" else (0.0, 1.0)
        for split, (x, y) in raw.items():
            splits[split][name] = Split(
                torch.from_numpy(x.astype(np.float32)),
                {name: torch.from_numpy(((y[:, t] - mean) / std).astype(np.float32))},
            )
    return MultiInputDataset(
        name="conflict", tasks=tuple(Task(n, kind) for n in names), **splits  # type: ignore[arg-type]
    )
