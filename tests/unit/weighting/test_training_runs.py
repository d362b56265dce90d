"""Short training runs (bench.trial) of strategies with special needs: loss-based and
learnable ones, multi-batch methods, and the strategy stats in the trial record.

(Moved from test_weighting_loss_based.py, test_weighting_stateful.py.)"""

from __future__ import annotations

import math

import pytest

from bench.config import load_spec
from bench.grid import expand
from bench.trial import execute
from unit.weighting._inputs import (
    DEVICES,
)

SPEC = """
name = "loss_based"
seeds = [0]
datasets = [{{ name = "mmoe_synthetic", num_train = 96, num_val = 32, num_test = 32, input_dim = 8 }}]
sharing = ["hps"]
weighting = [{weighting}]

[model]
hidden = [8]

[train]
epochs = 3
batch_size = 32
lr = 0.01
engine = "{engine}"
device = "{device}"
"""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("weighting", "engine"),
    [
        ('{ name = "ls", weights = [1.0, 3] }', "loop"),
        ('"si"', "loop"),
        ('"gls"', "loop"),
        ('"rlw"', "loop"),
        ('{ name = "stch", warmup_epoch = 0, mu = 0.5 }', "loop"),
        ('"famo"', "loop"),
        ('"db_mtl"', "vmap"),
        ('"gradnorm"', "loop"),
        ('{ name = "gradnorm", lr = 0.01 }', "gramian"),
    ],
)
def test_strategies_train(write_spec, device, weighting, engine):
    text = SPEC.format(weighting=weighting, engine=engine, device=device)
    trials = [t for t in expand(load_spec(write_spec(text))) if not t.is_baseline]
    (trial,) = trials
    record = execute(trial)
    assert record.ok, record.traceback or record.error
    history = record.history
    assert len(history) == 3
    assert all(math.isfinite(v) for h in history for v in h.train_loss.values())
    weights = history[-1].weights
    assert set(weights) == {"t1", "t2"} and all(math.isfinite(w) for w in weights.values())


def test_multi_batch_methods_train_through_trials(write_spec):
    spec = write_spec("""
        name = "multi"
        seeds = [0]
        datasets = [{ name = "mmoe_synthetic", num_train = 128, num_val = 32, num_test = 32, input_dim = 8 }]
        sharing = ["hps"]
        weighting = ["sdmgrad", "modo"]

        [model]
        hidden = [8]

        [train]
        epochs = 2
        batch_size = 32
        lr = 0.01
    """)
    trials = [t for t in expand(load_spec(spec)) if not t.is_baseline]
    assert {t.weighting.name for t in trials} == {"sdmgrad", "modo"}
    for trial in trials:
        record = execute(trial)
        assert record.ok, record.traceback
        assert len(record.history) == 2
        for entry in record.history:
            assert sum(entry.weights.values()) == pytest.approx(1.0, abs=1e-5)


def test_trials_record_strategy_stats(write_spec):
    # Issue 14: the record keeps strategy.stats() (Nash-MTL: how often each step reached
    # the Nash point); strategies without diagnostics record {}.
    spec = write_spec("""
        name = "stats"
        seeds = [0]
        datasets = [{ name = "mmoe_synthetic", num_train = 64, num_val = 32, num_test = 32, input_dim = 8 }]
        sharing = ["hps"]
        weighting = ["nash_mtl", "pcgrad"]

        [model]
        hidden = [8]

        [train]
        epochs = 2
        batch_size = 32
        lr = 0.01
    """)
    trials = [t for t in expand(load_spec(spec)) if not t.is_baseline]
    records = {t.weighting.name: execute(t) for t in trials}
    for record in records.values():
        assert record.ok, record.traceback
    nash = records["nash_mtl"].strategy_stats
    assert nash["nash_solves"] == 4.0  # 2 epochs x 2 steps
    assert 0.0 <= nash["nash_point_reached_fraction"] <= 1.0
    assert records["pcgrad"].strategy_stats == {}
