"""Executors: run trial specs and store one record per trial.

- ``inline``: one after the other in this process (for debugging);
- ``process``: a local pool of worker processes, one per core by default, each
  limited to its share of the cores (and, on CUDA, to its own GPU);
- ``ray``: Ray tasks on an existing cluster (``ray_address``) or a local Ray
  started on the spot (extra ``mtlbench[ray]``);
- ``submitit``: SLURM job arrays through submitit (extra ``mtlbench[submitit]``).

Whatever the executor, a trial's record is the same: same id, same metrics on
CPU. Local workers write their records themselves, so a crash of the parent
loses nothing that finished; remote executors return records to the driver,
which writes them as they arrive. Every trial is claimed with a lock first, so
two sweeps on one run directory never run the same trial twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError

if TYPE_CHECKING:  # bench.config imports this module: keep the grid import lazy
    from bench.spec import TrialSpec
    from bench.store import RunStore

__all__ = [
    "ExecutorOptions",
    "SweepOutcome",
    "default_workers",
    "optional_module",
    "preflight",
    "prepare_worker",
    "run_specs",
]

BUSY = "busy"  # claimed by another process running the same run directory
KINDS = ("inline", "process", "ray", "submitit")
LOCAL = ("inline", "process")  # trials run on this machine
CONNECT_TIMEOUT_S = 5.0  # how long a Ray cluster address may take to accept a connection
RAY_PORTS = {"ray": 10001, "": 6379}  # Ray client (ray://) and GCS default ports


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run trials; none of this changes a trial's id or result."""

    kind: str = "process"
    workers: int | None = None
    time_limit_s: float | None = None
    plugins: tuple[str, ...] = ()
    ray_address: str | None = None
    gpus_per_trial: float = 0.0
    trials_per_gpu: int = 1
    submitit: dict[str, Any] = field(default_factory=dict)


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
    import torch

    from bench.plugins import import_plugins, load_entry_points

    torch.set_num_threads(threads)
    load_entry_points()
    import_plugins(tuple(plugins))


def optional_module(name: str, executor: str) -> Any:
    """Import the optional dependency ``name`` of ``executor``, or a ConfigError naming
    the install command."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"executor '{executor}' needs {name}: .venv/bin/pip install -e '.[{executor}]'"
        ) from None


def _check_devices(specs: Sequence[TrialSpec]) -> None:
    """Refuse a ``train.device`` this machine lacks (local executors run trials here)."""
    import torch

    from bench.environment import resolve_device

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


def _check_ray_address(address: str) -> None:
    """Fail fast when nothing listens at a Ray address (``ray.init`` would wait for minutes)."""
    import socket
    from urllib.parse import urlsplit

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
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"ray address '{address}': nothing answers at {host}:{port} ({reason}); start the "
            "cluster (ray start --head) or leave the address out for a local Ray"
        ) from None


def preflight(specs: Sequence[TrialSpec], options: ExecutorOptions) -> None:
    """Check, before anything is written or run, that ``options`` can run ``specs`` here:
    the executor exists and its dependency imports, a Ray address answers, and (local
    executors) every ``train.device`` exists. Raises a one-line ``ConfigError``."""
    if options.kind not in KINDS:
        raise ConfigError(f"unknown executor '{options.kind}'; known: {', '.join(KINDS)}")
    if options.kind in ("ray", "submitit"):
        optional_module(options.kind, options.kind)
    if options.kind == "ray" and options.ray_address:
        _check_ray_address(options.ray_address)
    if options.kind in LOCAL:
        _check_devices(specs)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_one(spec_dict: dict[str, Any], run_dir: str, time_limit_s: float | None) -> tuple[str, str]:
    """Claim, run and store one trial (in whatever process calls it)."""
    from bench.spec import TrialSpec
    from bench.store import RunStore
    from bench.trial import execute

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


def run_specs(
    specs: Sequence[TrialSpec],
    store: RunStore,
    options: ExecutorOptions | None = None,
    *,
    retry_failed: bool = False,
    progress: bool = True,
    on_done: Callable[[str, str], None] | None = None,
) -> SweepOutcome:
    """Run every spec without a record in ``store`` (and failed ones with ``retry_failed``)."""
    from tqdm import tqdm

    options = options or ExecutorOptions()
    preflight(specs, options)

    earlier_failed: dict[str, str] = {}

    def pending(spec: TrialSpec) -> bool:
        status = store.status(spec.id)
        if status not in (None, "ok") and not retry_failed:
            earlier_failed[spec.id] = status
        # A failed record is taken under the trial's lock, so a concurrent sweep that
        # also retries skips it (each failed trial reruns once).
        return status is None or (retry_failed and status != "ok"
                                  and store.take_for_retry(spec.id))

    todo = [s for s in specs if pending(s)]
    outcome = SweepOutcome(ran={}, skipped=len(specs) - len(todo),
                           earlier_failed=earlier_failed)
    bar = tqdm(total=len(todo), desc="trials", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def done(trial_id: str, status: str) -> None:
        if status == BUSY:
            outcome.busy += 1
        else:
            outcome.ran[trial_id] = status
        bar.update(1)
        bar.set_postfix(failed=len(outcome.failed), refresh=False)
        if on_done is not None:
            on_done(trial_id, status)

    try:
        if options.kind == "inline":
            from bench.executors.local import run_inline

            run_inline(todo, store, options, done)
        elif options.kind == "process":
            from bench.executors.local import run_process_pool

            run_process_pool(todo, store, options, done)
        elif options.kind == "ray":
            from bench.executors.ray_executor import run_ray

            run_ray(todo, store, options, done)
        else:
            from bench.executors.submitit_executor import run_submitit

            run_submitit(todo, store, options, done)
    finally:
        bar.close()
    return outcome
