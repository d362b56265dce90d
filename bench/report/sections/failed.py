"""The "Failed trials" section: trials that did not finish ok, with their error."""

from __future__ import annotations

from bench.report.document import Block, Document
from bench.report.results import RunResults


def render(doc: Document, results: RunResults) -> None:
    sec = doc.section("Failed trials")
    if results.failed.empty:
        sec.blocks.append(Block("para", text="All trials finished ok."))
        return
    doc.table(sec, "failed", results.failed, "Trials that did not finish ok")
