"""MultiDigits: two overlapping 8x8 digits per image; classify the left and the right one.

A small, offline stand-in for Multi-MNIST (S. Sabour, N. Frosst, G. E. Hinton,
"Dynamic Routing Between Capsules", NeurIPS 2017; used for multi-task learning by
X. Lin, H.-L. Zhen, Z. Li, Q. Zhang, S. Kwong, "Pareto Multi-Task Learning",
NeurIPS 2019), built from scikit-learn's ``load_digits()`` -- the UCI "Optical
Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998):
1,797 8x8 images with pixel values 0..16, packaged with scikit-learn.

Each sample is an ``8 x (8 + shift)`` canvas: the left digit occupies columns
``[0, 8)``, the right digit columns ``[shift, shift + 8)``, and overlapping pixels
take the pixel-wise maximum. Pixels are scaled to ``[0, 1]``.

No leakage: the source images are first shuffled (``split_seed``) and split into
disjoint train/val/test pools (60/20/20 %), and pairs are then drawn uniformly,
with replacement, within each pool (see :func:`source_pools`).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from sklearn.datasets import load_digits

from bench.data import DATASETS, MAX_SAMPLES, MTLDataset, Split
from bench.tasks import Task

__all__ = ["multi_digits", "overlay", "source_pools"]

_FRACTIONS = (0.6, 0.2)  # train, val; test gets the rest


def source_pools(split_seed: int, num_images: int = 1797) -> dict[str, np.ndarray]:
    """Disjoint indices into ``load_digits()`` for the train/val/test pools."""
    order = np.random.default_rng(split_seed).permutation(num_images)
    n_train = round(_FRACTIONS[0] * num_images)
    n_val = round(_FRACTIONS[1] * num_images)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def overlay(left: np.ndarray, right: np.ndarray, shift: int) -> np.ndarray:
    """Overlay ``(N, 8, 8)`` images on ``(N, 8, 8 + shift)`` canvases (pixel-wise max)."""
    n, h, w = left.shape
    canvas = np.zeros((n, h, w + shift), dtype=left.dtype)
    canvas[:, :, :w] = left
    canvas[:, :, shift : shift + w] = np.maximum(canvas[:, :, shift : shift + w], right)
    return canvas


@DATASETS.register("multi_digits")
def multi_digits(
    *,
    num_train: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 6000,
    num_val: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1000,
    num_test: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1000,
    shift: Annotated[int, Field(ge=0, le=8)] = 4,
    split_seed: Annotated[int, Field(ge=0)] = 0,
) -> MTLDataset:
    """Two overlapping sklearn digits per image; tasks 'left' and 'right' (10 classes each)."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    pools = source_pools(split_seed, len(images))
    # A separate stream for pair sampling, so pools do not depend on the split sizes.
    rng = np.random.default_rng([split_seed, 1])

    def make(pool: np.ndarray, n: int) -> Split:
        left = rng.choice(pool, size=n, replace=True)
        right = rng.choice(pool, size=n, replace=True)
        x = overlay(images[left], images[right], shift)[:, None]  # (n, 1, 8, 8 + shift)
        return Split(
            torch.from_numpy(np.ascontiguousarray(x)),
            {"left": torch.from_numpy(labels[left]), "right": torch.from_numpy(labels[right])},
        )

    return MTLDataset(
        name="multi_digits",
        tasks=(Task("left", "multiclass", 10), Task("right", "multiclass", 10)),
        train=make(pools["train"], num_train),
        val=make(pools["val"], num_val),
        test=make(pools["test"], num_test),
    )
