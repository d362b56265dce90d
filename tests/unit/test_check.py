"""`mtlbench check`: reference round trip, accuracy and speed decisions, bad baselines.

Nothing here asserts on a timing: the speed part of the end-to-end runs is made
unable to fail (``--min-effect 1000``); the speed decision is tested on synthetic
samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import cli, faults
from bench import gate as check
from bench.config import load_spec
from bench.store import RunStore

TINY = [
    "--set", 'datasets=[{name="mmoe_synthetic", num_tasks=2, num_train=96, num_val=32, '
    'num_test=32, input_dim=6}]',
    "--set", 'weighting=["ew", "mgda"]',
    "--set", "model.hidden=[8]",
    "--set", "train.epochs=1",
    "--set", "train.batch_size=32",
    "--coverage", "mgda,hps",  # the coverage sweeps cut to one trial and its baselines
    "--repeats", "4", "--warmup", "1", "--steps", "1",
    "--min-effect", "1000",  # timings never decide a test
]


@pytest.fixture
def plugged(monkeypatch):
    monkeypatch.setitem(cli.PLUGGED_COMMANDS, "check", check)
    assert faults.current() is faults.NO_FAULTS


@pytest.fixture
def reference(plugged, tmp_path, capsys):
    folder = tmp_path / "reference"
    assert cli.main(["check", "--update", "--reference", str(folder), *TINY]) == 0
    assert "reference:" in capsys.readouterr().out
    return folder


# ----------------------------------------------------------------------------- decisions


def _samples(median, n=40, sigma=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return list(median * np.exp(rng.normal(0.0, sigma, n)))


def test_speed_decision_flags_30_percent_not_2_percent():
    base = _samples(2.0, seed=1)
    slow = check.compare_speed(base, _samples(2.6, seed=2))
    assert slow.regressed and not slow.improved
    assert slow.change == pytest.approx(0.3, abs=0.05) and slow.p_slower < 1e-6
    small = check.compare_speed(base, _samples(2.04, seed=3))
    assert not small.regressed
    fast = check.compare_speed(base, _samples(1.4, seed=4))
    assert fast.improved and not fast.regressed


def test_speed_decision_needs_significance_as_well_as_effect():
    # A big median shift on a handful of very noisy samples is not significant.
    base = [1.0, 3.0, 0.5, 2.0]
    cur = [1.5, 0.6, 3.5, 2.4]
    verdict = check.compare_speed(base, cur, min_effect=0.15, alpha=0.01)
    assert verdict.change > 0.15 and not verdict.regressed


def test_accuracy_comparison_tolerance_nan_and_status():
    base = {"A": {"status": "ok",
                  "metrics": {"test": {"t1": {"mse": 1.0, "auc": float("nan")}}}},
            "B": {"status": "ok", "metrics": {"test": {"t1": {"mse": 2.0}}}}}
    same = json.loads(json.dumps(base))
    same["A"]["metrics"]["test"]["t1"]["mse"] = 1.0 + 5e-7  # within rtol 1e-6
    assert check.compare_accuracy(base, same) == []
    off = json.loads(json.dumps(base))
    off["A"]["metrics"]["test"]["t1"]["mse"] = 1.00001
    off["B"]["status"] = "diverged"
    rows = check.compare_accuracy(base, off)
    assert [r[0] for r in rows] == ["A: test/t1/mse", "B: status"]
    assert rows[0][3] == "+1e-05"
    gone = {"A": base["A"]}
    assert check.compare_accuracy(base, gone) == [["B: trial", "present", "missing", ""]]


def test_accuracy_fault_worsens_every_metric_of_one_strategy():
    hooks = faults.GateFaults(accuracy={"mgda": 1e-3})
    metrics = {"test": {"t1": {"mse": 2.0, "accuracy": 0.5, "loss": 1.0}}}
    assert hooks.metrics("ew", metrics) is metrics
    worse = hooks.metrics("mgda", metrics)["test"]["t1"]
    assert worse == pytest.approx({"mse": 2.002, "accuracy": 0.4995, "loss": 1.001})
    assert hooks.injected() == {"slowdown": {}, "accuracy": {"mgda": 1e-3}}


def test_speed_cells_always_include_ew_once_per_task_count():
    spec = load_spec(preset="check", overrides=['weighting=["mgda", "pcgrad"]'])
    cells = check.speed_cells(spec, large_tasks=0)
    assert [c.strategy.name for c in cells] == ["ew", "mgda", "pcgrad"]
    cells = check.speed_cells(spec, large_tasks=20)
    assert [(c.strategy.name, c.num_tasks) for c in cells] == [
        ("ew", 3), ("ew", 20), ("mgda", 3), ("mgda", 20), ("pcgrad", 3), ("pcgrad", 20)]
    assert len({c.label for c in cells}) == len(cells)  # the baseline's keys stay distinct


def test_check_preset_times_a_large_task_count():
    """An O(T^2) step shows at T >= 16: the gate's default speed cells include such a T for
    every strategy of the check sweep, gradient-based ones included."""
    spec = load_spec(preset="check")
    cells = check.speed_cells(spec)
    large = {c.strategy.name for c in cells if c.num_tasks >= 16}
    assert large == {c.name for c in spec.weighting} | {"ew"}
    assert {"mgda", "pcgrad"} <= large
    assert check.speed_tasks(spec) == [3, check.DEFAULTS["large_tasks"]]
    assert check.speed_tasks(spec, 2) == [3]  # not above the sweep's own T: nothing added


def test_ratios_pair_each_cell_with_ew_of_the_same_task_count(monkeypatch):
    from bench import speed
    from bench.timing import StepTiming

    spec = load_spec(preset="check", overrides=['weighting=["mgda"]'])
    cells = check.speed_cells(spec, large_tasks=16)
    step = {("ew", 3): [1.0, 2.0], ("ew", 16): [4.0, 8.0], ("mgda", 3): [3.0, 6.0],
            ("mgda", 16): [20.0, 40.0]}

    def fake(cells, **kwargs):
        return [speed.Measurement([StepTiming({}, v) for v in step[(c.strategy.name,
                                                                     c.num_tasks)]])
                for c in cells]

    monkeypatch.setattr(speed, "measure", fake)
    out = check.measure_ratios(cells, repeats=2, warmup=0, steps=1)
    by_t = {v["cell"]["num_tasks"]: v["ratio_samples"] for v in out.values()}
    assert by_t == {3: [3.0, 3.0], 16: [5.0, 5.0]}
    with pytest.raises(ValueError, match="no ew cell"):
        check.measure_ratios([c for c in cells if c.label != cells[1].label], repeats=2,
                             warmup=0, steps=1)


# ----------------------------------------------------------------------------- end to end


def test_check_passes_against_the_baseline_it_wrote(reference, capsys, tmp_path):
    data = json.loads((reference / "baseline.json").read_text())
    assert data["format"] == "mtlbench-check-baseline" and data["accuracy"]["trials"]
    assert {c.split("/")[0] for c in data["speed"]["cells"]} == {"mgda"}
    assert data["speed"]["tasks"] == [2, 32]  # the sweep's T and --large-tasks
    assert {c["cell"]["num_tasks"] for c in data["speed"]["cells"].values()} == {2, 32}
    verdict = tmp_path / "verdict.json"
    trials = tmp_path / "trials"
    # --baseline: the old name of --reference, still accepted
    assert cli.main(["check", "--baseline", str(reference), *TINY, "--json", str(verdict),
                     "--trials-dir", str(trials)]) == 0
    out = capsys.readouterr().out
    ids = {t["id"] for t in data["accuracy"]["trials"].values()}
    assert {r.id for r in RunStore(trials).records()} == ids  # run through the store
    assert "check passed" in out and "REGRESSIONS" not in out
    assert json.loads(verdict.read_text())["passed"] is True


def test_check_fails_when_a_baseline_metric_differs(reference, capsys):
    path = reference / "baseline.json"
    data = json.loads(path.read_text())
    trial = next(t for k, t in data["accuracy"]["trials"].items() if k.startswith("mgda"))
    trial["metrics"]["test"]["t2"]["mae"] *= 1.001
    path.write_text(json.dumps(data))
    assert cli.main(["check", "--reference", str(reference), *TINY]) == 1
    out = capsys.readouterr().out
    assert "REGRESSIONS" in out and "test/t2/mae" in out and "check FAILED" in out
    table = out[out.index("REGRESSIONS"):]
    assert table.count("test/") == 1  # only the edited number


def test_injected_accuracy_drop_fails(reference, capsys):
    with faults.installed(faults.GateFaults(accuracy={"mgda": 1e-4})):
        assert cli.main(["check", "--reference", str(reference), *TINY]) == 1
        assert cli.main(["check", "--update", "--reference", str(reference), *TINY]) == 2
    out = capsys.readouterr().out
    table = out[out.index("REGRESSIONS"):]
    assert "mgda hps" in table and "ew hps" not in table and "+0.0001" in table


def test_different_sweep_is_a_usage_error(reference, capsys):
    argv = ["check", "--reference", str(reference), *TINY, "--set", "train.lr=0.5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "different sweep" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no reference directory"),
        ("", "no reference file"),
        ("{not json", "corrupt reference (not JSON"),
        ('{"format": "other"}', "not an mtlbench check reference"),
        ('{"format": "mtlbench-check-baseline", "version": 2, "accuracy": {}}',
         "corrupt reference (missing or malformed fields)"),
        ('{"format": "mtlbench-check-baseline", "version": 1}',
         "reference version 1, this mtlbench reads version 2"),
    ],
)
def test_missing_or_corrupt_baseline_is_one_line_exit_2(plugged, tmp_path, capsys, content,
                                                        message):
    folder = tmp_path / "base"
    if content is not None:
        folder.mkdir()
        if content:
            (folder / "baseline.json").write_text(content)
    assert cli.main(["check", "--reference", str(folder), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("mtlbench: error:")


def test_bad_options_are_usage_errors(plugged, capsys):
    assert cli.main(["check", "--alpha", "2"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert cli.main(["check", "--large-tasks", "-1"]) == 2
    assert "--large-tasks" in capsys.readouterr().err


def test_cells_missing_from_an_older_baseline_are_noted_not_failed(reference, capsys):
    """A baseline without the large-T cells (made before they existed, or with
    --large-tasks 0) still passes, naming the cells it lacks."""
    argv = ["check", "--reference", str(reference), *TINY, "--large-tasks", "40"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mgda/loop/hps/T40/B32/W8 is not in the reference (run --update)" in out
    assert "mgda/loop/hps/T32/B32/W8 of the reference was not measured" in out


def test_committed_baseline_is_readable():
    """The committed baseline (if any) is one this version reads, made from the check preset
    without overrides."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / check.DEFAULT_REFERENCE
    if not (folder / check.REFERENCE_FILE).is_file():
        pytest.skip("no committed reference")
    data = check.read_reference(folder)
    assert data["settings"]["preset"] == "check" and data["settings"]["overrides"] == []
    assert data["settings"]["coverage"]["only"] == []  # every built-in component
    assert not any(data["injected"].values())


