"""Local executors: inline, and a supervised pool of worker processes.

The pool is a few ``spawn`` processes, each fed one trial at a time over its own pipe.
The parent watches every worker's pipe and process sentinel, so:

- a worker that dies mid-trial (out-of-memory killer, segfault, ``kill -9``) costs
  that trial only: the parent records it (``oom`` when the kernel's OOM-kill counter
  moved and the signal is SIGKILL, else ``error``, naming the signal) and starts a
  fresh worker for the remaining trials;
- an interruption of the parent (Ctrl-C, or SIGTERM under ``mtlbench run``) starts no
  further trial and terminates the running ones (their trials stay without a record,
  so a rerun resumes them);
- workers ignore SIGINT (the parent decides) and die with their parent: Linux's
  ``PR_SET_PDEATHSIG`` plus a parent-pid watchdog thread elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from bench.errors import SweepError
from bench.executors.base import (
    BUSY,
    EXECUTORS,
    Done,
    Executor,
    default_workers,
    prepare_worker,
    run_one,
)
from bench.spec import ExecutorOptions, TrialSpec
from bench.store import RunStore
from bench.trial import failure_record

__all__ = ["InlineExecutor", "ProcessExecutor", "run_inline", "run_process_pool"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_S = 1.0  # how often a worker checks that its parent is alive (fallback)
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
# A trial checks its time limit at step boundaries; one stuck before the next boundary
# (a hung loader or solver) is killed this long after its limit (at least KILL_AFTER_S).
KILL_AFTER_FRACTION = 0.1
KILL_AFTER_S = 10.0
# cgroup files whose "oom_kill N" line counts the kernel's OOM kills (v2, then v1).
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def run_inline(
    todo: Sequence[TrialSpec],
    store: RunStore,
    options: ExecutorOptions,
    done: Callable[[str, str], None],
) -> None:
    for spec in todo:
        done(*run_one(spec.to_message(), str(store.root), options.time_limit_s))


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _die_with_parent(parent_pid: int) -> None:
    """Make this process exit when ``parent_pid`` dies, even from SIGKILL."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watchdog() -> None:  # elsewhere (and if prctl failed): poll the parent pid
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(WATCHDOG_S)

    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def _worker_main(
    conn: Connection, parent_pid: int, slot: int, gpus: tuple[str, ...], threads: int,
    plugins: tuple[str, ...],
) -> None:
    """A worker: set up, say ``ready``, then run each trial it is sent until ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group
    _die_with_parent(parent_pid)
    if gpus:  # before torch initialises CUDA in this process, so the mask takes effect
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    try:
        prepare_worker(threads, plugins)
    except BaseException as err:  # SystemExit from a plugin included
        conn.send(("fatal", f"worker set-up failed: {type(err).__name__}: {err}"))
        return
    conn.send(("ready",))
    while (task := conn.recv()) is not None:
        try:
            conn.send(("done", *run_one(*task)))
        except Exception as err:  # the store or the spec, not the trial: stop the sweep
            conn.send(("fatal", f"{type(err).__name__}: {err}"))
            return


def _oom_kills() -> int | None:
    """The kernel's count of OOM kills in this process's memory cgroup, if readable."""
    for path in OOM_COUNTERS:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def crash_status(exitcode: int | None, oom_kills_before: int | None) -> tuple[str, str]:
    """Status and message of a trial whose worker died with ``exitcode``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = f"killed by {name} (signal {-exitcode})"
    else:
        name, cause = "", f"exited with code {exitcode}"
    message = f"worker process died while running this trial: {cause}"
    if name == "SIGKILL":
        after = _oom_kills()
        if after is not None and oom_kills_before is not None and after > oom_kills_before:
            return "oom", f"{message}; the kernel's out-of-memory killer acted"
        return "error", f"{message} (the out-of-memory killer or a kill -9)"
    return "error", message


@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    slot: int
    ready: bool = False
    task: TrialSpec | None = None
    kill_at: float | None = None  # time.monotonic() past which a stuck trial is killed


