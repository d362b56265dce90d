"""Names and record fields reach report.md and tables/*.csv: neither may carry raw HTML,
line breaks that make fake structure, links, or spreadsheet formulas."""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt

from bench.records import TrialRecord
from bench.report import csv_safe, md_block, md_text, write_report
from bench.spec import Component, TrainSettings, TrialModel, TrialSpec
from bench.store import RunStore
from unit.test_report import baseline_of

EVIL_DATASET = "ds<script>alert(1)</script>\n# Fake heading"
EVIL_WEIGHTING = "w<img src=x onerror=alert(2)>![t](http://evil.example/t.png)"
EVIL_TASK = '=HYPERLINK("http://evil.example","x")'
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _spec(weighting: str, seed: int) -> TrialSpec:
    return TrialSpec(
        dataset=Component(EVIL_DATASET, {}), sharing=Component("hps", {}),
        weighting=Component(weighting, {}), seed=seed,
        model=TrialModel(hidden=[8]), train=TrainSettings(epochs=3, engine="loop"),
    )


def _record(spec: TrialSpec, tasks: list[str], value: float, status: str = "ok"
            ) -> TrialRecord:
    metrics = {t: {"accuracy": value, "loss": 1 - value} for t in tasks}
    if spec.tasks is None:
        spec = dataclasses.replace(spec, baselines={t: baseline_of(spec, t).id for t in tasks})
    return TrialRecord.of(spec, status, **{
        "tasks": tasks,
        "error": None if status == "ok" else "=cmd|' /C calc'!A0\n<script>x</script>",
        "metrics": {"test": metrics, "val": metrics} if status == "ok" else {},
        "history": [{"epoch": e, "train_loss": {}, "val": {}, "seconds": 0.1 * e,
                     "weights": {t: 1.0 + 0.1 * e * i for i, t in enumerate(tasks)}}
                    for e in range(3)] if status == "ok" else [],
        "timing": {"step_s": 0.01, "trial_s": 1.0, "samples_per_s": 100.0, "setup_s": 0.1,
                   "warmup_s": 0.1, "step_spread": 0.05},
        "wall_s": 1.2, "parameters": 100, "best_epoch": 1,
        "env": {"python": "3.11", "host": "@evilhost"},
    })


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evil") / "run"
    store = RunStore(run)
    tasks = ["ok_task", EVIL_TASK]
    rng = np.random.default_rng(0)
    ids = []
    for seed in (0, 1, 2):
        for weighting in ("ew", EVIL_WEIGHTING):
            spec = _spec(weighting, seed)
            store.write(_record(spec, tasks, 0.8 + rng.normal(0, 0.01)))
            ids.append(spec.id)
            for task in tasks:
                base = baseline_of(spec, task)
                if base.id not in ids:
                    store.write(_record(base, [task], 0.8))
                    ids.append(base.id)
    failed = _spec(EVIL_WEIGHTING, 7)
    store.write(_record(failed, tasks, 0.0, status="error"))
    ids.append(failed.id)
    store.write_manifest({"name": "evil", "description": "# Fake title\n<script>d</script>"},
                         ids)
    write_report(run)
    return run


def test_report_md_renders_no_html_links_or_fake_headings(evil_run):
    md = (evil_run / "report.md").read_text("utf-8")
    # CommonMark with raw HTML allowed, plus tables: what a Markdown viewer does.
    parser = MarkdownIt("commonmark", {"html": True}).enable("table")
    tokens = parser.parse(md)
    flat = [t for tok in tokens for t in [tok, *(tok.children or [])]]
    assert not [t.content for t in flat if t.type in ("html_block", "html_inline")]
    assert not [t for t in flat if t.type == "link_open"]
    images = [t.attrs["src"] for t in flat if t.type == "image"]
    assert images and all(str(src).startswith("plots/") for src in images)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert not [h for h in headings if h.lstrip("#").strip().startswith("Fake")]
    assert sum(t.tag == "h1" for t in tokens if t.type == "heading_open") == 1
    # The names are still there, readable.
    html = parser.render(md)
    assert "ds&lt;script&gt;alert(1)&lt;/script&gt; # Fake heading" in html
    assert "onerror=alert(2)" in html  # as text: no <img> tag carries it


def test_csv_tables_hold_no_formulas(evil_run):
    quoted = 0
    for path in (evil_run / "tables").glob("*.csv"):
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?inf", cell):
                        continue  # a number (numeric columns are written as numbers)
                    assert not cell.startswith(FORMULA), (path.name, cell)
                    quoted += cell.startswith("'=") or cell.startswith("'@")
    assert quoted  # the task name and the error (failed.csv) were neutralised, not dropped


def test_escaping_helpers():
    assert md_text("a\r\nb\u2028c") == "a b c"
    assert md_block("# x") == r"\# x" and md_block("- x") == r"\- x"
    assert md_block("12. x") == r"12\. x" and md_block("3.5 seeds") == "3.5 seeds"
    assert md_block("    code") == "code"
    assert md_text("[a](javascript:x)") == r"[a]\(javascript:x)"
    assert md_text("ls(weights=[0.5, 0.5]) [1.0, 2.0]") == "ls(weights=[0.5, 0.5]) [1.0, 2.0]"
    import pandas as pd

    df = pd.DataFrame([["=1+1", 1.5, "-x"], ["ok", -2.0, "@a"]], columns=["a", "=b", "a"])
    out = csv_safe(df)
    assert out.values.tolist() == [["'=1+1", 1.5, "'-x"], ["ok", -2.0, "'@a"]]
    assert list(out.columns) == ["a", "'=b", "a"]
    assert df.iloc[0, 0] == "=1+1"  # the input is left as it was
