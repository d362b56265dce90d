"""train_grid: training settings swept as axes, each value with its own baselines and label."""

from __future__ import annotations

import pytest

from bench import analysis, report, store
from bench.config import load_spec
from bench.errors import ConfigError
from bench.executors import ExecutorOptions, run_specs
from bench.grid import expand

GRID = """
name = "grid"
seeds = [0]
datasets = [{ name = "conflict", num_train = 256, num_val = 64, num_test = 64 }]
sharing = ["hps"]
weighting = ["ew", { name = "ls", weights = [0.8, 0.2] }]

[model]
hidden = [16]

[train]
epochs = 2
batch_size = 64

[train_grid]
lr = [0.001, 0.01]
"""


def test_each_value_gets_its_own_trials_and_baselines(write_spec):
    specs = expand(load_spec(write_spec(GRID)))
    mtl = [s for s in specs if not s.is_baseline]
    base = [s for s in specs if s.is_baseline]
    assert sorted((s.weighting.name, s.train.lr) for s in mtl) == [
        ("ew", 0.001), ("ew", 0.01), ("ls", 0.001), ("ls", 0.01)]
    assert sorted((s.tasks, s.train.lr) for s in base) == [
        (("t1",), 0.001), (("t1",), 0.01), (("t2",), 0.001), (("t2",), 0.01)]
    # Everything else is the sweep's [train].
    assert {s.train.epochs for s in specs} == {2}


def test_a_one_value_grid_gives_the_same_ids_as_no_grid(write_spec):
    plain = GRID.replace("[train_grid]\nlr = [0.001, 0.01]\n", "").replace(
        "batch_size = 64", "batch_size = 64\nlr = 0.01")
    one = GRID.replace("lr = [0.001, 0.01]", "lr = [0.01]")
    ids = [s.id for s in expand(load_spec(write_spec(plain, "a.toml")))]
    assert ids == [s.id for s in expand(load_spec(write_spec(one, "b.toml")))]


def test_product_of_several_keys(write_spec):
    text = GRID.replace("lr = [0.001, 0.01]", 'lr = [0.001, 0.01]\noptimizer = ["adam", "sgd"]')
    mtl = [s for s in expand(load_spec(write_spec(text))) if not s.is_baseline]
    assert len(mtl) == 2 * 2 * 2
    assert {(s.train.lr, s.train.optimizer) for s in mtl} == {
        (lr, opt) for lr in (0.001, 0.01) for opt in ("adam", "sgd")}


@pytest.mark.parametrize("grid, match", [
    ("lrr = [0.1]", r"train_grid\.lrr: not a training setting \(did you mean 'lr'\?\)"),
    ("lr = []", r"train_grid\.lr: needs at least one value"),
    ("lr = [0.1, 0.1]", r"train_grid\.lr: contains duplicates"),
    ("lr = [-1.0]", r"train_grid\.lr: Input should be greater than 0"),
    ('optimizer = ["adam", "lion"]', r"train_grid\.optimizer: .*'adam', 'adamw' or 'sgd'"),
    ("lr = 0.1", r"train_grid\.lr: Input should be a valid list"),
])
def test_bad_grids_are_one_line_config_errors(write_spec, grid, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(write_spec(GRID.replace("lr = [0.001, 0.01]", grid)))


def test_set_overrides_a_grid(write_spec):
    spec = load_spec(write_spec(GRID), overrides=["train_grid.lr=[0.003]"])
    assert [t.lr for t in spec.train_variants] == [0.003]


def test_labels_tables_and_front_separate_the_values(write_spec, tmp_path):
    out = tmp_path / "run"
    outcome = run_specs(expand(load_spec(write_spec(GRID))), store.RunStore(out),
                        ExecutorOptions(kind="inline"), progress=False)
    assert set(outcome.ran.values()) == {"ok"}
    tidy = store.load(out)
    assert set(tidy["weighting"]) == {
        "ew @lr=0.001", "ew @lr=0.01", "ls(weights=[0.8, 0.2]) @lr=0.001",
        "ls(weights=[0.8, 0.2]) @lr=0.01"}
    summary = analysis.trial_summary(tidy)
    assert len(summary) == 4 and summary["delta_m_task"].notna().all()
    # Each multi-task trial is paired with the baselines of its own learning rate.
    pairs = tidy[tidy["baseline_id"].notna()][["trial_id", "baseline_id"]].drop_duplicates()
    lr_of = {r.id: r.spec.train.lr for r in store.RunStore(out).records()}
    assert all(lr_of[a] == lr_of[b] for a, b in pairs.itertuples(index=False))
    fronts = analysis.scalarization_front(summary)
    (front,) = fronts.values()
    assert set(front.loc[front["is_ls"], "weighting"]) == {
        "ls(weights=[0.8, 0.2]) @lr=0.001", "ls(weights=[0.8, 0.2]) @lr=0.01"}
    # The report shows one baseline row per learning rate.
    report.write_report(out)
    text = (out / "report.md").read_text()
    assert text.count("| stl (baselines) | ew @lr=0.001") == 1
    assert text.count("| stl (baselines) | ew @lr=0.01 ") == 1
