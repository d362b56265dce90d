"""Multi-Task Attention Network (MTAN): task-specific soft-attention masks over a shared CNN.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
https://arxiv.org/abs/1803.10704 (reference code: https://github.com/lorenmt/mtan).

The shared network is the CNN backbone (``backbones.py``; MTAN needs
``model.backbone = "cnn"``). For conv block ``j`` let ``p_j`` be its activation before
pooling. Each task ``t`` has one attention module ``g_t^j`` per block, which computes
a soft mask from the shared features and the task's attended features of the block
before:

    a_t^1 = g_t^1(p_1),        a_t^j = g_t^j([p_j ; f^j(a_hat_t^(j-1))])   (j > 1)
    a_hat_t^j = a_t^j * p_j    (element-wise)

``g`` is conv1x1-ReLU-conv1x1-Sigmoid (the paper's attention module without its batch
normalisation: no architecture in this benchmark uses batch norm), and ``f^j`` is a
3x3 convolution with ReLU followed by block ``j-1``'s pooling, which brings the
attended features to block ``j``'s channels and resolution. As in the reference code,
``f^j`` is one module per block shared by all tasks; only the ``g`` modules are
task-specific. After the last block, each task's attended map is pooled, flattened,
and passed through the backbone's fully connected ``hidden`` layers (shared weights,
applied per task) and the task's tower.

Shared parameters: the conv blocks, the ``f`` convolutions and the fully connected
layers; task-specific: the task's attention modules and tower. There is no single
shared representation (each task reads its own attended features), so
``has_representation = False``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from bench.tasks import Task
from strategies.sharing import SHARING
from strategies.sharing._common import tower
from strategies.sharing.backbones import (
    ConvBlock,
    build_stage,
    output_dim,
    prepare_input,
    stage_descs,
)
from strategies.sharing.base import BackboneSpec, SharingArchitecture


def attention_module(in_channels: int, channels: int) -> nn.Sequential:
    """g: conv1x1-ReLU-conv1x1-Sigmoid, a mask in (0, 1) with ``channels`` channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel_size=1),
        nn.Sigmoid(),
    )


@SHARING.register("mtan")
class MTAN(SharingArchitecture):
    """MTAN: a shared CNN with per-task attention masks on every conv block (cnn backbone only)."""

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__(input_shape, tasks, backbone)
        if backbone.kind != "cnn" or not backbone.channels:
            raise ValueError(
                "MTAN needs a convolutional backbone (model.backbone = \"cnn\" with at least "
                "one conv channel): its attention masks act on the shared feature maps"
            )
        descs = stage_descs(input_shape, backbone)
        convs = [d for d in descs if d.kind == "conv"]
        blocks = [build_stage(d) for d in convs]
        assert all(isinstance(b, ConvBlock) for b in blocks)
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.ModuleList([build_stage(d, backbone.dropout) for d in descs[len(convs):]])
        # f^j (j >= 1): conv3x3 + ReLU from block j-1's to block j's channels, then pooling.
        self.transfer = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(prev.out_shape[0], d.out_shape[0], kernel_size=3, padding=1),
                    nn.ReLU(),
                )
                for prev, d in itertools.pairwise(convs)
            ]
        )
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    [
                        attention_module(d.out_shape[0] * (1 if j == 0 else 2), d.out_shape[0])
                        for j, d in enumerate(convs)
                    ]
                )
                for t in tasks
            }
        )
        rep_dim = output_dim(input_shape, backbone)
        self.towers = nn.ModuleDict({t.name: tower(rep_dim, backbone, t) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = prepare_input(x, self.input_shape, self.backbone_spec)
        features = []  # p_j: block j's activation before pooling
        for block in self.blocks:
            p = block.features(h)
            features.append(p)
            h = block.pool(p)
        out = {}
        for name, modules in self.attention.items():
            attended = features[0] * modules[0](features[0])
            for j in range(1, len(self.blocks)):
                carried = self.blocks[j - 1].pool(self.transfer[j - 1](attended))
                mask = modules[j](torch.cat([features[j], carried], dim=1))
                attended = mask * features[j]
            z = self.blocks[-1].pool(attended)
            for layer in self.fc:
                z = layer(z)
            out[name] = self.towers[name](z.flatten(1))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.blocks.parameters(), *self.transfer.parameters(), *self.fc.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.attention[task].parameters(), *self.towers[task].parameters()]
