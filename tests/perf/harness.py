"""The perf suite's steps and statistics (see ``test_step_perf.py``).

Reference problem (issue 13): hard parameter sharing (``hps``), MLP 100-256-256, T
regression heads of width 1, batch 256, Adam (lr 1e-3), one CPU thread. Every runner
below is built from the same seeded :class:`bench.speed.CellRunner` cell, so all start
from identical weights and cycle through the same synthetic batches.

Runners of one group (one strategy at one T):

- ``ours[<engine>]``: the project's whole step, :func:`bench.engine.train_step` (forward,
  engine, aggregation, task gradients, optimizer), via :class:`bench.speed.CellRunner`;
- ``torchjd-autojac``: torchjd 0.18's ``mtl_backward`` (Jacobian of the shared parameters
  through the representation; heads get their own task's gradient) + ``jac_to_grad``
  with the matching aggregator;
- ``torchjd-autogram``: torchjd 0.18's ``autogram.Engine`` on the shared backbone (per-layer
  Gramian from module hooks, J never formed), the matching ``Weighting`` on that Gramian,
  one backward of ``sum_t w_t L_t`` into the shared parameters and the heads' own task
  gradients (the same update as the two above); only for torchjd's Gramian weightings;
- ``floor``: the floor proxy: a loop of ``torch.autograd.grad`` over the T separate task
  losses (shared parameters + that task's head), then the aggregation. Both our
  ``aggregate`` and torchjd's aggregator (when there is one) run on that Jacobian, as
  separate phases; the floor counts the faster of the two (lower median) and leaves the
  other out of its samples;
- ``ew``: our equal-weight step (one backward of the sum), the reference of loss-based
  strategies.

Timing: the runners of a group are stepped round-robin, in a fresh random order each
round, one step each, with the thread's CPU time (time preempted by other processes does
not count); garbage is collected before and the collector disabled during each step.
Ratios are paired per round (ours in round r over the other runner in round r); a
ratio's summary is the median over rounds with a distribution-free 95% interval of
that median (binomial order statistics).
"""

from __future__ import annotations

import gc
import os
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import speed
from bench.config import Component, TrainSettings
from bench.engine import ENGINES, NullTimer
from bench.timing import StepTiming, make_timer, synchronize
from strategies.sharing import SHARING
from strategies.weighting import WEIGHTING

INPUT_DIM = 100
HIDDEN = (256, 256)
BATCH_SIZE = 256
TRAIN = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}

# Settings aligned with torchjd where our defaults differ and the cost does not depend on
# them (as the reviewers' tool ../shared/tools/peer_speed.py does).
OURS_PARAMS: dict[str, Callable[[int], dict[str, Any]]] = {
    "cagrad": lambda T: {"c": 0.5, "rescale": 0},
    "gradvac": lambda T: {"beta": 0.5},
    "aligned_mtl": lambda T: {"pref_vector": [1.0 / T] * T},
}

#: Loss-based strategies timed against ``ew`` (FAMO: its extra forward is allowed).
LOSS_BASED = ("uw", "dwa", "famo", "rlw")
#: The second ew runner of a loss-based group (a null comparison).
CONTROL = "ew-control"
#: Loss-based groups take this many times the rounds (see ``test_step_perf.py``).
LOSS_ROUNDS = 5
REFERENCE = "ew"

#: Our engines timed by default: the trials' engine, ``auto`` and ``autogram``.
DEFAULT_ENGINES = "default,auto,autogram"

#: Every measured group of this session, for the summary table (see conftest.py).
RESULTS: list[GroupResult] = []

# Targets of issue 13 (shown next to the ratios; the suite asserts none of them).
TARGETS = {"torchjd": 0.9, "floor": 1.15, "ew": 1.05}


