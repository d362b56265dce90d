"""Sharing architectures, one file per design, reached through ``SHARING``."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from bench.registry import Registry
from bench.tasks import Task
from strategies.sharing.base import BackboneSpec, SharingArchitecture

__all__ = ["SHARING", "BackboneSpec", "SharingArchitecture", "get", "names"]

SHARING: Registry = Registry("sharing")

_BUILTIN = ("hps", "stl")
for _module in _BUILTIN:
    importlib.import_module(f"strategies.sharing.{_module}")


def get(
    name: str,
    input_shape: Sequence[int],
    tasks: Sequence[Task],
    backbone: BackboneSpec | None = None,
    **hyperparameters: Any,
) -> SharingArchitecture:
    """Build architecture ``name`` for ``tasks`` with validated hyperparameters."""
    return SHARING.create(name, input_shape, tasks, backbone or BackboneSpec(), **hyperparameters)


def names() -> list[str]:
    return SHARING.names()
