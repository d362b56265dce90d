"""Tests of the controllable-conflict generator ``conflict`` (offline, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import DATASETS, MTLDataset, load
from bench.data.conflict import label_fractions, noise_levels, task_weights
from bench.errors import ConfigError
from strategies.sharing.base import BackboneSpec
from strategies.sharing.hps import HardParameterSharing

SPLITS = ("train", "val", "test")
SMALL = {"input_dim": 8, "num_train": 2000, "num_val": 200, "num_test": 200}


def make(**params: object) -> MTLDataset:
    return DATASETS.create("conflict", **params)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


def r2_linear(x: torch.Tensor, y: torch.Tensor) -> float:
    """R^2 of the least-squares linear fit of y on x (with intercept)."""
    a = np.c_[x.numpy().astype(np.float64), np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(a, y.numpy().astype(np.float64), rcond=None)
    resid = y.numpy() - a @ coef
    return 1.0 - float(resid.var() / y.numpy().var())


def hps_gradient_cosine(ds: MTLDataset) -> float:
    """Cosine of the two tasks' gradients on the shared backbone of an hps model.

    Both towers start identical (and small, so the label term dominates the gradient):
    the shared layer then sees the tasks' disagreement directly.
    """
    torch.manual_seed(0)
    model = HardParameterSharing(ds.input_shape, ds.tasks, BackboneSpec(hidden=(16,), tower=()))
    with torch.no_grad():
        towers = [model.towers[t.name] for t in ds.tasks]
        for p1, p2 in zip(towers[0].parameters(), towers[1].parameters(), strict=True):
            p1.mul_(1e-3)
            p2.copy_(p1)
    out = model(ds.train.x)
    grads = []
    for task in ds.tasks:
        loss = task.loss(out[task.name], ds.train.y[task.name])
        g = torch.autograd.grad(loss, model.shared_parameters(), retain_graph=True)
        grads.append(torch.cat([v.flatten() for v in g]))
    return float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))


def test_registered_with_summary() -> None:
    assert "conflict" in DATASETS
    assert DATASETS.summary("conflict")


def test_shapes_and_dtypes() -> None:
    ds = load("conflict", num_tasks=3, **SMALL)
    assert [t.name for t in ds.tasks] == ["t1", "t2", "t3"]
    assert ds.input_shape == (8,)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2000, 200, 200)
    for split in SPLITS:
        s = getattr(ds, split)
        assert s.x.dtype == torch.float32
        assert all(v.dtype == torch.float32 and v.shape == (len(s),) for v in s.y.values())
    y = ds.train.y["t1"].double()
    assert float(y.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("angle", "expected"), [(0.0, 1.0), (60.0, 0.5), (90.0, 0.0), (180.0, -1.0)])
def test_task_weight_cosine_is_cos_angle(angle: float, expected: float) -> None:
    w = task_weights(np.random.default_rng(0), 2, 10, angle, 0.0)
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0)
    assert float(w[0] @ w[1]) == pytest.approx(expected, abs=1e-12)


def test_private_factor_shrinks_cosine() -> None:
    w = task_weights(np.random.default_rng(1), 2, 10, 180.0, 0.25)
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0)
    assert float(w[0] @ w[1]) == pytest.approx(-0.75, abs=1e-12)


def test_many_tasks_spread_over_the_arc() -> None:
    w = task_weights(np.random.default_rng(2), 5, 12, 180.0, 0.0)
    cos = w @ w.T
    assert cos[0, -1] == pytest.approx(-1.0, abs=1e-12)  # first vs last: the full angle
    assert cos[0, 1] == pytest.approx(np.cos(np.radians(45.0)), abs=1e-12)  # neighbours


@pytest.mark.parametrize(("angle", "sign"), [(180.0, -1.0), (0.0, 1.0)])
def test_labels_conflict_at_180_and_agree_at_0(angle: float, sign: float) -> None:
    ds = make(angle=angle, noise=0.0, **SMALL)
    for split in SPLITS:
        s = getattr(ds, split)
        assert corr(s.y["t1"], s.y["t2"]) == pytest.approx(sign, abs=1e-5)
    assert abs(corr(*make(angle=90.0, noise=0.0, **SMALL).train.y.values())) < 0.1


@pytest.mark.parametrize(("angle", "sign"), [(180.0, -1.0), (0.0, 1.0), (90.0, 0.0)])
def test_hps_shared_gradients_conflict_at_180(angle: float, sign: float) -> None:
    cos = hps_gradient_cosine(make(angle=angle, noise=0.0, **SMALL))
    assert cos == pytest.approx(sign, abs=0.05)


def test_negative_transfer_of_a_shared_predictor() -> None:
    """A predictor shared by both tasks (no task heads) fails both at 180 degrees."""

    def joint_mse(angle: float) -> float:
        ds = make(angle=angle, noise=0.0, **SMALL)
        x = ds.train.x.numpy().astype(np.float64)
        ys = [ds.train.y[t].numpy() for t in ("t1", "t2")]
        # Least squares of the summed losses = fit to the mean label.
        coef, *_ = np.linalg.lstsq(x, (ys[0] + ys[1]) / 2, rcond=None)
        return float(np.mean([np.mean((x @ coef - y) ** 2) for y in ys]))

    assert joint_mse(0.0) < 1e-3
    assert joint_mse(180.0) > 0.95  # no better than predicting 0 for z-scored labels


def test_noise_ramp() -> None:
    assert np.allclose(noise_levels(0.1, None, 3), [0.1, 0.1, 0.1])
    assert np.allclose(noise_levels(0.0, 1.0, 3), [0.0, 0.5, 1.0])
    ds = make(noise=0.0, noise_last=1.0, **SMALL)
    assert r2_linear(ds.test.x, ds.test.y["t1"]) > 0.99
    assert r2_linear(ds.test.x, ds.test.y["t2"]) == pytest.approx(0.5, abs=0.1)


def test_label_fraction_permutes_only_train_labels() -> None:
    assert np.allclose(label_fractions(0.2, 3), [1.0, 0.6, 0.2])
    full = make(noise=0.0, **SMALL)
    starved = make(noise=0.0, label_fraction_last=0.25, **SMALL)
    for split in SPLITS:
        assert torch.equal(getattr(full, split).x, getattr(starved, split).x)
    assert torch.equal(full.train.y["t1"], starved.train.y["t1"])  # task 1 keeps all labels
    for split in ("val", "test"):  # evaluation labels are never touched
        for t in ("t1", "t2"):
            assert torch.equal(getattr(full, split).y[t], getattr(starved, split).y[t])
    a, b = full.train.y["t2"].double(), starved.train.y["t2"].double()
    # Same label distribution (a permutation, up to the z-scoring), 75 % of rows changed.
    a_std, b_std = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    assert torch.allclose(a_std.sort().values, b_std.sort().values, atol=1e-5)
    changed = float((~torch.isclose(a_std, b_std, atol=1e-5)).double().mean())
    assert changed == pytest.approx(0.75, abs=0.02)
    assert r2_linear(starved.train.x, starved.train.y["t2"]) < 0.15
    assert r2_linear(starved.test.x, starved.test.y["t2"]) > 0.99


def test_binary_kind() -> None:
    ds = make(kind="binary", angle=180.0, noise=0.0, **SMALL)
    assert all(t.kind == "binary" for t in ds.tasks)
    for split in SPLITS:
        for y in getattr(ds, split).y.values():
            assert set(y.unique().tolist()) <= {0.0, 1.0}
    y1, y2 = ds.train.y["t1"], ds.train.y["t2"]
    assert 0.4 < float(y1.mean()) < 0.6
    assert float((y1 == y2).double().mean()) < 0.01  # opposite labels at 180 degrees


def test_relu_link_conflict_is_not_a_sign_flip() -> None:
    ds = make(link="relu", angle=180.0, noise=0.0, **SMALL)
    c = corr(ds.train.y["t1"], ds.train.y["t2"])
    assert -0.8 < c < -0.2  # opposite half-spaces: negatively related, not mirror images


def test_deterministic_and_seeded() -> None:
    a, b, c = make(data_seed=3, **SMALL), make(data_seed=3, **SMALL), make(data_seed=4, **SMALL)
    for split in SPLITS:
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y["t2"], getattr(b, split).y["t2"])
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize(
    "params",
    [
        {"angle": 181.0},
        {"angle": -1.0},
        {"num_tasks": 1},
        {"num_tasks": 8, "input_dim": 9},
        {"noise": -0.1},
        {"noise_last": -1.0},
        {"label_fraction_last": 0.0},
        {"label_fraction_last": 1.5},
        {"kind": "multiclass"},
        {"link": "tanh"},
        {"private": 1.1},
        {"angel": 90.0},
    ],
)
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load("conflict", **params)
