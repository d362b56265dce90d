"""`mtlbench speed` and the timers: structure, interleaving order and statistics, never timings."""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import math

import pytest
import torch

from bench import cli, faults, speed
from bench.config import load_spec
from bench.engine import ENGINES
from bench.errors import ConfigError
from bench.records import SCHEMA_VERSION, SpeedRecord
from bench.timing import (
    PHASES,
    CpuTimer,
    CudaTimer,
    MemoryProbe,
    StepTiming,
    machine_info,
    make_timer,
    summarize,
)
from strategies.sharing import SHARING
from strategies.weighting import WEIGHTING, GradientWeighting, GramianWeighting

SPEED_SPEC = """
name = "speedtest"
datasets = [{ name = "mmoe_synthetic", num_train = 64, num_val = 16, num_test = 16, input_dim = 8 }]
sharing = ["hps"]
weighting = ["ew", "uw", "t_plain", "t_gram"]

[model]
hidden = [8, 4]

[train]
batch_size = 16
"""

MACHINE_KEYS = {
    "cpu", "threads", "gpu", "gpu_driver", "torch", "cuda", "cudnn", "cuda_matmul_allow_tf32",
    "cudnn_allow_tf32", "cudnn_benchmark", "cudnn_deterministic",
}


class _Plain(GradientWeighting):
    """Test double: a gradient strategy only the loop/vmap engines serve (no rep, no Gramian)."""

    def aggregate(self, jacobian, losses=None):
        return jacobian.sum(0)


class _Gram(GramianWeighting):
    """Test double: a Gramian strategy (served by loop, vmap and gramian; not rep)."""

    def weights(self, gramian, losses=None):
        return torch.ones(len(gramian), dtype=gramian.dtype, device=gramian.device)


@pytest.fixture(autouse=True)
def _test_strategies():
    # Real strategies change concurrently; engine compatibility is tested on fixed doubles.
    WEIGHTING.register("t_plain")(_Plain)
    WEIGHTING.register("t_gram")(_Gram)
    yield
    WEIGHTING.unregister("t_plain")
    WEIGHTING.unregister("t_gram")


@pytest.fixture
def plugged(monkeypatch):
    monkeypatch.setitem(cli.PLUGGED_COMMANDS, "speed", importlib.import_module("bench.speed"))


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("samples", "median", "iqr"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 3.0, 2.0),
        ([4.0, 1.0, 3.0, 2.0], 2.5, 1.5),  # q25 = 1.75, q75 = 3.25 (linear interpolation)
        ([7.0], 7.0, 0.0),
        ([1.0, 1.0, 1.0, 100.0], 1.0, 24.75),  # q75 = 1 + 0.25 * 99
    ],
)
def test_summarize_median_and_iqr(samples, median, iqr):
    out = summarize(samples)
    assert out["median_s"] == pytest.approx(median)
    assert out["iqr_s"] == pytest.approx(iqr)


def test_summarize_needs_samples():
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize(("how", "step", "fwd"), [("mean", 2.0, 0.5), ("min", 1.0, 0.0),
                                                   ("median", 2.0, 0.5)])
def test_reduce_block(how, step, fwd):
    block = [StepTiming({"forward": 0.5}, 3.0), StepTiming({"forward": 1.0}, 1.0),
             StepTiming({}, 2.0)]
    out = speed.reduce_block(block, how)
    assert out.step == pytest.approx(step)
    assert out.phases["forward"] == pytest.approx(fwd)


# ----------------------------------------------------------------------------- timers


def test_cpu_timer_phases_with_a_fake_clock():
    ticks = iter([10.0, 10.5, 11.0, 11.25, 12.0, 12.5])
    timer = CpuTimer(clock=lambda: next(ticks))
    timer.start()  # 10.0
    timer.mark("forward")  # 0.5
    timer.mark("backward")  # 0.5
    timer.mark("forward")  # 0.25 more, accumulated
    timer.mark("optimizer")  # 0.75
    out = timer.stop()  # 12.5
    assert out.phases == pytest.approx({"forward": 0.75, "backward": 0.5, "optimizer": 0.75})
    assert out.step == pytest.approx(2.5)


