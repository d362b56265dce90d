"""Trials: determinism, checkpoint selection on validation, failure statuses."""

from __future__ import annotations

import time

import pytest
import torch

from bench.config import load_spec
from bench.grid import TrialSpec, expand
from bench.trial import execute
from strategies.weighting import WEIGHTING, LossWeighting


def _run(spec: TrialSpec, **kwargs) -> dict:
    """The trial's record as a plain dict (as its file holds it)."""
    return execute(spec, **kwargs).to_dict()


def _trial(write_spec, *overrides: str) -> TrialSpec:
    trials = expand(load_spec(write_spec(), overrides=list(overrides)))
    return next(t for t in trials if not t.is_baseline)


def test_same_spec_and_seed_give_identical_metrics(write_spec):
    spec = _trial(write_spec)
    a, b = _run(spec), _run(spec)
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"] == b["metrics"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_different_seed_changes_metrics(write_spec):
    trials = [t for t in expand(load_spec(write_spec())) if not t.is_baseline]
    by_seed = {t.seed: t for t in trials if t.weighting.name == "ew"}
    assert _run(by_seed[0])["metrics"] != _run(by_seed[1])["metrics"]


def test_checkpoint_is_selected_on_validation_loss(write_spec):
    rec = _run(_trial(write_spec, "train.epochs=6", "train.lr=0.05"))
    val_losses = [sum(m["loss"] for m in h["val"].values()) for h in rec["history"]]
    assert rec["best_epoch"] == min(range(len(val_losses)), key=val_losses.__getitem__)
    # The final val metrics are those of the selected epoch.
    assert rec["metrics"]["val"]["t1"]["mse"] == rec["history"][rec["best_epoch"]]["val"]["t1"]["mse"]


def test_training_reduces_the_loss(write_spec):
    rec = _run(_trial(write_spec, "train.epochs=5"))
    first, last = rec["history"][0]["train_loss"], rec["history"][-1]["train_loss"]
    assert all(last[t] < first[t] for t in first)


class _NaNLoss(LossWeighting):
    """Test double: produces a NaN loss."""

    def combine(self, losses):
        return losses.sum() * torch.tensor(float("nan"))


class _Raises(LossWeighting):
    """Test double: raises."""

    def combine(self, losses):
        raise RuntimeError("boom")


@pytest.fixture
def failing_strategies():
    WEIGHTING.register("_test_nan")(_NaNLoss)
    WEIGHTING.register("_test_raises")(_Raises)
    yield
    WEIGHTING.unregister("_test_nan")
    WEIGHTING.unregister("_test_raises")


def test_divergence_and_errors_become_statuses(write_spec, failing_strategies):
    spec = _trial(write_spec)
    nan = TrialSpec(spec.dataset, spec.sharing, type(spec.weighting)("_test_nan", {}),
                    spec.seed, spec.model, spec.train)
    rec = _run(nan)
    assert rec["status"] == "diverged" and rec["diverged_epoch"] == 0
    bad = TrialSpec(spec.dataset, spec.sharing, type(spec.weighting)("_test_raises", {}),
                    spec.seed, spec.model, spec.train)
    rec = _run(bad)
    assert rec["status"] == "error" and "boom" in rec["error"] and "Traceback" in rec["traceback"]


def test_results_do_not_depend_on_the_callers_thread_count(write_spec):
    spec = _trial(write_spec, "model.hidden=[256, 256]", "train.batch_size=128")
    torch.set_num_threads(2)
    a = _run(spec)
    torch.set_num_threads(1)
    b = _run(spec)
    assert a["metrics"] == b["metrics"]
    assert a["env"]["threads"] == b["env"]["threads"] == spec.train.threads == 1


def test_probe_results_carry_their_coverage_and_auto_gives_about_20(write_spec):
    """A fixed interval longer than the trial probes step 0 only, and says so; "auto" probes
    about AUTO_PROBES steps of any trial."""
    from bench.probes import AUTO_PROBES, probe_interval

    long = _run(_trial(write_spec, "probes.conflict_every=100", "probes.affinity_every=100"))
    for name in ("conflict", "affinity"):
        res = long["probes"][name]
        assert (res["probed_steps"], res["every"], res["trial_steps"]) == (1, 100, 8)
        assert res["steps"] == [0]
    auto = _run(_trial(write_spec, "train.epochs=10", "probes.conflict_every=auto",
                          "probes.affinity_every=auto"))
    assert auto["timing"]["steps"] == 40
    for name in ("conflict", "affinity"):
        res = auto["probes"][name]
        assert (res["probed_steps"], res["every"], res["trial_steps"]) == (20, 2, 40)
        assert res["steps"] == list(range(0, 40, 2))
    assert auto["probes"]["affinity"]["observations"] == 20
    assert probe_interval("auto", 5) == 1 and probe_interval("auto", 1000) == 1000 // AUTO_PROBES
    assert probe_interval(0, 1000) == 0 and probe_interval(7, 3) == 7