def torchjd_pair(strategy: str, T: int) -> tuple[Any, Any] | None:
    """(aggregator for autojac, Gramian weighting for autogram or None) matching our
    ``strategy``, or None when torchjd 0.18 has no such method."""
    from torchjd import aggregation as A

    table: dict[str, Callable[[], tuple[Any, Any]]] = {
        "mgda": lambda: (A.MGDA(), A.MGDAWeighting()),
        "pcgrad": lambda: (A.PCGrad(), A.PCGradWeighting()),
        "upgrad": lambda: (A.UPGrad(), A.UPGradWeighting()),
        "dualproj": lambda: (A.DualProj(), A.DualProjWeighting()),
        "cagrad": lambda: (A.CAGrad(c=0.5), A.CAGradWeighting(c=0.5)),
        "imtl_g": lambda: (A.IMTLG(), A.IMTLGWeighting()),
        "aligned_mtl": lambda: (A.AlignedMTL(), A.AlignedMTLWeighting()),
        "gradvac": lambda: (A.GradVac(), A.GradVacWeighting()),
        "fairgrad": lambda: (A.FairGrad(alpha=1.0), A.FairGradWeighting(alpha=1.0)),
        "nash_mtl": lambda: (A.NashMTL(n_tasks=T), None),
        "graddrop": lambda: (A.GradDrop(), None),
        "config": lambda: (A.ConFIG(), None),
        "excess_mtl": lambda: (A.ExcessMTL(robust_step_size=0.01), None),
    }
    make = table.get(strategy)
    return make() if make is not None else None


def rounds_for(strategy: str, rounds: int) -> int:
    """Timed rounds of ``strategy``'s group: ``LOSS_ROUNDS`` x ``rounds`` for a
    loss-based strategy (steps of a few ms, a 5% target), else ``rounds``."""
    return rounds * LOSS_ROUNDS if WEIGHTING.get(strategy).needs != "jacobian" else rounds


def perf_device() -> str:
    """``MTLBENCH_PERF_DEVICE`` (cpu, cuda, mps, auto; default cpu), resolved."""
    from bench.environment import resolve_device

    return str(resolve_device(os.environ.get("MTLBENCH_PERF_DEVICE", "cpu")))


def gradient_strategies() -> list[str]:
    return [n for n in WEIGHTING.names() if WEIGHTING.get(n).needs == "jacobian"]


def loss_strategies() -> list[str]:
    return [n for n in LOSS_BASED if n in WEIGHTING]


def default_engine() -> str:
    """The engine trials use unless told otherwise."""
    return TrainSettings().engine


def engine_list(text: str) -> list[str]:
    """Comma-separated engine names, ``default`` standing for the trials' engine;
    duplicates dropped, order kept."""
    names = [default_engine() if e.strip() == "default" else e.strip()
             for e in text.split(",") if e.strip()]
    return list(dict.fromkeys(names))


def engines_for(strategy: str, wanted: Sequence[str]) -> list[str]:
    """The engines of ``wanted`` that serve ``strategy`` on hps (at least ``loop``)."""
    cls, arch = WEIGHTING.get(strategy), SHARING.get("hps")
    out = []
    for name in wanted:
        if name not in ENGINES:
            continue
        try:
            ENGINES[name]().require_support(cls, arch)
        except ValueError:
            continue
        out.append(name)
    return out or ["loop"]


def cell(strategy: str, T: int, engine: str | None, device: str = "cpu") -> speed.SpeedCell:
    params = WEIGHTING.resolve(strategy, OURS_PARAMS.get(strategy, lambda T: {})(T))
    return speed.SpeedCell(
        strategy=Component(strategy, params), engine=engine, sharing=Component("hps", {}),
        num_tasks=T, batch_size=BATCH_SIZE, width=HIDDEN[0], hidden=HIDDEN, tower=(),
        dropout=0.0, input_shape=(INPUT_DIM,), train=dict(TRAIN), device=device, seed=0,
    )


# ----------------------------------------------------------------------------- runners


class OursRunner(speed.CellRunner):
    """Our whole training step (``bench.engine.train_step``)."""

    def __init__(self, c: speed.SpeedCell, name: str) -> None:
        super().__init__(c)
        self.name = name


class _TaskRunner(speed.CellRunner):
    """A cell's model, optimizer and batches, stepped by hand (task losses kept apart)."""

    def __init__(self, c: speed.SpeedCell, name: str) -> None:
        super().__init__(c)
        self.name = name
        self.shared = list(self.ctx.shared)
        self.heads = [self.model.task_parameters(t.name) for t in self.tasks]

    def _losses(self) -> list[torch.Tensor]:
        x, y = self.batches[0]
        self.steps += 1
        out = self.model(x)
        return [t.loss(out[t.name], y[t.name]) for t in self.tasks]


