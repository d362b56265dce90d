"""Plot style and helpers of the report's figures (seaborn on matplotlib's Agg backend).

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

import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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


def strategy_colors(strategies: Sequence[str]) -> dict[str, Any]:
    """The one strategy -> colour mapping of a report, in the one order (sorted) every
    figure lists strategies in: a strategy keeps its colour from figure to figure."""
    order = sorted(dict.fromkeys(map(str, strategies)))
    return dict(zip(order, _palette(max(1, len(order))), strict=False))


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


def _long_axis(ax: Axes) -> None:
    """A fixed place for the empty y label of an axes with many y tick labels: placing it
    automatically measures every tick label once more per save (much of such a figure's
    drawing at 100 strategies), for a label that shows nothing. Such axes also give their
    title ``y=1.0`` (just above the axes, where automatic placement puts it when no tick
    label is above the axes), which skips measuring them for the title."""
    if not ax.get_ylabel():
        ax.yaxis.set_label_coords(0.0, 0.5)


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
