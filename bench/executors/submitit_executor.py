"""submitit executor: SLURM job arrays (extra: ``pip install -e '.[submitit]'``).

``submitit`` options in the sweep (a table) go to ``update_parameters``
(e.g. ``slurm_partition``, ``timeout_min``, ``gpus_per_node``); ``cluster``
picks submitit's backend: ``slurm`` on a cluster, ``local`` to run the array
as local processes (what the tests use), or auto-detection when absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from bench.executors.base import (
    BUSY,
    EXECUTORS,
    Done,
    Executor,
    execute_remote,
    optional_module,
)
from bench.spec import ExecutorOptions, TrialSpec
from bench.store import RunStore
from bench.trial import failure_record

__all__ = ["run_submitit"]


def run_submitit(
    todo: Sequence[TrialSpec],
    store: RunStore,
    options: ExecutorOptions,
    done: Callable[[str, str], None],
) -> None:
    submitit = optional_module("submitit", "submitit")
    if not todo:
        return
    params: dict[str, Any] = dict(options.submitit)
    cluster = params.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=store.root / "submitit", cluster=cluster)
    if params:
        executor.update_parameters(**params)
    with contextlib.ExitStack() as locks:
        mine: list[TrialSpec] = []
        for spec in todo:
            if not locks.enter_context(store.claim(spec.id)) or store.status(spec.id) == "ok":
                done(spec.id, BUSY)
            else:
                mine.append(spec)
        if not mine:
            return
        n = len(mine)
        jobs = executor.map_array(
            execute_remote,
            [s.to_message() for s in mine],
            [options.time_limit_s] * n,
            [tuple(options.plugins)] * n,
            [1] * n,
        )
        try:
            for job, spec in zip(jobs, mine, strict=True):
                try:
                    record = job.result()
                except Exception as err:  # the job itself died (killed, node failure)
                    record = failure_record(spec, "error", f"submitit job failed: {err}")
                store.write(record)
                done(record.id, record.status)
        except BaseException:  # interrupted: cancel the jobs that have not finished
            for job in jobs:
                with contextlib.suppress(Exception):
                    if not job.done():
                        job.cancel(check=False)
            raise


@EXECUTORS.register("submitit")
class SubmititExecutor(Executor):
    """SLURM job arrays through submitit (extra ``mtlbench[submitit]``)."""

    requires = "submitit"

    def run(self, todo: Sequence[TrialSpec], store: RunStore, done: Done) -> None:
        run_submitit(todo, store, self.options, done)