def test_make_timer_kinds():
    assert make_timer(torch.device("cpu")).kind == "perf_counter"
    assert make_timer(torch.device("cpu"), "thread").kind == "thread_time"
    with pytest.raises(ValueError):
        make_timer(torch.device("cpu"), "sundial")


def test_memory_probe_on_cpu_is_process_peak_rss():
    probe = MemoryProbe(torch.device("cpu"))
    probe.before_step()
    probe.after_step()
    assert probe.kind == "process_max_rss" and probe.peak > 10 * 2**20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_timer_and_memory_probe():
    device = torch.device("cuda", torch.cuda.current_device())
    timer = make_timer(device)
    assert isinstance(timer, CudaTimer)
    a = torch.randn(512, 512, device=device)
    probe = MemoryProbe(device, resident=lambda: a.numel() * a.element_size())
    for _ in range(2):  # the event pool is reused
        probe.before_step()
        timer.start()
        b = a @ a
        timer.mark("forward")
        c = b @ b
        timer.mark("backward")
        out = timer.stop()
        probe.after_step()
        del b, c
    assert set(out.phases) == {"forward", "backward"}
    assert all(v > 0 for v in out.phases.values())
    assert out.step >= sum(out.phases.values()) * 0.999
    assert probe.kind == "cuda_max_allocated"
    assert probe.peak >= 2 * a.numel() * a.element_size()
    info = machine_info(device)
    assert info["gpu"] and info["cuda"]


# ----------------------------------------------------------------------------- interleaving


class _FakeRunner:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def step(self, timer):
        self.log.append(self.name)
        timer.mark("forward")


def test_interleave_is_round_robin_and_drops_warmup():
    log: list[str] = []
    runners = [_FakeRunner(n, log) for n in "abc"]
    clock = itertools.count()
    timer = CpuTimer(clock=lambda: float(next(clock)))
    out = speed.interleave(runners, timer, repeats=3, warmup=2, steps_per_repeat=2)
    assert log == ["a", "a", "b", "b", "c", "c"] * 5
    assert [len(t) for t in out] == [3, 3, 3]
    # Every step reads the clock three times (start, mark, stop): step = 2 ticks, forward = 1.
    assert all(t.step == 2.0 and t.phases == {"forward": 1.0} for ts in out for t in ts)


def test_interleave_rejects_bad_counts():
    with pytest.raises(ValueError):
        speed.interleave([], CpuTimer(), repeats=0)


def test_measure_uses_one_timer_in_round_robin(monkeypatch, write_spec):
    spec = load_spec(write_spec(SPEED_SPEC))
    cells, _ = speed.build_cells(spec, engines=["loop"], tasks=[2])
    order: list[str] = []
    original = speed.CellRunner.step

    def spy(self, timer):
        order.append(self.cell.strategy.name)
        original(self, timer)

    monkeypatch.setattr(speed.CellRunner, "step", spy)
    out = speed.measure(cells, repeats=2, warmup=1)
    names = [c.strategy.name for c in cells]
    assert order == names * 3
    assert all(len(m.timings) == 2 and m.peak_memory_bytes for m in out)


# ----------------------------------------------------------------------------- cells


def _serves(engine, cls):
    try:
        ENGINES[engine]().require_support(cls, SHARING.get("hps"))
    except ValueError:
        return False
    return True


