"""Ray executor: each trial is a Ray task (extra: ``pip install -e '.[ray]'``).

Connects to ``ray_address`` when given (an existing cluster), else starts a
local Ray with this machine's cores. ``gpus_per_trial`` (fractional allowed)
is the task's GPU request; Ray then sets CUDA_VISIBLE_DEVICES for each task.
Records travel back to the driver, which claims each trial's lock before
submitting and writes the record when it arrives.
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
    check_ray_address,
    default_workers,
    execute_remote,
    optional_module,
)
from bench.spec import ExecutorOptions, TrialSpec
from bench.store import RunStore

__all__ = ["RayExecutor", "run_ray"]


def run_ray(
    todo: Sequence[TrialSpec],
    store: RunStore,
    options: ExecutorOptions,
    done: Callable[[str, str], None],
) -> None:
    ray = optional_module("ray", "ray")
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        if options.ray_address:
            ray.init(address=options.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=options.workers or default_workers(), include_dashboard=False,
                     log_to_driver=False)
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = max(s.train.threads for s in todo)
        remote = ray.remote(num_cpus=min(threads, cpus), num_gpus=options.gpus_per_trial)(
            execute_remote
        )
        with contextlib.ExitStack() as locks:
            pending: dict[Any, str] = {}
            for spec in todo:
                if not locks.enter_context(store.claim(spec.id)) or store.status(spec.id) == "ok":
                    done(spec.id, BUSY)
                    continue
                ref = remote.remote(spec.to_message(), options.time_limit_s,
                                    tuple(options.plugins), threads)
                pending[ref] = spec.id
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        pending.pop(ref)
                        record = ray.get(ref)
                        store.write(record)
                        done(record.id, record.status)
            except BaseException:  # interrupted: stop what still runs on the cluster
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
    finally:
        if started_here:
            ray.shutdown()


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks on the cluster at ``ray_address``, or on a local Ray started on the spot
    (extra ``mtlbench[ray]``)."""

    requires = "ray"

    def preflight(self, specs: Sequence[TrialSpec]) -> None:
        super().preflight(specs)
        if self.options.ray_address:
            check_ray_address(self.options.ray_address)

    def run(self, todo: Sequence[TrialSpec], store: RunStore, done: Done) -> None:
        run_ray(todo, store, self.options, done)
