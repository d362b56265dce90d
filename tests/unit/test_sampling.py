"""Multi-input mode: task-sampling policies, the per-task feeder, trials on multi-input data."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import data, store
from bench.config import Component, load_spec
from bench.data import MultiInputDataset, Split
from bench.errors import ConfigError
from bench.executors import ExecutorOptions, run_specs
from bench.grid import expand
from bench.sampling import SAMPLING, MultiInputFeeder, allocate
from bench.tasks import Task
from bench.trial import execute

MULTI = """
name = "multi"
seeds = [0]
datasets = [{ name = "conflict", separate_inputs = true, num_train = 600, num_train_last = 60, num_val = 100, num_test = 100, angle = 60.0 }]
sharing = ["hps"]
weighting = ["ew", "mgda"]
sampling = ["round_robin", "proportional", { name = "temperature", temperature = 4.0 }]

[model]
hidden = [16]

[train]
epochs = 2
batch_size = 32
lr = 0.01
"""


# --------------------------------------------------------------------------- policies


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8).filter(lambda p: sum(p) > 1e-6),
    st.integers(0, 500),
)
def test_allocate_fills_the_step_with_at_least_one_sample_per_task(shares, extra):
    total = len(shares) + extra
    counts = allocate(shares, total)
    assert sum(counts) == total
    assert min(counts) >= 1
    raw = np.asarray(shares) / sum(shares) * total
    # Apart from the minimum of one, rounding moves no count by a whole sample or more
    # beyond what the minimum forced.
    forced = int(np.sum(np.maximum(0, 1 - np.floor(raw))))
    assert np.all(np.abs(np.asarray(counts) - raw) < 1 + forced)


def test_allocate_refuses_a_step_smaller_than_the_task_count():
    with pytest.raises(ValueError, match="cannot hold 3 tasks"):
        allocate([1, 1, 1], 2)


def test_policies_shares():
    sizes = [100, 400, 1600]
    rr = SAMPLING.create("round_robin").shares(sizes)
    prop = SAMPLING.create("proportional").shares(sizes)
    np.testing.assert_allclose(rr, [1 / 3] * 3)
    np.testing.assert_allclose(prop, np.asarray(sizes) / 2100)
    # Temperature 1 is proportional; 2 is proportional to sqrt(n); large is near-equal.
    np.testing.assert_allclose(SAMPLING.create("temperature", temperature=1.0).shares(sizes),
                               prop)
    np.testing.assert_allclose(SAMPLING.create("temperature", temperature=2.0).shares(sizes),
                               np.array([10, 20, 40]) / 70)
    np.testing.assert_allclose(SAMPLING.create("temperature", temperature=1e6).shares(sizes),
                               rr, atol=1e-5)
    # Tiny temperatures put everything on the largest task without overflowing.
    sharp = SAMPLING.create("temperature", temperature=1e-3).shares(sizes)
    assert np.all(np.isfinite(sharp)) and sharp[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["round_robin", "proportional", "temperature"])
def test_policies_are_invariant_to_task_order(name):
    sizes = np.array([50, 7, 900, 120])
    perm = np.array([2, 0, 3, 1])
    policy = SAMPLING.create(name)
    np.testing.assert_allclose(policy.shares(sizes)[perm], policy.shares(sizes[perm]))


# --------------------------------------------------------------------------- feeder


def _indexed_tasks(sizes: list[int]) -> tuple[tuple[Task, ...], dict[str, Split]]:
    """Task t's sample i has input (t, i): the batch reveals where each row came from."""
    tasks = tuple(Task(f"t{t}", "regression") for t in range(len(sizes)))
    splits = {}
    for t, n in enumerate(sizes):
        x = torch.stack([torch.full((n,), float(t)), torch.arange(n, dtype=torch.float32)], 1)
        splits[f"t{t}"] = Split(x, {f"t{t}": torch.arange(n, dtype=torch.float32)})
    return tasks, splits


