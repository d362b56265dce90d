"""One benchmark per registered strategy of a full training step (same model, same batch),
and ours against torchjd's ``mtl_backward`` + ``jac_to_grad`` for the methods it has.

``extra_info`` of each benchmark: the cell, ``samples_per_s`` and ``ratio_to_ew`` (or
``ours_over_torchjd_<engine>``). Ratios come from a separate interleaved measurement
(round-robin, as in ``mtlbench speed``) of the compared steps, so they do not depend on
test order or filtering.
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch

from bench import speed
from bench.config import Component
from bench.engine import ENGINES, NullTimer
from bench.environment import resolve_device
from bench.timing import make_timer, synchronize
from strategies.sharing import SHARING
from strategies.weighting import WEIGHTING

NUM_TASKS = 4
BATCH_SIZE = 128
WIDTH = 64
INPUT_DIM = 100
ENGINE = os.environ.get("MTLBENCH_PERF_ENGINE", "loop")
ROUNDS = int(os.environ.get("MTLBENCH_PERF_ROUNDS", "20"))  # interleaved rounds, ratios


def perf_device() -> torch.device:
    return resolve_device(os.environ.get("MTLBENCH_PERF_DEVICE", "cpu"))


def _cell(strategy: str, engine: str | None) -> speed.SpeedCell:
    return speed.SpeedCell(
        strategy=Component(strategy, WEIGHTING.resolve(strategy, {})),
        engine=engine,
        sharing=Component("hps", {}),
        num_tasks=NUM_TASKS, batch_size=BATCH_SIZE, width=WIDTH, hidden=(WIDTH, WIDTH),
        tower=(), dropout=0.0, input_shape=(INPUT_DIM,),
        train={"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
        device=str(perf_device()), seed=0,
    )


def _engine_for(strategy: str, engine: str) -> str | None:
    cls = WEIGHTING.get(strategy)
    if cls.needs != "jacobian":
        return None
    try:
        ENGINES[engine]().check(cls, SHARING.get("hps"))
    except ValueError as err:
        pytest.skip(str(err))
    return engine


def _step_fn(runner):
    device = runner.device
    timer = NullTimer()

    def step():
        runner.step(timer)
        synchronize(device)

    return step


def _interleaved_medians(runners) -> list[float]:
    timer = make_timer(perf_device())
    timings = speed.interleave(runners, timer, repeats=ROUNDS, warmup=2, steps_per_repeat=2,
                               block_reduce="median")
    return [statistics.median(t.step for t in ts) for ts in timings]


def _samples_per_s(benchmark) -> float | None:
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    return BATCH_SIZE / stats.median if stats is not None and stats.median > 0 else None


@pytest.mark.parametrize("strategy", WEIGHTING.names())
def test_training_step(benchmark, strategy):
    engine = _engine_for(strategy, ENGINE)
    runner = speed.CellRunner(_cell(strategy, engine), slowdown=0.0)
    ew = speed.CellRunner(_cell("ew", None), slowdown=0.0)
    ours, reference = _interleaved_medians([runner, ew])
    benchmark.group = f"step T={NUM_TASKS} B={BATCH_SIZE} W={WIDTH}"
    benchmark.extra_info.update(
        strategy=strategy, engine=engine, num_tasks=NUM_TASKS, batch_size=BATCH_SIZE,
        width=WIDTH, device=str(runner.device), ratio_to_ew=ours / reference,
        interleaved_step_median_s=ours,
    )
    benchmark(_step_fn(runner))
    benchmark.extra_info["samples_per_s"] = _samples_per_s(benchmark) or BATCH_SIZE / ours


def _torchjd_aggregators():
    from torchjd import aggregation as agg

    return {
        # ours -> torchjd; differences in defaults are noted in extra_info
        "ew": (agg.Sum, "ours: loss path (one backward of the sum); torchjd: Jacobian + Sum"),
        "mgda": (agg.MGDA, "stopping rules differ (torchjd: epsilon=1e-3, max_iters=100)"),
        "pcgrad": (agg.PCGrad, ""),
        "upgrad": (agg.UPGrad, ""),
        "cagrad": (lambda: agg.CAGrad(c=0.5), "c=0.5"),
        "imtl_g": (agg.IMTLG, ""),
        "aligned_mtl": (agg.AlignedMTL, ""),
        "dualproj": (agg.DualProj, ""),
        "nash_mtl": (lambda: agg.NashMTL(n_tasks=NUM_TASKS), ""),
        "graddrop": (agg.GradDrop, ""),
        "config": (agg.ConFIG, ""),
        "gradvac": (agg.GradVac, ""),
        "fairgrad": (lambda: agg.FairGrad(alpha=1.0), "alpha=1.0"),
    }


COMPARED = sorted(n for n in _torchjd_aggregators() if n in WEIGHTING)


class TorchJDRunner(speed.CellRunner):
    """The same model, optimizer and batch, stepped with torchjd's ``mtl_backward`` (Jacobian
    of the shared parameters through the representation, vmapped) and ``jac_to_grad``."""

    def __init__(self, cell: speed.SpeedCell, aggregator) -> None:
        super().__init__(cell, slowdown=0.0)
        self.aggregator = aggregator
        self.task_params = [self.model.task_parameters(t.name) for t in self.tasks]

    def step(self, timer) -> None:
        from torchjd.autojac import jac_to_grad, mtl_backward

        x, y = self.batches[0]
        self.steps += 1
        out = self.model(x)
        losses = [t.loss(out[t.name], y[t.name]) for t in self.tasks]  # separate graphs
        timer.mark("forward")
        self.ctx.optimizer.zero_grad(set_to_none=True)
        mtl_backward(losses, features=self.model.representation,
                     tasks_params=self.task_params, shared_params=self.ctx.shared)
        timer.mark("jacobian")
        jac_to_grad(self.ctx.shared, self.aggregator)
        timer.mark("aggregate")
        self.ctx.optimizer.step()
        timer.mark("optimizer")


@pytest.mark.parametrize("strategy", COMPARED)
def test_against_torchjd(benchmark, strategy):
    make, note = _torchjd_aggregators()[strategy]
    theirs = TorchJDRunner(_cell("ew", None), make())
    engines: list[str | None] = [None]
    if WEIGHTING.get(strategy).needs == "jacobian":
        engines = []
        for name in ("loop", "vmap", "gramian"):
            try:
                ENGINES[name]().check(WEIGHTING.get(strategy), SHARING.get("hps"))
            except ValueError:
                continue
            engines.append(name)
    ours = [speed.CellRunner(_cell(strategy, e), slowdown=0.0) for e in engines]
    *ours_medians, theirs_median = _interleaved_medians([*ours, theirs])
    benchmark.group = f"torchjd T={NUM_TASKS} B={BATCH_SIZE} W={WIDTH}"
    benchmark.extra_info.update(
        strategy=strategy, torchjd_aggregator=type(theirs.aggregator).__name__, note=note,
        num_tasks=NUM_TASKS, batch_size=BATCH_SIZE, width=WIDTH, device=str(theirs.device),
        torchjd_step_median_s=theirs_median,
        **{f"ours_over_torchjd_{e or 'loss'}": m / theirs_median
           for e, m in zip(engines, ours_medians, strict=True)},
    )
    benchmark(_step_fn(theirs))
    benchmark.extra_info["samples_per_s"] = _samples_per_s(benchmark)
    for p in theirs.ctx.shared:
        assert p.grad is not None and torch.isfinite(p.grad).all()
