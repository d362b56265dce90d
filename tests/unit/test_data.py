"""Tests of the built-in dataset loaders (offline, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from bench import data
from bench.data import DATASETS, MTLDataset, load
from bench.data.multi_digits import overlay, source_pools
from bench.data.penguins import FEATURES, ISLANDS, load_frame, split_indices
from bench.errors import ConfigError

SPLITS = ("train", "val", "test")


def fresh(name: str, **params: object) -> MTLDataset:
    """Build a dataset bypassing ``load``'s per-process cache."""
    return DATASETS.create(name, **params)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


def check_consistent(ds: MTLDataset) -> None:
    """Every split has one label per sample for every task, of the right dtype and range."""
    for split in SPLITS:
        s = getattr(ds, split)
        assert s.x.dtype == torch.float32
        assert set(s.y) == {t.name for t in ds.tasks}
        assert torch.isfinite(s.x).all()
        for task in ds.tasks:
            y = s.y[task.name]
            assert y.shape == (len(s),)
            if task.kind == "multiclass":
                assert y.dtype == torch.int64
                assert y.min() >= 0 and y.max() < task.num_classes
            elif task.kind == "binary":
                assert y.dtype == torch.float32
                assert set(y.unique().tolist()) <= {0.0, 1.0}
            else:
                assert y.dtype == torch.float32
                assert torch.isfinite(y).all()


def test_registry_names() -> None:
    assert {"mmoe_synthetic", "multi_digits", "penguins"} <= set(data.names())
    for name in ("mmoe_synthetic", "multi_digits", "penguins"):
        assert DATASETS.summary(name)


# --------------------------------------------------------------------------- mmoe_synthetic

SMALL = {"num_train": 1500, "num_val": 300, "num_test": 200}


def test_mmoe_shapes_and_tasks() -> None:
    ds = load("mmoe_synthetic", input_dim=20, num_tasks=3, **SMALL)
    check_consistent(ds)
    assert [t.name for t in ds.tasks] == ["t1", "t2", "t3"]
    assert all(t.kind == "regression" for t in ds.tasks)
    assert ds.input_shape == (20,)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1500, 300, 200)


def test_mmoe_defaults_match_paper() -> None:
    ds = load("mmoe_synthetic")
    assert ds.input_shape == (100,)
    assert [t.name for t in ds.tasks] == ["t1", "t2"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8000, 1000, 1000)


def test_mmoe_correlation_controls_label_correlation() -> None:
    c = {
        p: corr(*fresh("mmoe_synthetic", correlation=p, **SMALL).train.y.values())
        for p in (0.0, 0.5, 1.0)
    }
    assert c[1.0] > 0.9
    assert c[0.0] < c[0.5] < c[1.0]
    assert abs(c[0.0]) < 0.2


def test_mmoe_many_tasks_pairwise_correlated() -> None:
    ds = fresh("mmoe_synthetic", correlation=1.0, num_tasks=5, input_dim=10, **SMALL)
    ys = list(ds.train.y.values())
    assert min(corr(ys[0], y) for y in ys[1:]) > 0.9


def test_mmoe_weights_have_pairwise_cosine_p() -> None:
    from bench.data.mmoe_synthetic import task_weights

    w = task_weights(np.random.default_rng(0), 4, 12, 0.3, 2.0)
    assert np.allclose(np.linalg.norm(w, axis=1), 2.0)
    cos = (w @ w.T) / 4.0
    assert np.allclose(cos[~np.eye(4, dtype=bool)], 0.3)


def test_mmoe_targets_standardised_on_train_only() -> None:
    ds = fresh("mmoe_synthetic", **SMALL)
    for t in ("t1", "t2"):
        y = ds.train.y[t].double()
        assert abs(float(y.mean())) < 1e-5
        assert abs(float(y.std(unbiased=False)) - 1.0) < 1e-5
        # val/test use the train statistics, so their means are not forced to exactly 0.
        assert float(ds.val.y[t].double().mean()) != pytest.approx(0.0, abs=1e-6)
        assert float(ds.test.y[t].double().mean()) != pytest.approx(0.0, abs=1e-6)


