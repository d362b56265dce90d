"""Sweep-spec validation: every bad input is a one-line ConfigError naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import load_spec, parse_override, preset_names
from bench.errors import ConfigError


def test_presets_are_packaged_and_valid():
    assert {"quick", "default"} <= set(preset_names())
    for name in preset_names():
        spec = load_spec(preset=name)
        assert spec.name == name
        assert spec.datasets and spec.sharing and spec.weighting


def test_defaults_are_resolved_into_components(write_spec):
    spec = load_spec(write_spec())
    ds = spec.datasets[0]
    assert ds.params["num_train"] == 256
    assert ds.params["correlation"] == 0.5  # default filled in
    assert [w.name for w in spec.weighting] == ["ew", "mgda"]
    assert spec.train.epochs == 2 and spec.train.lr == 0.01


def test_overrides_apply_dotted_keys_lists_and_bare_strings(write_spec):
    spec = load_spec(
        write_spec(),
        overrides=["train.epochs=5", "seeds=[3, 4, 5]", "sharing=stl", "datasets.0.correlation=0.9"],
    )
    assert spec.train.epochs == 5
    assert spec.seeds == (3, 4, 5)
    assert [s.name for s in spec.sharing] == ["stl"]
    assert spec.datasets[0].params["correlation"] == 0.9


def test_parse_override():
    assert parse_override("train.lr=0.1") == (["train", "lr"], 0.1)
    assert parse_override("weighting=[\"ew\"]") == (["weighting"], ["ew"])
    assert parse_override("sharing=hps") == (["sharing"], "hps")


BAD_SPECS = [
    # (replace this, with this, expected fragment of the message)
    ('sharing = ["hps"]', 'sharing = ["hpz"]', "sharing[0]: unknown sharing 'hpz' (did you mean 'hps'?)"),
    ('weighting = ["ew", "mgda"]', 'weighting = ["ew", "mgdaa"]',
     "weighting[1]: unknown weighting 'mgdaa' (did you mean 'mgda'?)"),
    ('name = "mmoe_synthetic"', 'name = "mmoe_synth"',
     "datasets[0]: unknown dataset 'mmoe_synth' (did you mean 'mmoe_synthetic'?)"),
    ("epochs = 2", "epochs = 0", "train.epochs: Input should be greater than or equal to 1"),
    ("epochs = 2", 'epochs = "two"', "train.epochs: Input should be a valid integer"),
    ("lr = 0.01", "lr = -1.0", "train.lr: Input should be greater than 0"),
    ("lr = 0.01", "learning_rate = 0.01", "train.learning_rate: unknown key (known: batch_size,"),
    ("epochs = 2", "epoch = 2", "train.epoch: unknown key (did you mean 'epochs'?)"),
    ("seeds = [0, 1]", "seeds = [0, 1]\nsedes = [2]", "sedes: unknown key (did you mean 'seeds'?)"),
    ("hidden = [16]", "hiden = [16]", "model.hiden: unknown key (did you mean 'hidden'?)"),
    ("[model]", "include = [{ sed = 1 }]\n[model]",
     "include[0].sed: unknown key (did you mean 'seed'?)"),
    ('name = "tiny"', 'name = "' + "a" * 101 + '"', "name: String should have at most 100 characters"),
    ('weighting = ["ew", "mgda"]', 'weighting = ["ew", "mgda", { name = "ew" }]',
     "weighting[2]: 'ew' is listed twice (as weighting[0]) with the same parameters"),
    ("input_dim = 16 }]", "input_dim = 16 }, { name = \"mmoe_synthetic\", num_train = 256, "
     "num_val = 64, num_test = 64, input_dim = 16, correlation = 0.5 }]",
     "datasets[1]: 'mmoe_synthetic' is listed twice (as datasets[0])"),
    ('sharing = ["hps"]', 'sharing = ["hps", "hps"]', "sharing[1]: 'hps' is listed twice"),
    ("[model]", "exclude = [{ seed = 5 }]\n[model]",
     "exclude[0].seed: 5 is not one of the sweep's seeds (0, 1)"),
    ("[model]", "include = [{ seed = [0, 7] }]\n[model]",
     "include[0].seed: 7 is not one of the sweep's seeds (0, 1)"),
    ("num_train = 256", "num_train = 10000000000000",
     "num_train: Input should be less than or equal to 10000000"),
    ("input_dim = 16", "input_dim = 10000000000",
     "input_dim: Input should be less than or equal to 100000"),
    ("seeds = [0, 1]", "seeds = []", "seeds: List should have at least 1 item"),
    ("seeds = [0, 1]", "seeds = [1, 1]", "seeds: contains duplicates"),
    ("input_dim = 16", "input_dim = 16, corelation = 0.3",
     "unknown hyperparameter 'corelation' for dataset 'mmoe_synthetic' (did you mean 'correlation'?)"),
    ("input_dim = 16", "input_dim = 16, correlation = 1.5", "correlation: Input should be less than or equal to 1"),
    ('weighting = ["ew", "mgda"]', 'weighting = ["ew", { name = "dwa", temperature = -2.0 }]',
     "weighting[1]: weighting 'dwa': temperature: Input should be greater than 0"),
    ('weighting = ["ew", "mgda"]', 'weighting = ["ew", { temperature = 2.0 }]',
     "weighting[1]: needs a 'name'"),
    ("batch_size = 64", "batch_size = 64\ndevice = \"gpu\"", "train.device: String should match pattern"),
    ("[model]", "include = [{ weighting = \"pcgrad\" }]\n[model]",
     "include[0].weighting: 'pcgrad' is not in the sweep's weighting axis"),
    ("[model]", "exclude = [{ weighting = [\"ew\", \"mgda\"] }]\n[model]", "the grid is empty"),
    ('name = "tiny"', "name = \"tiny\"\nexecutor = \"threads\"", "executor: unknown executor 'threads'; known: inline, process, ray, submitit"),
    ("hidden = [16]", "hidden = [0]", "model.hidden[0]: Input should be greater than or equal to 1"),
    ("hidden = [16]", "hidden = [16", "not valid TOML"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_SPECS, ids=[b[2][:40] for b in BAD_SPECS])
def test_bad_specs_name_file_and_key(write_spec, tiny_spec, old, new, message):
    assert old in tiny_spec
    path = write_spec(tiny_spec.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        from bench.grid import expand

        expand(load_spec(path))
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    if "not valid TOML" not in message:
        assert str(path) in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train.epochs=-3", "train.epochs: Input should be greater than or equal to 1"),
        ("weighting.2=ew", "no item 2 in 'weighting'"),
        ("datasets.0.name=cifar", "unknown dataset 'cifar'"),
    ],
)
def test_bad_overrides(write_spec, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(write_spec(), overrides=[override])


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="no such sweep file"):
        load_spec(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="unknown preset 'quik' \\(did you mean 'quick'\\?\\)"):
        load_spec(preset="quik")
    with pytest.raises(ConfigError, match="either a sweep file or --preset"):
        load_spec(tmp_path / "x.toml", preset="quick")


def test_readme_sweep_example_is_valid(tmp_path):
    """The sweep file shown in the README validates (and keeps every documented key)."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```toml\n(name = \"my_sweep\".*?)```", readme, re.S)
    assert block is not None
    path = tmp_path / "readme.toml"
    path.write_text(block.group(1))
    spec = load_spec(path)
    assert [c.name for c in spec.sampling] == ["round_robin", "proportional", "temperature"]
    assert [t.lr for t in spec.train_variants] == [1e-3, 3e-3]


def test_entries_differing_in_parameters_are_not_duplicates(write_spec, tiny_spec):
    text = tiny_spec.replace('weighting = ["ew", "mgda"]',
                             'weighting = ["dwa", { name = "dwa", temperature = 4.0 }]')
    spec = load_spec(write_spec(text))
    assert [w.params["temperature"] for w in spec.weighting] == [2.0, 4.0]
    # A default written out is the same entry as the bare name (and the same trial id).
    same = tiny_spec.replace('weighting = ["ew", "mgda"]',
                             'weighting = ["dwa", { name = "dwa", temperature = 2.0 }]')
    with pytest.raises(ConfigError, match=r"weighting\[1\]: 'dwa' is listed twice"):
        load_spec(write_spec(same))


def test_unknown_key_without_a_close_match_lists_the_known_ones(write_spec, tiny_spec):
    with pytest.raises(ConfigError) as info:
        load_spec(write_spec(tiny_spec), overrides=["probes.zzz=1"])
    assert str(info.value).endswith(
        "probes.zzz: unknown key (known: affinity_every, conflict_every)")
