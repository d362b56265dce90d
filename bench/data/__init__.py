"""Datasets: a registry of loaders returning tasks and fixed train/val/test splits.

Register a loader with ``@DATASETS.register("name")``; its keyword-only
parameters are the dataset's parameters in sweep files. Loaders must work with
no network.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from bench.registry import Registry
from bench.tasks import Task

__all__ = ["DATASETS", "MTLDataset", "Split", "load", "names"]


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


_NOT_COMPONENTS = ("cache", "common")

DATASETS: Registry = Registry("dataset")

# One module per component: importing each registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_COMPONENTS and not _info.name.startswith("_"):
        importlib.import_module(f"bench.data.{_info.name}")


def names() -> list[str]:
    return DATASETS.names()


@lru_cache(maxsize=8)
def _load_cached(name: str, frozen_params: tuple[tuple[str, Any], ...]) -> MTLDataset:
    return DATASETS.create(name, **dict(frozen_params))


def load(name: str, **params: Any) -> MTLDataset:
    """Load (and memoise per process) dataset ``name`` with validated ``params``."""
    resolved = DATASETS.resolve(name, params)
    return _load_cached(name, tuple(sorted(resolved.items())))
