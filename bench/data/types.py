"""What a dataset loader returns: splits of inputs and per-task labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.tasks import Task

__all__ = ["MAX_INPUT_DIM", "MAX_SAMPLES", "AnyDataset", "MTLDataset", "MultiInputDataset",
           "Split"]

MAX_SAMPLES = 10_000_000
MAX_INPUT_DIM = 100_000


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, ...) and one label tensor (N,) per task."""

    x: torch.Tensor
    y: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), {t: v.to(device) for t, v in self.y.items()})


@dataclass(frozen=True)
class MTLDataset:
    """A single-input multi-task dataset: every sample has a label for every task."""

    multi_input: ClassVar[bool] = False

    name: str
    tasks: tuple[Task, ...]
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def split_of(self, split: str, task: str) -> Split:
        """Inputs and ``task``'s labels of ``split`` ("train", "val" or "test")."""
        s: Split = getattr(self, split)
        return Split(s.x, {task: s.y[task]})


@dataclass(frozen=True)
class MultiInputDataset:
    """A multi-input multi-task dataset: each task has its own samples.

    Every split maps each task name to a :class:`Split` holding that task's inputs and
    its labels only (``y`` has the one key). All tasks share one input shape, so one
    network serves them; how many samples of each task enter a training step is the
    trial's task-sampling policy (:mod:`bench.sampling`).
    """

    multi_input: ClassVar[bool] = True

    name: str
    tasks: tuple[Task, ...]
    train: dict[str, Split]
    val: dict[str, Split]
    test: dict[str, Split]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        shapes = set()
        for split in ("train", "val", "test"):
            per_task = getattr(self, split)
            if sorted(per_task) != sorted(names):
                raise ValueError(f"{self.name}: {split} must hold one Split per task {names}")
            for task, s in per_task.items():
                if list(s.y) != [task]:
                    raise ValueError(f"{self.name}: {split}[{task}] must hold {task}'s labels only")
                shapes.add(tuple(s.x.shape[1:]))
        if len(shapes) != 1:
            raise ValueError(f"{self.name}: tasks must share one input shape (got {shapes})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[self.tasks[0].name].x.shape[1:])

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def split_of(self, split: str, task: str) -> Split:
        """Inputs and labels of ``task`` in ``split`` ("train", "val" or "test")."""
        return getattr(self, split)[task]

    def sizes(self, split: str = "train") -> dict[str, int]:
        """Sample count of each task in ``split``."""
        return {t.name: len(getattr(self, split)[t.name]) for t in self.tasks}


AnyDataset = MTLDataset | MultiInputDataset
