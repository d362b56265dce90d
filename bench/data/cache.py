"""On-disk cache of preprocessed dataset tensors.

Where: ``$MTLBENCH_CACHE`` if set (``MTLBENCH_CACHE=off`` disables the cache), else the
user's cache folder: ``$XDG_CACHE_HOME/mtlbench`` or ``~/.cache/mtlbench`` (Linux and
other Unix), ``~/Library/Caches/mtlbench`` (macOS), ``%LOCALAPPDATA%\\mtlbench\\Cache``
(Windows). One file per entry: ``<root>/<dataset>/<key>.pt``.

Key: sha256 of the canonical JSON of the dataset name, its resolved parameters,
:data:`FORMAT_VERSION`, the sha256 of the loader's source files (so editing the
preprocessing code invalidates old entries), and for every source data file its
resolved path, size and modification time (``st_mtime_ns``). Source files are *not*
content-hashed: reinstalling or touching a package changes the mtime and thus the key,
and stat-ing is instant (hashing census' 156 MB of CSV would cost more than a cache hit).

Format: ``MAGIC`` + the 64 hex digits of the sha256 of the payload + ``\\n`` + the payload,
a ``torch.save`` of a ``dict[str, Tensor]`` read back with ``torch.load(weights_only=True)``.
Entries are written atomically (temporary file in the same folder, flush, fsync,
``os.replace``), so concurrent workers never see a partial file. An entry whose magic,
checksum or payload does not verify is reported with a warning, deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT_VERSION", "MAGIC", "cache_dir", "cache_key", "cache_path", "cached"]

FORMAT_VERSION = 1
MAGIC = b"MTLBENCH-TENSORS-1\n"
_DIGEST_LEN = 64

Arrays = dict[str, torch.Tensor]


def cache_dir() -> Path | None:
    """Root folder of the cache, or None when ``MTLBENCH_CACHE=off``."""
    env = os.environ.get("MTLBENCH_CACHE")
    if env:
        return None if env.strip().lower() in ("off", "0", "none", "false") else Path(env)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "mtlbench" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mtlbench"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtlbench"


@lru_cache(maxsize=64)
def _code_hash(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(
    name: str, params: Mapping[str, Any], sources: Iterable[Path], code: Iterable[Path]
) -> str:
    """The entry key (64 hex digits); see the module docstring."""
    code_hashes = []
    for p in code:
        st = Path(p).stat()
        code_hashes.append(_code_hash(str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    doc = {
        "dataset": name,
        "params": dict(sorted(params.items())),
        "format": FORMAT_VERSION,
        "code": code_hashes,
        "sources": [_stamp(Path(p)) for p in sources],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(
    name: str, params: Mapping[str, Any], sources: Iterable[Path], code: Iterable[Path]
) -> Path | None:
    """Where the entry for these arguments lives (None when the cache is off)."""
    root = cache_dir()
    if root is None:
        return None
    return root / name / f"{cache_key(name, params, sources, code)}.pt"


def _read(path: Path) -> Arrays:
    """The entry's tensors; ValueError if it does not verify."""
    blob = path.read_bytes()
    head = len(MAGIC) + _DIGEST_LEN + 1
    if len(blob) < head or not blob.startswith(MAGIC):
        raise ValueError("bad header")
    digest = blob[len(MAGIC) : len(MAGIC) + _DIGEST_LEN].decode("ascii", "replace")
    payload = memoryview(blob)[head:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError("checksum mismatch")
    try:
        arrays = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # any unpickling failure means a bad entry
        raise ValueError(f"unreadable payload ({type(err).__name__})") from None
    if not isinstance(arrays, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in arrays.items()
    ):
        raise ValueError("payload is not a dict of tensors")
    return arrays


def _write(path: Path, arrays: Arrays) -> None:
    buf = io.BytesIO()
    torch.save(arrays, buf)
    payload = buf.getbuffer()
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}-", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the entry from other users
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(digest)
            f.write(b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable where the platform allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def cached(
    name: str,
    params: Mapping[str, Any],
    sources: Iterable[Path],
    code: Iterable[Path],
    build: Callable[[], Arrays],
) -> Arrays:
    """The tensors ``build()`` returns, from the cache when a valid entry exists.

    ``sources``: the data files the entry is derived from; ``code``: the source files of
    the preprocessing (typically the loader module and ``bench/data/common.py``).
    """
    path = cache_path(name, params, list(sources), list(code))
    if path is not None and path.exists():
        try:
            return _read(path)
        except (OSError, ValueError) as err:
            warnings.warn(
                f"mtlbench: cache entry {path} is corrupt ({err}); rebuilding it",
                RuntimeWarning,
                stacklevel=2,
            )
            path.unlink(missing_ok=True)
    arrays = {k: v.contiguous() for k, v in build().items()}
    if path is not None:
        try:
            _write(path, arrays)
        except OSError as err:
            warnings.warn(
                f"mtlbench: could not write cache entry {path} ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
    return arrays
