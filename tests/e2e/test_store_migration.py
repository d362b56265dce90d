"""A run directory written before the typed records (schema 1) still loads, resumes and
reports.

``tests/data/run_schema1`` was written by mtlbench at acf966a (the last commit before
``bench/records.py``) from its ``sweep.toml``: two datasets with non-default
hyperparameters, hps and mmoe at equal parameter counts (``match_params``), ew, mgda and
``ls`` with two weight vectors, two seeds, a ``train_grid`` on lr, probes on, and two
trials of a plugin strategy that raises (status ``error``). ``expected_frame.csv.gz`` is
the tidy frame acf966a's ``store.load`` gave for it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import grid, store
from bench.records import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "run_schema1"
COLUMNS = ["trial_id", "dataset", "sharing", "weighting", "seed", "baseline_task",
           "baseline_id", "status", "task", "split", "metric", "value"]
ORDER = ["trial_id", "split", "task", "metric"]


@pytest.fixture
def run(tmp_path) -> Path:
    """A copy of the schema-1 run directory (resuming and reporting write into it)."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(FIXTURE / "manifest.json", out / "manifest.json")
    shutil.copytree(FIXTURE / "trials", out / "trials")
    return out


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s fixture columns as the CSV holds them (same order, dtypes and NaNs)."""
    df = df[COLUMNS].sort_values(ORDER, na_position="first")
    return pd.read_csv(io.StringIO(df.to_csv(index=False)))


def _expected() -> pd.DataFrame:
    return pd.read_csv(FIXTURE / "expected_frame.csv.gz")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "trials").iterdir())}


def test_the_fixture_is_a_schema1_run():
    raws = [json.loads(p.read_text()) for p in (FIXTURE / "trials").glob("*.json")]
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    assert len(raws) == len(manifest["trials"]) == 82
    assert not any("schema_version" in r or "labels" in r or "baselines" in r for r in raws)
    assert sorted(r["status"] for r in raws).count("error") == 2


def test_load_gives_the_frame_acf966a_gave(run, capsys):
    """With the registries (what report and compare pass), labels are as before too."""
    df = store.load(run, schema1_labels=grid.schema1_labels)
    assert capsys.readouterr().err == ""  # no file left out
    pd.testing.assert_frame_equal(_tidy(df), _expected())


def test_load_without_registries_labels_what_varies_within_the_run(run):
    """The store alone (no registry) labels schema-1 records by ``bench.records.v1_labels``:
    a component's name plus the hyperparameters that differ between the run's components
    of that name. So ``ls`` keeps its weights, while each dataset (one component per name
    here) is its bare name where acf966a showed its non-default sizes. Every other column
    is the same."""
    got, expected = _tidy(store.load(run, quiet=True)), _expected()
    assert sorted(got["dataset"].unique()) == ["conflict", "mmoe_synthetic"]
    assert sorted(expected["dataset"].unique()) == [
        "conflict(input_dim=8,num_test=32,num_train=128,num_val=32)",
        "mmoe_synthetic(correlation=0.2,input_dim=8,num_test=32,num_train=128,num_val=32)"]
    assert {"ls(weights=[1.0, 0.5]) @lr=0.01", "ls(weights=[0.5, 1.0]) @lr=0.003"} <= set(
        got["weighting"])
    expected["dataset"] = expected["dataset"].str.replace(r"\(.*", "", regex=True)
    pd.testing.assert_frame_equal(got, expected)


def test_records_are_upgraded_in_memory_with_their_baselines(run):
    scan = store.RunStore(run).scan()
    assert scan.problems == [] and len(scan.records) == 82
    assert {r.schema_version for r in scan.records} == {SCHEMA_VERSION}
    ids = {r.id for r in scan.records}
    for rec in scan.records:
        if rec.ok and not rec.spec.is_baseline:
            assert rec.baselines == {t: grid.baseline_of(rec.spec, t).id for t in rec.tasks}
            assert set(rec.baselines.values()) <= ids
        else:
            assert rec.baselines == {}
    # Nothing was written back: the files stay schema 1.
    assert _files(run) == _files(FIXTURE)


def test_run_resumes_with_nothing_to_run(run):
    """The same sweep file resumes the directory: every id is unchanged, so nothing runs
    (the two failed trials stay failed: exit 1, as for any run with failed records)."""
    manifest = json.loads((run / "manifest.json").read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(FIXTURE)])}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(FIXTURE / "sweep.toml"), "--out", str(run),
         "--executor", "inline", "--no-progress"],
        cwd=run.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("0 trials run, 82 already done, 0 failed"), proc.stdout
    assert "2 failed records found from earlier runs" in proc.stderr
    assert json.loads((run / "manifest.json").read_text()) == manifest
    assert _files(run) == _files(FIXTURE)


def test_report_of_a_schema1_run(run):
    # NOTE: bench.report is being rewritten; if this fails, check write_report first.
    from bench.report import write_report

    path = write_report(run)
    text = path.read_text()
    assert "mmoe_synthetic(correlation=0.2,input_dim=8,num_test=32,num_train=128,num_val=32)" \
        in text
    assert "ls(weights=[1.0, 0.5]) @lr=0.003" in text and "mmoe" in text
    assert "RuntimeError: boom: this strategy always fails" in text
    assert (run / "report.html").is_file()
