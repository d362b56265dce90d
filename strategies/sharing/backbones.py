"""Backbones shared by the sharing architectures."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

__all__ = ["mlp"]


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear-ReLU(-Dropout) blocks of widths ``hidden``, then an optional linear output layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def flat_dim(shape: Sequence[int]) -> int:
    return math.prod(shape)