class _Pool:
    """Spawned workers, each running one trial at a time, replaced when they die."""

    def __init__(self, size: int, threads: int, plugins: tuple[str, ...],
                 gpus: tuple[str, ...]) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.setup = (gpus, threads, plugins)
        self.workers: list[_Worker] = []
        for slot in range(size):
            self.start(slot)

    def start(self, slot: int) -> None:
        parent_end, child_end = self.ctx.Pipe()
        process = self.ctx.Process(
            target=_worker_main, args=(child_end, os.getpid(), slot, *self.setup),
            name=f"mtlbench-worker-{slot}", daemon=True,
        )
        process.start()
        child_end.close()
        self.workers.append(_Worker(process, parent_end, slot))

    def remove(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        worker.conn.close()
        worker.process.join(STOP_GRACE_S)

    def close(self, *, graceful: bool) -> None:
        """Stop every worker: ask idle ones to exit when ``graceful``, terminate the rest
        (a running trial is abandoned: it keeps no record)."""
        for w in self.workers:
            if graceful and w.ready and w.task is None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            else:
                with contextlib.suppress(OSError, ValueError):
                    w.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self.workers.clear()


def _record_crash(store: RunStore, spec: TrialSpec, exitcode: int | None,
                  oom_kills: int | None, killed_for: str | None = None) -> str:
    """Write the record of a trial whose worker died (``killed_for``: the parent killed
    it past its time limit); returns its status (or BUSY)."""
    with store.claim(spec.id) as mine:  # the dead worker's lock went with it
        status = store.status(spec.id)
        if status is not None:  # written just before the worker died
            return status
        if not mine:
            return BUSY  # another sweep on this directory took the trial over
        if killed_for is not None:
            status, message = "timeout", killed_for
        else:
            status, message = crash_status(exitcode, oom_kills)
        store.write(failure_record(spec, status, message, worker_exitcode=exitcode))
    return status


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
    uses_cuda = any(s.train.device.startswith(("cuda", "auto")) for s in todo)
    gpus = tuple(_visible_gpus()) if uses_cuda else ()
    trial_threads = max(s.train.threads for s in todo)
    per_cpu = max(1, cores // trial_threads)
    wanted = options.workers or (len(gpus) * options.trials_per_gpu if gpus else per_cpu)
    n_workers = max(1, min(wanted, len(todo)))
    queue = deque(todo)
    oom_kills = _oom_kills()
    run_dir = str(store.root)
    pool = _Pool(n_workers, trial_threads, tuple(options.plugins), gpus)
    graceful = False
    try:
        while queue or any(w.task is not None for w in pool.workers):
            for w in pool.workers:
                if w.ready and w.task is None and queue:
                    spec = queue.popleft()
                    try:
                        w.conn.send((spec.to_message(), run_dir, options.time_limit_s))
                    except OSError:  # it just died: its sentinel tells, the trial waits
                        queue.appendleft(spec)
                        continue
                    w.task = spec
                    w.kill_at = _kill_time(options.time_limit_s)
            by_handle: dict[Any, _Worker] = {}
            for w in pool.workers:
                by_handle[w.conn] = by_handle[w.process.sentinel] = w
            kill_times = [w.kill_at for w in pool.workers if w.task is not None and w.kill_at]
            timeout = max(0.0, min(kill_times) - time.monotonic()) if kill_times else None
            ready = wait(list(by_handle), timeout)
            stuck = {id(w): w for w in pool.workers if w.task is not None and w.kill_at
                     and time.monotonic() >= w.kill_at}
            for w in stuck.values():  # past its limit and no step boundary reached: kill
                with contextlib.suppress(OSError, ValueError):
                    w.process.kill()
                w.process.join(STOP_GRACE_S)
            for w in {**{id(by_handle[h]): by_handle[h] for h in ready}, **stuck}.values():
                dead = _handle(w, done)
                if dead:
                    # Its pipe can close before the kernel reaps it: wait for the exit code.
                    w.process.join(STOP_GRACE_S)
                    if w.task is not None:
                        killed_for = (
                            f"time limit of {options.time_limit_s:g} s reached without a step "
                            "boundary (the trial was stuck); its worker was killed"
                            if id(w) in stuck else None)
                        status = _record_crash(store, w.task, w.process.exitcode, oom_kills,
                                               killed_for)
                        oom_kills = _oom_kills()
                        done(w.task.id, status)
                    elif not w.ready:
                        raise SweepError(
                            f"a worker process died while starting (exit code "
                            f"{w.process.exitcode}); see its output above"
                        )
                    pool.remove(w)
                    if queue:  # a fresh worker in the dead one's slot (and GPU)
                        pool.start(w.slot)
        graceful = True
    finally:
        pool.close(graceful=graceful)


def _kill_time(time_limit_s: float | None) -> float | None:
    """When the parent kills a trial that started now and ignores its time limit."""
    if time_limit_s is None:
        return None
    grace = max(KILL_AFTER_S, KILL_AFTER_FRACTION * time_limit_s)
    return time.monotonic() + time_limit_s + grace


def _handle(w: _Worker, done: Callable[[str, str], None]) -> bool:
    """Read what worker ``w`` sent; True when it has died (its pipe closed)."""
    try:
        while w.conn.poll():
            message = w.conn.recv()
            if message[0] == "ready":
                w.ready = True
            elif message[0] == "done":
                w.task = None
                w.kill_at = None
                done(message[1], message[2])
            else:  # "fatal": the worker cannot go on, and neither can the others
                raise SweepError(message[1])
    except (EOFError, OSError):
        return True
    return not w.process.is_alive()


@EXECUTORS.register("inline")
class InlineExecutor(Executor):
    """One trial after the other in this process (for debugging)."""

    local = True

    def run(self, todo: Sequence[TrialSpec], store: RunStore, done: Done) -> None:
        run_inline(todo, store, self.options, done)


@EXECUTORS.register("process")
class ProcessExecutor(Executor):
    """A supervised pool of spawned worker processes, one per core by default (see the
    module docstring)."""

    local = True

    def run(self, todo: Sequence[TrialSpec], store: RunStore, done: Done) -> None:
        run_process_pool(todo, store, self.options, done)
