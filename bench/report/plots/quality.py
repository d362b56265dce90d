"""Quality figures: Δm heatmap, task changes, critical-difference diagram, scalarization front."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.analysis import MIN_SEEDS_VERDICT
from bench.report.plots.base import (
    DPI,
    _grid,
    _legend,
    _legend_w,
    _long_axis,
    _palette,
    _short,
    _t,
    _text_w,
    theme,
)


def delta_m_heatmap(cells: pd.DataFrame) -> Figure | None:
    """Strategy x dataset heatmap of mean ``delta_m_task``; ``*`` marks an interval that
    excludes zero."""
    if cells.empty or cells["delta_m_task"].notna().sum() == 0:
        return None
    mean = cells.pivot_table(index="strategy", columns="dataset", values="delta_m_task")
    low = cells.pivot_table(index="strategy", columns="dataset", values="delta_m_task_low")
    high = cells.pivot_table(index="strategy", columns="dataset", values="delta_m_task_high")
    low, high = low.reindex_like(mean), high.reindex_like(mean)
    m, sig = mean.to_numpy(float), (low.to_numpy(float) > 0) | (high.to_numpy(float) < 0)
    annot = np.array([["" if np.isnan(v) else f"{v:.1f}{'*' if s else ''}"
                       for v, s in zip(mr, sr, strict=True)] for mr, sr in zip(m, sig,
                                                                                strict=True)],
                     dtype=object)
    limit = float(np.nanmax(np.abs(mean.to_numpy()))) or 1.0
    ylabels = [_short(r) for r in mean.index]
    xlabels = [_t(c) for c in mean.columns]  # whole: cut labels can collide
    with theme():
        fig, (ax,) = _grid(1, 1, 1.1 * mean.shape[1] + 1.2, 0.35 * mean.shape[0] + 0.2,
                           left=_text_w(ylabels) + 0.3, bottom=_text_w(xlabels) * 0.5 + 0.4,
                           top=0.4, right=0.3)
        # No tick labels from seaborn: its overlap check measures every label with a new
        # renderer (most of the figure's cost at 100 strategies); ours replace them anyway.
        sns.heatmap(mean, ax=ax, annot=annot, fmt="", cmap="RdBu", center=0.0,
                    vmin=-limit, vmax=limit, linewidths=0.5, xticklabels=False,
                    yticklabels=False, cbar_kws={"label": "Δm task (%) ↑"})
        ax.set_yticks(np.arange(len(ylabels)) + 0.5, ylabels, rotation=0, va="center")
        ax.set_xticks(np.arange(len(xlabels)) + 0.5, xlabels, rotation=30, ha="right")
        ax.grid(False)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_title("Δm task (%), mean over seeds; * = 95% interval excludes 0", y=1.0)
        _long_axis(ax)
    return fig


def task_changes(intervals: pd.DataFrame, title: str) -> Figure | None:
    """Per strategy, each task's relative change (percent) with its interval; red markers
    are negative transfer."""
    if intervals.empty:
        return None
    strategies = list(dict.fromkeys(intervals["strategy"]))
    tasks = list(dict.fromkeys(intervals["task"]))
    colors = dict(zip(tasks, _palette(len(tasks)), strict=True))
    with theme():
        fig, (ax,) = _grid(1, 1, 6.0, 0.3 * len(strategies) * max(1, len(tasks)) ** 0.5 + 0.3,
                           left=_text_w([_short(s) for s in strategies]) + 0.3, top=0.4)
        step = 0.7 / max(1, len(tasks))
        position = {s: i for i, s in enumerate(strategies)}
        for j, task in enumerate(tasks):
            sub = intervals[intervals["task"] == task].drop_duplicates("strategy")
            sub = sub.iloc[np.argsort(sub["strategy"].map(position).to_numpy(), kind="stable")]
            mean, low, high = (sub[c].to_numpy(float) for c in ("mean", "low", "high"))
            ys = list(sub["strategy"].map(position).to_numpy() - 0.35 + step * (j + 0.5))
            xs = list(mean)
            lo = list(np.where(np.isfinite(low), mean - low, 0.0))
            hi = list(np.where(np.isfinite(high), high - mean, 0.0))
            neg = list(sub["negative_transfer"].astype(bool))
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", color=colors[task], capsize=2,
                        markersize=4, label=_t(task))
            negs = [(x, y) for x, y, n in zip(xs, ys, neg, strict=True) if n]
            if negs:
                ax.scatter(*zip(*negs, strict=True), s=60, facecolors="none", edgecolors="red",
                           linewidths=1.2, zorder=3)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(strategies)), [_short(s) for s in strategies])
        ax.invert_yaxis()
        ax.set_xlabel("relative change vs single-task baseline (%) ↑, 95% Student-t interval")
        ax.set_title(_t(title), y=1.0)
        _long_axis(ax)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], marker="o", color="red", markerfacecolor="none",
                              linestyle=""))
        labels.append(f"negative transfer (≥ {MIN_SEEDS_VERDICT} seeds)")
        ax.legend(handles, labels, fontsize=7, loc="best")
    return fig


def cd_diagram(mean_rank: pd.Series, cd: float, cliques: Sequence[Sequence[str]],
               n_datasets: int) -> Figure | None:
    """Critical-difference diagram (Demšar 2006): mean ranks on an axis, a bar of length CD,
    and thick lines joining strategies not significantly different (Nemenyi)."""
    if mean_rank.empty or not np.isfinite(cd):
        return None
    k = len(mean_rank)
    names = list(mean_rank.index)
    half = math.ceil(k / 2)
    with theme():
        height = 1.3 + 0.5 * (half - 1) + 0.25 * len(cliques)
        fig = Figure(figsize=(7.5, 0.45 * (height + 0.6) + 0.2), dpi=DPI)
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
        ax.set_axis_off()
        lo, hi = 1.0, float(k)
        ax.set_xlim(lo - 0.9 * (hi - lo) / 2 - 0.5, hi + 0.9 * (hi - lo) / 2 + 0.5)
        ax.set_ylim(height, -0.6)
        ax.hlines(0.5, lo, hi, color="black", linewidth=1)
        # One collection for all rank ticks, one for all name leaders: a line (collection)
        # per strategy made most of the figure's cost at 100 strategies.
        ax.vlines(np.arange(1, k + 1), 0.35, 0.5, color="black", linewidth=1)
        for r in range(1, k + 1):
            ax.text(r, 0.3, str(r), ha="center", va="bottom", fontsize=8)
        ax.hlines(-0.3, lo, lo + cd, color="black", linewidth=1.5)
        ax.vlines([lo, lo + cd], -0.4, -0.2, color="black")
        ax.text(lo + cd / 2, -0.35, f"CD = {cd:.2f} (N = {n_datasets})", ha="center",
                va="bottom", fontsize=8)
        leaders = []
        for i, name in enumerate(names):
            r = float(mean_rank[name])
            if i < half:
                y = 1.0 + 0.5 * i + 0.25 * len(cliques)
                leaders.append([(r, 0.5), (r, y), (lo - 0.3, y)])
                ax.text(lo - 0.35, y, f"{_short(name, 28)} ({r:.2f})", ha="right",
                        va="center", fontsize=8)
            else:
                y = 1.0 + 0.5 * (k - 1 - i) + 0.25 * len(cliques)
                leaders.append([(r, 0.5), (r, y), (hi + 0.3, y)])
                ax.text(hi + 0.35, y, f"({r:.2f}) {_short(name, 28)}", ha="left",
                        va="center", fontsize=8)
        ax.add_collection(LineCollection(leaders, colors="black", linewidths=0.8),
                          autolim=False)
        if cliques:
            ranks = [[float(mean_rank[c]) for c in clique] for clique in cliques]
            ax.hlines([0.75 + 0.25 * j for j in range(len(cliques))],
                      [min(r) - 0.05 for r in ranks], [max(r) + 0.05 for r in ranks],
                      color="tab:red", linewidth=3)
    return fig


def pareto_front(front: pd.DataFrame, tasks: Sequence[str], title: str) -> Figure | None:
    """Per-task relative change of ls trials (grey; the non-dominated ones joined by the
    front line) and of every other strategy (filled: not dominated; cross: dominated)."""
    if front.empty or len(tasks) < 2:
        return None
    pairs = [(0, 1)] if len(tasks) == 2 else [(0, 1), (0, 2), (1, 2)]
    others = front[~front["is_ls"]]
    labels = list(dict.fromkeys(
        f"{s}/{w}" for s, w in zip(others["sharing"], others["weighting"], strict=True)))
    colors = dict(zip(labels, _palette(max(1, len(labels))), strict=False))
    legend_labels = ["ls (fixed weights)", "ls front",
                     *(_short(x) + " (dominated)" for x in labels)]
    with theme():
        lw = _legend_w(legend_labels)
        fig, axes = _grid(len(pairs), 3, 3.6, 3.2, legend=lw, left=0.8, top=0.6)
        for ax, (a, b) in zip(axes, pairs, strict=True):
            ca, cb = f"rel_{tasks[a]}", f"rel_{tasks[b]}"
            for _sharing, sub in front.groupby("sharing"):
                ls = sub[sub["is_ls"]]
                ax.scatter(ls[ca], ls[cb], color="grey", s=18, alpha=0.7,
                           label="ls (fixed weights)")
                on = ls[ls["on_front"]].sort_values(ca)
                if len(tasks) == 2 and len(on) > 1:
                    ax.plot(on[ca], on[cb], color="grey", linewidth=1, label="ls front")
            for _, row in others.iterrows():
                label = f"{row['sharing']}/{row['weighting']}"
                dominated = row["dominated"] is True
                ax.scatter([row[ca]], [row[cb]], color=colors[label],
                           marker="X" if dominated else "o", s=50,
                           edgecolors="black", linewidths=0.5,
                           label=_short(label) + (" (dominated)" if dominated else ""))
            ax.axhline(0, color="black", linewidth=0.6)
            ax.axvline(0, color="black", linewidth=0.6)
            ax.set_xlabel(f"{_short(tasks[a], 20)}: rel. change (%) ↑")
            ax.set_ylabel(f"{_short(tasks[b], 20)}: rel. change (%) ↑")
        handles, names = axes[0].get_legend_handles_labels()
        uniq = dict(zip(names, handles, strict=True))
        _legend(fig, list(uniq.values()), list(uniq.keys()), lw)
        fig.suptitle(_t(title), fontsize=9)
    return fig
