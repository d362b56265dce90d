"""Backbones shared by the sharing architectures: an MLP and a small CNN.

A backbone is a list of *stages*, built from a :class:`BackboneSpec`:

- ``kind = "mlp"``: one stage per width in ``hidden`` (Linear-ReLU(-Dropout)); the
  input is flattened first.
- ``kind = "cnn"``: one stage per width in ``channels`` (3x3 convolution with
  padding 1, ReLU, 2x2 max-pooling; a spatial side of 1 is not pooled), then the
  ``hidden`` stages of the MLP on the flattened feature map. Dropout applies to the
  fully connected stages only. The input is ``(C, H, W)`` (or ``(H, W)``: one channel).

Architectures that work between layers (cross-stitch units, MTAN's attention,
PLE's levels) build the stages one by one with :func:`build_stage`; the others take
the whole network from :func:`backbone`. :func:`stage_shapes` gives every stage's
output shape without running anything, so models can be built on the ``meta``
device (see ``match_params`` in ``strategies/sharing/_common.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from strategies.sharing.base import BackboneSpec

__all__ = [
    "ConvBlock",
    "StageDesc",
    "backbone",
    "build_stage",
    "build_stages",
    "flat_dim",
    "image_shape",
    "mlp",
    "output_dim",
    "prepare_input",
    "stage_descs",
    "stage_shapes",
]


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


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image input (``(H, W)`` means one channel); ValueError otherwise."""
    shape = tuple(input_shape)
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2])
    raise ValueError(
        f"the cnn backbone needs image inputs of shape (C, H, W) or (H, W); got {shape} "
        "(use model.backbone = \"mlp\" for vector inputs)"
    )


class ConvBlock(nn.Module):
    """3x3 convolution (padding 1), ReLU, max-pooling. ``features`` is the pre-pooling output."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(pool) if pool != (1, 1) else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


@dataclass(frozen=True)
class StageDesc:
    """One backbone stage: ``conv`` (channels, pooling) or ``fc`` (width)."""

    kind: str  # "conv" | "fc"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    pool: tuple[int, int] = (1, 1)


def stage_descs(input_shape: Sequence[int], spec: BackboneSpec) -> list[StageDesc]:
    """The stages of the backbone ``spec`` on inputs of ``input_shape``, with their shapes."""
    descs: list[StageDesc] = []
    shape: tuple[int, ...] = tuple(input_shape)
    if spec.kind == "cnn":
        shape = image_shape(input_shape)
        for c in spec.channels:
            _, h, w = shape
            pool = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
            out = (c, h // pool[0], w // pool[1])
            descs.append(StageDesc("conv", shape, out, pool))
            shape = out
    elif spec.kind != "mlp":
        raise ValueError(f"unknown backbone kind {spec.kind!r} (expected 'mlp' or 'cnn')")
    for h in spec.hidden:
        descs.append(StageDesc("fc", shape, (h,)))
        shape = (h,)
    return descs


def stage_shapes(input_shape: Sequence[int], spec: BackboneSpec) -> list[tuple[int, ...]]:
    """Output shape (without the batch dimension) of every stage."""
    return [d.out_shape for d in stage_descs(input_shape, spec)]


def build_stage(desc: StageDesc, dropout: float = 0.0) -> nn.Module:
    """A fresh module for one stage (a conv stage takes ``(B, C, H, W)``, an fc stage
    anything it can flatten to ``(B, in)``)."""
    if desc.kind == "conv":
        return ConvBlock(desc.in_shape[0], desc.out_shape[0], desc.pool)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(flat_dim(desc.in_shape), desc.out_shape[0]),
                               nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _Backbone(nn.Sequential):
    """The stages in sequence, reshaping ``(B, H, W)`` images to one channel and flattening
    the output."""

    def __init__(self, stages: Sequence[nn.Module], image: tuple[int, int, int] | None) -> None:
        super().__init__(*stages)
        self.image = image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image is not None:
            x = x.reshape(x.shape[0], *self.image)
        for stage in self:
            x = stage(x)
        return x.flatten(1)


def prepare_input(x: torch.Tensor, input_shape: Sequence[int], spec: BackboneSpec) -> torch.Tensor:
    """``x`` as the first stage expects it: ``(B, C, H, W)`` for the cnn, unchanged otherwise."""
    if spec.kind == "cnn":
        return x.reshape(x.shape[0], *image_shape(input_shape))
    return x


def build_stages(
    input_shape: Sequence[int], spec: BackboneSpec, start: int = 0, stop: int | None = None
) -> list[nn.Module]:
    """Fresh modules for stages ``start:stop`` of the backbone."""
    return [build_stage(d, spec.dropout) for d in stage_descs(input_shape, spec)[start:stop]]


def backbone(input_shape: Sequence[int], spec: BackboneSpec) -> nn.Module:
    """The whole backbone: ``(B, *input_shape) -> (B, output_dim(input_shape, spec))``."""
    image = image_shape(input_shape) if spec.kind == "cnn" else None
    return _Backbone(build_stages(input_shape, spec), image)


def output_dim(input_shape: Sequence[int], spec: BackboneSpec) -> int:
    """Width of the backbone's (flattened) output."""
    shapes = stage_shapes(input_shape, spec)
    return flat_dim(shapes[-1] if shapes else input_shape)