def test_mmoe_deterministic() -> None:
    a = fresh("mmoe_synthetic", data_seed=3, **SMALL)
    b = fresh("mmoe_synthetic", data_seed=3, **SMALL)
    c = fresh("mmoe_synthetic", data_seed=4, **SMALL)
    for split in SPLITS:
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        for t in ("t1", "t2"):
            assert torch.equal(getattr(a, split).y[t], getattr(b, split).y[t])
    assert not torch.equal(a.train.x, c.train.x)
    assert not torch.equal(a.train.y["t1"], c.train.y["t1"])


def test_mmoe_splits_distinct() -> None:
    ds = fresh("mmoe_synthetic", **SMALL)
    train = {tuple(r) for r in ds.train.x.numpy().tolist()}
    assert not any(tuple(r) in train for r in ds.val.x.numpy().tolist())
    assert not any(tuple(r) in train for r in ds.test.x.numpy().tolist())


@pytest.mark.parametrize(
    "params",
    [
        {"correlation": 1.5},
        {"correlation": -0.1},
        {"num_tasks": 1},
        {"num_tasks": 65},
        {"scale": 0.0},
        {"input_dim": 4, "num_tasks": 4},
        {"num_tasks": "2"},
        {"corelation": 0.5},
    ],
)
def test_mmoe_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load("mmoe_synthetic", **params)


# --------------------------------------------------------------------------- multi_digits


def test_multi_digits_shapes() -> None:
    ds = load("multi_digits", num_train=600, num_val=100, num_test=120)
    check_consistent(ds)
    assert [(t.name, t.kind, t.num_classes) for t in ds.tasks] == [
        ("left", "multiclass", 10),
        ("right", "multiclass", 10),
    ]
    assert ds.input_shape == (1, 8, 12)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (600, 100, 120)
    assert ds.train.x.min() >= 0.0 and ds.train.x.max() <= 1.0
    assert ds.train.x.max() == 1.0


def test_multi_digits_default_sizes() -> None:
    ds = load("multi_digits")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6000, 1000, 1000)
    assert ds.train.x.shape == (6000, 1, 8, 12)


@pytest.mark.parametrize("shift", [0, 3, 8])
def test_multi_digits_shift_width(shift: int) -> None:
    ds = fresh("multi_digits", num_train=50, num_val=10, num_test=10, shift=shift)
    assert ds.input_shape == (1, 8, 8 + shift)


def test_overlay_pixelwise_max() -> None:
    left = np.zeros((1, 8, 8), dtype=np.float32)
    right = np.zeros((1, 8, 8), dtype=np.float32)
    left[0, :, 6] = 0.5
    right[0, :, 2] = 0.8  # lands on column 6 with shift 4
    right[0, 0, 7] = 1.0  # lands on column 11
    out = overlay(left, right, 4)
    assert out.shape == (1, 8, 12)
    assert np.all(out[0, :, 6] == 0.8)
    assert out[0, 0, 11] == 1.0
    assert out.sum() == pytest.approx(8 * 0.8 + 1.0)


def test_multi_digits_source_pools_disjoint() -> None:
    pools = source_pools(0)
    sizes = {k: len(v) for k, v in pools.items()}
    assert sizes == {"train": 1078, "val": 359, "test": 360}
    sets = {k: set(v.tolist()) for k, v in pools.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(range(1797))


def test_multi_digits_no_leakage() -> None:
    # With shift=8 the two digits do not overlap, so each half is a source image.
    ds = fresh("multi_digits", num_train=800, num_val=200, num_test=200, shift=8)
    images = load_digits().images.astype(np.float32) / 16.0
    pools = source_pools(0)
    by_bytes = {images[i].tobytes(): i for i in range(len(images))}
    for split in SPLITS:
        x = getattr(ds, split).x.numpy()[:, 0]
        allowed = set(pools[split].tolist())
        for half, task in ((x[:, :, :8], "left"), (x[:, :, 8:], "right")):
            idx = [by_bytes[np.ascontiguousarray(h).tobytes()] for h in half]
            assert set(idx) <= allowed
            labels = getattr(ds, split).y[task].numpy()
            assert np.array_equal(load_digits().target[idx], labels)


def test_multi_digits_deterministic() -> None:
    a = fresh("multi_digits", num_train=100, num_val=20, num_test=20, split_seed=1)
    b = fresh("multi_digits", num_train=100, num_val=20, num_test=20, split_seed=1)
    c = fresh("multi_digits", num_train=100, num_val=20, num_test=20, split_seed=2)
    for split in SPLITS:
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y["left"], getattr(b, split).y["left"])
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize("params", [{"shift": 9}, {"shift": -1}, {"num_train": 0}, {"seed": 1}])
def test_multi_digits_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load("multi_digits", **params)


