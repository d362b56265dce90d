"""Equal-capacity sweeps, the architecture regularisation hook, and the toy landscape."""

from __future__ import annotations

import pytest
import torch

from bench.config import load_spec
from bench.errors import ConfigError
from bench.grid import baseline_of, expand
from bench.trial import execute

MATCHED = """
name = "ms"
seeds = [0]
datasets = [{ name = "mmoe_synthetic", num_train = 128, num_val = 32, num_test = 32, input_dim = 16 }]
sharing = ["hps", "mmoe", "cross_stitch"]
weighting = ["ew"]
[model]
hidden = [32, 32]
match_params = "hps"
[train]
epochs = 1
"""


def test_match_params_gives_every_architecture_the_target_size(write_spec):
    trials = expand(load_spec(write_spec(MATCHED)))
    mtl = [t for t in trials if not t.is_baseline]
    target = mtl[0].model.matched_parameters
    for t in mtl:
        record = execute(t)
        assert record.ok
        assert abs(record.parameters - target) <= 0.1 * target, t.sharing.name
    # Baselines keep the sweep's own widths and are shared by all architectures.
    base_ids = {baseline_of(t, "t1").id for t in mtl}
    assert len(base_ids) == 1
    assert next(t for t in trials if t.is_baseline).model.hidden == [32, 32]


def test_match_params_names_a_known_architecture(write_spec):
    with pytest.raises(ConfigError, match=r"model\.match_params: unknown sharing .hsp."):
        load_spec(write_spec(MATCHED.replace('match_params = "hps"', 'match_params = "hsp"')))


def test_impossible_architecture_is_refused_before_running(write_spec):
    text = MATCHED.replace('sharing = ["hps", "mmoe", "cross_stitch"]', 'sharing = ["mtan"]')
    with pytest.raises(ConfigError, match="MTAN needs a convolutional backbone"):
        expand(load_spec(write_spec(text)))


def test_soft_sharing_penalty_reaches_the_gradients():
    from bench.assembly import step_context
    from bench.engine import ENGINES, apply_gradients
    from bench.tasks import Task
    from strategies import sharing, weighting

    tasks = (Task("a", "regression"), Task("b", "regression"))

    def grads(l2: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = sharing.get("soft", (4,), tasks, l2=l2)
        x, y = torch.randn(8, 4), torch.randn(8)
        out = model(x)
        losses = torch.stack([t.loss(out[t.name], y) for t in tasks])
        ctx = step_context(model, weighting.get("ew"), ENGINES["loop"](),
                           torch.optim.SGD(model.parameters(), lr=0.1), shared=[])
        apply_gradients([losses], ctx)
        return [p.grad.clone() for p in model.parameters()]

    without, with_penalty = grads(0.0), grads(10.0)
    assert any(not torch.allclose(a, b) for a, b in zip(without, with_penalty, strict=True))


TOY = """
name = "toy"
datasets = [{ name = "toy2", start = 0, steps_per_epoch = 200 }]
sharing = [{ name = "landscape", record_every = 50 }]
weighting = ["ew", "mgda"]
[train]
epochs = 2
batch_size = 1
lr = 0.01
"""


def test_toy_landscape_moves_the_point_and_records_its_trajectory(write_spec):
    from bench.data.toy2 import toy_losses

    trials = expand(load_spec(write_spec(TOY)))
    assert all(not t.is_baseline for t in trials)  # no single-task baselines for objectives
    for t in trials:
        rec = execute(t)
        assert rec.ok, rec.error
        traj = rec.architecture_stats["trajectory"]
        assert traj[0] == [-8.5, 7.5] and len(traj) == 400 // 50
        start = toy_losses(torch.tensor(traj[0])).sum()
        end = toy_losses(torch.tensor(traj[-1])).sum()
        assert end < start  # descending the average loss
        # The reported objectives are those of the point after training, below the start's.
        values = [rec.metrics["test"][f]["value"] for f in ("f1", "f2")]
        assert sum(values) < float(start)
