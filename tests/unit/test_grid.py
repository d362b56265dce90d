"""Grid expansion, trial ids and automatic single-task baselines."""

from __future__ import annotations

from bench.config import Component, load_spec
from bench.grid import TrialSpec, baseline_of, expand
from bench.spec import TrainSettings, TrialModel

SPEC = """
name = "grid"
seeds = [0, 1, 2]
datasets = ["penguins", { name = "mmoe_synthetic", num_tasks = 3, num_train = 64 }]
sharing = ["hps", "stl"]
weighting = ["ew", "mgda", "pcgrad"]
"""


def test_expansion_counts_and_shared_baselines(write_spec):
    trials = expand(load_spec(write_spec(SPEC)))
    mtl = [t for t in trials if not t.is_baseline]
    base = [t for t in trials if t.is_baseline]
    # 2 datasets x hps x 3 strategies x 3 seeds; 'stl' in the axis means the baselines.
    assert len(mtl) == 2 * 3 * 3
    # One baseline per task and seed: penguins has 3 tasks, the synthetic set 3.
    assert len(base) == (3 + 3) * 3
    assert len({t.id for t in trials}) == len(trials)
    # Every multi-task trial finds all its baselines in the grid.
    ids = {t.id for t in base}
    for t in mtl:
        tasks = ["species", "sex", "body_mass"] if t.dataset.name == "penguins" else ["t1", "t2", "t3"]
        assert {baseline_of(t, task).id for task in tasks} <= ids


def test_baselines_share_data_budget_and_seed(write_spec):
    trials = expand(load_spec(write_spec(SPEC)))
    t = next(x for x in trials if not x.is_baseline)
    b = baseline_of(t, "sex")
    assert (b.dataset, b.seed, b.model, b.train) == (t.dataset, t.seed, t.model, t.train)
    assert b.sharing.name == "stl" and b.tasks == ("sex",)


def test_filters(write_spec):
    text = SPEC + '\nexclude = [{ weighting = "pcgrad", dataset = "penguins" }]\n'
    trials = expand(load_spec(write_spec(text)))
    assert not any(
        t.weighting.name == "pcgrad" and t.dataset.name == "penguins" for t in trials
    )
    assert any(t.weighting.name == "pcgrad" for t in trials)
    text = SPEC + '\ninclude = [{ weighting = "mgda", seed = [0] }]\n'
    mtl = [t for t in expand(load_spec(write_spec(text))) if not t.is_baseline]
    assert {(t.weighting.name, t.seed) for t in mtl} == {("mgda", 0)}


def test_ids_are_stable_and_canonical(write_spec):
    a = expand(load_spec(write_spec(SPEC)))
    b = expand(load_spec(write_spec(SPEC)))
    assert [t.id for t in a] == [t.id for t in b]
    # Writing a default explicitly does not change the trial.
    explicit = SPEC.replace('"ew",', '{ name = "ew" },').replace(
        '"penguins"', '{ name = "penguins", split_seed = 0 }'
    )
    assert {t.id for t in expand(load_spec(write_spec(explicit)))} == {t.id for t in a}
    # Round trip through the record's JSON form (its identity) and through the message
    # to another process keeps the id.
    assert all(TrialSpec.from_message(t.identity()).id == t.id for t in a)
    assert all(TrialSpec.from_message(t.to_message()).id == t.id for t in a)


def test_id_is_a_fixed_hash_of_the_spec():
    # A literal: the id must not depend on the machine, process or Python hash seed.
    spec = TrialSpec(
        dataset=Component("penguins", {"split_seed": 0}),
        sharing=Component("hps", {}),
        weighting=Component("ew", {}),
        seed=0,
        model=TrialModel(hidden=[8], tower=[], dropout=0.0),
        train=TrainSettings(lr=0.1),
    )
    assert spec.id == TrialSpec.from_message(spec.to_message()).id
    # The typed spec's identity holds every model and training setting (defaults
    # included), as the grid's specs always did: acf966a's code gives this id too.
    assert spec.id == "c6c7c2303b4fbcea"


def test_heads_setting_is_a_sweepable_axis_that_keeps_default_ids(write_spec):
    # train.heads (what trains the task heads under gradient methods) left at "method"
    # is absent from the spec, so ids of existing runs do not change; other values are
    # part of the id and can be swept with train_grid.
    plain = expand(load_spec(write_spec(SPEC)))
    explicit = expand(load_spec(write_spec(SPEC + '[train]\nheads = "method"\n')))
    assert {t.id for t in plain} == {t.id for t in explicit}
    assert all("heads" not in t.train.to_dict() for t in plain)
    swept = expand(load_spec(write_spec(SPEC + '[train_grid]\nheads = ["own", "weighted"]\n')))
    mtl = [t for t in swept if not t.is_baseline]
    assert sorted({t.train.heads for t in mtl}) == ["own", "weighted"]
    assert len(mtl) == 2 * len([t for t in plain if not t.is_baseline])