class AutojacRunner(_TaskRunner):
    """torchjd: ``mtl_backward`` + ``jac_to_grad(aggregator)``."""

    def __init__(self, c: speed.SpeedCell, aggregator: Any) -> None:
        super().__init__(c, "torchjd-autojac")
        self.aggregator = aggregator

    def step(self, timer) -> None:
        from torchjd.autojac import jac_to_grad, mtl_backward

        losses = self._losses()
        timer.mark("forward")
        self.ctx.optimizer.zero_grad(set_to_none=True)
        mtl_backward(losses, features=self.model.representation, tasks_params=self.heads,
                     shared_params=self.shared)
        timer.mark("jacobian")
        jac_to_grad(self.shared, self.aggregator)
        timer.mark("aggregate")
        self.ctx.optimizer.step()
        timer.mark("optimizer")


class AutogramRunner(_TaskRunner):
    """torchjd: ``autogram.Engine`` Gramian of the task losses w.r.t. the backbone, the
    weighting on it, then ``sum_t w_t L_t`` backpropagated into the shared parameters
    and ``sum_t L_t`` into the heads (each head only sees its own loss)."""

    def __init__(self, c: speed.SpeedCell, weighting: Any) -> None:
        from torchjd.autogram import Engine

        super().__init__(c, "torchjd-autogram")
        self.weighting = weighting
        self.engine = Engine(self.model.backbone, batch_dim=None)
        self.head_params = [p for h in self.heads for p in h]

    def step(self, timer) -> None:
        losses = torch.stack(self._losses())
        timer.mark("forward")
        self.ctx.optimizer.zero_grad(set_to_none=True)
        gramian = self.engine.compute_gramian(losses)
        timer.mark("jacobian")
        weights = self.weighting(gramian)
        timer.mark("aggregate")
        grads = torch.autograd.grad(losses.sum(), self.head_params, retain_graph=True)
        for p, g in zip(self.head_params, grads, strict=True):
            p.grad = g
        losses.backward(weights, inputs=self.shared)
        timer.mark("backward")
        self.ctx.optimizer.step()
        timer.mark("optimizer")


class FloorRunner(_TaskRunner):
    """The floor proxy: ``autograd.grad`` per separate task loss, then our ``aggregate``
    (phase ``aggregate``) and torchjd's aggregator (phase ``aggregate_torchjd``) on that
    Jacobian; our direction is applied."""

    def __init__(self, c: speed.SpeedCell, aggregator: Any | None) -> None:
        super().__init__(c, "floor")
        self.aggregator = aggregator
        self.sizes = [p.numel() for p in self.shared]

    def step(self, timer) -> None:
        losses = self._losses()
        timer.mark("forward")
        self.ctx.optimizer.zero_grad(set_to_none=True)
        n = len(self.shared)
        rows = []
        for t, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, [*self.shared, *self.heads[t]],
                                        retain_graph=t < len(losses) - 1)
            rows.append(torch.cat([g.reshape(-1) for g in grads[:n]]))
            for p, g in zip(self.heads[t], grads[n:], strict=True):
                p.grad = g
        jac = torch.stack(rows)
        timer.mark("jacobian")
        direction = self.strategy.aggregate(jac, torch.stack(losses).detach())
        timer.mark("aggregate")
        if self.aggregator is not None:
            self.aggregator(jac)
            timer.mark("aggregate_torchjd")
        offset = 0
        for p, size in zip(self.shared, self.sizes, strict=True):
            p.grad = direction[offset:offset + size].view_as(p).to(p.dtype)
            offset += size
        self.ctx.optimizer.step()
        timer.mark("optimizer")


def build_group(strategy: str, T: int, engines: Sequence[str],
                device: str = "cpu") -> list[speed.CellRunner]:
    """The runners of one group: ours (one per engine), torchjd's autojac and autogram
    steps and the floor (gradient-based strategies), and ``ew``."""
    cls = WEIGHTING.get(strategy)
    ref_cell = cell(REFERENCE, T, None, device)
    if cls.needs != "jacobian":
        runners: list[speed.CellRunner] = [OursRunner(cell(strategy, T, None, device), "ours")]
        if strategy != REFERENCE:
            runners.append(OursRunner(ref_cell, REFERENCE))
            # The same ew step built a second time: its ratio to ew is what the harness
            # reads for no difference at all (the resolution of the 5% target).
            runners.append(OursRunner(cell(REFERENCE, T, None, device), CONTROL))
        return runners
    runners = [OursRunner(cell(strategy, T, e, device), f"ours[{e}]")
               for e in engines_for(strategy, engines)]
    pair = torchjd_pair(strategy, T)
    if pair is not None:
        aggregator, weighting = pair
        runners.append(AutojacRunner(ref_cell, aggregator))
        if weighting is not None:
            runners.append(AutogramRunner(ref_cell, weighting))
    if cls.batches_per_step == 1:
        again = torchjd_pair(strategy, T)  # a fresh (stateful) aggregator of its own
        runners.append(FloorRunner(cell(strategy, T, "loop", device),
                                   again[0] if again is not None else None))
    runners.append(OursRunner(ref_cell, REFERENCE))
    return runners


