"""The "Environment" section: what the trials ran on (values that differ are counted)."""

from __future__ import annotations

from bench.report.document import Block, Document
from bench.report.results import RunResults


def render(doc: Document, results: RunResults) -> None:
    sec = doc.section("Environment")
    if results.environment.empty:
        sec.blocks.append(Block("note", text="(no finished trial)"))
        return
    doc.table(sec, "environment", results.environment,
              "Environment of the trials (values that differ between trials are counted)")
