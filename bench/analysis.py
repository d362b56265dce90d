"""Analysis: each task's relative change against its single-task baseline, and delta-m.

Conventions (both reported, named explicitly, in percent):

- ``delta_m_task``: task-level mean of relative *improvement*. For each task,
  average over its metrics of ``s_k (M_k - B_k) / |B_k|`` (``s_k = +1`` when
  higher is better, ``-1`` otherwise), then average over tasks. Positive is
  better. Each task's term is its *relative change*, the negative-transfer
  signal (Maninis et al. 2019; Vandenhende et al. 2021).
- ``delta_m_metric``: metric-level mean of relative *drop*, as Nash-MTL (Navon
  et al. 2022) and FAMO (Liu et al. 2023) report it:
  ``1/K sum_k (-1)^{d_k} (M_k - B_k) / B_k`` over all K metrics of all tasks,
  ``d_k = 1`` when higher is better. Lower is better.

``M`` is the multi-task trial's test metric and ``B`` that of the single-task
baseline trained with the same seed, so seeds pair up.

Uncertainty over seeds (``CI_METHOD``): a Student-t interval of the mean over seeds,
``mean ± t_{n-1, (1 + CI_LEVEL)/2} s / sqrt(n)`` (level ``CI_LEVEL`` = 95 %, ``s`` the
sample standard deviation). Unlike a percentile bootstrap, which with 2 seeds is just the
minimum and maximum of the two values, it widens as the number of seeds falls (with 2
seeds its half-width is 12.7 standard errors). One seed gives no interval (NaN bounds).
A task shows *negative transfer* when its whole interval of relative change lies below
zero; with fewer than ``MIN_SEEDS_VERDICT`` = 3 seeds no verdict is given (``verdict`` =
"too few seeds (n=2)"). :func:`bootstrap_ci` (percentile bootstrap, seeded) stays
available.

Across datasets (:func:`rankings`): strategies are ranked per dataset by
``delta_m_task`` (rank 1 = best, ties averaged), then the Friedman test and the
Nemenyi critical difference (Demšar 2006) are computed. They need at least 3
strategies and 2 datasets, and only strategies with a result on every dataset
take part (a complete block design).

Cost and quality (:func:`cost_quality`): ``delta_m_task`` against time per step
(and peak memory when speed records give one); the non-dominated strategies of
each dataset are marked.

Gradient-conflict probes (:func:`conflict_summary`): the conflict fraction (share of
probed steps with cosine < 0) is about 0.5 for orthogonal gradients from noise alone, so it
comes with the mean cosine and its Student-t interval (over the seeds' means; with one
seed, over that trial's probed steps) and whether that interval excludes 0; results from
fewer than ``bench.probes.MIN_PROBED_STEPS`` probed steps are flagged ``enough_probes =
False``.

Scalarization front (:func:`scalarization_front`): for datasets with 2 or 3
tasks, trials of the ``ls`` strategy (fixed weight vectors) trace the linear
scalarization front in the space of per-task relative changes; every other
strategy's mean point is marked dominated or not by a point of that front
(Xin et al. 2022; Kurin et al. 2022). The report computes the front against the best
single-task recipe (``trial_summary(..., reference="best")``), so that with a
``train_grid`` every point has the same reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from bench.probes import MIN_PROBED_STEPS
from bench.tasks import HIGHER_IS_BETTER

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CI_LEVEL",
    "CI_METHOD",
    "MIN_SEEDS_VERDICT",
    "SCALARIZATION",
    "Rankings",
    "bootstrap_ci",
    "conflict_summary",
    "convergence",
    "cost_quality",
    "delta_m_intervals",
    "is_scalarization",
    "nemenyi_cd",
    "pareto_mask",
    "per_task_changes",
    "rankings",
    "scalarization_front",
    "strategy_label",
    "t_interval",
    "task_change_intervals",
    "transfer_verdict",
    "trial_costs",
    "trial_summary",
]

BOOTSTRAP_RESAMPLES = 10_000
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
CI_METHOD = "Student-t interval of the mean over seeds"
MIN_SEEDS_VERDICT = 3  # fewer seeds: no negative-transfer verdict
SCALARIZATION = "ls"  # weighting name of linear scalarization with fixed weights

GROUP = ["dataset", "sharing", "weighting"]


def per_task_changes(
    tidy: pd.DataFrame, split: str = "test", reference: str = "paired"
) -> pd.DataFrame:
    """One row per multi-task trial x task x metric with its baseline value and relative
    improvement (``rel_improvement``, a fraction; positive is better).

    ``reference="paired"``: each trial's own baseline (same data, model, training
    settings and seed). ``reference="best"``: for each (dataset, task, metric) the
    single-task recipe (baselines' training settings, e.g. a ``train_grid`` learning
    rate) with the best mean over seeds, paired by seed: the tuned single-task model, one
    reference for all of a dataset's trials, so that points trained with different
    settings are comparable (identical to "paired" when there is one recipe)."""
    ok = tidy[(tidy["status"] == "ok") & (tidy["split"] == split)]
    ok = ok[ok["metric"].isin(HIGHER_IS_BETTER.keys())]
    mtl = ok[ok["baseline_id"].notna()]
    base = ok[ok["baseline_task"].notna()]
    if reference == "paired":
        merged = mtl.merge(
            base[["trial_id", "task", "metric", "value"]].rename(
                columns={"trial_id": "baseline_id", "value": "baseline_value"}),
            on=["baseline_id", "task", "metric"],
            how="inner",
        )
    elif reference == "best":
        keys = ["dataset", "task", "metric"]
        means = base.groupby([*keys, "weighting"])["value"].mean().reset_index()
        higher = means["metric"].map(HIGHER_IS_BETTER)
        means["score"] = np.where(higher, means["value"], -means["value"])
        best = means.loc[means.groupby(keys)["score"].idxmax(), [*keys, "weighting"]]
        ref = base.merge(best, on=[*keys, "weighting"])[[*keys, "seed", "value"]]
        merged = mtl.merge(ref.rename(columns={"value": "baseline_value"}),
                           on=[*keys, "seed"], how="inner")
    else:
        raise ValueError(f"reference must be 'paired' or 'best', not {reference!r}")
    higher = np.array([HIGHER_IS_BETTER[m] for m in merged["metric"]], dtype=bool)
    sign = np.where(higher, 1.0, -1.0)
    value = merged["value"].astype(float)
    denom = merged["baseline_value"].astype(float).abs().replace(0.0, np.nan)
    merged["rel_improvement"] = sign * (value - merged["baseline_value"].astype(float)) / denom
    return merged


def trial_summary(
    tidy: pd.DataFrame, split: str = "test", reference: str = "paired"
) -> pd.DataFrame:
    """One row per multi-task trial: ``delta_m_task`` and ``delta_m_metric`` (percent), and
    ``rel_<task>`` (percent), each task's mean relative improvement over its metrics;
    ``reference`` as in :func:`per_task_changes`.

    Trials missing a baseline for some task get NaN delta-m (never a partial mean)."""
    changes = per_task_changes(tidy, split, reference)
    keys = ["trial_id", "dataset", "sharing", "weighting", "seed"]
    if changes.empty:
        return pd.DataFrame(columns=[*keys, "delta_m_task", "delta_m_metric"])
    task_change = changes.groupby([*keys, "task"])["rel_improvement"].mean() * 100
    summary = task_change.unstack("task")
    summary.columns = [f"rel_{c}" for c in summary.columns]
    summary["delta_m_task"] = task_change.groupby(keys).mean()
    summary["delta_m_metric"] = -changes.groupby(keys)["rel_improvement"].mean() * 100
    expected = tidy[tidy["baseline_id"].notna()].groupby("trial_id")["task"].nunique()
    have = changes.groupby("trial_id")["task"].nunique()
    incomplete = summary.index.get_level_values("trial_id").map(
        lambda t: have.get(t, 0) < expected.get(t, 0)
    )
    summary.loc[np.asarray(incomplete), ["delta_m_task", "delta_m_metric"]] = np.nan
    return summary.reset_index()


# --------------------------------------------------------------------------- intervals


def _finite_values(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """The values as a float array, NaN dropped (one per seed)."""
    return np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed, NaN dropped) and its
    percentile-bootstrap interval. Fewer than 2 values give NaN bounds."""
    x = _finite_values(values)
    if x.size < 2:
        return (float(x.mean()) if x.size else np.nan, np.nan, np.nan)
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (mean, float(low), float(high))