def test_feeder_slices_belong_to_their_task_and_cover_every_sample():
    sizes = [30, 200, 70]
    tasks, splits = _indexed_tasks(sizes)
    feeder = MultiInputFeeder(tasks, splits, 10, torch.Generator().manual_seed(0),
                              SAMPLING.create("proportional"))
    assert feeder.counts == [3, 20, 7]
    assert feeder.steps_per_epoch == math.ceil(300 / 30)
    seen = {t.name: [] for t in tasks}
    for step in range(feeder.steps_per_epoch):
        x, y = feeder.batch(step)
        for i, t in enumerate(tasks):
            rows = x[feeder.bounds[i] : feeder.bounds[i + 1]]
            assert torch.all(rows[:, 0] == i)  # the slice holds task i's samples only
            assert torch.equal(rows[:, 1], y[t.name])  # with their own labels
            seen[t.name] += rows[:, 1].long().tolist()
    # Proportional shares read every task's data exactly once per epoch.
    for t, n in zip(tasks, sizes, strict=True):
        assert sorted(seen[t.name]) == list(range(n))


def test_round_robin_cycles_small_tasks_without_repeats_within_a_pass():
    tasks, splits = _indexed_tasks([12, 300])
    feeder = MultiInputFeeder(tasks, splits, 4, torch.Generator().manual_seed(1),
                              SAMPLING.create("round_robin"))
    assert feeder.counts == [4, 4]
    small = []
    for step in range(9):  # 36 draws of the small task: three full permutations
        x, _ = feeder.batch(step)
        small += x[:4, 1].long().tolist()
    for k in range(3):
        assert sorted(small[12 * k : 12 * (k + 1)]) == list(range(12))


def test_each_task_loss_uses_only_its_own_slice():
    tasks, splits = _indexed_tasks([40, 40])
    feeder = MultiInputFeeder(tasks, splits, 8, torch.Generator().manual_seed(0),
                              SAMPLING.create("round_robin"))
    x, y = feeder.batch(0)
    x = x.clone().requires_grad_(True)
    out = {t.name: x[:, 1:2] * 1.5 for t in tasks}
    losses = feeder.losses(out, y)
    (grad,) = torch.autograd.grad(losses[0], x)
    assert grad[8:].abs().sum() == 0 and grad[:8].abs().sum() > 0


# --------------------------------------------------------------------------- data, grid


def test_conflict_separate_inputs_gives_each_task_its_own_samples():
    ds = data.load("conflict", separate_inputs=True, num_tasks=3, num_train=900,
                   num_train_last=100, num_val=50, num_test=60)
    assert isinstance(ds, MultiInputDataset)
    assert ds.sizes() == {"t1": 900, "t2": 500, "t3": 100}
    assert ds.sizes("test") == {"t1": 60, "t2": 60, "t3": 60}
    assert not torch.equal(ds.train["t1"].x[:100], ds.train["t3"].x)
    for t in ("t1", "t2", "t3"):  # regression targets z-scored on the task's own train set
        y = ds.train[t].y[t].double()
        assert abs(float(y.mean())) < 1e-5 and float(y.std(unbiased=False)) == pytest.approx(1)


@pytest.mark.parametrize("params, match", [
    ({"num_train_last": 10}, "needs separate_inputs"),
    ({"separate_inputs": True, "label_fraction_last": 0.5}, "use num_train_last"),
])
def test_conflict_rejects_mixed_imbalance_options(params, match):
    with pytest.raises(ConfigError, match=match):
        data.load("conflict", **params)


def test_sampling_axis_multiplies_multi_input_trials_only(write_spec):
    specs = expand(load_spec(write_spec(MULTI)))
    mtl = [s for s in specs if not s.is_baseline]
    assert len(mtl) == 2 * 3
    assert {s.sampling.name for s in mtl} == {"round_robin", "proportional", "temperature"}
    assert all(s.sampling is None for s in specs if s.is_baseline)
    assert len([s for s in specs if s.is_baseline]) == 2  # one per task, shared
    # On single-input data the axis collapses: same trials, same ids as without it.
    single = MULTI.replace("separate_inputs = true, num_train = 600, num_train_last = 60,",
                           "num_train = 600,")
    with_axis = expand(load_spec(write_spec(single, "a.toml")))
    without = expand(load_spec(write_spec(single.replace(
        'sampling = ["round_robin", "proportional", { name = "temperature", temperature = 4.0 }]',
        ""), "b.toml")))
    assert [s.id for s in with_axis] == [s.id for s in without]
    assert all("sampling" not in s.identity() for s in with_axis)