def test_build_cells_axes_and_skips(write_spec):
    spec = load_spec(write_spec(SPEED_SPEC))
    cells, notes = speed.build_cells(spec, tasks=[2, 5], batch_sizes=[4], widths=[8, 16])
    by = {(c.strategy.name, c.engine) for c in cells}
    assert ("ew", None) in by and ("uw", None) in by  # loss-based: one engine-less cell
    assert {("t_plain", "loop"), ("t_plain", "vmap"), ("t_gram", "loop"), ("t_gram", "vmap"),
            ("t_gram", "gramian")} <= by
    # every engine that serves a strategy gets a cell; each other one a note
    served = {(name, e) for name, cls in (("t_plain", _Plain), ("t_gram", _Gram))
              for e in ENGINES if _serves(e, cls)}
    assert by == {("ew", None), ("uw", None), *served}
    skipped = sorted(f"skipped {name} x {e} x hps" for name in ("t_plain", "t_gram")
                     for e in ENGINES if (name, e) not in served)
    assert sorted(n.split(":")[0] for n in notes) == skipped
    assert {"skipped t_gram x rep x hps", "skipped t_plain x gramian x hps",
            "skipped t_plain x rep x hps"} <= set(skipped)
    assert len(cells) == len(by) * 2 * 2
    assert {c.hidden for c in cells} == {(8, 4), (16, 8)}  # width scales the shape
    assert len({c.id for c in cells}) == len(cells)


def test_build_cells_rejects_unknown_engine(write_spec):
    spec = load_spec(write_spec(SPEED_SPEC))
    with pytest.raises(ConfigError, match=r"unknown engine 'lop'.*did you mean 'loop'"):
        speed.build_cells(spec, engines=["lop"])


def test_add_ratios_pairs_with_ew_of_the_same_settings(write_spec):
    spec = load_spec(write_spec(SPEED_SPEC))
    cells, _ = speed.build_cells(spec, engines=["loop"], tasks=[2, 4])
    records = speed.add_ratios(cells, [_cell_record(c, 1.0 + i) for i, c in enumerate(cells)])
    ew = {c.num_tasks: r.step["median_s"] for c, r in zip(cells, records, strict=True) if
          c.strategy.name == "ew"}
    for c, r in zip(cells, records, strict=True):
        assert r.ratio_to_ew == pytest.approx(r.step["median_s"] / ew[c.num_tasks])


def test_add_ratios_without_ew_is_none(write_spec):
    spec = load_spec(write_spec(SPEED_SPEC.replace('"ew", ', "")))
    cells, _ = speed.build_cells(spec, engines=["loop"])
    records = speed.add_ratios(cells, [_cell_record(c, 1.0) for c in cells])
    assert all(r.ratio_to_ew is None for r in records)


def _cell_record(cell, step):
    return speed.make_record(cell, speed.Measurement([StepTiming({}, step)]), machine={},
                             warmup=0)


def test_fault_fraction_parsing():
    assert faults.parse_fractions("") == {}
    assert faults.parse_fractions("pcgrad:0.3, mgda:0.1") == {"pcgrad": 0.3, "mgda": 0.1}
    for bad in ("pcgrad", "pcgrad:x", ":0.3", "pcgrad:-1", "pcgrad:nan"):
        with pytest.raises(ValueError, match="--slowdown"):
            faults.parse_fractions(bad, "--slowdown")


def test_no_fault_hooks_by_default_and_installed_ones_are_restored():
    assert faults.current() is faults.NO_FAULTS
    assert faults.NO_FAULTS.wrap_step("pcgrad", torch.device("cpu")) is None
    hooks = faults.GateFaults(slowdown={"pcgrad": 0.5})
    with faults.installed(hooks):
        assert faults.current() is hooks
        assert hooks.wrap_step("pcgrad", torch.device("cpu")) is not None
        assert hooks.wrap_step("ew", torch.device("cpu")) is None
    assert faults.current() is faults.NO_FAULTS


# ----------------------------------------------------------------------------- command


