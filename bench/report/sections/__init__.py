"""The report's sections, in the order the report shows them. Each module has one
``render(doc, results)``; adding a section is adding a module and its entry here."""

from __future__ import annotations

from bench.report.sections import (
    cost,
    environment,
    failed,
    learning_curves,
    left_out,
    negative_transfer,
    overview,
    rankings,
    recommendation,
    relationships,
    results,
    toy_landscape,
)

SECTIONS = [
    recommendation,  # first: the practitioner's answer
    overview,
    results,
    learning_curves,
    rankings,
    negative_transfer,
    relationships,
    toy_landscape,
    cost,
    environment,
    failed,
    left_out,
]

__all__ = ["SECTIONS"]
