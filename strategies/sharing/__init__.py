"""Sharing architectures, one file per design, reached through ``SHARING``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from typing import Any

from bench.tasks import Task
from strategies.sharing._common import count_parameters, match_params, reference_parameter_counts
from strategies.sharing.base import BackboneSpec, SharingArchitecture
from strategies.sharing.registry import SHARING

__all__ = [
    "SHARING",
    "BackboneSpec",
    "SharingArchitecture",
    "count_parameters",
    "get",
    "match_params",
    "names",
    "reference_parameter_counts",
]

_NOT_COMPONENTS = ("base", "backbones", "registry")


# One module per component: importing each registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_COMPONENTS and not _info.name.startswith("_"):
        importlib.import_module(f"strategies.sharing.{_info.name}")


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

