"""The registry of sharing architectures (filled as ``strategies.sharing`` imports each
component's file)."""

from __future__ import annotations

from bench.registry import Registry

__all__ = ["SHARING"]

SHARING: Registry = Registry("sharing")