def test_probe_schedule_rejects_other_words(write_spec):
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="conflict_every"):
        load_spec(write_spec(), overrides=["probes.conflict_every=often"])
    spec = load_spec(write_spec(), overrides=["probes.conflict_every=auto"])
    assert spec.probes.conflict_every == "auto"


# --------------------------------------------------------------------------- timing


def test_trial_timing_leaves_out_set_up_and_the_warm_up_epoch():
    from bench.timing import SPREAD_FLAG, trial_timing

    # 4 epochs of 10 steps; the first carries 4.5 s of warm-up.
    t = trial_timing([4.6, 0.1, 0.1, 0.1], 10, 640, setup_s=3.0, run_s=5.2)
    assert t["steps"] == 40 and t["warmup_steps"] == 10
    assert t["warmup_s"] == pytest.approx(4.6) and t["setup_s"] == 3.0
    assert t["train_s"] == pytest.approx(4.9)
    assert t["step_s"] == pytest.approx(0.01)  # the steady epochs only
    assert t["samples_per_s"] == pytest.approx(6400.0)
    assert t["trial_s"] == pytest.approx(5.2 - 4.6 + 0.1)  # warm-up at the steady rate
    assert t["epoch_step_s"] == pytest.approx([0.46, 0.01, 0.01, 0.01])
    assert t["step_spread"] == pytest.approx(0.0)
    # A noisy steady part: IQR / median of the steady epochs' step times.
    noisy = trial_timing([1.0, 0.1, 0.2, 0.1, 0.3], 10, 640, setup_s=0.0, run_s=2.0)
    assert noisy["step_spread"] == pytest.approx((0.0225 - 0.01) / 0.015)  # q75, q25, q50
    assert noisy["step_spread"] > SPREAD_FLAG
    # One epoch: nothing to leave out, no spread.
    one = trial_timing([0.5], 10, 640, setup_s=0.1, run_s=0.6)
    assert one["warmup_steps"] == 0 and one["warmup_s"] == 0.0
    assert one["step_s"] == pytest.approx(0.05) and one["step_spread"] is None
    assert one["trial_s"] == pytest.approx(0.6)


class _SlowStart(LossWeighting):
    """Test double: a slow set-up (as a worker's first trial imports torch._dynamo) and a
    slow first step (first-call initialisation)."""

    def __init__(self) -> None:
        super().__init__()
        self._first = True

    def reset(self, num_tasks, device, seed=0):
        super().reset(num_tasks, device, seed=seed)
        time.sleep(0.3)
        self._first = True

    def combine(self, losses):
        if self._first:
            time.sleep(0.3)
            self._first = False
        return losses.sum()


@pytest.fixture
def slow_start():
    WEIGHTING.register("_test_slow_start")(_SlowStart)
    yield
    WEIGHTING.unregister("_test_slow_start")


def test_step_and_trial_times_exclude_set_up_and_warm_up(write_spec, slow_start):
    spec = _trial(write_spec, "train.epochs=4")
    slow = TrialSpec(spec.dataset, spec.sharing, type(spec.weighting)("_test_slow_start", {}),
                     spec.seed, spec.model, spec.train)
    t = _run(slow)["timing"]
    steps_per_epoch = t["steps"] // 4
    assert t["warmup_steps"] == steps_per_epoch and t["warmup_s"] >= 0.3
    assert t["setup_s"] >= 0.3
    # Without the 0.6 s of start-up a step of this tiny model takes a few milliseconds.
    assert t["step_s"] < 0.3 / steps_per_epoch
    assert t["step_s"] == pytest.approx(
        (t["train_s"] - t["warmup_s"]) / (t["steps"] - t["warmup_steps"]))
    assert t["trial_s"] < 0.3
    rec = _run(slow)
    assert rec["wall_s"] > 0.6 > rec["timing"]["trial_s"]  # wall time keeps everything
    assert rec["timing"]["warmup_s"] == pytest.approx(rec["history"][0]["seconds"])