def test_speed_command_writes_full_records(plugged, write_spec, tmp_path, capsys):
    spec = write_spec(SPEED_SPEC)
    out = tmp_path / "out"
    with faults.installed(faults.GateFaults(slowdown={"uw": 0.01})):
        rc = cli.main(["speed", str(spec), "--repeats", "3", "--warmup", "1", "--tasks", "2,3",
                       "--engines", "loop,gramian,rep", "--out", str(out), "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "forward ms" in printed and "jacobian ms" in printed
    assert "skipped t_plain x gramian x hps" in printed and "skipped t_gram x rep x hps" in printed
    records = [json.loads(p.read_text()) for p in (out / "speed").glob("*.json")]
    # ew, uw: one cell each; t_plain: loop; t_gram: loop, gramian; times T in {2, 3}
    assert len(records) == 5 * 2
    for r in records:
        assert r["kind"] == "speed" and r["device"] == "cpu" and r["repeats"] == 3
        assert set(r["phases"]) == set(PHASES)
        assert all(set(v) == {"median_s", "iqr_s"} for v in r["phases"].values())
        assert set(r["step"]) == {"median_s", "iqr_s", "samples_s"}
        assert len(r["step"]["samples_s"]) == 3
        assert r["step"]["median_s"] == pytest.approx(summarize(r["step"]["samples_s"])["median_s"])
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / r["step"]["median_s"])
        assert r["peak_memory_bytes"] > 0 and r["schema_version"] == SCHEMA_VERSION
        assert set(r["machine"]) >= MACHINE_KEYS and r["machine"]["threads"] == 1
        assert r["num_tasks"] in (2, 3) and r["batch_size"] == 16 and r["width"] == 8
        assert (r["engine"] is None) == (r["strategy"] in ("ew", "uw"))
        assert math.isfinite(r["ratio_to_ew"])
        if r["strategy"] == "ew":
            assert r["ratio_to_ew"] == 1.0
        if r["engine"] is not None:
            assert r["phases"]["jacobian"]["median_s"] > 0
        else:
            assert r["phases"]["jacobian"]["median_s"] == 0
        assert ("injected_slowdown" in r) == (r["strategy"] == "uw")
        assert r["cell_id"] == (out / "speed" / f"{r['cell_id']}.json").stem
        assert set(r["phase_share"]) == set(PHASES)
        assert r["phase_share"]["forward"] == pytest.approx(
            r["phases"]["forward"]["median_s"] / r["step"]["median_s"])
    assert not list((out / "speed").glob(".*.tmp"))  # atomic writes leave no temporaries
    # The phase split per T: printed, and written for every record of the folder.
    assert "Phase split per T" in printed and "x smallest T" in printed
    rows = list(csv.DictReader((out / "speed" / "phases.csv").open()))
    assert len(rows) == len(records) * len(PHASES)
    assert {(r["cell_id"], r["phase"]) for r in rows} == {
        (rec["cell_id"], p) for rec in records for p in PHASES}
    md = (out / "speed" / "phases.md").read_text()
    assert md.count("\n| t_gram ") == 4  # loop and gramian, T = 2 and 3
    # The reader validates what the writer wrote.
    typed = speed.load_records(out / "speed")
    assert all(isinstance(r, SpeedRecord) for r in typed) and len(typed) == len(records)


def _record(strategy, engine, T, step, **phases):
    return SpeedRecord.model_validate(_raw(strategy, engine, T, step, **phases))


def _raw(strategy, engine, T, step, **phases):
    return {
        "kind": "speed", "cell_id": f"{strategy}-{engine}-{T}", "label": "-", "repeats": 1,
        "strategy": strategy,
        "strategy_params": {}, "engine": engine, "sharing": "hps", "sharing_params": {},
        "num_tasks": T, "batch_size": 8, "width": 4, "device": "cpu",
        "phases": {p: {"median_s": phases.get(p, 0.0), "iqr_s": 0.0} for p in PHASES},
        "step": {"median_s": step, "iqr_s": 0.0, "samples_s": [step]},
        "samples_per_s": 8 / step, "ratio_to_ew": None, "peak_memory_bytes": None,
    }


def test_phase_split_groups_by_configuration_with_t_growing():
    records = [
        _record("mgda", "loop", 8, 4.0, forward=1.0, jacobian=2.0, optimizer=1.0),
        _record("ew", None, 8, 2.0, forward=1.0, backward=1.0),
        _record("mgda", "loop", 2, 1.0, forward=0.5, jacobian=0.25, optimizer=0.25),
        _record("ew", None, 2, 1.0, forward=0.5, backward=0.5),
        _record("mgda", "vmap", 2, 2.0, jacobian=2.0),
    ]
    rows = speed.split_rows(records)
    assert [(r["strategy"], r["engine"], r["num_tasks"]) for r in rows] == [
        ("mgda", "loop", 2), ("mgda", "loop", 8), ("ew", None, 2), ("ew", None, 8),
        ("mgda", "vmap", 2)]
    assert [r["step_vs_min_t"] for r in rows] == [1.0, 4.0, 1.0, 2.0, 1.0]
    assert rows[1]["jacobian_share"] == 0.5 and rows[1]["jacobian_s"] == 2.0
    assert rows[2]["jacobian_share"] == 0.0
    text = speed.split_table(records)
    # phases that are 0 in every record are left out
    assert "jacobian ms (share)" in text and "post_step" not in text and "aggregate" not in text
    assert "2000.000 (50%)" in text  # mgda loop T=8: jacobian 2 s of a 4 s step
    # the main table lists the same order (T grows within each configuration)
    lines = speed.table(records).splitlines()[2:]
    assert [line.split()[:4] for line in lines] == [
        ["mgda", "loop", "hps", "2"], ["mgda", "loop", "hps", "8"], ["ew", "-", "hps", "2"],
        ["ew", "-", "hps", "8"], ["mgda", "vmap", "hps", "2"]]


def test_write_split_reads_every_record_of_the_folder(tmp_path):
    folder = tmp_path / "speed"
    folder.mkdir()
    for rec in (_raw("ew", None, 2, 1.0, forward=1.0), _raw("ew", None, 4, 3.0)):
        (folder / f"{rec['cell_id']}.json").write_text(json.dumps(rec))
    (folder / "broken.json").write_text("{")
    (folder / "other.json").write_text(json.dumps({"kind": "trial"}))
    (folder / "invalid.json").write_text(json.dumps({"kind": "speed", "phases": {}}))
    csv_path, md_path = speed.write_split(folder)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2 * len(PHASES)
    forward = [r for r in rows if r["phase"] == "forward"]
    assert [(r["num_tasks"], float(r["share_of_step"]), float(r["step_vs_min_t"]))
            for r in forward] == [("2", 1.0, 1.0), ("4", 0.0, 3.0)]
    assert md_path.read_text().startswith("Phase split per T")


def test_cells_carry_non_default_head_gradients(write_spec):
    spec = load_spec(write_spec(SPEED_SPEC))
    cells, _ = speed.build_cells(spec, engines=["loop"], tasks=[2])
    assert all("heads" not in c.train for c in cells)  # default: cell ids unchanged
    spec = load_spec(write_spec(SPEED_SPEC), overrides=['train.heads="own"'])
    cells, _ = speed.build_cells(spec, engines=["loop"], tasks=[2])
    assert all(c.train["heads"] == "own" for c in cells)
    assert speed.CellRunner(cells[0]).ctx.heads == "own"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "0"], "argument --tasks: expected positive integers"),
        (["--tasks", "2,x"], "argument --tasks"),
        (["--engines", "lop"], "unknown engine 'lop'"),
        (["--repeats", "0"], "--repeats: must be at least 1"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--steps", "0"],
         "CUDA is not available" if not torch.cuda.is_available() else "--steps"),
    ],
)
def test_speed_command_bad_input_is_one_line_exit_2(plugged, capsys, argv, message):
    assert cli.main(["speed", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_speed_preset_is_a_valid_sweep():
    spec = load_spec(preset="speed")
    cells, _ = speed.build_cells(spec, engines=["loop"])
    assert {c.strategy.name for c in cells} >= {"ew", "mgda"}
    assert {"t_plain", "t_gram"} <= {c.name for c in speed.with_all_strategies(spec).weighting}
    assert speed.with_all_strategies(spec).weighting  # every registered strategy
