"""Training dynamics and task relationships: task weights, gradient conflict, affinity,
expert utilisation, learning curves and the toy landscape's trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.plots.base import (
    _grid,
    _legend,
    _legend_w,
    _palette,
    _short,
    _t,
    _text_w,
    strategy_colors,
    theme,
)

BASELINE = "single-task"  # the label of the baselines' learning curves
LAST_EPOCH = "best = last epoch"


def weights_over_training(weights: pd.DataFrame, title: str) -> Figure | None:
    """Task weights per epoch (mean over seeds), one panel per strategy."""
    if weights.empty:
        return None
    strategies = sorted(dict.fromkeys(weights["strategy"]))
    tasks = list(dict.fromkeys(weights["task"]))
    colors = dict(zip(tasks, _palette(len(tasks)), strict=True))
    with theme():
        lw = _legend_w(tasks)
        fig, axes = _grid(len(strategies), 3, 2.8, 1.9, legend=lw, top=0.7, hspace=0.7,
                          sharey=True)
        for ax, strategy in zip(axes, strategies, strict=True):
            sub = weights[weights["strategy"] == strategy]
            mean = sub.groupby(["task", "epoch"])["weight"].mean()
            for task in tasks:
                if task in mean.index.get_level_values(0):
                    s = mean.loc[task]
                    ax.plot(s.index, s.to_numpy(), color=colors[task], label=_t(task))
            ax.set_title(_short(strategy))
            ax.set_xlabel("epoch")
            ax.set_ylabel("weight")
        handles = [Line2D([], [], color=colors[t]) for t in tasks]
        _legend(fig, handles, [_t(t) for t in tasks], lw, title="task")
        fig.suptitle(_t(title), fontsize=9)
    return fig


def _matrix_panels(matrices: dict[str, pd.DataFrame], title: str, cbar: str, *,
                   center: float | None, vmin: float | None, vmax: float | None,
                   cmap: str, xlabel: str = "", ylabel: str = "", fmt: str = ".2f",
                   labels: dict[str, pd.DataFrame] | None = None) -> Figure | None:
    """One heatmap per entry of ``matrices``; ``labels`` (same shapes, strings) replace
    the numbers written in the cells."""
    matrices = {k: m for k, m in matrices.items() if not m.empty}
    if not matrices:
        return None
    names = sorted(matrices)  # every strategy, in the same order in every figure
    size = max(m.shape[0] for m in matrices.values())
    tick_w = _text_w([_short(t, 14) for m in matrices.values() for t in m.index])
    with theme():
        extra = 0.3 if ylabel else 0.0
        fig, axes = _grid(len(names), 3, 1.2 + 0.5 * size, 0.5 * size, left=tick_w + 0.5 + extra,
                          wspace=tick_w + 0.6 + extra, bottom=tick_w * 0.6 + 0.6, top=0.8,
                          hspace=tick_w * 0.6 + 0.9, right=0.6)
        for ax, name in zip(axes, names, strict=True):
            m = matrices[name]
            annot: Any = m.shape[0] <= 8
            if annot and labels is not None and name in labels:
                annot = labels[name].reindex(index=m.index, columns=m.columns).fillna("")
                annot, fmt = annot.to_numpy(dtype=object), ""
            sns.heatmap(m, ax=ax, annot=annot, fmt=fmt, cmap=cmap, center=center,
                        vmin=vmin, vmax=vmax, linewidths=0.5, square=True,
                        cbar_kws={"label": cbar, "shrink": 0.8})
            ax.set_xticklabels([_short(t.get_text(), 14) for t in ax.get_xticklabels()],
                               rotation=30, ha="right")
            ax.set_yticklabels([_short(t.get_text(), 14) for t in ax.get_yticklabels()],
                               rotation=0)
            ax.set_title(_short(name))
            ax.grid(False)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        fig.suptitle(_t(title), fontsize=9)
    return fig


def conflict_heatmaps(cosines: dict[str, pd.DataFrame], title: str,
                      labels: dict[str, pd.DataFrame] | None = None) -> Figure | None:
    """Mean gradient cosine of each task pair, task x task, one panel per strategy, on a
    fixed [-1, 1] scale: red conflicting, blue aligned, pale near orthogonal (where the
    conflict fraction is about 0.5 from noise alone, so it is not the colour). ``labels``:
    the text of each cell (e.g. the cosine, its interval's verdict and the fraction)."""
    return _matrix_panels(cosines, title, "mean gradient cosine", center=0.0, vmin=-1.0,
                          vmax=1.0, cmap="RdBu", labels=labels)


def _power_of_ten(values: list[float]) -> int:
    """Exponent e with max |values| in [10^e, 10^(e+1)); 0 without a finite non-zero value."""
    finite = [abs(v) for v in values if np.isfinite(v) and v != 0]
    return int(np.floor(np.log10(max(finite)))) if finite else 0


def affinity_heatmaps(matrices: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Lookahead affinity (Fifty et al. 2021): row task i's step, effect on column task j's
    loss; one panel per strategy.

    Affinities are about lr x gradient products (often 1e-4 and below), so the cells are
    written in units of a power of ten (named in the colour bar label) chosen from the
    off-diagonal entries, and the colour scale is set by those entries: the diagonal (a
    task's step on itself) is usually far larger and saturates."""
    matrices = {k: m for k, m in matrices.items() if not m.empty}
    if not matrices:
        return None

    def usable(values: Sequence[float]) -> list[float]:
        return [abs(float(v)) for v in values if np.isfinite(v) and v != 0]

    ref = usable([v for m in matrices.values() for i, row in enumerate(m.to_numpy())
                  for j, v in enumerate(row) if m.index[i] != m.columns[j]])
    ref = ref or usable([v for m in matrices.values() for v in m.to_numpy().ravel()])
    exp = _power_of_ten(ref)
    scaled = {k: m * 10.0 ** -exp for k, m in matrices.items()}
    limit = max(ref) * 10.0 ** -exp if ref else 1.0
    unit = "" if exp == 0 else f" (in units of 1e{exp})"
    labels = {k: m.map(_compact) for k, m in scaled.items()}
    return _matrix_panels(scaled, title, f"affinity{unit}", center=0.0, vmin=-limit,
                          vmax=limit, cmap="RdBu", xlabel="affected task j",
                          ylabel="stepping task i", labels=labels)


def _compact(v: float) -> str:
    """About three significant digits in a few characters (0.0898, 12.3, 1.74k, 174k)."""
    if not np.isfinite(v):
        return ""
    if abs(v) >= 1e9:
        return f"{v:.1e}"
    div, suffix = next((d, s) for d, s in ((1e6, "M"), (1e3, "k"), (1.0, ""))
                       if abs(v) >= d or d == 1.0)
    x = v / div
    return f"{x:.0f}{suffix}" if abs(x) >= 100 else f"{x:.3g}{suffix}"


def cosine_over_steps(cosines: pd.DataFrame, title: str) -> Figure | None:
    """Gradient cosine of each task pair over training steps (mean over seeds), one panel
    per strategy."""
    if cosines.empty:
        return None
    strategies = sorted(dict.fromkeys(cosines["strategy"]))
    pairs = list(dict.fromkeys(cosines["pair"]))
    colors = dict(zip(pairs, _palette(len(pairs)), strict=True))
    pair_labels = [_short(p, 30) for p in pairs]
    with theme():
        lw = _legend_w(pair_labels)
        fig, axes = _grid(len(strategies), 3, 2.8, 1.9, sharey=True, legend=lw, top=0.7)
        for ax, strategy in zip(axes, strategies, strict=True):
            sub = cosines[cosines["strategy"] == strategy]
            mean = sub.groupby(["pair", "step"])["cosine"].mean()
            for pair in pairs:
                if pair in mean.index.get_level_values(0):
                    s = mean.loc[pair]
                    ax.plot(s.index, s.to_numpy(), color=colors[pair],
                            marker="." if len(s) <= 40 else None, markersize=3)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_title(_short(strategy))
            ax.set_xlabel("step")
            ax.set_ylabel("gradient cosine")
        handles = [Line2D([], [], color=colors[p]) for p in pairs]
        _legend(fig, handles, pair_labels, lw)
        fig.suptitle(_t(title), fontsize=9)
    return fig


def expert_utilisation(matrices: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Mean gate weight of each expert per task (rows tasks, columns experts)."""
    matrices = {k: m for k, m in matrices.items() if not m.empty}
    if not matrices:
        return None
    names = sorted(matrices)
    with theme():
        n_exp = max(m.shape[1] for m in matrices.values())
        n_task = max(m.shape[0] for m in matrices.values())
        tick_w = _text_w([_short(t, 14) for m in matrices.values() for t in m.index])
        fig, axes = _grid(len(names), 3, 1.3 + 0.4 * n_exp, 0.4 * n_task, left=tick_w + 0.4,
                          wspace=tick_w + 0.5, top=0.8, hspace=0.9)
        for ax, name in zip(axes, names, strict=True):
            m = matrices[name]
            sns.heatmap(m, ax=ax, annot=m.shape[1] <= 10, fmt=".2f", cmap="viridis", vmin=0.0,
                        vmax=max(1e-9, float(np.nanmax(m.to_numpy()))), linewidths=0.5,
                        cbar_kws={"label": "gate weight", "shrink": 0.8})
            ax.set_yticklabels([_short(t.get_text(), 14) for t in ax.get_yticklabels()],
                               rotation=0)
            ax.grid(False)
            ax.set_xlabel("expert")
            ax.set_ylabel("")
            ax.set_title(_short(name))
        fig.suptitle(_t(title), fontsize=9)
    return fig


def toy_trajectories(
    trajectories: pd.DataFrame, grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    pareto: np.ndarray, title: str,
) -> Figure | None:
    """One panel per method: the contours of the average loss, the (numerical) Pareto set
    and the trajectory from every starting point (start: circle, end: cross).

    ``trajectories`` has columns method, start, step, x1, x2."""
    if trajectories.empty:
        return None
    methods = list(dict.fromkeys(trajectories["method"]))
    xs, ys, zs = grid
    fig, axes = _grid(len(methods), 4, 2.6, 2.6, wspace=0.7, hspace=0.6)
    starts = sorted(trajectories["start"].unique())
    colors = dict(zip(starts, _palette(len(starts)), strict=True))
    with theme():
        for ax, method in zip(axes, methods, strict=True):
            ax.contourf(xs, ys, zs, levels=30, cmap="Greys", alpha=0.55)
            ax.scatter(pareto[:, 0], pareto[:, 1], s=1, color="tab:gray", alpha=0.6)
            for start, path in trajectories[trajectories["method"] == method].groupby("start"):
                path = path.sort_values("step")
                ax.plot(path["x1"], path["x2"], color=colors[start], lw=1.2)
                ax.scatter(path["x1"].iloc[:1], path["x2"].iloc[:1], color=colors[start], s=14)
                ax.scatter(path["x1"].iloc[-1:], path["x2"].iloc[-1:], color=colors[start],
                           marker="x", s=22)
            ax.set_title(_short(method, 24))
            ax.set_xlim(xs.min(), xs.max())
            ax.set_ylim(ys.min(), ys.max())
            ax.set_xlabel("x1")
            ax.set_ylabel("x2")
        fig.suptitle(_t(title), fontsize=9)
    return fig


def learning_curves(curves: pd.DataFrame, title: str,
                    colors: dict[str, Any] | None = None) -> Figure | None:
    """One panel per task: validation loss per epoch, a line per strategy (mean over
    seeds) with its min..max band; dots: selected checkpoints; red crosses: selected at
    the last epoch."""
    if curves.empty:
        return None
    tasks = list(dict.fromkeys(curves["task"]))
    strategies = sorted(s for s in dict.fromkeys(curves["strategy"]) if s != BASELINE)[:12]
    if (curves["strategy"] == BASELINE).any():
        strategies.append(BASELINE)
    colors = {**(colors or strategy_colors(strategies)), BASELINE: "black"}
    with theme():
        lw = _legend_w([*strategies, LAST_EPOCH])
        fig, axes = _grid(len(tasks), 3, 2.8, 2.0, legend=lw, top=0.7, hspace=0.8)
        shown = curves[curves["strategy"].isin(strategies)]
        by_task = dict(list(shown.groupby("task", sort=False)))
        for ax, task in zip(axes, tasks, strict=True):
            sub = curves[curves["task"] == task]
            # One groupby per panel, not a filter of the frame per strategy.
            parts = dict(list(by_task[task].groupby("strategy", sort=False))) if (
                task in by_task) else {}
            for strategy in strategies:
                s = parts.get(strategy)
                if s is None or s.empty:
                    continue
                stats = s.groupby("epoch")["val_loss"].agg(["mean", "min", "max"])
                style = "--" if strategy == BASELINE else "-"
                ax.plot(stats.index, stats["mean"], style, color=colors[strategy], lw=1.1)
                ax.fill_between(stats.index, stats["min"], stats["max"],
                                color=colors[strategy], alpha=0.12, lw=0)
                chosen = s[s["epoch"] == s["best_epoch"]]
                ok, last = chosen[~chosen["last_epoch_best"]], chosen[chosen["last_epoch_best"]]
                ax.scatter(ok["epoch"], ok["val_loss"], s=10, color=colors[strategy], zorder=3)
                ax.scatter(last["epoch"], last["val_loss"], s=28, marker="x", color="red",
                           lw=1.2, zorder=4)
            ax.set_title(_short(task))
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation loss")
            if np.nanmin(sub["val_loss"]) > 0 and np.nanmax(sub["val_loss"]) > \
                    20 * np.nanmin(sub["val_loss"]):
                ax.set_yscale("log")  # early epochs would flatten the rest
        handles = [Line2D([], [], color=colors[s], ls="--" if s == BASELINE else "-")
                   for s in strategies]
        handles += [Line2D([], [], ls="", marker="o", color="grey", ms=3),
                    Line2D([], [], ls="", marker="x", color="red", ms=5)]
        _legend(fig, handles, [_t(s) for s in strategies]
                      + ["selected checkpoint", LAST_EPOCH], lw)
        fig.suptitle(_t(title), fontsize=9)
    return fig
