"""Weighting strategies, one file per method, reached through ``WEIGHTING``.

Add your own::

    from strategies.weighting import WEIGHTING, LossWeighting

    @WEIGHTING.register("my_method")
    class MyMethod(LossWeighting):
        def __init__(self, *, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def combine(self, losses):
            return self.scale * losses.sum()
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from bench.registry import Registry
from strategies.weighting.base import (
    GradientWeighting,
    GramianWeighting,
    LossWeighting,
    WeightingStrategy,
)

__all__ = [
    "WEIGHTING",
    "GradientWeighting",
    "GramianWeighting",
    "LossWeighting",
    "WeightingStrategy",
    "get",
    "names",
]

_NOT_COMPONENTS = ("base",)

WEIGHTING: Registry = Registry("weighting")

# One module per component: importing each registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_COMPONENTS and not _info.name.startswith("_"):
        importlib.import_module(f"strategies.weighting.{_info.name}")


def get(name: str, **hyperparameters: Any) -> WeightingStrategy:
    """A new instance of strategy ``name`` with validated hyperparameters."""
    return WEIGHTING.create(name, **hyperparameters)


def names() -> list[str]:
    return WEIGHTING.names()
