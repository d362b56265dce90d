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

from collections.abc import Callable, Sequence

from tqdm import tqdm

from bench.executors import local, ray_executor, submitit_executor  # noqa: F401 (register)
from bench.executors.base import (
    BUSY,
    EXECUTORS,
    Executor,
    SweepOutcome,
    default_workers,
    optional_module,
    prepare_worker,
)
from bench.spec import ExecutorOptions, TrialSpec
from bench.store import RunStore

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorOptions",
    "SweepOutcome",
    "default_workers",
    "optional_module",
    "preflight",
    "prepare_worker",
    "run_specs",
]


def preflight(specs: Sequence[TrialSpec], options: ExecutorOptions) -> None:
    """Check, before anything is written or run, that ``options`` can run ``specs`` here:
    the executor exists and its dependency imports, a Ray address answers, and (local
    executors) every ``train.device`` exists. Raises a one-line ``ConfigError``."""
    EXECUTORS.get(options.kind)(options).preflight(specs)


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
        EXECUTORS.get(options.kind)(options).run(todo, store, done)
    finally:
        bar.close()
    return outcome
