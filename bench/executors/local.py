"""Local executors: inline and a process pool."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from bench.executors import ExecutorOptions, default_workers, prepare_worker, run_one
from bench.grid import TrialSpec
from bench.store import RunStore

__all__ = ["run_inline", "run_process_pool"]


def run_inline(
    todo: Sequence[TrialSpec],
    store: RunStore,
    options: ExecutorOptions,
    done: Callable[[str, str], None],
) -> None:
    for spec in todo:
        done(*run_one(spec.to_dict(), str(store.root), options.time_limit_s))


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _init_worker(
    threads: int, plugins: tuple[str, ...], gpu_slots: object, gpus: tuple[str, ...]
) -> None:
    # Runs before torch initialises CUDA in this process, so the mask takes effect.
    if gpus:
        slot = gpu_slots.get()  # type: ignore[attr-defined]
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    prepare_worker(threads, plugins)


def run_process_pool(
    todo: Sequence[TrialSpec],
    store: RunStore,
    options: ExecutorOptions,
    done: Callable[[str, str], None],
) -> None:
    """One worker per core by default; on CUDA, ``trials_per_gpu`` workers per visible GPU,
    each seeing only its GPU (CUDA_VISIBLE_DEVICES)."""
    if not todo:
        return
    cores = default_workers()
    uses_cuda = any(s.train.get("device", "cpu").startswith(("cuda", "auto")) for s in todo)
    gpus = tuple(_visible_gpus()) if uses_cuda else ()
    trial_threads = max(s.train.get("threads", 1) for s in todo)
    per_cpu = max(1, cores // trial_threads)
    wanted = options.workers or (len(gpus) * options.trials_per_gpu if gpus else per_cpu)
    n_workers = max(1, min(wanted, len(todo)))
    threads = trial_threads  # each trial sets its own thread count too
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for i in range(n_workers):
        slots.put(i)
    with ProcessPoolExecutor(
        n_workers, mp_context=ctx, initializer=_init_worker,
        initargs=(threads, tuple(options.plugins), slots, gpus),
    ) as pool:
        futures = [
            pool.submit(run_one, s.to_dict(), str(store.root), options.time_limit_s) for s in todo
        ]
        for fut in as_completed(futures):
            done(*fut.result())
