"""Trial: train one (dataset, sharing, weighting, seed) combination and score it.

The checkpoint is selected on the validation split (lowest mean task loss);
test metrics are computed once, for that checkpoint only.
"""

from __future__ import annotations

import copy
import math
import os
import time
import traceback
from datetime import datetime, timezone
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import data
from bench.assembly import IncompatibleSpec, build_step
from bench.data import AnyDataset, Split
from bench.environment import collect, resolve_device
from bench.records import Status, TrialRecord
from bench.sampling import (
    DEFAULT_SAMPLING,
    SAMPLING,
    AlternatingFeeder,
    Feeder,
    MultiInputFeeder,
    SingleInputFeeder,
)
from bench.spec import Component, TrialSpec
from bench.tasks import Task
from bench.tensorboard import TrialLogger  # the tensorboard package only where it logs
from bench.timing import trial_timing
from strategies.sharing.base import SharingArchitecture

__all__ = [
    "Diverged",
    "IncompatibleSpec",
    "TrialTimeout",
    "execute",
    "failure_record",
    "run_trial",
]


class Diverged(RuntimeError):
    """A task loss (or, with ``reason``, the task gradients) became NaN or infinite."""

    def __init__(self, epoch: int, step: int | None = None, reason: str | None = None) -> None:
        where = f"step {step} (epoch {epoch})" if step is not None else f"epoch {epoch}"
        what = f"non-finite gradients at {where}: {reason}" if reason else \
            f"non-finite training loss at {where}"
        super().__init__(what)
        self.epoch = epoch
        self.step = step


class TrialTimeout(RuntimeError):
    """The trial ran past its time limit."""


def _set_determinism(device: torch.device, deterministic: bool) -> None:
    """CPU kernels are deterministic already; on CUDA, ``deterministic`` selects
    deterministic kernels (slower: no cuDNN autotuning, deterministic scatter/index ops)."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


@torch.no_grad()
def evaluate(
    model: SharingArchitecture,
    tasks: tuple[Task, ...],
    split: Split | dict[str, Split],
    batch_size: int,
) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Per-task metrics and the (T,) mean loss on a whole split.

    ``split``: one :class:`Split` labelled for every task, or (multi-input data) one
    per task, each task scored on its own samples."""
    if isinstance(split, dict):
        parts = [evaluate(model, (t,), split[t.name], batch_size) for t in tasks]
        metrics = {name: m for part, _ in parts for name, m in part.items()}
        return metrics, torch.cat([losses for _, losses in parts])
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    for start in range(0, len(split), batch_size):
        out = model(split.x[start : start + batch_size])
        for t in tasks:
            outputs[t.name].append(out[t.name])
    model.train()
    full = {name: torch.cat(chunks) for name, chunks in outputs.items()}
    losses = torch.stack([t.loss(full[t.name], split.y[t.name]) for t in tasks])
    metrics = {t.name: t.score(full[t.name], split.y[t.name]) for t in tasks}
    for t, loss in zip(tasks, losses.tolist(), strict=True):
        metrics[t.name]["loss"] = loss
    return metrics, losses