# ----------------------------------------------------------------------------- timing


def measure(runners: list[Any], *, rounds: int, warmup: int, seed: int = 0,
            notes: list[str] | None = None) -> list[list[StepTiming]]:
    """Per runner, one :class:`StepTiming` per round (warm-up dropped): the thread's CPU
    time on CPU (see ``bench.timing.make_timer``). A runner that raises during the warm-up
    is dropped from ``runners`` (in place) with a note; later errors propagate."""
    rng = random.Random(seed)
    device = runners[0].device
    timer = make_timer(device, "thread")
    out: dict[int, list[StepTiming]] = {id(r): [] for r in runners}
    gc.collect()
    gc.freeze()  # what exists now (models, solvers) is never rescanned by the collections below
    try:
        for r in range(warmup + rounds):
            order = list(runners)
            rng.shuffle(order)
            for runner in order:
                gc.collect()
                gc.disable()
                try:
                    timer.start()
                    runner.step(timer)
                    synchronize(device)
                    timing = timer.stop()
                except Exception as err:
                    if r >= warmup:
                        raise
                    runners.remove(runner)
                    if notes is not None:
                        notes.append(f"{runner.name} dropped: {type(err).__name__}: {err}"[:200])
                    continue
                finally:
                    gc.enable()
                if r >= warmup:
                    out[id(runner)].append(timing)
    finally:
        gc.unfreeze()
    return [out[id(r)] for r in runners]


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median and a distribution-free interval of the median (order statistics whose
    binomial coverage is at least ``level``; the extremes when there are too few values)."""
    from scipy.stats import binom

    v = sorted(values)
    n = len(v)
    if n == 0:
        raise ValueError("median_ci needs values")
    med = statistics.median(v)
    # largest k with P(Binom(n, 1/2) < k) <= (1 - level) / 2: [v[k-1], v[n-k]] (1-based)
    k = int(binom.ppf((1 - level) / 2, n, 0.5))
    while k > 0 and binom.cdf(k - 1, n, 0.5) > (1 - level) / 2:
        k -= 1
    if k < 1:
        return med, v[0], v[-1]
    return med, v[k - 1], v[n - k]


@dataclass
class Ratio:
    median: float
    low: float
    high: float
    n: int

    def text(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def verdict(self, target: float) -> str:
        """'ok' (interval at or below target), 'MISS' (above) or '~' (straddles it)."""
        if self.high <= target:
            return "ok"
        return "MISS" if self.low > target else "~"

    def to_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "ci95": [self.low, self.high], "n": self.n}


def paired(a: Sequence[float], b: Sequence[float]) -> Ratio:
    med, low, high = median_ci([x / y for x, y in zip(a, b, strict=True)])
    return Ratio(med, low, high, len(a))


@dataclass
class GroupResult:
    """One strategy at one T: per-runner step samples and the ratios of the table."""

    strategy: str
    num_tasks: int
    gradient: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # runner: phase median
    ratios: dict[str, Ratio] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    threads: int = field(default_factory=torch.get_num_threads)

    def ms(self, runner: str) -> float | None:
        s = self.samples.get(runner)
        return statistics.median(s) * 1e3 if s else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "num_tasks": self.num_tasks, "gradient": self.gradient,
            "step_median_ms": {k: self.ms(k) for k in self.samples},
            "phase_median_ms": self.phases,
            "ratios": {k: r.to_dict() for k, r in self.ratios.items()},
            "notes": self.notes, "threads": self.threads,
        }


def _phase_median(timings: Sequence[StepTiming], phase: str) -> float:
    return statistics.median(t.phases.get(phase, 0.0) for t in timings)


def analyse(strategy: str, T: int, runners: Sequence[Any],
            timings: Sequence[Sequence[StepTiming]]) -> GroupResult:
    """Samples, phase medians and the paired ratios of one measured group."""
    gradient = WEIGHTING.get(strategy).needs == "jacobian"
    res = GroupResult(strategy, T, gradient)
    by = dict(zip((r.name for r in runners), timings, strict=True))
    for name, ts in by.items():
        res.samples[name] = [t.step for t in ts]
        names = sorted({p for t in ts for p in t.phases})
        res.phases[name] = {p: _phase_median(ts, p) * 1e3 for p in names}
    if "floor" in by:
        ts = by["floor"]
        ours_agg = [t.phases.get("aggregate", 0.0) for t in ts]
        theirs = [t.phases.get("aggregate_torchjd") for t in ts]
        if all(x is not None for x in theirs):
            # The floor uses the faster aggregator (lower median); the other is left out.
            drop = theirs if statistics.median(ours_agg) <= statistics.median(theirs) \
                else ours_agg
            res.notes.append("floor aggregator: " + (
                "ours" if drop is theirs else "torchjd"))
        else:
            drop = [0.0] * len(ts)
        res.samples["floor"] = [t.step - d for t, d in zip(ts, drop, strict=True)]
    ours = [n for n in by if n.startswith("ours")]
    tj = [n for n in ("torchjd-autojac", "torchjd-autogram") if n in res.samples]
    best_tj = min(tj, key=lambda n: statistics.median(res.samples[n])) if tj else None
    for name in ours:
        mine = res.samples[name]
        prefix = f"{name}/"
        for other in (*tj, "floor", REFERENCE):
            if other in res.samples and other != name:
                res.ratios[prefix + other] = paired(mine, res.samples[other])
        if best_tj is not None:
            res.ratios[prefix + "torchjd"] = res.ratios[prefix + best_tj]
    if best_tj is not None:
        res.notes.append(f"faster torchjd step: {best_tj.removeprefix('torchjd-')}")
    if CONTROL in by and REFERENCE in by:
        res.ratios[f"{CONTROL}/{REFERENCE}"] = paired(res.samples[CONTROL],
                                                      res.samples[REFERENCE])
    if not gradient and REFERENCE in by and any("post_step" in t.phases for t in by["ours"]):
        # FAMO: its extra forward after the update (post_step) is allowed by the target
        res.ratios["ours-post_step/" + REFERENCE] = paired(
            [t.step - t.phases.get("post_step", 0.0) for t in by["ours"]],
            res.samples[REFERENCE])
    return res


def run_group(strategy: str, T: int, *, engines: Sequence[str], rounds: int, warmup: int,
              device: str = "cpu") -> tuple[GroupResult, list[Any]]:
    """Build, time and analyse one group; returns its result and its (surviving) runners."""
    torch.manual_seed(0)
    runners = build_group(strategy, T, engines, device)
    notes: list[str] = []
    timings = measure(runners, rounds=rounds, warmup=warmup, seed=T, notes=notes)
    res = analyse(strategy, T, runners, timings)
    res.notes[:0] = notes
    return res, runners


# ----------------------------------------------------------------------------- table


def _cell(res: GroupResult, key: str, target: float | None) -> str:
    r = res.ratios.get(key)
    if r is None:
        return "-"
    return r.text() + (f" {r.verdict(target)}" if target is not None else "")


def table(results: Sequence[GroupResult]) -> str:
    """Markdown: one block per T; gradient-based strategies (ours / torchjd's faster step,
    / autojac, / autogram, / floor), then loss-based ones (/ ew)."""
    lines: list[str] = []
    for T in sorted({r.num_tasks for r in results}):
        mine = [r for r in results if r.num_tasks == T]
        grad = [r for r in mine if r.gradient]
        loss = [r for r in mine if not r.gradient]
        lines.append(f"\n### T = {T}: median of per-round ratios [95% interval], "
                     f"target verdicts: ok / ~ / MISS\n")
        if grad:
            lines.append("| strategy | ours | ours ms | / torchjd (faster) <= "
                         f"{TARGETS['torchjd']} | / autojac | / autogram | / floor <= "
                         f"{TARGETS['floor']} | / ew |")
            lines.append("|---|---|---|---|---|---|---|---|")
            for r in grad:
                for name in (n for n in r.samples if n.startswith("ours")):
                    p = f"{name}/"
                    lines.append(
                        f"| {r.strategy} | {name} | {r.ms(name):.2f} | "
                        f"{_cell(r, p + 'torchjd', TARGETS['torchjd'])} | "
                        f"{_cell(r, p + 'torchjd-autojac', None)} | "
                        f"{_cell(r, p + 'torchjd-autogram', None)} | "
                        f"{_cell(r, p + 'floor', TARGETS['floor'])} | "
                        f"{_cell(r, p + REFERENCE, None)} |")
        if loss:
            lines.append("")
            lines.append(f"| loss-based | ours ms | ew ms | / ew | / ew without post_step <= "
                         f"{TARGETS['ew']} | null: ew / ew |")
            lines.append("|---|---|---|---|---|---|")
            for r in loss:
                ew_ms = r.ms(REFERENCE)
                key = "ours-post_step/" + REFERENCE
                target = key if key in r.ratios else "ours/" + REFERENCE
                lines.append(f"| {r.strategy} | {r.ms('ours'):.2f} | "
                             f"{'-' if ew_ms is None else f'{ew_ms:.2f}'} | "
                             f"{_cell(r, 'ours/' + REFERENCE, None)} | "
                             f"{_cell(r, target, TARGETS['ew'])} | "
                             f"{_cell(r, f'{CONTROL}/{REFERENCE}', None)} |")
    return "\n".join(lines).lstrip("\n")


def readme_table(results: Sequence[GroupResult], engines: Sequence[str]) -> str:
    """Markdown for the README: per strategy and engine of ``engines``, ours / torchjd's
    faster step and ours / floor at each T (gradient-based strategies that torchjd has),
    then loss-based strategies / ew (FAMO without its post-step forward); median [95%
    interval]."""
    tasks = sorted({r.num_tasks for r in results})
    by = {(r.strategy, r.num_tasks): r for r in results}
    ts = " | ".join(f"T={T}" for T in tasks)
    lines: list[str] = []

    def cell(strategy: str, T: int, key: str) -> str:
        r = by.get((strategy, T))
        ratio = r.ratios.get(key) if r is not None else None
        return ratio.text() if ratio is not None else "-"

    for s in sorted({r.strategy for r in results if r.gradient}):
        for engine in engines:
            name = f"ours[{engine}]/"
            if not any(k.startswith(name + "torchjd") for T in tasks if (s, T) in by
                       for k in by[(s, T)].ratios):
                continue
            if not lines:
                lines = [f"| strategy | engine | / torchjd {ts} | / floor {ts} |",
                         "|---|---|" + "---|" * (2 * len(tasks))]
            lines.append(f"| {s} | {engine} | "
                         + " | ".join(cell(s, T, name + "torchjd") for T in tasks) + " | "
                         + " | ".join(cell(s, T, name + "floor") for T in tasks) + " |")
    loss = sorted({r.strategy for r in results if not r.gradient})
    if loss:
        lines += [*([""] if lines else []), f"| loss-based | / ew {ts} |",
                  "|---|" + "---|" * len(tasks)]
        for s in loss:
            def key(T: int, s: str = s) -> str:
                r = by.get((s, T))
                post = "ours-post_step/" + REFERENCE
                return post if r is not None and post in r.ratios else "ours/" + REFERENCE
            label = f"{s} (without post_step)" if any(
                "ours-post_step/" + REFERENCE in by[(s, T)].ratios for T in tasks
                if (s, T) in by) else s
            lines.append(f"| {label} | " + " | ".join(cell(s, T, key(T)) for T in tasks)
                         + " |")

        def null(T: int) -> str:
            medians = [by[(s, T)].ratios[f"{CONTROL}/{REFERENCE}"].median for s in loss
                       if (s, T) in by and f"{CONTROL}/{REFERENCE}" in by[(s, T)].ratios]
            return f"{min(medians):.2f} - {max(medians):.2f}" if medians else "-"

        lines.append("| null: ew / ew built twice (range over the groups) | "
                     + " | ".join(null(T) for T in tasks) + " |")
    return "\n".join(lines)


def phase_table(results: Sequence[GroupResult]) -> str:
    """Markdown: median ms per phase of every runner of the gradient-based groups."""
    lines = ["| T | strategy | runner | forward | jacobian | aggregate | backward | optimizer |"
             " step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in results if r.gradient), key=lambda r: r.num_tasks):
        for name, ph in r.phases.items():
            cells = [f"{ph.get(p, 0.0):.2f}" for p in
                     ("forward", "jacobian", "aggregate", "backward", "optimizer")]
            lines.append(f"| {r.num_tasks} | {r.strategy} | {name} | " + " | ".join(cells)
                         + f" | {r.ms(name):.2f} |")
    return "\n".join(lines)


def step_fn(runner: Any) -> Callable[[], None]:
    timer = NullTimer()

    def step() -> None:
        runner.step(timer)
        synchronize(runner.device)

    return step


def clock_note(threads: int | None = None) -> str:
    threads = torch.get_num_threads() if threads is None else threads
    return f"thread CPU time, {threads} torch thread(s)"