def t_interval(
    values: Sequence[float] | np.ndarray | pd.Series, *, level: float = CI_LEVEL
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed, NaN dropped) and its
    Student-t interval, ``mean ± t_{n-1} s / sqrt(n)``. Fewer than 2 values give NaN
    bounds; values without spread give a degenerate interval."""
    x = _finite_values(values)
    if x.size < 2:
        return (float(x.mean()) if x.size else np.nan, np.nan, np.nan)
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / np.sqrt(x.size)
    half = float(stats.t.ppf(0.5 + level / 2.0, x.size - 1)) * sem
    return (mean, mean - half, mean + half)


def transfer_verdict(n_seeds: int, high: float) -> str:
    """``yes`` (whole interval below zero), ``no``, or ``too few seeds (n=k)`` below
    ``MIN_SEEDS_VERDICT``."""
    if n_seeds < MIN_SEEDS_VERDICT:
        return f"too few seeds (n={n_seeds})"
    return "yes" if np.isfinite(high) and high < 0.0 else "no"


def strategy_label(sharing: str, weighting: str) -> str:
    """How a (sharing, weighting) combination is named in tables and plots."""
    return f"{sharing}/{weighting}"


def component_name(label: str) -> str:
    """``ls(weights=[1, 0])`` -> ``ls``; ``ew @proportional`` -> ``ew``."""
    return str(label).split(" @", 1)[0].split("(", 1)[0]


def is_scalarization(weighting_label: str) -> bool:
    return component_name(weighting_label) == SCALARIZATION


def _tasks_of(summary: pd.DataFrame) -> list[str]:
    return [c[len("rel_"):] for c in summary.columns if c.startswith("rel_")]


def task_change_intervals(summary: pd.DataFrame, *, level: float = CI_LEVEL) -> pd.DataFrame:
    """Per (dataset, sharing, weighting, task): mean relative change over seeds (percent),
    its Student-t interval (:func:`t_interval`), the number of seeds, ``verdict`` (see
    :func:`transfer_verdict`) and ``negative_transfer`` (verdict "yes": at least
    ``MIN_SEEDS_VERDICT`` seeds and the whole interval below zero)."""
    columns = [*GROUP, "strategy", "task", "mean", "low", "high", "n_seeds",
               "negative_transfer", "verdict"]
    rows = []
    tasks = _tasks_of(summary)
    for key, group in summary.groupby(GROUP, sort=True):
        for task in tasks:
            values = group[f"rel_{task}"].dropna()
            if values.empty:
                continue
            mean, low, high = t_interval(values, level=level)
            verdict = transfer_verdict(int(values.size), high)
            rows.append({
                **dict(zip(GROUP, key, strict=True)),
                "strategy": strategy_label(key[1], key[2]),
                "task": task, "mean": mean, "low": low, "high": high,
                "n_seeds": int(values.size),
                "negative_transfer": verdict == "yes", "verdict": verdict,
            })
    return pd.DataFrame(rows, columns=columns)


def delta_m_intervals(summary: pd.DataFrame, *, level: float = CI_LEVEL) -> pd.DataFrame:
    """Per (dataset, sharing, weighting): ``delta_m_task`` and ``delta_m_metric`` (mean
    over seeds, percent) each with ``_low``/``_high`` Student-t bounds, and ``n_seeds``."""
    columns = [*GROUP, "strategy", "n_seeds"]
    for name in ("delta_m_task", "delta_m_metric"):
        columns += [name, f"{name}_low", f"{name}_high"]
    rows = []
    for key, group in summary.groupby(GROUP, sort=True):
        row = {**dict(zip(GROUP, key, strict=True)),
               "strategy": strategy_label(key[1], key[2]),
               "n_seeds": int(group["delta_m_task"].notna().sum())}
        for name in ("delta_m_task", "delta_m_metric"):
            row[name], row[f"{name}_low"], row[f"{name}_high"] = t_interval(
                group[name], level=level
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- rankings


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks for ``k`` strategies on ``n`` datasets:
    ``q_alpha sqrt(k (k + 1) / (6 n))`` with ``q_alpha`` the studentized range quantile
    (infinite degrees of freedom) divided by sqrt(2) (Demšar 2006, Table 5)."""
    q = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0)
    return float(q * np.sqrt(k * (k + 1) / (6.0 * n)))


