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
from typing import Any

from bench.registry import Registry
from strategies.weighting.base import GradientWeighting, LossWeighting, WeightingStrategy

__all__ = ["WEIGHTING", "GradientWeighting", "LossWeighting", "WeightingStrategy", "get", "names"]

WEIGHTING: Registry = Registry("weighting")

_BUILTIN = ("ew", "uw", "dwa", "mgda", "pcgrad")
for _module in _BUILTIN:
    importlib.import_module(f"strategies.weighting.{_module}")


def get(name: str, **hyperparameters: Any) -> WeightingStrategy:
    """A new instance of strategy ``name`` with validated hyperparameters."""
    return WEIGHTING.create(name, **hyperparameters)


def names() -> list[str]:
    return WEIGHTING.names()
