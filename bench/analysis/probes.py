"""Task relationships from the records' probes: gradient conflict (pairwise cosine of the
task gradients, conflict fraction), lookahead task affinity, and expert utilisation of
gated architectures; summarised per (dataset, strategy)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench.analysis.deltas import CI_LEVEL, t_interval
from bench.probes import MIN_PROBED_STEPS

if TYPE_CHECKING:
    from bench.records import TrialRecord

def conflict_summary(rows: pd.DataFrame, min_probed_steps: int = MIN_PROBED_STEPS,
                     level: float = CI_LEVEL) -> pd.DataFrame:
    """Gradient-conflict probes per (dataset, strategy, pair), from one row per trial and
    pair (columns dataset, strategy, seed, pair, conflict_fraction, mean_cosine,
    mean_magnitude_similarity, probed_steps, and optionally cosines: the per-step list).

    Near orthogonal gradients the conflict fraction (share of probed steps with cosine < 0)
    is about 0.5 from noise alone, so it comes with the mean cosine and its Student-t
    interval (``level``): over the seeds' mean cosines with 2 seeds or more (``interval``
    = "seeds"), else over the one trial's probed steps ("probed steps"; correlated, so
    narrower than the truth). ``cosine_sign``: "negative" / "positive" when the interval
    excludes 0, "indistinguishable from 0" when it holds 0, "" without an interval.
    ``probed_steps``: the fewest probed steps of any seed; ``enough_probes``: at least
    ``min_probed_steps`` (fewer is mostly the step-0 measurement, before any strategy
    acted)."""
    keys = ["dataset", "strategy", "pair"]
    cols = [*keys, "conflict_fraction", "mean_cosine", "cosine_low", "cosine_high",
            "interval", "cosine_sign", "mean_magnitude_similarity", "n_seeds",
            "probed_steps", "enough_probes"]
    out = []
    for key, g in rows.groupby(keys, sort=True):
        seed_means = g["mean_cosine"].to_numpy(dtype=float)
        n_seeds = int(g["seed"].nunique())
        low, high, over = np.nan, np.nan, ""
        if n_seeds >= 2:
            _, low, high = t_interval(seed_means, level=level)
            over = "seeds"
        elif "cosines" in g:
            steps = np.asarray([c for cs in g["cosines"] if isinstance(cs, list)
                                for c in cs if c is not None], dtype=float)
            _, low, high = t_interval(steps, level=level)
            over = "probed steps"
        if not np.isfinite(low):
            over, sign = "", ""
        elif high < 0:
            sign = "negative"
        elif low > 0:
            sign = "positive"
        else:
            sign = "indistinguishable from 0"
        probed = g["probed_steps"].min()
        out.append({
            **dict(zip(keys, key, strict=True)),
            "conflict_fraction": float(g["conflict_fraction"].mean()),
            "mean_cosine": float(np.nanmean(seed_means)) if np.isfinite(seed_means).any()
            else np.nan,
            "cosine_low": low, "cosine_high": high, "interval": over, "cosine_sign": sign,
            "mean_magnitude_similarity": float(g["mean_magnitude_similarity"].mean()),
            "n_seeds": n_seeds,
            "probed_steps": int(probed) if pd.notna(probed) else 0,
            "enough_probes": bool(pd.notna(probed) and probed >= min_probed_steps),
        })
    return pd.DataFrame(out, columns=cols)

@dataclass
class Relationships:
    """Task relationships of a run's finished multi-task trials.

    ``conflict``: :func:`conflict_summary` per (dataset, strategy, pair); ``cosines``: one
    row per trial, pair and probed step; ``affinity``: mean lookahead affinity per
    (dataset, strategy, task_i, task_j) over seeds, with ``n_seeds``, the fewest
    ``probed_steps`` and ``enough_probes``; ``experts``: mean gate weight per (dataset,
    strategy, task, expert) over seeds. Each is empty when no record holds it."""

    conflict: pd.DataFrame
    cosines: pd.DataFrame
    affinity: pd.DataFrame
    experts: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.conflict.empty and self.affinity.empty and self.experts.empty


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def relationships(trials: Iterable[tuple[TrialRecord, Mapping[str, Any]]],
                  min_probed_steps: int = MIN_PROBED_STEPS) -> Relationships:
    """:class:`Relationships` of ``trials``: (record, key) pairs, ``key`` the trial's
    dataset, strategy and seed labels."""
    conflict_rows, cosine_rows, affinity_rows, expert_rows = [], [], [], []
    for rec, lab in trials:
        key = {"dataset": lab["dataset"], "strategy": lab["strategy"], "seed": lab["seed"]}
        conflict = rec.probes.get("conflict") or {}
        steps = conflict.get("steps") or []
        fractions = conflict.get("conflict_fraction") or {}
        pairs = conflict.get("pairs") or {}
        # Records from before probed_steps was recorded: the length of their step list.
        probed = conflict.get("probed_steps", len(steps))
        for pair, series in pairs.items():
            series = series or {}
            cos = [v for v in series.get("cosine") or [] if v is not None]
            mag = [v for v in series.get("magnitude_similarity") or [] if v is not None]
            conflict_rows.append({**key, "pair": pair,
                                  "conflict_fraction": fractions.get(pair, math.nan),
                                  "mean_cosine": _mean(cos), "cosines": cos,
                                  "probed_steps": probed,
                                  "mean_magnitude_similarity": _mean(mag)})
            for i, c in enumerate(series.get("cosine") or []):
                cosine_rows.append({**key, "pair": pair,
                                    "step": steps[i] if i < len(steps) else i, "cosine": c})
        for pair, frac in fractions.items():
            if pair not in pairs:
                conflict_rows.append({**key, "pair": pair, "conflict_fraction": frac,
                                      "mean_cosine": math.nan, "cosines": [],
                                      "probed_steps": probed,
                                      "mean_magnitude_similarity": math.nan})
        affinity = rec.probes.get("affinity") or {}
        observed = affinity.get("probed_steps", affinity.get("observations", 0))
        for ti, row in (affinity.get("matrix") or {}).items():
            for tj, v in (row or {}).items():
                affinity_rows.append({**key, "task_i": ti, "task_j": tj, "affinity": v,
                                      "probed_steps": observed})
        util = rec.architecture_stats.get("expert_utilisation") or {}
        for task, ws in util.items():
            for e, w in enumerate(ws or []):
                expert_rows.append({**key, "task": task, "expert": e, "weight": w})
    conflict = (conflict_summary(pd.DataFrame(conflict_rows), min_probed_steps)
                if conflict_rows else pd.DataFrame())
    cosines = pd.DataFrame(cosine_rows)
    affinity = pd.DataFrame()
    if affinity_rows:
        affinity = pd.DataFrame(affinity_rows).groupby(
            ["dataset", "strategy", "task_i", "task_j"], sort=True).agg(
            affinity=("affinity", "mean"), n_seeds=("seed", "nunique"),
            probed_steps=("probed_steps", "min")).reset_index()
        affinity["enough_probes"] = affinity["probed_steps"] >= min_probed_steps
    experts = pd.DataFrame()
    if expert_rows:
        experts = pd.DataFrame(expert_rows).groupby(
            ["dataset", "strategy", "task", "expert"], sort=True).agg(
            weight=("weight", "mean"), n_seeds=("seed", "nunique")).reset_index()
    return Relationships(conflict, cosines, affinity, experts)


def pair_matrix(group: pd.DataFrame, value: str) -> pd.DataFrame:
    """Symmetric task x task matrix of ``value`` from ``ti|tj`` pair keys."""
    entries: dict[tuple[str, str], Any] = {}
    tasks: list[str] = []
    for pair, v in zip(group["pair"], group[value], strict=True):
        a, _, b = str(pair).partition("|")
        b = b or a
        entries[(a, b)] = entries[(b, a)] = v
        tasks += [t for t in (a, b) if t not in tasks]
    return pd.DataFrame({b: {a: entries.get((a, b), np.nan) for a in tasks} for b in tasks},
                        index=tasks, columns=tasks)