@pytest.mark.parametrize("line, match", [
    ('sampling = ["round_robbin"]', "unknown sampling policy 'round_robbin'.*did you mean "
                                    "'round_robin'"),
    ('sampling = [{ name = "temperature", temperature = -1.0 }]', "temperature"),
    ('sampling = [{ name = "proportional", temperature = 2.0 }]',
     "unknown hyperparameter 'temperature' for sampling policy 'proportional'"),
    ('sampling = [{ name = "proportional", per_step = "two" }]', "per_step"),
    ('sampling = []', "sampling"),
])
def test_bad_sampling_entries_are_config_errors(write_spec, line, match):
    text = MULTI.replace(
        'sampling = ["round_robin", "proportional", { name = "temperature", temperature = 4.0 }]',
        line)
    with pytest.raises(ConfigError, match=match):
        load_spec(write_spec(text))


def test_filters_can_select_a_sampling_policy(write_spec):
    text = MULTI + '\n[[exclude]]\nsampling = "proportional"\nweighting = "mgda"\n'
    mtl = [s for s in expand(load_spec(write_spec(text))) if not s.is_baseline]
    assert len(mtl) == 5
    assert not any(s.sampling.name == "proportional" and s.weighting.name == "mgda"
                   for s in mtl)


# --------------------------------------------------------------------------- trials


def test_multi_input_sweep_runs_and_labels_the_policy(write_spec, tmp_path):
    trials = expand(load_spec(write_spec(MULTI)))
    out = tmp_path / "run"
    outcome = run_specs(trials, store.RunStore(out), ExecutorOptions(kind="inline"),
                        progress=False)
    assert set(outcome.ran.values()) == {"ok"}
    tidy = store.load(out)
    assert set(tidy["status"]) == {"ok"}
    labels = set(tidy.loc[tidy["baseline_task"].isna(), "weighting"])
    assert labels == {f"{w} @{p}" for w in ("ew", "mgda")
                      for p in ("round_robin", "proportional", "temperature(temperature=4.0)")}
    # Every multi-task trial is paired with both single-task baselines.
    from bench import analysis

    summary_table = analysis.trial_summary(tidy)
    assert len(summary_table) == 6 and summary_table["delta_m_task"].notna().all()
    # The report separates the policies in the dataset's table.
    from bench import report

    report.write_report(out)
    text = (out / "report.md").read_text()
    for label in ("ew @round_robin", "ew @proportional", "mgda @temperature(temperature=4.0)"):
        assert re.search(rf"\| hps +\| {re.escape(label)} +\|", text), label


def test_multi_input_trial_is_deterministic_and_policy_changes_training(write_spec):
    specs = [s for s in expand(load_spec(write_spec(MULTI)))
             if not s.is_baseline and s.weighting.name == "ew"]
    by_policy = {s.sampling.name: s for s in specs}
    first = execute(by_policy["round_robin"])
    again = execute(by_policy["round_robin"])
    assert first.status == "ok"
    assert first.metrics == again.metrics
    prop = execute(by_policy["proportional"])
    assert prop.metrics != first.metrics
    # Equal compute: every policy reads the same number of samples in the same steps.
    assert prop.timing.steps == first.timing.steps == 2 * math.ceil(660 / 64)


def test_baseline_of_a_multi_input_task_trains_on_that_task_alone(write_spec):
    specs = expand(load_spec(write_spec(MULTI)))
    base = next(s for s in specs if s.is_baseline and s.tasks == ("t2",))
    record = execute(base)
    assert record.status == "ok"
    assert list(record.metrics["test"]) == ["t2"]
    assert record.timing.steps == 2 * math.ceil(60 / 32)  # t2's 60 samples only


