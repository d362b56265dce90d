"""The "Files left out" section: files of the run directory that are not usable records."""

from __future__ import annotations

from bench.report.document import Block, Document
from bench.report.results import RunResults


def render(doc: Document, results: RunResults) -> None:
    run_dir, problems = results.run_dir, results.problems
    if not problems:
        return
    sec = doc.section("Files left out")
    sec.blocks.append(Block("note", text=(
        f"{len(problems)} files of the run directory are not usable records of this run "
        "and were left out of every table above (`mtlbench run` on the directory sets them "
        "aside into quarantine/ and reruns their trials).")))
    sec.blocks.append(Block("bullets", items=[
        f"{p.path.relative_to(run_dir) if p.path.is_relative_to(run_dir) else p.path}: "
        f"{p.reason}" for p in problems]))