# ----------------------------------------------------------------------------- coverage


def _pairs(plan):
    return {(t.weighting.name, t.sharing.name) for k, t in plan.items()
            if k.startswith(check.COVERAGE_PREFIX)}


def test_accuracy_part_covers_every_registered_strategy_on_every_architecture():
    """The default gate runs every built-in strategy on every built-in architecture (stl as
    the single-task baselines), not the preset's 5 strategies on hard sharing only."""
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    spec = load_spec(preset="check")
    coverage = check.coverage_specs("check", [], check.parse_coverage("all"))
    plan = check.accuracy_plan(spec, coverage)
    pairs = _pairs(plan)
    # Built-in ones: plugins that other tests imported into this process are not covered.
    sharing = {s for s in SHARING.names() if SHARING.is_builtin(s)}
    weighting = {w for w in WEIGHTING.names() if WEIGHTING.is_builtin(w)}
    multi_task = sharing - {"stl"}
    assert {(w, s) for w in weighting for s in multi_task} <= pairs
    assert ("ew", "stl") in pairs
    assert {s for _, s in pairs} == sharing
    assert {w for w, _ in pairs} == weighting
    # Each architecture where it builds: MTAN on the CNN images, landscape on toy2.
    settings = {t.sharing.name: k.split(":")[0] for k, t in plan.items()
                if k.startswith(check.COVERAGE_PREFIX)}
    assert settings["hps"] == "coverage/mlp" and settings["mtan"] == "coverage/cnn"
    assert settings["landscape"] == "coverage/objective"
    # Tiny: one seed, a few steps of a few samples each.
    for _, sweep in coverage:
        assert sweep.seeds == (0,) and sweep.train.optimizer == "sgd"
        for ds in sweep.datasets:
            rows = ds.params.get("num_train", ds.params.get("steps_per_epoch"))
            assert sweep.train.epochs * -(-rows // sweep.train.batch_size) <= 12


@pytest.fixture
def new_components():
    """A strategy and an architecture registered as built-in ones (in the project's
    packages) and one strategy from a plugin module; removed afterwards."""
    from strategies.sharing import SHARING
    from strategies.sharing.hps import HardParameterSharing
    from strategies.weighting import WEIGHTING
    from strategies.weighting.ew import EqualWeighting

    made = {
        "weighting": type("Fresh", (EqualWeighting,), {"__module__": "strategies.weighting.fresh"}),
        "sharing": type("FreshArch", (HardParameterSharing,),
                        {"__module__": "strategies.sharing.fresh_arch"}),
        "plugin": type("Plugged", (EqualWeighting,), {"__module__": "my_plugin"}),
    }
    WEIGHTING.register("fresh_w")(made["weighting"])
    SHARING.register("fresh_arch")(made["sharing"])
    WEIGHTING.register("plugged_w")(made["plugin"])
    yield made
    WEIGHTING.unregister("fresh_w")
    SHARING.unregister("fresh_arch")
    WEIGHTING.unregister("plugged_w")


def test_a_new_component_is_covered_without_editing_a_list(new_components):
    weighting, sharing = check.coverage_components()
    assert "fresh_w" in weighting and "fresh_arch" in sharing
    assert "plugged_w" not in weighting  # plugins are not in the committed baseline
    assert check.coverage_components(("plugged_w", "hps")) == (["plugged_w"], ["hps"])
    plan = check.accuracy_plan(load_spec(preset="check"),
                               check.coverage_specs("check", [], ("fresh_w", "fresh_arch")))
    assert _pairs(plan) == {("fresh_w", "fresh_arch"), ("ew", "stl")}


def test_coverage_option():
    assert check.parse_coverage("all") == () and check.parse_coverage("none") is None
    assert check.parse_coverage(" cagrad, hps,cagrad") == ("cagrad", "hps")
    assert check.coverage_components(("cagrad",))[0] == ["cagrad"]
    assert "mtan" in check.coverage_components(("cagrad",))[1]  # an unnamed axis stays whole
    assert check.coverage_components(("hps",))[0] == check.coverage_components()[0]
    with pytest.raises(check.ConfigError, match="did you mean 'cagrad'"):
        check.parse_coverage("cagard")
    assert check.coverage_specs("check", [], None) == []


@pytest.fixture
def cagrad_c(monkeypatch):
    """Change cagrad's default ``c`` as an edit of strategies/weighting/cagrad.py would
    (the registry re-reads it on registration); restored afterwards."""
    from strategies.weighting import WEIGHTING
    from strategies.weighting.cagrad import CAGrad

    def set_default(value):
        monkeypatch.setitem(CAGrad.__init__.__kwdefaults__, "c", value)
        WEIGHTING.unregister("cagrad")
        WEIGHTING.register("cagrad")(CAGrad)
        assert WEIGHTING.resolve("cagrad", {})["c"] == value

    yield set_default
    monkeypatch.undo()
    WEIGHTING.unregister("cagrad")
    WEIGHTING.register("cagrad")(CAGrad)


def test_changing_cagrad_default_c_fails_the_gate(plugged, tmp_path, capsys, cagrad_c):
    """Issue 18: cagrad's c 0.5 -> 0.9 passed the gate (cagrad was not in it). Its coverage
    trial on hard sharing now fails the check; the preset part (ew, mgda) does not hold it."""
    argv = ["check", "--reference", str(tmp_path / "b"), *TINY, "--coverage", "cagrad,hps",
            "--no-speed"]
    assert cli.main([*argv, "--update"]) == 0
    assert cli.main(argv) == 0
    capsys.readouterr()
    cagrad_c(0.9)
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    table = out[out.index("REGRESSIONS"):]
    assert "coverage/mlp: cagrad hps mmoe_synthetic#0 seed=0: test/" in table
    assert "ew stl" not in table and "mgda" not in table  # nothing else changed


def test_different_coverage_is_a_usage_error(reference, capsys):
    argv = ["check", "--reference", str(reference), *TINY, "--coverage", "ew,hps"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "different sweep" in err and "--coverage mgda,hps" in err
    assert len(err.splitlines()) == 1


def test_documentation_keys_of_the_preset_do_not_change_what_the_reference_was_made_with():
    from bench.gate.reference import chosen

    base = {"preset_toml": {"name": "check", "seeds": [0]}, "overrides": [],
            "coverage": {"only": None}}
    documented = {**base, "preset_toml": {**base["preset_toml"], "measured_run_s": 1.7,
                                          "measured_on": "today", "description": "new"}}
    assert chosen(documented) == chosen(base)
    changed = {**base, "preset_toml": {**base["preset_toml"], "seeds": [0, 1]}}
    assert chosen(changed) != chosen(base)