def test_a_trial_record_round_trips_its_sampling_policy(write_spec):
    from bench.grid import TrialSpec

    spec = next(s for s in expand(load_spec(write_spec(MULTI))) if s.sampling is not None)
    again = TrialSpec.from_message(spec.identity())  # what the record holds
    assert again == spec and again.id == spec.id
    assert again.sampling == Component(spec.sampling.name, spec.sampling.params)
    sent = TrialSpec.from_message(spec.to_message())  # what a worker process gets
    assert sent == spec and sent.id == spec.id and sent.labels == spec.labels


def test_manifest_names_the_axis_only_when_used(write_spec, tiny_spec):
    """Sweeps without a sampling axis keep the manifest they had before it existed, so
    their run directories stay resumable."""
    plain = load_spec(write_spec(tiny_spec, "plain.toml")).to_dict()
    assert "sampling" not in plain and "train_grid" not in plain
    multi = load_spec(write_spec(MULTI, "multi.toml")).to_dict()
    assert [c["name"] for c in multi["sampling"]] == ["round_robin", "proportional",
                                                      "temperature"]


# --------------------------------------------------------------------------- one task per step


def _alternating(sizes, policy, batch_size=5, seed=0):
    from bench.sampling import AlternatingFeeder

    tasks, splits = _indexed_tasks(sizes)
    return tasks, AlternatingFeeder(tasks, splits, batch_size, torch.Generator().manual_seed(seed),
                                    SAMPLING.create(policy, per_step="one"))


def test_alternating_round_robin_takes_tasks_in_turn_across_epochs():
    _, feeder = _alternating([20, 200, 55], "round_robin")
    assert feeder.steps_per_epoch == math.ceil(275 / 5)  # same samples per epoch as "all"
    seen = []
    for _epoch in range(2):
        feeder.start_epoch()
        for step in range(feeder.steps_per_epoch):
            x, y = feeder.batch(step)
            (task,) = y
            t = int(task[1:])
            assert torch.all(x[:, 0] == t) and len(x) == 5  # one task's samples only
            seen.append(t)
        assert sum(feeder.task_steps()) == feeder.steps_per_epoch
    assert seen == [i % 3 for i in range(len(seen))]  # the turn carries over epochs


def test_alternating_draws_tasks_with_the_policy_shares():
    _, feeder = _alternating([100, 300, 600], "proportional", batch_size=1)
    feeder.start_epoch()
    counts = np.asarray(feeder.task_steps()) / feeder.steps_per_epoch
    # 1000 draws: each share within 5 standard errors of 0.1 / 0.3 / 0.6.
    np.testing.assert_allclose(counts, [0.1, 0.3, 0.6], atol=5 * math.sqrt(0.25 / 1000))


def test_alternating_losses_are_zero_and_detached_for_absent_tasks():
    tasks, feeder = _alternating([10, 10], "round_robin")
    feeder.start_epoch()
    x, y = feeder.batch(1)  # task t1's turn
    x = x.clone().requires_grad_(True)
    out = {t.name: x[:, 1:2] * 2.0 for t in tasks}
    losses = feeder.losses(out, y)
    assert losses[0].item() == 0 and losses[1].item() > 0
    (absent,) = torch.autograd.grad(losses[0], x, retain_graph=True, allow_unused=True)
    (present,) = torch.autograd.grad(losses[1], x)
    assert (absent is None or not absent.any()) and present.abs().sum() > 0


def test_one_task_per_step_admits_only_equal_weighting(write_spec):
    text = MULTI.replace(
        'sampling = ["round_robin", "proportional", { name = "temperature", temperature = 4.0 }]',
        'sampling = [{ name = "round_robin", per_step = "one" }]')
    with pytest.raises(ConfigError, match="only weighting 'ew' applies \\(got 'mgda'\\)"):
        expand(load_spec(write_spec(text)))
    ok = text.replace('weighting = ["ew", "mgda"]', 'weighting = ["ew"]')
    specs = [s for s in expand(load_spec(write_spec(ok, "ok.toml"))) if not s.is_baseline]
    first, again = execute(specs[0]), execute(specs[0])
    assert first.status == "ok" and first.metrics == again.metrics
    assert first.timing.steps == 2 * math.ceil(660 / 32)
    # Each task's epoch loss is its mean over its own steps, not diluted by the others'.
    assert all(v > 0.05 for v in first.history[0].train_loss.values())