@dataclass
class Rankings:
    """Ranks of strategies across datasets, the Friedman test and the Nemenyi CD."""

    ranks: pd.DataFrame  # dataset x strategy, 1 = best
    mean_rank: pd.Series  # strategy -> mean rank, ascending
    dropped: list[str] = field(default_factory=list)  # strategies missing on some dataset
    friedman_statistic: float = float("nan")
    friedman_p: float = float("nan")
    cd: float = float("nan")
    alpha: float = 0.05
    cliques: list[list[str]] = field(default_factory=list)  # not significantly different
    note: str = ""

    @property
    def testable(self) -> bool:
        return np.isfinite(self.cd)

    def significantly_different(self, a: str, b: str) -> bool:
        return bool(self.testable and abs(self.mean_rank[a] - self.mean_rank[b]) > self.cd)


def _cliques(mean_rank: pd.Series, cd: float) -> list[list[str]]:
    """Maximal runs of strategies (sorted by mean rank) whose ranks differ by at most CD."""
    names = list(mean_rank.index)
    values = mean_rank.to_numpy()
    out: list[tuple[int, int]] = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and values[j + 1] - values[i] <= cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return [names[a : b + 1] for a, b in out]


def rankings(
    cells: pd.DataFrame,
    value: str = "delta_m_task",
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
    strategy: str = "strategy",
) -> Rankings:
    """Rank strategies within each dataset by ``value`` (one row per dataset x strategy in
    ``cells``, e.g. :func:`delta_m_intervals`), then test across datasets.

    The Friedman test and the Nemenyi CD need >= 3 strategies and >= 2 datasets; strategies
    without a finite ``value`` on every dataset are dropped (listed in ``dropped``)."""
    table = cells.pivot_table(index="dataset", columns=strategy, values=value, aggfunc="mean")
    complete = table.dropna(axis=1, how="any")
    dropped = sorted(set(table.columns) - set(complete.columns))
    if complete.empty:
        empty = pd.DataFrame()
        return Rankings(empty, pd.Series(dtype=float), dropped, alpha=alpha,
                        note="no strategy has a result on every dataset")
    sign = -1.0 if higher_is_better else 1.0
    ranks = complete.apply(lambda row: pd.Series(
        stats.rankdata(sign * row.to_numpy()), index=row.index), axis=1)
    mean_rank = ranks.mean(axis=0).sort_values(kind="stable")
    k, n = complete.shape[1], complete.shape[0]
    result = Rankings(ranks, mean_rank, dropped, alpha=alpha)
    if k < 3 or n < 2:
        result.note = (f"Friedman test and Nemenyi CD need >= 3 strategies and >= 2 datasets "
                       f"(have {k} strategies on {n} datasets)")
        return result
    try:
        stat, p = stats.friedmanchisquare(*[complete[c].to_numpy() for c in complete.columns])
    except ValueError as err:  # e.g. every value tied
        result.note = f"Friedman test not computable: {err}"
        return result
    result.friedman_statistic, result.friedman_p = float(stat), float(p)
    result.cd = nemenyi_cd(k, n, alpha)
    result.cliques = _cliques(mean_rank, result.cd)
    return result