@torch.no_grad()
def flops_per_sample(model: SharingArchitecture, x: torch.Tensor) -> int:
    """Forward-pass FLOPs per sample, counted by ``torch.utils.flop_counter``."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train()
    return int(counter.get_total_flops() // max(len(x), 1))


def _select_tasks(dataset: AnyDataset, names: tuple[str, ...] | None) -> tuple[Task, ...]:
    if names is None:
        return dataset.tasks
    return tuple(dataset.task(n) for n in names)


def _splits(
    dataset: AnyDataset, tasks: tuple[Task, ...], device: torch.device
) -> dict[str, Split | dict[str, Split]]:
    """train/val/test on ``device``, restricted to ``tasks``: one Split (single-input
    data) or one Split per task (multi-input data)."""
    out: dict[str, Split | dict[str, Split]] = {}
    for name in ("train", "val", "test"):
        if dataset.multi_input:
            out[name] = {t.name: dataset.split_of(name, t.name).to(device) for t in tasks}
        else:
            s = getattr(dataset, name)
            out[name] = Split(s.x, {t.name: s.y[t.name] for t in tasks}).to(device)
    return out


def make_feeder(
    spec: TrialSpec,
    tasks: tuple[Task, ...],
    train_split: Split | dict[str, Split],
    generator: torch.Generator,
) -> Feeder:
    """The trial's minibatches: plain batches, or the spec's task-sampling policy."""
    batch_size = spec.train.batch_size
    if isinstance(train_split, Split):
        return SingleInputFeeder(tasks, train_split, batch_size, generator)
    component = spec.sampling or Component(DEFAULT_SAMPLING, {})
    policy = SAMPLING.create(component.name, **component.params)
    feeder = AlternatingFeeder if policy.per_step == "one" else MultiInputFeeder
    return feeder(tasks, train_split, batch_size, generator, policy)


def _first_inputs(split: Split | dict[str, Split], n: int) -> torch.Tensor:
    if isinstance(split, Split):
        return split.x[:n]
    return next(iter(split.values())).x[:n]


def run_trial(spec: TrialSpec, deadline: float | None = None) -> dict[str, Any]:
    """Train and evaluate ``spec``; returns the record's results. With
    ``spec.tensorboard`` set, it writes TensorBoard events as it trains.

    Raises ``Diverged`` on a non-finite loss and ``TrialTimeout`` once
    ``time.perf_counter()`` passes ``deadline``."""
    log = None
    if spec.tensorboard is not None:
        log = TrialLogger(spec.tensorboard, spec)
    try:
        return _train(spec, deadline, log)
    finally:
        if log is not None:
            log.close()


def _train(spec: TrialSpec, deadline: float | None, log: TrialLogger | None) -> dict[str, Any]:
    trial_start = time.perf_counter()
    train = spec.train
    device = resolve_device(train.device)
    _set_determinism(device, train.deterministic)
    # CPU results depend on the intra-op thread count, so the trial fixes it itself.
    torch.set_num_threads(train.threads)
    dataset = data.load(spec.dataset.name, **spec.dataset.params)
    tasks = _select_tasks(dataset, spec.tasks)
    splits = _splits(dataset, tasks, device)
    train_split, val_split, test_split = splits["train"], splits["val"], splits["test"]

    built = build_step(spec.sharing, spec.weighting, tasks, dataset.input_shape, spec.model,
                       train, device, spec.seed)
    model, strategy, shared = built.model, built.strategy, built.shared

    order = torch.Generator().manual_seed(spec.seed)  # minibatch order, independent of init
    feeder = make_feeder(spec, tasks, train_split, order)
    compute_losses = feeder.losses
    steps_per_epoch = feeder.steps_per_epoch
    extra_batches = strategy.batches_per_step - 1
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    train_seconds = 0.0
    epoch_seconds: list[float] = []  # training time of each epoch (the first: warm-up)
    probes = built.probes(spec.probes, steps_per_epoch * train.epochs)
    # Index of the first step with a non-finite loss, kept on the device (no per-step sync).
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    if log is not None:
        log.begin([t.name for t in tasks])

    loop_start = time.perf_counter()
    setup_s = loop_start - trial_start  # data, model, optimizer (and a worker's first imports)
    for epoch in range(train.epochs):
        start = time.perf_counter()
        if log is not None:
            log.start_epoch(epoch * steps_per_epoch)
        loss_sum = torch.zeros(len(tasks), device=device)
        weight_sum: torch.Tensor | None = None
        feeder.start_epoch()
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            if deadline is not None and time.perf_counter() > deadline:
                raise TrialTimeout(f"time limit reached at step {global_step} (epoch {epoch})")
            batches = [feeder.batch(step)]
            # Independent batches for strategies that use several per step.
            batches += [feeder.random_batch() for _ in range(extra_batches)]
            for probe in probes:
                probe.observe(global_step, model, shared, batches[0], compute_losses)
            try:
                losses = built.step(batches, compute_losses)
            except FloatingPointError as err:
                # Gradient-based strategies check J (or its Gramian) for NaN/Inf: the same
                # divergence that loss-based ones show as a non-finite loss.
                bad = int(first_bad_step)
                step_at = bad if bad >= 0 else global_step
                raise Diverged(step_at // steps_per_epoch, step_at, str(err)) from err
            loss_sum += losses
            bad = ~torch.isfinite(losses).all() & (first_bad_step < 0)
            first_bad_step = torch.where(bad, global_step, first_bad_step)
            if strategy.last_weights is not None:
                w = strategy.last_weights.detach()
                weight_sum = w.clone() if weight_sum is None else weight_sum + w
            if log is not None and log.due(global_step):  # device values, written per epoch
                log.step(global_step, losses, strategy.last_weights, shared)
        # Each task's mean over the steps that had its samples (all of them unless the
        # sampling policy trains one task per step).
        task_steps = torch.tensor(feeder.task_steps(), dtype=loss_sum.dtype, device=device)
        mean_losses = loss_sum / task_steps.clamp(min=1)
        train_losses = mean_losses.tolist()  # one device sync per epoch
        epoch_seconds.append(time.perf_counter() - start)
        train_seconds += epoch_seconds[-1]
        if not all(math.isfinite(v) for v in train_losses):
            raise Diverged(epoch, int(first_bad_step))
        strategy.end_epoch(mean_losses)

        val_metrics, val_losses = evaluate(model, tasks, val_split, train.eval_batch_size)
        score = float(val_losses.mean())
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": dict(zip([t.name for t in tasks], train_losses, strict=True)),
            "val": val_metrics,
            "seconds": train_seconds,
        }
        if weight_sum is not None:
            weights = (weight_sum / steps_per_epoch).tolist()
            entry["weights"] = dict(zip([t.name for t in tasks], weights, strict=True))
        history.append(entry)
        if log is not None:
            log.end_epoch((epoch + 1) * steps_per_epoch, entry,
                          built.optimizer.param_groups[0]["lr"], probes)
        if math.isfinite(score) and (best is None or score < best[0]):
            best = (score, epoch, copy.deepcopy(model.state_dict()))

    if best is None:
        raise Diverged(train.epochs - 1)
    model.load_state_dict(best[2])
    model.reset_stats()
    metrics = {"val": evaluate(model, tasks, val_split, train.eval_batch_size)[0]}
    architecture_stats = model.stats()  # gathered on the validation split only
    metrics["test"] = evaluate(model, tasks, test_split, train.eval_batch_size)[0]
    run_s = time.perf_counter() - loop_start
    result = {
        "metrics": metrics,
        "best_epoch": best[1],
        "history": history,
        "tasks": [t.name for t in tasks],
        "parameters": model.parameter_count(),
        "shared_parameters": sum(p.numel() for p in shared),
        "flops_per_sample": flops_per_sample(model, _first_inputs(val_split, 8)),
        "architecture_stats": architecture_stats,
        "strategy_stats": strategy.stats(),  # e.g. Nash-MTL: how often it reached its point
        "probes": {p.name: p.result() for p in probes},
        # Set-up and the first (warm-up) epoch are recorded, not counted in step_s/trial_s.
        "timing": trial_timing(epoch_seconds, steps_per_epoch, feeder.num_samples,
                               setup_s=setup_s, run_s=run_s),
        "env": collect(device),
    }
    if log is not None:
        log.finish(result, steps_per_epoch * train.epochs)
    return result


def failure_record(spec: TrialSpec, status: Status, error: str, **extra: Any) -> TrialRecord:
    """The record of a trial that did not finish ``ok``."""
    return TrialRecord.of(spec, status, error=error, **extra,
                          finished_at=datetime.now(timezone.utc).isoformat())


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def execute(spec: TrialSpec, time_limit_s: float | None = None) -> TrialRecord:
    """Run ``spec`` and return its full record; failures become a status, never an exception.

    Statuses: ``ok``; ``diverged`` (with ``diverged_step``); ``oom``; ``timeout``
    (past ``time_limit_s``); ``error`` (with the traceback)."""
    start = time.perf_counter()
    deadline = start + time_limit_s if time_limit_s is not None else None
    try:
        results = run_trial(spec, deadline)
        record = TrialRecord.of(spec, "ok", error=None, **results,
                                finished_at=datetime.now(timezone.utc).isoformat())
    except Diverged as err:
        record = failure_record(spec, "diverged", str(err), diverged_epoch=err.epoch,
                                diverged_step=err.step)
    except TrialTimeout as err:
        record = failure_record(spec, "timeout", str(err))
    except IncompatibleSpec as err:
        record = failure_record(spec, "error", str(err))
    except SystemExit as err:  # e.g. a plugin calling sys.exit(): the trial failed, not the sweep
        record = failure_record(
            spec, "error", f"SystemExit({err.code!r}): a component called sys.exit() in the trial",
            traceback=traceback.format_exc())
    except Exception as err:  # a failing trial must not stop the sweep
        status = "oom" if _is_oom(err) else "error"
        record = failure_record(spec, status, f"{type(err).__name__}: {err}",
                                traceback=traceback.format_exc())
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an OOM must not starve the next trial in this worker
    return record.model_copy(update={"wall_s": time.perf_counter() - start})
