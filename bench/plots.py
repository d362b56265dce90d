"""Plots of a report: seaborn on matplotlib's Agg backend, saved as PNG and SVG.

Every function takes already-aggregated frames (see :mod:`bench.analysis` and
:mod:`bench.report`) and returns a :class:`matplotlib.figure.Figure`, or ``None``
when there is nothing to draw. Figures are built without pyplot (no global figure
registry), under a seaborn theme applied through ``rc_context`` so importing this
module changes no global style.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.analysis import MIN_SEEDS_VERDICT

__all__ = [
    "affinity_heatmaps",
    "cd_diagram",
    "conflict_heatmaps",
    "cosine_over_steps",
    "cost_quality",
    "delta_m_heatmap",
    "expert_utilisation",
    "pareto_front",
    "save",
    "scaling_curves",
    "speed_throughput",
    "task_changes",
    "theme",
    "throughput",
    "weights_over_training",
]

DPI = 100
_RC = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.8),
    "svg.hashsalt": "mtlbench",  # reproducible SVG ids
    "svg.fonttype": "none",  # text stays text: smaller, faster
    "text.usetex": False,
    "axes.titlesize": 9,
}


@contextmanager
def theme() -> Iterator[None]:
    with matplotlib.rc_context(_RC), warnings.catch_warnings():
        # seaborn's heatmap calls a colormap method matplotlib has marked for deprecation.
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        yield


def _t(text: object) -> str:
    """A config string shown as literal text (no mathtext)."""
    return str(text).replace("$", r"\$")


def _short(text: object, width: int = 40) -> str:
    s = str(text)
    return _t(s if len(s) <= width else s[: width - 1] + "…")


def _palette(n: int) -> list:
    return sns.color_palette("tab10" if n <= 10 else "husl", n)


def _text_w(labels: Sequence[object], pt: float = 8.8) -> float:
    """Rough width in inches of the longest of ``labels`` at ``pt`` points."""
    longest = max((len(str(x)) for x in labels), default=0)
    return 0.56 * pt / 72.0 * longest


def _grid(n: int, ncols: int, w: float, h: float, *, left: float = 0.75, right: float = 0.25,
          top: float = 0.45, bottom: float = 0.6, wspace: float = 0.75, hspace: float = 0.8,
          legend: float = 0.0, **kw) -> tuple[Figure, list[Axes]]:
    """``n`` panels of ``w`` x ``h`` inches, margins in inches (a fixed layout: much cheaper
    than constrained layout); ``legend`` inches are kept free on the right."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width = left + ncols * w + (ncols - 1) * wspace + right + legend
    height = top + nrows * h + (nrows - 1) * hspace + bottom
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(left=left / width, right=(width - right - legend) / width,
                        bottom=bottom / height, top=(height - top) / height,
                        wspace=wspace / w, hspace=hspace / h)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend_w(labels: Sequence[object]) -> float:
    return _text_w(labels, 7.0) + 0.55


def _legend(fig: Figure, handles: list, labels: list[str], width: float,
            title: str | None = None) -> None:
    fig.legend(handles, labels, loc="center left", fontsize=7, frameon=False, title=title,
               title_fontsize=7, bbox_to_anchor=(1.0 - width / fig.get_figwidth(), 0.5))


