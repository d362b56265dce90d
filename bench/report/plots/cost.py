"""Cost figures: quality against cost, throughput, speed records and scaling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.report.plots.base import (
    _grid,
    _legend,
    _legend_w,
    _long_axis,
    _palette,
    _short,
    _t,
    _text_w,
    strategy_colors,
    theme,
)


def cost_quality(cq: pd.DataFrame, colors: dict[str, Any] | None = None) -> Figure | None:
    """Δm task against time per step (and against peak memory when known), per dataset;
    non-dominated strategies are filled and labelled. ``colors``: the report's strategy
    colours (:func:`strategy_colors`, which gives them for ``cq``'s strategies alone)."""
    data = cq.dropna(subset=["delta_m_task", "step_s"])
    if data.empty:
        return None
    datasets = list(dict.fromkeys(data["dataset"]))
    with_mem = data["peak_memory_bytes"].notna().any()
    xs = [("step_s", 1e3, "time per step (ms) ↓")]
    if with_mem:
        xs.append(("peak_memory_bytes", 2.0**-20, "peak memory (MiB) ↓"))
    colors = strategy_colors(data["strategy"]) if colors is None else colors
    strategies = [s for s in colors if s in set(data["strategy"])]  # the report's order
    names = [*map(_short, strategies), "(hollow: dominated)"]
    with theme():
        lw = _legend_w(names)
        fig, axes = _grid(len(datasets) * len(xs), len(xs) if with_mem else 3, 3.4, 2.6,
                          legend=lw)
        for d, dataset in enumerate(datasets):
            sub = data[data["dataset"] == dataset]
            for j, (col, scale, xlabel) in enumerate(xs):
                ax = axes[d * len(xs) + j]
                # One collection per panel (a scatter per point made most of the figure's
                # cost at 100 strategies); points in row order, as drawn one by one before.
                pts = sub[np.isfinite(sub[col].to_numpy(float))]
                if not pts.empty:
                    nd = pts["non_dominated"].astype(bool).to_numpy()
                    edge = [colors[s] for s in pts["strategy"]]
                    x, y = pts[col].to_numpy(float) * scale, pts["delta_m_task"].to_numpy(float)
                    ax.scatter(x, y, facecolors=[e if n else "white" for e, n in
                                                 zip(edge, nd, strict=True)],
                               edgecolors=edge, s=np.where(nd, 45, 30), linewidths=1.2,
                               zorder=3)
                    for s, xi, yi in zip(pts["strategy"][nd], x[nd], y[nd], strict=True):
                        ax.annotate(_short(s, 18), (xi, yi), fontsize=6, xytext=(3, 3),
                                    textcoords="offset points")
                ax.axhline(0, color="black", linewidth=0.6)
                ax.set_xlabel(xlabel)
                ax.set_ylabel("Δm task (%) ↑")
                ax.set_title(_short(dataset, 40))
        handles = [Line2D([], [], marker="o", linestyle="", color=colors[s]) for s in strategies]
        handles.append(Line2D([], [], marker="o", linestyle="", color="grey",
                              markerfacecolor="white"))
        _legend(fig, handles, names, lw)
    return fig


def throughput(trials: pd.DataFrame) -> Figure | None:
    """Training throughput (samples per second, median over seeds) per strategy and
    dataset, from the trials' own timing."""
    data = trials.dropna(subset=["samples_per_s"])
    if data.empty:
        return None
    med = data.groupby(["dataset", "strategy"], sort=False)["samples_per_s"].median()
    med = med.reset_index()
    med["dataset"] = med["dataset"].map(_t)  # whole: cut labels can collide
    med["strategy"] = med["strategy"].map(_t)
    med = med.sort_values(["strategy", "dataset"], kind="stable")
    with theme():
        n = med["strategy"].nunique()
        fig, (ax,) = _grid(1, 1, 5.5, 0.25 * n * max(1, med["dataset"].nunique()) ** 0.5 + 0.4,
                           left=_text_w(med["strategy"].unique()) + 0.3, top=0.3)
        sns.barplot(med, y="strategy", x="samples_per_s", hue="dataset", ax=ax,
                    errorbar=None, orient="h")
        ax.set_xlabel("training samples / s (median over seeds) ↑")
        ax.set_ylabel("")
        _long_axis(ax)
        ax.legend(fontsize=7, title=None)
    return fig


def speed_throughput(speed: pd.DataFrame) -> Figure | None:
    """Samples per second of each strategy and engine from speed records, at each
    (sharing, tasks, batch size, width) configuration (median over repeated records)."""
    data = speed.dropna(subset=["samples_per_s"])
    if data.empty:
        return None
    data = data.sort_values(["sharing", "num_tasks", "batch_size", "width"], kind="stable")
    data = data.assign(
        config=[f"{s} T={t} B={b} W={w}" for s, t, b, w in zip(
            data["sharing"], data["num_tasks"], data["batch_size"], data["width"],
            strict=True)],
        label=[f"{_short(s, 20)} [{_t(e)}]" for s, e in zip(
            data["strategy"], data["engine"], strict=True)],
    )
    configs = list(dict.fromkeys(data["config"]))[:6]
    with theme():
        lab_w = _text_w(data["label"].unique()) + 0.3
        fig, axes = _grid(len(configs), 2, 3.5, 0.3 * data["label"].nunique() + 0.3,
                          left=lab_w, wspace=lab_w + 0.3, hspace=0.9)
        for ax, config in zip(axes, configs, strict=True):
            sub = data[data["config"] == config]
            sub = sub.groupby("label", sort=True)["samples_per_s"].median().reset_index()
            sns.barplot(sub, y="label", x="samples_per_s", ax=ax, errorbar=None, orient="h",
                        color="tab:blue")
            ax.set_title(_short(config, 60))
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.set_xlabel("samples / s ↑")
            ax.set_ylabel("")
    return fig


def scaling_curves(speed: pd.DataFrame) -> Figure | None:
    """Median step time against the number of tasks, batch size and width (each with the
    other two held at their most common value), per strategy and engine."""
    data = speed.dropna(subset=["step_median_s"])
    axes_vars = [v for v in ("num_tasks", "batch_size", "width")
                 if v in data and data[v].nunique() > 1]
    if data.empty or not axes_vars:
        return None
    data = data.assign(label=[f"{_short(s, 20)} [{_t(e)}]" for s, e in zip(
        data["strategy"], data["engine"], strict=True)])
    labels = list(dict.fromkeys(data["label"]))
    colors = dict(zip(labels, _palette(len(labels)), strict=True))
    with theme():
        lw = _legend_w(labels)
        fig, axes = _grid(len(axes_vars), 3, 3.4, 2.6, legend=lw)
        for ax, var in zip(axes, axes_vars, strict=True):
            sub = data
            for other in ("num_tasks", "batch_size", "width"):
                if other != var and other in sub and sub[other].notna().any():
                    sub = sub[sub[other] == sub[other].mode().iloc[0]]
            for label, g in sub.groupby("label", sort=False):
                g = g.groupby(var)["step_median_s"].median().sort_index()
                ax.plot(g.index, g.to_numpy() * 1e3, marker="o", color=colors[label],
                        label=label)
            ax.set_xlabel(var)
            ax.set_ylabel("step time (ms), median ↓")
            if sub[var].min() > 0 and sub[var].max() / sub[var].min() >= 8:
                ax.set_xscale("log", base=2)
        handles = [Line2D([], [], marker="o", color=colors[lab]) for lab in labels]
        _legend(fig, handles, labels, lw)
    return fig