# --------------------------------------------------------------------------- Pareto


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n x d). Rows with NaN are
    never non-dominated. A row is dominated when another is at least as good in every
    column and strictly better in one."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[0] == 0:
        return np.zeros(v.shape[0] if v.ndim else 0, dtype=bool)
    v = v * np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)  # larger is better now
    finite = np.isfinite(v).all(axis=1)
    mask = finite.copy()
    for i in np.flatnonzero(finite):
        others = v[finite]
        dominated = ((others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def _non_dominated_partial(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Like :func:`pareto_mask`, but the first two columns must be finite and a missing
    value in a later column (e.g. memory not measured) leaves that axis out of the
    comparison of that pair of rows."""
    v = np.asarray(values, dtype=float) * np.where(np.asarray(maximize, bool), 1.0, -1.0)
    ok = np.isfinite(v[:, :2]).all(axis=1)
    mask = ok.copy()
    for i in np.flatnonzero(ok):
        for j in np.flatnonzero(ok):
            if i == j:
                continue
            both = np.isfinite(v[i]) & np.isfinite(v[j])
            a, b = v[j, both], v[i, both]
            if (a >= b).all() and (a > b).any():
                mask[i] = False
                break
    return mask


def dominated_by(point: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Rows of ``front`` that dominate ``point`` (everything maximised)."""
    front = np.asarray(front, dtype=float)
    if front.size == 0:
        return np.zeros(0, dtype=bool)
    return (front >= point).all(axis=1) & (front > point).any(axis=1)


def convergence(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial (multi-task and single-task baselines) with its
    ``best_epoch`` (0-based, lowest mean validation loss), ``epochs`` and
    ``last_epoch_best``: the checkpoint is the last epoch, so the validation loss was
    still falling when training stopped: probably not converged."""
    cols = ["trial_id", *GROUP, "seed", "baseline_task", "best_epoch", "epochs"]
    ok = tidy[tidy["status"] == "ok"].drop_duplicates("trial_id")
    out = ok.reindex(columns=cols).reset_index(drop=True)
    best = pd.to_numeric(out["best_epoch"], errors="coerce")
    epochs = pd.to_numeric(out["epochs"], errors="coerce")
    out["last_epoch_best"] = (best == epochs - 1) & (epochs > 1)
    return out


def trial_costs(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per finished multi-task trial with its time per step and wall time."""
    ok = tidy[(tidy["status"] == "ok") & tidy["baseline_id"].notna()]
    cols = ["trial_id", *GROUP, "seed", "step_s", "wall_s"]
    return ok.drop_duplicates("trial_id")[cols].reset_index(drop=True)


def cost_quality(
    cells: pd.DataFrame,
    costs: pd.DataFrame,
    memory: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Quality (``delta_m_task``, from :func:`delta_m_intervals`) and cost per dataset x
    strategy: median time per step over seeds (``step_s``), and ``peak_memory_bytes`` when
    ``memory`` (columns sharing, weighting, peak_memory_bytes; names, not labels) is given.
    ``non_dominated`` marks the strategies no other of the same dataset beats on every
    axis (quality up, cost down). Scalarization trials are left out."""
    columns = [*cells.columns, "step_s", "peak_memory_bytes", "non_dominated"]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    step = costs.groupby(GROUP)["step_s"].median().rename("step_s").reset_index()
    out = cells.merge(step, on=GROUP, how="left") if not step.empty else cells.assign(
        step_s=np.nan)
    out = out[~out["weighting"].map(is_scalarization)].copy()
    axes, maximize = ["delta_m_task", "step_s"], [True, False]
    out["peak_memory_bytes"] = np.nan
    if memory is not None and not memory.empty:
        mem = memory.groupby(["sharing", "weighting"])["peak_memory_bytes"].median()
        out["peak_memory_bytes"] = [
            mem.get((component_name(s), component_name(w)), np.nan)
            for s, w in zip(out["sharing"], out["weighting"], strict=True)
        ]
        if out["peak_memory_bytes"].notna().any():
            axes.append("peak_memory_bytes")
            maximize.append(False)
    out["non_dominated"] = False
    for _, idx in out.groupby("dataset").groups.items():
        sub = out.loc[idx, axes].to_numpy(dtype=float)
        out.loc[idx, "non_dominated"] = _non_dominated_partial(sub, maximize)
    return out.reset_index(drop=True)


def scalarization_front(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """For each dataset with 2 or 3 tasks and ``ls`` trials: one row per (sharing,
    weighting) with the mean relative change of each task over seeds (``rel_<task>``,
    percent), ``is_ls``, ``on_front`` (ls points not dominated by another ls point of the
    same sharing), ``dominated`` (other strategies: dominated by some ls point of the same
    sharing; None when that sharing has no ls trial) and ``dominated_by`` (ls labels)."""
    out: dict[str, pd.DataFrame] = {}
    for dataset, group in summary.groupby("dataset", sort=True):
        tasks = [t for t in _tasks_of(group) if group[f"rel_{t}"].notna().any()]
        if not 2 <= len(tasks) <= 3 or not group["weighting"].map(is_scalarization).any():
            continue
        cols = [f"rel_{t}" for t in tasks]
        means = group.groupby(["sharing", "weighting"], sort=True)[cols].mean().reset_index()
        means = means.dropna(subset=cols)
        means["is_ls"] = means["weighting"].map(is_scalarization)
        means["n_seeds"] = [
            int(((group["sharing"] == s) & (group["weighting"] == w)).sum())
            for s, w in zip(means["sharing"], means["weighting"], strict=True)
        ]
        means["on_front"] = False
        means["dominated"] = None
        means["dominated_by"] = ""
        for _sharing, idx in means.groupby("sharing").groups.items():
            sub = means.loc[idx]
            ls = sub[sub["is_ls"]]
            if ls.empty:
                continue
            front = ls[cols].to_numpy(dtype=float)
            means.loc[ls.index, "on_front"] = pareto_mask(front, [True] * len(cols))
            for i in sub.index[~sub["is_ls"]]:
                hit = dominated_by(means.loc[i, cols].to_numpy(dtype=float), front)
                means.at[i, "dominated"] = bool(hit.any())
                means.at[i, "dominated_by"] = ", ".join(ls["weighting"].to_numpy()[hit])
        out[str(dataset)] = means.reset_index(drop=True)
    return out


# --------------------------------------------------------------------------- probes


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
