"""Executors: run trial specs, each worker writing its own records to the store.

``inline`` runs trials one after the other in this process (for debugging).
``process`` runs them in a pool of worker processes, one per core by default,
each limited to its share of the cores so workers don't oversubscribe.
Workers write records themselves, so a crash of the parent loses nothing that
finished.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch
from tqdm import tqdm

from bench.grid import TrialSpec
from bench.store import RunStore

__all__ = ["SweepOutcome", "run_specs"]


@dataclass
class SweepOutcome:
    """What a call to :func:`run_specs` did."""

    ran: dict[str, str]  # trial id -> status
    skipped: int

    @property
    def failed(self) -> dict[str, str]:
        return {k: v for k, v in self.ran.items() if v != "ok"}


def _run_and_store(spec_dict: dict, run_dir: str) -> tuple[str, str]:
    from bench.trial import execute

    record = execute(TrialSpec.from_dict(spec_dict))
    RunStore(run_dir).write(record)
    return record["id"], record["status"]


def _init_worker(threads: int, plugins: tuple[str, ...]) -> None:
    from bench.plugins import import_plugins, load_entry_points

    torch.set_num_threads(threads)
    load_entry_points()
    import_plugins(plugins)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def run_specs(
    specs: Sequence[TrialSpec],
    store: RunStore,
    executor: str = "process",
    workers: int | None = None,
    progress: bool = True,
    plugins: Sequence[str] = (),
    on_done: Callable[[str, str], None] | None = None,
) -> SweepOutcome:
    """Run every spec whose record is missing from ``store``."""
    todo = [s for s in specs if not store.has(s.id)]
    outcome = SweepOutcome(ran={}, skipped=len(specs) - len(todo))
    bar = tqdm(total=len(todo), desc="trials", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def done(trial_id: str, status: str) -> None:
        outcome.ran[trial_id] = status
        bar.update(1)
        bar.set_postfix(failed=len(outcome.failed), refresh=False)
        if on_done is not None:
            on_done(trial_id, status)

    try:
        cores = default_workers()
        n_workers = min(workers or cores, max(len(todo), 1))
        if executor == "inline" or (n_workers == 1 and executor != "process"):
            for spec in todo:
                done(*_run_and_store(spec.to_dict(), str(store.root)))
        else:
            threads = max(1, cores // n_workers)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                n_workers, mp_context=ctx, initializer=_init_worker,
                initargs=(threads, tuple(plugins)),
            ) as pool:
                futures = [
                    pool.submit(_run_and_store, s.to_dict(), str(store.root)) for s in todo
                ]
                for fut in as_completed(futures):
                    done(*fut.result())
    finally:
        bar.close()
    return outcome
