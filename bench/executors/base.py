"""The executor contract and what every executor shares.

An :class:`Executor` runs the trials it is given, claims each with the store's lock
and stores one record per trial; ``done(trial_id, status)`` reports each as it ends.
Executors are components like the others: registered by name in :data:`EXECUTORS`
(``process``, ``inline``, ``ray``, ``submitit``; a plugin may add its own).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import torch

from bench.environment import resolve_device
from bench.errors import ConfigError
from bench.plugins import import_plugins, load_entry_points
from bench.records import TrialRecord
from bench.registry import Registry
from bench.spec import ExecutorOptions, TrialSpec
from bench.store import RunStore
from bench.trial import execute

__all__ = [
    "BUSY",
    "EXECUTORS",
    "Done",
    "Executor",
    "SweepOutcome",
    "check_ray_address",
    "default_workers",
    "execute_remote",
    "optional_module",
    "prepare_worker",
    "run_one",
]

BUSY = "busy"  # claimed by another process running the same run directory
CONNECT_TIMEOUT_S = 5.0  # how long a Ray cluster address may take to accept a connection
RAY_PORTS = {"ray": 10001, "": 6379}  # Ray client (ray://) and GCS default ports
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113, section 3.4
HTTP2_SETTINGS = 0x4  # frame type of a server's first frame

#: Called with (trial id, status) as each trial ends (status ``BUSY``: run elsewhere).
Done = Callable[[str, str], None]


class Executor(ABC):
    """Runs trial specs and stores one record per trial.

    ``local``: trials run on this machine, so its devices are checked before anything
    runs. ``requires``: the optional dependency (installed with the extra of the same
    name) imported by :meth:`preflight`."""

    local: ClassVar[bool] = False
    requires: ClassVar[str | None] = None

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    def preflight(self, specs: Sequence[TrialSpec]) -> None:
        """Refuse, before anything is written or run, what this executor cannot run
        here (a one-line ConfigError)."""
        if self.requires is not None:
            optional_module(self.requires, self.options.kind)
        if self.local:
            _check_devices(specs)

    @abstractmethod
    def run(self, todo: Sequence[TrialSpec], store: RunStore, done: Done) -> None:
        """Run ``todo`` (trials without a record) into ``store``."""


EXECUTORS: Registry[Any] = Registry("executor")


@dataclass
class SweepOutcome:
    """What a call to :func:`run_specs` did."""

    ran: dict[str, str]  # trial id -> status
    skipped: int
    busy: int = 0
    # Failed records found and not rerun (no ``retry_failed``): trial id -> status.
    earlier_failed: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return {k: v for k, v in self.ran.items() if v != "ok"}


def prepare_worker(threads: int, plugins: Sequence[str]) -> None:
    """Set up a worker process before it runs trials: its intra-op thread count, and the
    user's components (entry points and the sweep's plugins) registered as in the parent."""
    torch.set_num_threads(threads)
    load_entry_points()
    import_plugins(tuple(plugins))


def optional_module(name: str, executor: str) -> Any:
    """Import the optional dependency ``name`` of ``executor``, or a ConfigError naming
    the install command."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"executor '{executor}' needs {name}: .venv/bin/pip install -e '.[{executor}]'"
        ) from None


def _check_devices(specs: Sequence[TrialSpec]) -> None:
    """Refuse a ``train.device`` this machine lacks (local executors run trials here)."""
    for name in sorted({s.train.device for s in specs}):
        try:
            device = resolve_device(name)
            if device.type == "cuda" and device.index >= torch.cuda.device_count():
                raise RuntimeError(f"only {torch.cuda.device_count()} CUDA device(s) visible")
        except (RuntimeError, AssertionError) as err:  # torch raises both
            raise ConfigError(
                f"train.device = '{name}': {err}; use 'cpu' or 'auto', or an executor that "
                "runs trials elsewhere (ray, submitit)"
            ) from None


def check_ray_address(address: str) -> None:
    """Fail fast when nothing at a Ray address speaks Ray's protocol (``ray.init`` would
    wait for minutes, or hang on a server of another kind)."""
    if address in ("auto", "local"):
        return
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port or RAY_PORTS.get(scheme)
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ConfigError(f"ray address '{address}': expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
            reply = _http2_greeting(conn)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"ray address '{address}': nothing answers at {host}:{port} ({reason}); start the "
            "cluster (ray start --head) or leave the address out for a local Ray"
        ) from None
    if len(reply) < 4 or reply[3] != HTTP2_SETTINGS:
        what = "says nothing" if not reply else f"answers {reply[:16]!r}"
        raise ConfigError(
            f"ray address '{address}': {host}:{port} {what}, not Ray's gRPC (HTTP/2) greeting; "
            "is it the head node's GCS port (ray start --head prints it) or ray://HOST:10001?"
        )


def _http2_greeting(conn: socket.socket) -> bytes:
    """The first frame header a server sends after an HTTP/2 client preface (Ray's GCS
    and client server speak gRPC, whose first frame is SETTINGS); b"" when it says
    nothing within ``CONNECT_TIMEOUT_S``."""
    conn.settimeout(CONNECT_TIMEOUT_S)
    conn.sendall(HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # + empty SETTINGS
    reply = b""
    with contextlib.suppress(OSError):  # a timeout or a reset: not Ray
        while len(reply) < 9:
            chunk = conn.recv(9 - len(reply))
            if not chunk:
                break
            reply += chunk
    return reply


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_one(spec_dict: dict[str, Any], run_dir: str, time_limit_s: float | None) -> tuple[str, str]:
    """Claim, run and store one trial (in whatever process calls it)."""
    spec = TrialSpec.from_message(spec_dict)
    store = RunStore(run_dir)
    with store.claim(spec.id) as mine:
        if not mine:
            return spec.id, BUSY
        if store.status(spec.id) == "ok":  # finished by another sweep meanwhile
            return spec.id, BUSY
        record = execute(spec, time_limit_s=time_limit_s)
        store.write(record)
    return record.id, record.status




def execute_remote(
    message: dict[str, Any], time_limit_s: float | None, plugins: tuple[str, ...], threads: int
) -> TrialRecord:
    """Run one trial in a remote worker (Ray task, SLURM job) and return its record; the
    driver stores it."""
    prepare_worker(threads, plugins)
    return execute(TrialSpec.from_message(message), time_limit_s=time_limit_s)
