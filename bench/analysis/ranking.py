"""Across datasets and within one: rankings with the Friedman test and the Nemenyi
critical difference, Pareto masks, cost against quality and the scalarization front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from bench.analysis.deltas import GROUP, _tasks_of, component_name, is_scalarization

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


def near_front(values: np.ndarray, front: np.ndarray, rel_tol: float = 1e-2) -> np.ndarray:
    """For each row of ``values`` (n x d, every objective minimised): no point of ``front``
    is better on every objective by more than ``rel_tol`` of the front's largest range."""
    front = np.asarray(front, dtype=float)
    values = np.asarray(values, dtype=float).reshape(-1, front.shape[1])
    tol = rel_tol * (np.ptp(front, axis=0).max() or 1.0)
    return np.array([not (front < v - tol).all(axis=1).any() for v in values], dtype=bool)


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
