"""Report of a run directory, built from the stored records alone.

``write_report(run_dir)`` writes

- ``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG data
  URIs, no external resource, every config string escaped by jinja2's autoescape);
- ``tables/<name>.csv`` (numbers) and ``tables/<name>.tex`` (booktabs, LaTeX-escaped);
- ``plots/<name>.png`` and ``.svg`` (seaborn, Agg backend).

The run is read once into :class:`~bench.report.results.RunResults`, which computes every
table (statistics in :mod:`bench.analysis`); each section of
:data:`bench.report.sections.SECTIONS` renders from it into the
:class:`~bench.report.document.Document`, whose writers produce the files.
"""

from __future__ import annotations

from pathlib import Path

from bench import store, tensorboard
from bench.report.document import (
    Document,
    csv_safe,
    html,
    latex_escape,
    markdown,
    md_block,
    md_text,
    slug,
    to_latex,
)
from bench.report.results import RunResults, load_speed
from bench.report.sections import SECTIONS

__all__ = ["csv_safe", "latex_escape", "load_speed", "md_block", "md_text", "slug",
           "to_latex", "write_report"]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html``, ``tables/`` and ``plots/`` into ``run_dir``;
    return the path of ``report.md``."""
    results = RunResults.build(run_dir)
    doc = Document(results.run_dir)
    for section in SECTIONS:
        section.render(doc, results)
    run_dir = results.run_dir
    store.atomic_write_text(run_dir / "report.html",
                            html(results.title, results.description, doc.sections))
    # Δm needs every baseline: written here as each trial's HParams metrics (TensorBoard).
    tensorboard.write_delta_m(run_dir, results.summary, results.records)
    path = run_dir / "report.md"
    store.atomic_write_text(path, markdown(results.title, results.description, doc.sections))
    return path