def save(fig: Figure, plots_dir: Path, name: str) -> bytes:
    """Write ``plots_dir/name.png`` and ``.svg``; return the PNG bytes (for embedding)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with theme():
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        fig.savefig(plots_dir / f"{name}.svg", format="svg", metadata={"Date": None})
    png = buf.getvalue()
    (plots_dir / f"{name}.png").write_bytes(png)
    return png


# --------------------------------------------------------------------------- quality


def delta_m_heatmap(cells: pd.DataFrame) -> Figure | None:
    """Strategy x dataset heatmap of mean ``delta_m_task``; ``*`` marks an interval that
    excludes zero."""
    if cells.empty or cells["delta_m_task"].notna().sum() == 0:
        return None
    mean = cells.pivot_table(index="strategy", columns="dataset", values="delta_m_task")
    low = cells.pivot_table(index="strategy", columns="dataset", values="delta_m_task_low")
    high = cells.pivot_table(index="strategy", columns="dataset", values="delta_m_task_high")
    low, high = low.reindex_like(mean), high.reindex_like(mean)
    annot = mean.copy().astype(object)
    for r in mean.index:
        for c in mean.columns:
            m = mean.loc[r, c]
            sig = (low.loc[r, c] > 0) or (high.loc[r, c] < 0)
            annot.loc[r, c] = "" if pd.isna(m) else f"{m:.1f}{'*' if sig else ''}"
    limit = float(np.nanmax(np.abs(mean.to_numpy()))) or 1.0
    ylabels = [_short(r) for r in mean.index]
    xlabels = [_t(c) for c in mean.columns]  # whole: cut labels can collide
    with theme():
        fig, (ax,) = _grid(1, 1, 1.1 * mean.shape[1] + 1.2, 0.35 * mean.shape[0] + 0.2,
                           left=_text_w(ylabels) + 0.3, bottom=_text_w(xlabels) * 0.5 + 0.4,
                           top=0.4, right=0.3)
        sns.heatmap(mean, ax=ax, annot=annot.to_numpy(), fmt="", cmap="RdBu", center=0.0,
                    vmin=-limit, vmax=limit, linewidths=0.5,
                    cbar_kws={"label": "Δm task (%) ↑"})
        ax.set_yticks(np.arange(len(ylabels)) + 0.5, ylabels, rotation=0)
        ax.set_xticks(np.arange(len(xlabels)) + 0.5, xlabels, rotation=30, ha="right")
        ax.grid(False)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_title("Δm task (%), mean over seeds; * = 95% interval excludes 0")
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
        for j, task in enumerate(tasks):
            sub = intervals[intervals["task"] == task].set_index("strategy")
            ys, xs, lo, hi, neg = [], [], [], [], []
            for i, s in enumerate(strategies):
                if s not in sub.index:
                    continue
                row = sub.loc[s]
                ys.append(i - 0.35 + step * (j + 0.5))
                xs.append(row["mean"])
                lo.append(row["mean"] - row["low"] if np.isfinite(row["low"]) else 0.0)
                hi.append(row["high"] - row["mean"] if np.isfinite(row["high"]) else 0.0)
                neg.append(bool(row["negative_transfer"]))
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
        ax.set_title(_t(title))
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
        for r in range(1, k + 1):
            ax.vlines(r, 0.35, 0.5, color="black", linewidth=1)
            ax.text(r, 0.3, str(r), ha="center", va="bottom", fontsize=8)
        ax.hlines(-0.3, lo, lo + cd, color="black", linewidth=1.5)
        ax.vlines([lo, lo + cd], -0.4, -0.2, color="black")
        ax.text(lo + cd / 2, -0.35, f"CD = {cd:.2f} (N = {n_datasets})", ha="center",
                va="bottom", fontsize=8)
        for i, name in enumerate(names):
            r = float(mean_rank[name])
            if i < half:
                y = 1.0 + 0.5 * i + 0.25 * len(cliques)
                ax.plot([r, r, lo - 0.3], [0.5, y, y], color="black", linewidth=0.8)
                ax.text(lo - 0.35, y, f"{_short(name, 28)} ({r:.2f})", ha="right",
                        va="center", fontsize=8)
            else:
                y = 1.0 + 0.5 * (k - 1 - i) + 0.25 * len(cliques)
                ax.plot([r, r, hi + 0.3], [0.5, y, y], color="black", linewidth=0.8)
                ax.text(hi + 0.35, y, f"({r:.2f}) {_short(name, 28)}", ha="left",
                        va="center", fontsize=8)
        for j, clique in enumerate(cliques):
            ranks = [float(mean_rank[c]) for c in clique]
            y = 0.75 + 0.25 * j
            ax.hlines(y, min(ranks) - 0.05, max(ranks) + 0.05, color="tab:red", linewidth=3)
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


# --------------------------------------------------------------------------- cost


def cost_quality(cq: pd.DataFrame) -> Figure | None:
    """Δm task against time per step (and against peak memory when known), per dataset;
    non-dominated strategies are filled and labelled."""
    data = cq.dropna(subset=["delta_m_task", "step_s"])
    if data.empty:
        return None
    datasets = list(dict.fromkeys(data["dataset"]))
    with_mem = data["peak_memory_bytes"].notna().any()
    xs = [("step_s", 1e3, "time per step (ms) ↓")]
    if with_mem:
        xs.append(("peak_memory_bytes", 2.0**-20, "peak memory (MiB) ↓"))
    strategies = list(dict.fromkeys(data["strategy"]))
    colors = dict(zip(strategies, _palette(len(strategies)), strict=True))
    names = [*map(_short, strategies), "(hollow: dominated)"]
    with theme():
        lw = _legend_w(names)
        fig, axes = _grid(len(datasets) * len(xs), len(xs) if with_mem else 3, 3.4, 2.6,
                          legend=lw)
        for d, dataset in enumerate(datasets):
            sub = data[data["dataset"] == dataset]
            for j, (col, scale, xlabel) in enumerate(xs):
                ax = axes[d * len(xs) + j]
                for _, row in sub.iterrows():
                    if not np.isfinite(row[col]):
                        continue
                    nd = bool(row["non_dominated"])
                    ax.scatter([row[col] * scale], [row["delta_m_task"]],
                               color=colors[row["strategy"]] if nd else "white",
                               edgecolors=colors[row["strategy"]], s=45 if nd else 30,
                               linewidths=1.2, label=_short(row["strategy"]), zorder=3)
                    if nd:
                        ax.annotate(_short(row["strategy"], 18),
                                    (row[col] * scale, row["delta_m_task"]), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points")
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


# --------------------------------------------------------------------------- dynamics


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


# --------------------------------------------------------------------------- toy landscape


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
