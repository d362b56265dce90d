"""Phase timers, peak-memory probes, robust summaries and machine information.

A timer receives the phase boundaries of one training step from
:func:`bench.engine.train_step` (``mark(name)`` closes the phase ``name``)
between ``start()`` and ``stop()``; ``stop()`` returns a :class:`StepTiming`
with the seconds spent in each phase and in the whole step (``start`` to
``stop``, so it also holds whatever ran after the last mark).

- :class:`CpuTimer`: ``time.perf_counter`` at every boundary (CPU devices).
- :class:`CudaTimer`: a ``torch.cuda.Event`` recorded on the current stream at
  every boundary and ONE synchronisation per step (on the step's last event),
  so timing never adds a host sync inside the step. Events are pooled.
- :class:`SyncTimer`: ``perf_counter`` after synchronising the device at every
  boundary (MPS); per-phase numbers are right, but each boundary is a sync.

Memory: :class:`MemoryProbe` reports the peak over the steps it watched. On
CUDA it is ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats`` (per step); elsewhere it is the process
high-water resident set size from ``resource.getrusage`` (cannot be reset: it is
the process's peak so far, an upper bound for the cell).

Trial timings (:func:`trial_timing`): a trial's first epoch is its warm-up (first-call
kernel selection, allocator growth, lazy initialisation) and its set-up (data, model,
optimizer; a worker's first trial also pays the process's one-off imports, about 3 s for
``torch._dynamo`` on the first optimizer) comes before it. Both are recorded
(``setup_s``, ``warmup_s``) and left out of ``step_s`` and ``trial_s``; ``step_spread``
is the IQR / median of the steady epochs' step times, and a spread above
``SPREAD_FLAG`` marks a timing as noisy.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from bench.environment import cpu_model, git_commit

__all__ = [
    "PHASES",
    "SPREAD_FLAG",
    "CpuTimer",
    "CudaTimer",
    "MemoryProbe",
    "PhaseTimer",
    "StepTiming",
    "SyncTimer",
    "ThreadTimeTimer",
    "machine_info",
    "make_timer",
    "relative_spread",
    "summarize",
    "synchronize",
    "trial_timing",
]

#: Phases of ``bench.engine.train_step``, in order. Records always hold all of them
#: (0 s where a strategy has no such phase, e.g. ``jacobian`` for loss-based ones).
PHASES = ("forward", "jacobian", "aggregate", "backward", "optimizer", "post_step")

#: A timing whose IQR / median exceeds this is flagged as noisy in reports.
SPREAD_FLAG = 0.25


@dataclass
class StepTiming:
    """Seconds per phase (accumulated if a phase is marked twice) and for the whole step."""

    phases: dict[str, float] = field(default_factory=dict)
    step: float = 0.0


class PhaseTimer(Protocol):
    """What the speed runner needs: the engine's ``Timer`` plus step boundaries."""

    kind: str

    def start(self) -> None: ...

    def mark(self, name: str) -> None: ...

    def stop(self) -> StepTiming: ...


class CpuTimer:
    """``time.perf_counter`` at each phase boundary."""

    kind = "perf_counter"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = 0.0
        self._last = 0.0
        self._phases: dict[str, float] = {}

    def start(self) -> None:
        self._phases = {}
        self._start = self._last = self._clock()

    def mark(self, name: str) -> None:
        now = self._clock()
        self._phases[name] = self._phases.get(name, 0.0) + (now - self._last)
        self._last = now

    def stop(self) -> StepTiming:
        return StepTiming(self._phases, self._clock() - self._start)


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class SyncTimer(CpuTimer):
    """``perf_counter`` after a device synchronisation at each boundary (MPS, or any
    device without usable timing events)."""

    kind = "perf_counter_sync"

    def __init__(self, device: torch.device) -> None:
        def clock() -> float:
            synchronize(device)
            return time.perf_counter()

        super().__init__(clock)


class CudaTimer:
    """CUDA events at phase boundaries; one synchronisation per step, in ``stop``.

    The events are recorded on the current stream of ``device``; work the step
    puts on other streams is only covered if it joins the current stream.
    """

    kind = "cuda_events"

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CudaTimer needs a CUDA device, got {device}")
        self.device = device
        self._pool: list[torch.cuda.Event] = []
        self._names: list[str] = []

    def _record(self, name: str) -> None:
        n = len(self._names)
        if n == len(self._pool):
            self._pool.append(torch.cuda.Event(enable_timing=True))
        self._pool[n].record(torch.cuda.current_stream(self.device))
        self._names.append(name)

    def start(self) -> None:
        self._names = []
        self._record("")

    def mark(self, name: str) -> None:
        self._record(name)

    def stop(self) -> StepTiming:
        self._record("")
        events = self._pool[: len(self._names)]
        events[-1].synchronize()  # the step's only host synchronisation
        phases: dict[str, float] = {}
        for i in range(1, len(events) - 1):
            name = self._names[i]
            seconds = events[i - 1].elapsed_time(events[i]) / 1000.0
            phases[name] = phases.get(name, 0.0) + seconds
        return StepTiming(phases, events[0].elapsed_time(events[-1]) / 1000.0)


