"""The registry of dataset loaders (filled as ``bench.data`` imports each loader's file)."""

from __future__ import annotations

from bench.registry import Registry

__all__ = ["DATASETS"]

DATASETS: Registry = Registry("dataset")
