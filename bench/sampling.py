"""Minibatches of a trial: single-input batches, and task sampling for multi-input data.

Single-input datasets (every sample has every task's label) are read in a fresh seeded
permutation each epoch. Multi-input datasets (:class:`~bench.data.MultiInputDataset`:
each task has its own samples) are read as the zip of per-task loaders: every step
holds samples of every task, so every weighting strategy sees one loss per task per
step. A *task-sampling policy* (a sweep axis, ``sampling = [...]``) decides each task's
share of the step:

- ``round_robin``: equal shares, ``train.batch_size`` samples of every task per step
  (LibMTL's multi-input mode); small tasks are cycled through more often;
- ``proportional``: shares proportional to the tasks' training-set sizes ("examples-
  proportional mixing", Raffel et al. 2020, https://arxiv.org/abs/1910.10683, Sec. 3.5.2);
  every task's data is read once per epoch;
- ``temperature``: shares proportional to ``n_t ** (1 / temperature)`` (Arivazhagan et
  al. 2019, https://arxiv.org/abs/1907.05019; Raffel et al. 2020): 1 is proportional,
  large values approach equal shares.

Every policy fills ``batch_size * T`` samples per step and an epoch is
``ceil(sum_t n_t / (batch_size * T))`` steps, so all policies train on the same number
of samples: a sweep over policies compares them at equal compute.

With ``per_step = "one"`` a policy instead picks *one* task per step (alternating
training, as in multi-task NLP: e.g. Stickland & Murray 2019,
https://arxiv.org/abs/1902.02671): ``round_robin`` takes the tasks in turn,
``proportional`` and ``temperature`` draw the step's task with the policy's shares.
A step is then ``batch_size`` samples of that task and an epoch is
``ceil(sum_t n_t / batch_size)`` steps (again the same samples per epoch). Only the
task of the step has a loss, so only equal weighting (``ew``) is meaningful; the grid
refuses other strategies. Shares become integer
counts by largest remainders, with at least one sample per task, and stay fixed for
the trial (deterministic mixing rather than a random draw of tasks per sample, so that
no step lacks a task). Each task's stream is a sequence of seeded permutations of its
training set, consumed across epoch boundaries.

The step's samples of all tasks go through the network in one forward pass (inputs
concatenated, task ``t``'s loss on its own slice of the output), so shared layers run
once per sample; architectures must not mix samples within a batch (none here uses
batch normalisation).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from bench.data import Split
from bench.registry import Registry
from bench.tasks import Task

__all__ = [
    "DEFAULT_SAMPLING",
    "SAMPLING",
    "AlternatingFeeder",
    "Batch",
    "Feeder",
    "MultiInputFeeder",
    "Proportional",
    "RoundRobin",
    "SamplingPolicy",
    "SingleInputFeeder",
    "Temperature",
    "allocate",
]

DEFAULT_SAMPLING = "round_robin"

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


PerStep = Literal["all", "one"]


class SamplingPolicy(ABC):
    """How the samples of one training step are shared among tasks of different sizes.

    ``per_step``: "all" (every task in every step, with the policy's shares) or "one"
    (one task per step, chosen by the policy)."""

    def __init__(self, *, per_step: PerStep = "all") -> None:
        self.per_step = per_step

    @abstractmethod
    def shares(self, sizes: Sequence[int]) -> np.ndarray:
        """Fraction of each step given to each task (non-negative, summing to 1)."""


SAMPLING: Registry = Registry("sampling policy")


@SAMPLING.register("round_robin")
class RoundRobin(SamplingPolicy):
    """Equal shares: every task gives ``batch_size`` samples to every step (zip of loaders)."""

    def shares(self, sizes: Sequence[int]) -> np.ndarray:
        return np.full(len(sizes), 1.0 / len(sizes))


@SAMPLING.register("proportional")
class Proportional(SamplingPolicy):
    """Shares proportional to training-set size (Raffel et al. 2020, arXiv:1910.10683)."""

    def shares(self, sizes: Sequence[int]) -> np.ndarray:
        n = np.asarray(sizes, dtype=np.float64)
        return n / n.sum()


@SAMPLING.register("temperature")
class Temperature(SamplingPolicy):
    """Shares proportional to ``n_t ** (1 / temperature)`` (Arivazhagan et al. 2019,
    arXiv:1907.05019): 1 is proportional, larger values flatten towards equal shares."""

    def __init__(
        self,
        *,
        temperature: Annotated[float, Field(gt=0.0, le=1e6)] = 2.0,
        per_step: PerStep = "all",
    ) -> None:
        super().__init__(per_step=per_step)
        self.temperature = temperature

    def shares(self, sizes: Sequence[int]) -> np.ndarray:
        n = np.asarray(sizes, dtype=np.float64)
        # In log space: n ** (1/T) overflows for small T.
        logits = np.log(n) / self.temperature
        p = np.exp(logits - logits.max())
        return p / p.sum()


def allocate(shares: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total``, close to ``shares * total``, each at least 1.

    Largest-remainder rounding after giving every task its floor (at least 1)."""
    p = np.asarray(shares, dtype=np.float64)
    if total < len(p):
        raise ValueError(f"a step of {total} samples cannot hold {len(p)} tasks")
    raw = p / p.sum() * total
    counts = np.maximum(1, np.floor(raw)).astype(np.int64)
    while counts.sum() < total:  # hand out the rest by largest remainder
        counts[int(np.argmax(raw - counts))] += 1
    while counts.sum() > total:  # the minimum of 1 overshot: take from the most over-served
        over = np.where(counts > 1, counts - raw, -np.inf)
        counts[int(np.argmax(over))] -= 1
    return counts.tolist()


class Feeder(ABC):
    """The training minibatches of one trial, and the loss of a batch per task."""

    tasks: tuple[Task, ...]
    steps_per_epoch: int
    num_samples: int  # training samples read per epoch

    @abstractmethod
    def start_epoch(self) -> None:
        """Prepare the epoch's order of samples."""

    @abstractmethod
    def batch(self, step: int) -> Batch:
        """Minibatch ``step`` (``0 <= step < steps_per_epoch``) of the current epoch."""

    @abstractmethod
    def random_batch(self) -> Batch:
        """An independent random minibatch (for strategies using several per step)."""

    @abstractmethod
    def losses(self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        """(T,) mean loss of each task on its samples of the batch."""

    def task_steps(self) -> list[int]:
        """Steps of the current epoch in which each task has samples (to average its
        training loss over)."""
        return [self.steps_per_epoch] * len(self.tasks)


class SingleInputFeeder(Feeder):
    """Minibatches of ``batch_size`` from a fresh seeded permutation every epoch."""

    def __init__(
        self, tasks: Sequence[Task], split: Split, batch_size: int, generator: torch.Generator
    ) -> None:
        self.tasks = tuple(tasks)
        self.split = split
        self.batch_size = batch_size
        self.generator = generator
        self.num_samples = len(split)
        self.steps_per_epoch = math.ceil(self.num_samples / batch_size)
        self.device = split.x.device
        self._perm = torch.empty(0, dtype=torch.long)

    def _take(self, idx: torch.Tensor) -> Batch:
        return self.split.x[idx], {k: v[idx] for k, v in self.split.y.items()}

    def start_epoch(self) -> None:
        self._perm = torch.randperm(self.num_samples, generator=self.generator).to(self.device)

    def batch(self, step: int) -> Batch:
        return self._take(self._perm[step * self.batch_size : (step + 1) * self.batch_size])

    def random_batch(self) -> Batch:
        idx = torch.randint(self.num_samples, (self.batch_size,), generator=self.generator)
        return self._take(idx.to(self.device))

    def losses(self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.loss(out[t.name], y[t.name]) for t in self.tasks])


class _Stream:
    """Endless seeded permutations of ``range(n)``, consumed ``k`` indices at a time."""

    def __init__(self, n: int, generator: torch.Generator, device: torch.device) -> None:
        self.n, self.generator, self.device = n, generator, device
        self.buffer = torch.empty(0, dtype=torch.long, device=device)
        self.position = 0

    def take(self, k: int) -> torch.Tensor:
        while self.buffer.numel() - self.position < k:
            fresh = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.buffer = torch.cat([self.buffer[self.position :], fresh])
            self.position = 0
        out = self.buffer[self.position : self.position + k]
        self.position += k
        return out


class _PerTaskFeeder(Feeder, ABC):
    """Shared set-up of the multi-input feeders: one split and one sample stream per task."""

    def __init__(
        self,
        tasks: Sequence[Task],
        splits: dict[str, Split],
        batch_size: int,
        generator: torch.Generator,
        policy: SamplingPolicy,
    ) -> None:
        self.tasks = tuple(tasks)
        self.splits = [splits[t.name] for t in self.tasks]
        self.sizes = [len(s) for s in self.splits]
        if min(self.sizes) < 1:
            raise ValueError("every task needs at least one training sample")
        self.batch_size = batch_size
        self.shares = policy.shares(self.sizes)
        self.num_samples = sum(self.sizes)
        self.generator = generator
        self.device = self.splits[0].x.device
        self.streams = [_Stream(n, generator, self.device) for n in self.sizes]
        self._configure(policy)

    @abstractmethod
    def _configure(self, policy: SamplingPolicy) -> None:
        """Set ``steps_per_epoch`` and what the feeder needs from ``policy``."""


class MultiInputFeeder(_PerTaskFeeder):
    """Steps of ``batch_size * T`` samples shared among tasks by a :class:`SamplingPolicy`.

    A batch's inputs are the tasks' samples concatenated in task order; ``counts[t]`` of
    them belong to task ``t`` in every step."""

    def _configure(self, policy: SamplingPolicy) -> None:
        per_step = self.batch_size * len(self.tasks)
        self.counts = allocate(self.shares, per_step)
        self.bounds = np.concatenate([[0], np.cumsum(self.counts)]).tolist()
        self.steps_per_epoch = math.ceil(self.num_samples / per_step)

    def _take(self, indices: Sequence[torch.Tensor]) -> Batch:
        x = torch.cat([s.x[i] for s, i in zip(self.splits, indices, strict=True)])
        y = {t.name: s.y[t.name][i] for t, s, i in zip(self.tasks, self.splits, indices,
                                                        strict=True)}
        return x, y

    def start_epoch(self) -> None:
        pass  # streams run across epochs: no task restarts its permutation early

    def batch(self, step: int) -> Batch:
        return self._take([s.take(k) for s, k in zip(self.streams, self.counts, strict=True)])

    def random_batch(self) -> Batch:
        return self._take([
            torch.randint(len(s), (k,), generator=self.generator).to(self.device)
            for s, k in zip(self.splits, self.counts, strict=True)
        ])

    def losses(self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([
            t.loss(out[t.name][self.bounds[i] : self.bounds[i + 1]], y[t.name])
            for i, t in enumerate(self.tasks)
        ])


class AlternatingFeeder(_PerTaskFeeder):
    """One task per step (``per_step = "one"``): ``batch_size`` samples of the task the
    policy picks; the other tasks' loss entries are constant zeros (no gradient)."""

    def _configure(self, policy: SamplingPolicy) -> None:
        self.probabilities = torch.as_tensor(self.shares, dtype=torch.float64)
        self.in_turn = isinstance(policy, RoundRobin)
        self.steps_per_epoch = math.ceil(self.num_samples / self.batch_size)
        self._turn = 0  # round-robin position, carried across epochs
        self._order: list[int] = []

    def start_epoch(self) -> None:
        n, num_tasks = self.steps_per_epoch, len(self.tasks)
        if self.in_turn:
            self._order = [(self._turn + i) % num_tasks for i in range(n)]
            self._turn = (self._turn + n) % num_tasks
        else:  # drawn on the CPU: choosing the task needs no device sync
            self._order = torch.multinomial(self.probabilities, n, replacement=True,
                                            generator=self.generator).tolist()

    def _take(self, t: int, idx: torch.Tensor) -> Batch:
        task = self.tasks[t].name
        return self.splits[t].x[idx], {task: self.splits[t].y[task][idx]}

    def batch(self, step: int) -> Batch:
        t = self._order[step]
        return self._take(t, self.streams[t].take(self.batch_size))

    def random_batch(self) -> Batch:
        t = int(torch.multinomial(self.probabilities, 1, generator=self.generator))
        idx = torch.randint(len(self.splits[t]), (self.batch_size,), generator=self.generator)
        return self._take(t, idx.to(self.device))

    def losses(self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        present = next(iter(y.values()))
        zero = torch.zeros((), device=present.device, dtype=torch.float32)
        return torch.stack([
            t.loss(out[t.name], y[t.name]) if t.name in y else zero for t in self.tasks
        ])

    def task_steps(self) -> list[int]:
        counts = [0] * len(self.tasks)
        for t in self._order:
            counts[t] += 1
        return counts
