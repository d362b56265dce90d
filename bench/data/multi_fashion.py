"""Multi-Fashion: two overlaid Fashion-MNIST items; classify the top-left and bottom-right one.

Source images: Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel
Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017):
60,000 train + 10,000 test 28x28 grey images in 10 classes, read from the IDX files of
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``), or
from the folder named by ``$MTLBENCH_FASHION_MNIST`` (the same four ``.gz`` files).

Multi-Fashion is the construction of X. Lin et al., "Pareto Multi-Task Learning",
NeurIPS 2019, which applies Sener & Koltun's
Multi-MNIST recipe to Fashion-MNIST: left item at the top-left, right item at the
bottom-right of a 36x36 canvas (offset 6 pixels), pixel-wise maximum where they overlap,
nearest-neighbour resize to 28x28 (:func:`bench.data.common.overlay_pairs`). Inputs are
float32 ``(N, 1, 28, 28)`` in ``[0, 1]``; tasks ``left`` and ``right`` (10 classes each).

No leakage: source pools are disjoint: the official test images (10,000) form the test
pool; the official train images are split by ``split_seed`` into a val pool of 10,000
and a train pool of 50,000. Pairs are drawn within a pool, one per pool image by default
(each image is the left item once, with a random other image of the same pool on the
right); ``num_train``/``num_val``/``num_test`` choose other sizes.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from bench.data import DATASETS, MAX_SAMPLES, MTLDataset
from bench.data.cache import cached
from bench.data.common import (
    COMMON_FILE,
    FASHION_FILES,
    DataSource,
    DebianPackage,
    assemble_images,
    carve,
    fashion_mnist_dir,
    fashion_mnist_folder,
    make_dataset,
)
from bench.data.multi_mnist import TASKS, build_pairs
from bench.errors import ConfigError

__all__ = ["SOURCE", "multi_fashion", "read_idx", "read_images", "source_pools"]

# The data files this loader reads and what installs them (see bench.data.common).
SOURCE = DataSource(
    debian=DebianPackage(
        "dataset-fashion-mnist",
        locate=fashion_mnist_folder,
        instead=f"set MTLBENCH_FASHION_MNIST to a folder holding {', '.join(FASHION_FILES)}",
    )
)

_NUM_VAL = 10000


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (gzip-compressed or not) as a numpy uint8 array of its shape."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ConfigError(f"dataset 'multi_fashion': {path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_images() -> tuple[np.ndarray, np.ndarray, int]:
    """All 70,000 images ``(N, 28, 28)``, labels (int64), and the official train count."""
    folder = fashion_mnist_dir()
    train_x, train_y, test_x, test_y = (read_idx(folder / f) for f in FASHION_FILES)
    images = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    return images, labels, len(train_x)


def source_pools(n_train_file: int, n_test_file: int, split_seed: int) -> dict[str, np.ndarray]:
    """Disjoint pools: 50,000 train / 10,000 val (from the official train), official test."""
    train, val = carve(np.arange(n_train_file), _NUM_VAL / n_train_file, split_seed)
    return {
        "train": train,
        "val": val,
        "test": np.arange(n_train_file, n_train_file + n_test_file),
    }


@DATASETS.register("multi_fashion")
def multi_fashion(
    *,
    num_train: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None,
    num_val: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None,
    num_test: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None,
    split_seed: Annotated[int, Field(ge=0)] = 0,
) -> MTLDataset:
    """Multi-Fashion (Lin et al. 2019): two overlaid Fashion-MNIST items, tasks 'left', 'right'."""
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    params = {**{f"num_{k}": v for k, v in sizes.items()}, "split_seed": split_seed}
    folder = fashion_mnist_dir()

    def build() -> dict[str, torch.Tensor]:
        images, labels, n_train_file = read_images()
        pools = source_pools(n_train_file, len(images) - n_train_file, split_seed)
        return build_pairs(images, labels, pools, sizes, split_seed)

    arrays = cached(
        "multi_fashion",
        params,
        sources=[folder / f for f in FASHION_FILES],
        code=[Path(__file__), COMMON_FILE, Path(__file__).with_name("multi_mnist.py")],
        build=build,
    )
    return make_dataset("multi_fashion", TASKS, assemble_images(arrays, TASKS))