class ThreadTimeTimer(CpuTimer):
    """CPU time of the calling thread (``time.thread_time``) at each boundary.

    For single-threaded CPU measurements on a shared machine: time the thread spends
    preempted by other processes does not count. Only meaningful with one torch thread
    (work done by other threads is not counted either)."""

    kind = "thread_time"

    def __init__(self) -> None:
        super().__init__(time.thread_time)


def make_timer(device: torch.device, cpu_clock: str = "wall") -> PhaseTimer:
    """The right timer for ``device``; on CPU ``cpu_clock`` is ``"wall"``
    (``perf_counter``) or ``"thread"`` (the thread's CPU time, see ThreadTimeTimer)."""
    if device.type == "cuda":
        return CudaTimer(device)
    if device.type == "cpu":
        if cpu_clock not in ("wall", "thread"):
            raise ValueError(f"cpu_clock must be 'wall' or 'thread', got {cpu_clock!r}")
        return ThreadTimeTimer() if cpu_clock == "thread" else CpuTimer()
    return SyncTimer(device)


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


class MemoryProbe:
    """Peak memory over the steps it watched (``before_step`` / ``after_step`` around each).

    On CUDA, cells are interleaved and all live on the device at once, so the device
    peak would count every other cell's tensors too. The probe reports instead what the
    cell alone would peak at: its own ``resident()`` bytes (parameters, gradients,
    optimizer state, data) plus the step's transient growth, ``max_memory_allocated``
    during the step minus ``memory_allocated`` at its start.
    """

    def __init__(self, device: torch.device, resident: Callable[[], int] | None = None) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"
        self.peak: int | None = None
        self._resident = resident
        self._start = 0
        self._own = 0

    def before_step(self) -> None:
        if self.device.type == "cuda":
            self._own = self._resident() if self._resident is not None else 0
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def after_step(self) -> None:
        """Call after the step's work has finished (after the timer's ``stop``)."""
        if self.device.type == "cuda":
            transient = max(torch.cuda.max_memory_allocated(self.device) - self._start, 0)
            value = self._own + transient
        else:
            value = _max_rss_bytes()
        self.peak = max(self.peak or 0, int(value))


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """``median_s`` and ``iqr_s`` (75th minus 25th percentile, linear interpolation as
    in ``numpy.percentile``) of ``samples``."""
    if len(samples) == 0:
        raise ValueError("no samples to summarize")
    arr = np.asarray(samples, dtype=np.float64)
    q25, q50, q75 = np.percentile(arr, [25.0, 50.0, 75.0])
    return {"median_s": float(q50), "iqr_s": float(q75 - q25)}


def relative_spread(samples: Sequence[float]) -> float | None:
    """IQR / median of ``samples`` (NaN dropped); None with fewer than 2 samples or a
    median of 0."""
    arr = np.asarray([v for v in samples if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        return None
    q25, q50, q75 = np.percentile(arr, [25.0, 50.0, 75.0])
    return float((q75 - q25) / q50) if q50 > 0 else None


def trial_timing(
    epoch_s: Sequence[float],
    steps_per_epoch: int,
    samples_per_epoch: int,
    *,
    setup_s: float,
    run_s: float,
) -> dict[str, Any]:
    """The ``timing`` entry of a trial record.

    ``epoch_s``: training seconds of each epoch (no evaluation); ``setup_s``: seconds
    before the first step; ``run_s``: seconds from the first step to the end of the final
    evaluation. With 2 epochs or more the first is the warm-up: ``step_s`` (and
    ``samples_per_s``) come from the other epochs, and ``trial_s`` is ``run_s`` with the
    warm-up epoch counted at the steady step time (set-up left out). With one epoch
    nothing is left out (``warmup_steps`` 0). ``train_s`` is all training, warm-up
    included; ``epoch_step_s`` the step time of every epoch; ``step_spread`` the IQR /
    median of the steady epochs' step times (None below 2 steady epochs)."""
    epochs = len(epoch_s)
    if epochs == 0 or steps_per_epoch <= 0:
        raise ValueError("trial_timing needs at least one epoch of at least one step")
    warm = 1 if epochs >= 2 else 0
    steady = list(epoch_s[warm:])
    steady_s = float(sum(steady))
    step_s = steady_s / (steps_per_epoch * len(steady))
    warmup_s = float(sum(epoch_s[:warm]))
    epoch_step = [float(s) / steps_per_epoch for s in epoch_s]
    return {
        "setup_s": float(setup_s),
        "warmup_s": warmup_s,
        "warmup_steps": warm * steps_per_epoch,
        "train_s": float(sum(epoch_s)),
        "steps": steps_per_epoch * epochs,
        "step_s": step_s,
        "step_spread": relative_spread(epoch_step[warm:]),
        "epoch_step_s": epoch_step,
        "samples_per_s": samples_per_epoch * len(steady) / steady_s if steady_s > 0 else None,
        "trial_s": float(run_s) - warmup_s + warm * steps_per_epoch * step_s,
    }


@functools.cache
def _nvidia_driver() -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        pass
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Everything that changes a timing: hardware, versions, numerics flags."""
    with warnings.catch_warnings():  # some of these flags have deprecation warnings
        warnings.simplefilter("ignore")
        flags = {
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        "gpu_driver": None,
        "device": str(device) if device is not None else None,
        "git_commit": git_commit(),
        **flags,
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = int(props.total_memory)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_driver"] = _nvidia_driver()
    return info
