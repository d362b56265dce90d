"""Trial: train one (dataset, sharing, weighting, seed) combination and score it.

The checkpoint is selected on the validation split (lowest mean task loss);
test metrics are computed once, for that checkpoint only.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from datetime import datetime, timezone
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import data
from bench.data import MTLDataset, Split
from bench.engine import ENGINES, StepContext, train_step
from bench.environment import collect, resolve_device
from bench.grid import TrialSpec
from bench.tasks import Task
from strategies import sharing, weighting
from strategies.sharing.base import BackboneSpec, SharingArchitecture

__all__ = ["Diverged", "IncompatibleSpec", "execute", "run_trial"]


class IncompatibleSpec(ValueError):
    """The spec combines components that cannot work together (e.g. engine and strategy)."""


class Diverged(RuntimeError):
    """A task loss became NaN or infinite."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"non-finite training loss in epoch {epoch}")
        self.epoch = epoch


def _optimizer(params: list[torch.Tensor], train: dict[str, Any]) -> torch.optim.Optimizer:
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"]
        )
    cls = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=train["lr"], weight_decay=train["weight_decay"])


@torch.no_grad()
def evaluate(
    model: SharingArchitecture, tasks: tuple[Task, ...], split: Split, batch_size: int
) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Per-task metrics and the (T,) mean loss on a whole split."""
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


def _select_tasks(dataset: MTLDataset, names: tuple[str, ...] | None) -> tuple[Task, ...]:
    if names is None:
        return dataset.tasks
    return tuple(dataset.task(n) for n in names)


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Train and evaluate ``spec``; returns the record's results (raises on divergence)."""
    train = spec.train
    device = resolve_device(train["device"])
    dataset = data.load(spec.dataset.name, **spec.dataset.params)
    tasks = _select_tasks(dataset, spec.tasks)
    train_split, val_split, test_split = (
        Split(s.x, {t.name: s.y[t.name] for t in tasks}).to(device)
        for s in (dataset.train, dataset.val, dataset.test)
    )

    torch.manual_seed(spec.seed)
    backbone = BackboneSpec(
        hidden=tuple(spec.model["hidden"]),
        tower=tuple(spec.model["tower"]),
        dropout=spec.model["dropout"],
        kind=spec.model["backbone"],
        channels=tuple(spec.model["channels"]),
    )
    model = sharing.get(
        spec.sharing.name, dataset.input_shape, tasks, backbone, **spec.sharing.params
    ).to(device)
    strategy = weighting.get(spec.weighting.name, **spec.weighting.params)
    strategy.reset(len(tasks), device, seed=spec.seed)
    engine = ENGINES[train["engine"]]()
    if strategy.needs == "jacobian":
        try:
            engine.check(type(strategy), type(model))
        except ValueError as err:
            raise IncompatibleSpec(str(err)) from None
    shared = model.shared_parameters()
    shared_ids = {id(p) for p in shared}
    ctx = StepContext(
        model=model,
        strategy=strategy,
        engine=engine,
        optimizer=_optimizer([*model.parameters(), *strategy.parameters()], train),
        shared=shared,
        task_specific=[p for p in model.parameters() if id(p) not in shared_ids],
    )

    def compute_losses(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.loss(out[t.name], y[t.name]) for t in tasks])

    order = torch.Generator().manual_seed(spec.seed)  # minibatch order, independent of init
    n, batch_size = len(train_split), train["batch_size"]
    steps_per_epoch = math.ceil(n / batch_size)
    extra_batches = strategy.batches_per_step - 1
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    train_seconds = 0.0

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return train_split.x[idx], {k: v[idx] for k, v in train_split.y.items()}

    for epoch in range(train["epochs"]):
        start = time.perf_counter()
        loss_sum = torch.zeros(len(tasks), device=device)
        weight_sum: torch.Tensor | None = None
        perm = torch.randperm(n, generator=order).to(device)
        for step in range(steps_per_epoch):
            batches = [batch(perm[step * batch_size : (step + 1) * batch_size])]
            for _ in range(extra_batches):  # independent batches for multi-batch methods
                batches.append(batch(torch.randint(n, (batch_size,), generator=order).to(device)))
            loss_sum += train_step(ctx, batches, compute_losses)
            if strategy.last_weights is not None:
                w = strategy.last_weights.detach()
                weight_sum = w.clone() if weight_sum is None else weight_sum + w
        mean_losses = loss_sum / steps_per_epoch
        train_losses = mean_losses.tolist()  # one device sync per epoch
        train_seconds += time.perf_counter() - start
        if not all(math.isfinite(v) for v in train_losses):
            raise Diverged(epoch)
        strategy.end_epoch(mean_losses)

        val_metrics, val_losses = evaluate(model, tasks, val_split, train["eval_batch_size"])
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
        if math.isfinite(score) and (best is None or score < best[0]):
            best = (score, epoch, copy.deepcopy(model.state_dict()))

    if best is None:
        raise Diverged(train["epochs"] - 1)
    model.load_state_dict(best[2])
    model.reset_stats()
    metrics = {"val": evaluate(model, tasks, val_split, train["eval_batch_size"])[0]}
    architecture_stats = model.stats()  # gathered on the validation split only
    metrics["test"] = evaluate(model, tasks, test_split, train["eval_batch_size"])[0]
    total_steps = steps_per_epoch * train["epochs"]
    return {
        "metrics": metrics,
        "best_epoch": best[1],
        "history": history,
        "tasks": [t.name for t in tasks],
        "parameters": model.parameter_count(),
        "shared_parameters": sum(p.numel() for p in shared),
        "flops_per_sample": flops_per_sample(model, val_split.x[:8]),
        "architecture_stats": architecture_stats,
        "timing": {
            "train_s": train_seconds,
            "steps": total_steps,
            "step_s": train_seconds / total_steps,
            "samples_per_s": n * train["epochs"] / train_seconds if train_seconds > 0 else None,
        },
        "env": collect(device),
    }


def execute(spec: TrialSpec) -> dict[str, Any]:
    """Run ``spec`` and return its full record; failures become a status, never an exception."""
    start = time.perf_counter()
    record: dict[str, Any] = {"id": spec.id, "spec": spec.to_dict(), "status": "ok", "error": None}
    try:
        record.update(run_trial(spec))
    except Diverged as err:
        record.update(status="diverged", error=str(err), diverged_epoch=err.epoch)
    except IncompatibleSpec as err:
        record.update(status="error", error=str(err))
    except Exception as err:  # a failing trial must not stop the sweep
        record.update(status="error", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc())
    record["wall_s"] = time.perf_counter() - start
    record["finished_at"] = datetime.now(timezone.utc).isoformat()
    return record
