"""Typed records and specs: what is written is what is read, schema-1 records upgrade to
the baselines the grid gives, and a spec crosses to another process whole."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from bench import grid
from bench.config import load_spec
from bench.records import SCHEMA_VERSION, TrialRecord, TrialTiming, upgrade_trial
from bench.spec import Component, Labels, TrainSettings, TrialModel, TrialSpec
from bench.store import RunStore

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "run_schema1"


def _raws() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((FIXTURE / "trials").glob("*.json"))]


def _spec() -> TrialSpec:
    return TrialSpec(
        dataset=Component("mmoe_synthetic", {"num_train": 64}),
        sharing=Component("hps", {}), weighting=Component("ls", {"weights": [1.0, 0.5]}),
        seed=3, model=TrialModel(hidden=[8]), train=TrainSettings(lr=0.01, epochs=2),
        baselines={"t1": "0" * 16, "t2": "1" * 16},
        labels=Labels(dataset="mmoe_synthetic", sharing="hps",
                      weighting="ls(weights=[1.0, 0.5])"))


def _assert_same(a: TrialRecord, b: TrialRecord) -> None:
    assert a == b
    # TrialSpec equality is its identity; what travels with it is compared here.
    assert a.spec.identity() == b.spec.identity()
    assert a.spec.baselines == b.spec.baselines == a.baselines == b.baselines
    assert a.spec.labels == b.spec.labels == a.labels == b.labels
    assert a.to_dict() == b.to_dict()


def test_a_hand_built_record_round_trips(tmp_path):
    rec = TrialRecord.of(
        _spec(), "ok", metrics={"test": {"t1": {"mse": 0.5, "r2": None}, "t2": {"mse": 1.5}},
                                "val": {"t1": {"mse": 0.4}, "t2": {"mse": 1.2}}},
        history=[{"epoch": 0, "train_loss": {"t1": 1.0, "t2": 2.0}, "val": {"t1": {"mse": 0.4}},
                  "seconds": 0.1, "weights": {"t1": 1.0, "t2": 0.5}}],
        timing=TrialTiming(step_s=0.01, steps=4, epoch_step_s=[0.01, 0.011]),
        tasks=["t1", "t2"], best_epoch=0, wall_s=1.25, probes={"conflict": {"steps": [0]}},
        finished_at="2026-12-02T00:00:00+00:00",
        future_field={"kept": True},  # written by a later release: survives a read
    )
    assert rec.schema_version == SCHEMA_VERSION and rec.id == _spec().id
    store = RunStore(tmp_path)
    store.write(rec)
    back = store.read(rec.id)
    _assert_same(back, rec)
    assert back.timing.step_s == 0.01 and back.history[0].weights == {"t1": 1.0, "t2": 0.5}
    assert back.model_extra == {"future_field": {"kept": True}}
    # Scores that are NaN stay NaN (the JSON holds NaN).
    nan = TrialRecord.of(_spec(), "ok", metrics={"test": {"t1": {"mse": math.nan}}})
    store.write(nan)
    assert math.isnan(store.read(nan.id).metrics["test"]["t1"]["mse"])


def test_failed_records_round_trip(tmp_path):
    store = RunStore(tmp_path)
    for status, extra in [("error", {"traceback": "Traceback ..."}),
                          ("diverged", {"diverged_epoch": 0, "diverged_step": 5}),
                          ("timeout", {}), ("oom", {})]:
        rec = TrialRecord.of(dataclasses.replace(_spec(), seed=len(status)), status,
                             error=f"{status}!", **extra)
        store.write(rec)
        _assert_same(store.read(rec.id), rec)


def test_an_ok_record_needs_metrics():
    with pytest.raises(ValueError, match="'ok' record without metrics"):
        TrialRecord.of(_spec(), "ok")


def test_real_records_round_trip_after_their_upgrade(tmp_path):
    """Every record of the schema-1 fixture (ok with history, probes and timing, baselines,
    failures): upgraded when read, written as schema 2, read back equal."""
    old = RunStore(FIXTURE).scan()
    assert old.problems == [] and len(old.records) == 82
    new = RunStore(tmp_path)
    for rec in old.records:
        new.write(rec)
        back = new.read(rec.id)
        _assert_same(back, rec)
        assert json.loads(new.record_path(rec.id).read_text())["schema_version"] == 2


def test_upgrade_gives_a_schema1_record_the_baselines_the_grid_gives():
    """Schema 1 computed baselines from the spec at read time; the upgrade keeps that rule
    and it agrees with ``grid.baseline_of`` (stl + ew, the sweep's own widths where
    match_params rescaled the trial's, same data, training and seed, one task)."""
    raws = _raws()
    upgraded = [upgrade_trial(raw) for raw in raws]
    checked = matched = 0
    for raw, up in zip(raws, upgraded, strict=True):
        assert "schema_version" not in raw  # the record read is left as it was
        assert up["schema_version"] == SCHEMA_VERSION
        rec = TrialRecord.model_validate(up)
        if rec.status != "ok" or rec.spec.is_baseline:
            assert rec.baselines == {}
            continue
        spec = TrialSpec.from_message(raw["spec"])
        assert rec.baselines == {t: grid.baseline_of(spec, t).id for t in raw["metrics"]["test"]}
        assert rec.spec.baselines == rec.baselines
        checked += 1
        matched += raw["spec"]["model"].get("matched_parameters") is not None
    assert checked == 64 and matched > 0  # mmoe trials were rescaled to hps's count
    # Upgrading is idempotent, and a later schema is refused with a hint.
    assert upgrade_trial(upgraded[0]) is upgraded[0]
    with pytest.raises(ValueError, match=r"schema_version 3: .*upgrade mtlbench"):
        upgrade_trial({**raws[0], "schema_version": 3})


def test_a_spec_crosses_to_another_process_whole(write_spec, tmp_path):
    text = """
        name = "msg"
        seeds = [0]
        datasets = [{ name = "mmoe_synthetic", correlation = 0.2, num_train = 64, input_dim = 8 }]
        sharing = ["hps", "mmoe"]
        weighting = ["ew", { name = "ls", weights = [1.0, 0.5] }]
        [model]
        hidden = [8]
        match_params = "hps"
        [probes]
        conflict_every = 2
        """
    specs = grid.expand(load_spec(write_spec(text)))
    mtl = [s for s in specs if not s.is_baseline]
    assert mtl and all(s.baselines and s.labels for s in mtl)
    for spec in specs:
        spec = dataclasses.replace(spec, tensorboard={"dir": str(tmp_path), "every": 5})
        # As the process pool's pipe carries it (pickled), and as JSON (where a tuple
        # hyperparameter comes back a list: same identity JSON, same id).
        for back in (TrialSpec.from_message(spec.to_message()),
                     TrialSpec.from_message(json.loads(json.dumps(spec.to_message())))):
            assert back.id == spec.id
            assert json.dumps(back.identity()) == json.dumps(spec.identity())
            assert back.baselines == spec.baselines and back.labels == spec.labels
            assert back.tensorboard == spec.tensorboard
        assert TrialSpec.from_message(spec.to_message()) == spec
    # Labels as the grid computed them, with the registries' defaults left out.
    ls = next(s for s in mtl if s.weighting.name == "ls")
    assert ls.labels == Labels(dataset="mmoe_synthetic(correlation=0.2,input_dim=8,num_train=64)",
                               sharing="hps", weighting="ls(weights=[1.0, 0.5])")
    assert ls.baselines == {t: grid.baseline_of(ls, t).id for t in ("t1", "t2")}