# --------------------------------------------------------------------------- penguins


def test_penguins_shapes_and_tasks() -> None:
    ds = load("penguins")
    check_consistent(ds)
    assert [(t.name, t.kind) for t in ds.tasks] == [
        ("species", "multiclass"),
        ("sex", "binary"),
        ("body_mass", "regression"),
    ]
    assert ds.task("species").num_classes == 3
    assert ds.input_shape == (6,)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (200, 67, 66)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 333
    assert set(ds.train.y["species"].tolist()) == {0, 1, 2}
    # one-hot island columns
    onehot = ds.train.x[:, 3:]
    assert torch.all((onehot == 0) | (onehot == 1))
    assert torch.all(onehot.sum(1) == 1)


def test_penguins_splits_disjoint() -> None:
    idx = split_indices(0, 333)
    sets = [set(v.tolist()) for v in idx.values()]
    assert sum(map(len, sets)) == 333
    assert set().union(*sets) == set(range(333))


def test_penguins_scaling_uses_train_statistics() -> None:
    ds = fresh("penguins", split_seed=0)
    frame = load_frame()
    assert len(frame) == 333
    idx = split_indices(0, len(frame))
    raw = frame[list(FEATURES)].to_numpy(dtype=np.float64)
    mean, std = raw[idx["train"]].mean(0), raw[idx["train"]].std(0)
    for split in SPLITS:
        rows = idx[split]
        expected = np.concatenate(
            [
                (raw[rows] - mean) / std,
                np.stack([(frame["island"].to_numpy()[rows] == i) for i in ISLANDS], 1),
            ],
            axis=1,
        )
        np.testing.assert_allclose(getattr(ds, split).x.numpy(), expected, atol=1e-5)
        mass = frame["body_mass_g"].to_numpy()
        np.testing.assert_allclose(
            getattr(ds, split).y["body_mass"].numpy(),
            (mass[rows] - mass[idx["train"]].mean()) / mass[idx["train"]].std(),
            atol=1e-5,
        )
        sex = (frame["sex"].to_numpy()[rows] == "male").astype(np.float32)
        np.testing.assert_array_equal(getattr(ds, split).y["sex"].numpy(), sex)
    tr = ds.train.x[:, :3].double()
    assert torch.allclose(tr.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(tr.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert not torch.allclose(
        ds.val.x[:, :3].double().mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6
    )


def test_penguins_inputs_exclude_targets() -> None:
    ds = fresh("penguins")
    # No input column reproduces body mass (correlation 1) or the sex label.
    for col in range(ds.train.x.shape[1]):
        x = ds.train.x[:, col]
        assert abs(corr(x, ds.train.y["body_mass"])) < 0.99
        assert abs(corr(x, ds.train.y["sex"])) < 0.99


def test_penguins_seedable() -> None:
    a, b, c = fresh("penguins", split_seed=5), fresh("penguins", split_seed=5), fresh("penguins")
    assert torch.equal(a.train.x, b.train.x)
    assert torch.equal(a.test.y["species"], b.test.y["species"])
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize("params", [{"split_seed": -1}, {"split_seed": 1.0}, {"seed": 0}])
def test_penguins_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load("penguins", **params)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_mmoe_linear_label_correlation_equals_parameter(p: float) -> None:
    # Linear case (num_sin=0): y_t = w_t^T x + eps with |w_t| = 1, cos(w1, w2) = p and noise
    # variance 0.01, so corr(y1, y2) = p / 1.01 -- within 0.02 of p for a large sample.
    ds = fresh(
        "mmoe_synthetic", correlation=p, num_sin=0, input_dim=16,
        num_train=40000, num_val=1, num_test=1, data_seed=7,
    )  # fmt: skip
    c = corr(ds.train.y["t1"], ds.train.y["t2"])
    assert c == pytest.approx(p / 1.01, abs=0.015)
    assert c == pytest.approx(p, abs=0.02)
