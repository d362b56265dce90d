"""The gate's speed part: one cell per strategy of the preset (plus ``ew``) at the
sweep's T and at ``--large-tasks``, timed round-robin in this process (timings are
compared with each other, so they must share the machine and be interleaved; no
executor), each round giving one ratio sample per cell; :func:`compare_speed` decides
whether the ratios grew."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from bench import speed
from bench.config import Component, SweepSpec
from bench.gate.plan import DEFAULTS, THREADS
from strategies.weighting import WEIGHTING

__all__ = ["SpeedVerdict", "compare_speed", "measure_ratios", "speed_cells", "speed_tasks"]

BLOCK_REDUCE = "min"  # a repeat sample is the fastest of --steps consecutive steps
CPU_CLOCK = "thread"  # time the thread's CPU time: preemption by other processes cancels


@dataclass(frozen=True)
class SpeedVerdict:
    """Current vs reference ratio samples of one strategy."""

    reference_median: float
    current_median: float
    change: float  # current median / reference median - 1
    p_slower: float  # one-sided Mann-Whitney U p-value, current > reference
    p_faster: float  # one-sided, current < reference
    regressed: bool
    improved: bool


def compare_speed(
    reference: Sequence[float],
    current: Sequence[float],
    *,
    min_effect: float = DEFAULTS["min_effect"],
    alpha: float = DEFAULTS["alpha"],
) -> SpeedVerdict:
    """Is ``current`` (ratio samples) slower than ``reference`` by more than ``min_effect``
    (relative change of the medians), significantly (Mann-Whitney U, p < ``alpha``)?"""
    base = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if base.size == 0 or cur.size == 0:
        raise ValueError("compare_speed needs samples on both sides")
    base_median, cur_median = float(np.median(base)), float(np.median(cur))
    change = cur_median / base_median - 1.0 if base_median > 0 else math.inf
    p_slower = float(stats.mannwhitneyu(cur, base, alternative="greater").pvalue)
    p_faster = float(stats.mannwhitneyu(cur, base, alternative="less").pvalue)
    return SpeedVerdict(
        reference_median=base_median,
        current_median=cur_median,
        change=change,
        p_slower=p_slower,
        p_faster=p_faster,
        regressed=change > min_effect and p_slower < alpha,
        improved=change < -min_effect and p_faster < alpha,
    )


def speed_tasks(spec: SweepSpec, large_tasks: int = DEFAULTS["large_tasks"]) -> list[int]:
    """The numbers of tasks of the speed cells: T of the first dataset, and
    ``large_tasks`` when it is larger (0: none)."""
    first = speed.default_tasks(spec)
    return [first, large_tasks] if large_tasks > first else [first]


def speed_cells(spec: SweepSpec,
                large_tasks: int = DEFAULTS["large_tasks"]) -> list[speed.SpeedCell]:
    """``ew`` plus one cell per other strategy of the sweep, at each of
    :func:`speed_tasks` (see the module docstring); the ``ew`` cells first."""

    if not any(c.name == speed.REFERENCE for c in spec.weighting):
        ew = Component(speed.REFERENCE, WEIGHTING.resolve(speed.REFERENCE, {}))
        spec = _replace(spec, weighting=(ew, *spec.weighting))
    spec = _replace(spec, sharing=spec.sharing[:1])
    cells, _ = speed.build_cells(spec, engines=[spec.train.engine],
                                 tasks=speed_tasks(spec, large_tasks), device="cpu")
    ew_first = sorted(cells, key=lambda c: c.strategy.name != speed.REFERENCE)
    return ew_first


def _replace(spec: SweepSpec, **changes: Any) -> SweepSpec:
    return dataclasses.replace(spec, **changes)


def measure_ratios(
    cells: Sequence[speed.SpeedCell], *, repeats: int, warmup: int, steps: int
) -> dict[str, dict[str, Any]]:
    """Per non-reference cell (by label): the per-round ratio samples to the ``ew`` cell
    of the same configuration (``SpeedCell.reference_key``: the same T)."""
    with speed.torch_threads(THREADS):
        measurements = speed.measure(cells, repeats=repeats, warmup=warmup,
                                     steps_per_repeat=steps, block_reduce=BLOCK_REDUCE,
                                     cpu_clock=CPU_CLOCK)
    refs = {c.reference_key: m.step_samples for c, m in zip(cells, measurements, strict=True)
            if c.strategy.name == speed.REFERENCE}
    out: dict[str, dict[str, Any]] = {}
    for cell, m in zip(cells, measurements, strict=True):
        if cell.strategy.name == speed.REFERENCE:
            continue
        ref_steps = refs.get(cell.reference_key)
        if ref_steps is None:
            raise ValueError(f"speed cell {cell.label} has no {speed.REFERENCE} cell to "
                             "compare with")
        ratios = [s / r for s, r in zip(m.step_samples, ref_steps, strict=True)]
        out[cell.label] = {
            "cell": cell.to_dict(),
            "ratio_samples": ratios,
            "ratio_median": float(np.median(ratios)),
            "step_median_s": float(np.median(m.step_samples)),
            "reference_step_median_s": float(np.median(ref_steps)),
        }
    return out
