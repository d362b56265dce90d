"""``mtlbench check``: the regression gate, against a committed baseline.

Two checks, one command (exit 0: pass, 1: a regression, 2: unusable input or
baseline, as a one-line error):

Accuracy. Two sweeps, run inline with one CPU thread, which makes them
deterministic on a given CPU and torch build:

- the fixed sweep of preset ``check`` (``bench/presets/check.toml``, ``--set``
  overrides allowed): a few strategies on real-sized data for several epochs;
- the coverage sweeps: every built-in strategy x every built-in architecture, both
  lists read from the registries (``WEIGHTING``, ``SHARING``), so a new component is
  covered without editing a list (plugins' components are not: the committed baseline
  holds the project's own). Each architecture runs in the first of
  :data:`COVERAGE_SETTINGS` it builds in (tiny synthetic regression on an MLP; tiny
  image pairs on a CNN, e.g. MTAN; the toy2 landscape, for ``landscape``), with every
  strategy, for :data:`COVERAGE_COMMON`'s few steps (``stl`` runs as the single-task
  baselines). The preset's settings and ``--set`` apply, then the coverage's own
  (data, model size, optimizer, epochs, batch size, seed, both axes). ``--coverage``
  restricts it to some components (``cagrad,hps``: cagrad on hard sharing) or turns it
  off (``none``).

Every number of every trial's ``metrics`` (all splits, tasks, metrics) must match the
baseline within ``|current - baseline| <= rtol * |baseline| + atol`` (defaults
``rtol = 1e-6``, ``atol = 1e-9``; NaN matches NaN only), and every trial's status must
match.
Trials are named by their components' names, dataset position, seed and task
(not by their resolved hyperparameters), so a changed default shows up as changed
metrics (changing cagrad's ``c`` from 0.5 to 0.9 fails the coverage part). A
different CPU or torch build may legitimately change results beyond the tolerance
(summation order, vector width): the baseline records its machine and the check
warns when it differs. The preset TOML, the ``--set`` list and the coverage
settings must be those of the baseline (else exit 2: rerun with ``--update``); a
component registered since the baseline shows as a trial missing from it (exit 1,
until ``--update``).

Speed. The preset's strategies only, not the coverage's (timing every strategy at two
task counts, 45 rounds each, would take minutes): one step cell per strategy of the
preset's sweep (its first architecture, T of its first dataset, ``train.batch_size``,
width ``model.hidden[0]``, ``train.engine``) plus ``ew``, and the same again at
``T = --large-tasks`` (default 32; 0 leaves them out), so that a cost growing faster
than T (say, every task's backward running through every other task's head: O(T^2))
moves a ratio by far more than the minimum effect. All cells are built once and timed
round-robin on one CPU thread, with the thread's CPU time (time spent preempted
by other processes does not count). A repeat sample of a cell is its fastest of
``--steps`` consecutive steps; each round gives one sample per cell, the ratio of
its sample to that of the ``ew`` cell with the same T in the same round, so the
speed of the machine cancels. A cell regressed if both

- its median ratio grew by more than ``--min-effect`` (default 15%) over the
  baseline's median ratio, and
- a one-sided Mann-Whitney U test says the current ratio samples are larger than
  the baseline's, p < ``--alpha`` (default 0.01);

and the same holds again in a confirming rerun of the flagged strategies (fresh
models, new samples), compared with the baseline again. Only then does the
check fail.

``--update`` runs the same and writes ``DIR/baseline.json`` atomically.

Fault injection (the gate's own tests and ``scripts/measure_gate.py``): hooks
installed with :mod:`bench.faults` slow a strategy's steps down or worsen its metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from scipy import stats
from tabulate import tabulate

from bench import faults, speed
from bench.config import SweepSpec, load_spec
from bench.errors import ConfigError
from bench.grid import BASELINE_WEIGHTING, TrialSpec, canonical_json, expand
from bench.registry import suggest
from bench.store import atomic_write_json
from bench.timing import machine_info

__all__ = [
    "HELP",
    "SpeedVerdict",
    "accuracy_plan",
    "add_arguments",
    "compare_accuracy",
    "compare_speed",
    "coverage_components",
    "coverage_specs",
    "main",
    "parse_coverage",
]

HELP = "regression gate: a fixed sweep's metrics and speed ratios to ew vs a baseline"

BASELINE_FILE = "baseline.json"
FORMAT = "mtlbench-check-baseline"
VERSION = 2  # 2: the coverage sweeps (trials keyed 'coverage/<setting>: ...')
DEFAULT_BASELINE = "results/baselines/check"
EXIT_REGRESSION = 1

DEFAULTS = {
    "rtol": 1e-6,
    "atol": 1e-9,
    "min_effect": 0.15,
    "alpha": 0.01,
    "repeats": 40,
    "warmup": 5,
    "steps": 5,
    "large_tasks": 32,
}
# Coverage: where each architecture runs (the first setting it builds in), as --set
# overrides applied after the preset's and the user's, then COVERAGE_COMMON. Tiny data,
# 6 epochs of one step (about 0.05 s a trial): dwa weighs by loss ratios from epoch 3 and
# stch leaves its warm-up (epochs 0-4) at epoch 5. Plain SGD with momentum, because Adam
# normalises the update's scale away (under Adam cagrad's rescale 1 -> 2 changed nothing).
# Uncorrelated tasks (correlation 0), so that gradients conflict and the methods' conflict
# handling acts. scripts/measure_gate.py --defaults measures which changed defaults the
# coverage catches.
COVERAGE_SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mlp", ('datasets=[{name="mmoe_synthetic", num_tasks=3, correlation=0.0, num_train=16, '
             'num_val=16, num_test=16, input_dim=8}]', 'model.backbone="mlp"')),
    ("cnn", ('datasets=[{name="multi_digits", num_train=16, num_val=16, num_test=16}]',
             'model.backbone="cnn"', "model.channels=[4]")),
    ("objective", ('datasets=[{name="toy2", steps_per_epoch=16}]', 'model.backbone="mlp"')),
)
COVERAGE_COMMON: tuple[str, ...] = (
    "seeds=[0]", "model.hidden=[8, 8]", 'train.optimizer="sgd"', "train.lr=0.05",
    "train.momentum=0.9", "train.epochs=6", "train.batch_size=16",
    "train_grid={}", "include=[]", "exclude=[]",
)
COVERAGE_PREFIX = "coverage/"
BLOCK_REDUCE = "min"  # a repeat sample is the fastest of --steps consecutive steps
THREADS = 1
CPU_CLOCK = "thread"  # time the thread's CPU time: preemption by other processes cancels


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class SpeedVerdict:
    """Current vs baseline ratio samples of one strategy."""

    baseline_median: float
    current_median: float
    change: float  # current median / baseline median - 1
    p_slower: float  # one-sided Mann-Whitney U p-value, current > baseline
    p_faster: float  # one-sided, current < baseline
    regressed: bool
    improved: bool


def compare_speed(
    baseline: Sequence[float],
    current: Sequence[float],
    *,
    min_effect: float = DEFAULTS["min_effect"],
    alpha: float = DEFAULTS["alpha"],
) -> SpeedVerdict:
    """Is ``current`` (ratio samples) slower than ``baseline`` by more than ``min_effect``
    (relative change of the medians), significantly (Mann-Whitney U, p < ``alpha``)?"""
    base = np.asarray(baseline, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if base.size == 0 or cur.size == 0:
        raise ValueError("compare_speed needs samples on both sides")
    base_median, cur_median = float(np.median(base)), float(np.median(cur))
    change = cur_median / base_median - 1.0 if base_median > 0 else math.inf
    p_slower = float(stats.mannwhitneyu(cur, base, alternative="greater").pvalue)
    p_faster = float(stats.mannwhitneyu(cur, base, alternative="less").pvalue)
    return SpeedVerdict(
        baseline_median=base_median,
        current_median=cur_median,
        change=change,
        p_slower=p_slower,
        p_faster=p_faster,
        regressed=change > min_effect and p_slower < alpha,
        improved=change < -min_effect and p_faster < alpha,
    )


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= rtol * abs(b) + atol
    return a == b


def _flatten(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{split: {task: {metric: v}}}`` -> ``{"split/task/metric": v}``."""
    return {
        f"{split}/{task}/{metric}": value
        for split, per_task in metrics.items()
        for task, per_metric in per_task.items()
        for metric, value in per_metric.items()
    }


def compare_accuracy(
    baseline: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    *,
    rtol: float = DEFAULTS["rtol"],
    atol: float = DEFAULTS["atol"],
) -> list[list[Any]]:
    """Rows ``[item, baseline, current, change]`` for every trial status or metric that
    differs. Both sides map a trial key -> ``{"status", "metrics", ...}``."""
    rows: list[list[Any]] = []
    for label, base in baseline.items():
        cur = current.get(label)
        if cur is None:
            rows.append([f"{label}: trial", "present", "missing", ""])
            continue
        if base.get("status") != cur.get("status"):
            rows.append([f"{label}: status", base.get("status"), cur.get("status"), ""])
            continue
        base_m, cur_m = _flatten(base.get("metrics") or {}), _flatten(cur.get("metrics") or {})
        for key in sorted(base_m.keys() | cur_m.keys()):
            b, c = base_m.get(key), cur_m.get(key)
            if key not in cur_m or key not in base_m or not _close(c, b, rtol, atol):
                change = ""
                if isinstance(b, (int, float)) and isinstance(c, (int, float)) and b:
                    change = f"{(c - b) / abs(b):+.3g}"
                rows.append([f"{label}: {key}", b, c, change])
    for label in sorted(current.keys() - baseline.keys()):
        rows.append([f"{label}: trial", "missing", "present", ""])
    return rows


# --------------------------------------------------------------------------- running


def _trial_key(trial: Any, spec: SweepSpec) -> str:
    """A trial's name in the baseline: its components' names (not their resolved
    hyperparameters, so a changed default shows up as changed metrics, not as a
    different trial), the dataset's position in the sweep, the seed, the baseline task."""
    index = spec.datasets.index(trial.dataset)
    key = (f"{trial.weighting.name} {trial.sharing.name} {trial.dataset.name}#{index} "
           f"seed={trial.seed}")
    if trial.tasks is not None:
        key += f" task={','.join(trial.tasks)}"
    return key


def _built_in(registry: Any, name: str) -> bool:
    """Registered by the project itself (not by a plugin)."""
    from bench.registry import _OWN_PACKAGES

    module = getattr(registry.get(name), "__module__", None) or ""
    return module.split(".")[0] in _OWN_PACKAGES


def parse_coverage(text: str) -> tuple[str, ...] | None:
    """``--coverage``: ``"all"`` -> ``()`` (no restriction), ``"none"`` -> None, else the
    component names (strategies and/or architectures); unknown names are a ConfigError."""
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    text = text.strip()
    if text == "all":
        return ()
    if text == "none":
        return None
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    known = sorted(set(WEIGHTING.names()) | set(SHARING.names()))
    for name in names:
        if name not in known:
            raise ConfigError(f"--coverage: unknown strategy or architecture '{name}'"
                              f"{suggest(name, known)} (or 'all', 'none')")
    if not names:
        raise ConfigError("--coverage: expected 'all', 'none' or names separated by commas")
    return names


def coverage_components(only: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The coverage's strategies and architectures: every built-in one in the registries
    (sorted); with ``only``, those it names, an axis it names nothing of staying whole."""
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    axes = []
    for registry in (WEIGHTING, SHARING):
        named = sorted(n for n in only if n in registry)
        axes.append(named or [n for n in registry.names() if _built_in(registry, n)])
    return axes[0], axes[1]


def _coverage_spec(preset: str, overrides: Sequence[str], setting: str,
                   sharing: Sequence[str], weighting: Sequence[str]) -> SweepSpec:
    own = dict(COVERAGE_SETTINGS)[setting]
    return load_spec(preset=preset, overrides=[
        *overrides, *own, *COVERAGE_COMMON,
        f"sharing={json.dumps(list(sharing))}", f"weighting={json.dumps(list(weighting))}",
    ])


def coverage_specs(preset: str, overrides: Sequence[str],
                   only: Sequence[str] | None = ()) -> list[tuple[str, SweepSpec]]:
    """``(setting, sweep)`` per coverage setting that some architecture runs in: each
    architecture of :func:`coverage_components` in the first of :data:`COVERAGE_SETTINGS`
    it builds in, with every strategy. An architecture that builds in none is a
    ConfigError (a new one needs a setting it accepts, not silence)."""
    if only is None:
        return []
    weighting, sharing = coverage_components(only)
    if not weighting or not sharing:
        return []
    placed: dict[str, list[str]] = {}
    for name in sharing:
        errors = []
        for setting, _ in COVERAGE_SETTINGS:
            try:
                expand(_coverage_spec(preset, overrides, setting, [name], [BASELINE_WEIGHTING]))
            except ConfigError as err:
                errors.append(f"{setting}: {err}")
                continue
            placed.setdefault(setting, []).append(name)
            break
        else:
            raise ConfigError(f"check coverage: architecture '{name}' builds in none of the "
                              f"coverage settings ({'; '.join(errors)}); add a setting to "
                              "bench.check.COVERAGE_SETTINGS that it accepts")
    return [(setting, _coverage_spec(preset, overrides, setting, placed[setting], weighting))
            for setting, _ in COVERAGE_SETTINGS if setting in placed]


def accuracy_plan(spec: SweepSpec,
                  coverage: Sequence[tuple[str, SweepSpec]] = ()) -> dict[str, TrialSpec]:
    """Every trial of the accuracy part by its key in the baseline: the preset's sweep
    ``spec``, then the coverage sweeps (keys ``coverage/<setting>: ...``)."""
    plan = {_trial_key(trial, spec): trial for trial in expand(spec)}
    for setting, sweep in coverage:
        for trial in expand(sweep):
            plan[f"{COVERAGE_PREFIX}{setting}: {_trial_key(trial, sweep)}"] = trial
    return plan


def run_accuracy(plan: dict[str, TrialSpec], *,
                 quiet: bool = False) -> dict[str, dict[str, Any]]:
    """Run every trial of ``plan`` (:func:`accuracy_plan`) inline, one thread; trial key
    -> id, status, metrics."""
    from bench.trial import execute

    hooks = faults.current()
    out: dict[str, dict[str, Any]] = {}
    with speed.torch_threads(THREADS):
        for key, trial in plan.items():
            record = execute(trial)
            metrics = record.metrics if record.ok else None
            if metrics is not None:
                metrics = hooks.metrics(trial.weighting.name, metrics)
            out[key] = {
                "id": trial.id,
                "status": record.status,
                "error": record.error,
                "metrics": metrics,
            }
            if not record.ok and not quiet:
                print(f"note: trial {key}: {record.status}: {record.error}", file=sys.stderr)
    return out


def speed_tasks(spec: SweepSpec, large_tasks: int = DEFAULTS["large_tasks"]) -> list[int]:
    """The numbers of tasks of the speed cells: T of the first dataset, and
    ``large_tasks`` when it is larger (0: none)."""
    first = speed.default_tasks(spec)
    return [first, large_tasks] if large_tasks > first else [first]


def speed_cells(spec: SweepSpec,
                large_tasks: int = DEFAULTS["large_tasks"]) -> list[speed.SpeedCell]:
    """``ew`` plus one cell per other strategy of the sweep, at each of
    :func:`speed_tasks` (see the module docstring); the ``ew`` cells first."""
    from bench.config import Component
    from strategies.weighting import WEIGHTING

    if not any(c.name == speed.REFERENCE for c in spec.weighting):
        ew = Component(speed.REFERENCE, WEIGHTING.resolve(speed.REFERENCE, {}))
        spec = _replace(spec, weighting=(ew, *spec.weighting))
    spec = _replace(spec, sharing=spec.sharing[:1])
    cells, _ = speed.build_cells(spec, engines=[spec.train.engine],
                                 tasks=speed_tasks(spec, large_tasks), device="cpu")
    ew_first = sorted(cells, key=lambda c: c.strategy.name != speed.REFERENCE)
    return ew_first


def _replace(spec: SweepSpec, **changes: Any) -> SweepSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


def measure_ratios(
    cells: Sequence[speed.SpeedCell], *, repeats: int, warmup: int, steps: int
) -> dict[str, dict[str, Any]]:
    """Per non-reference cell (by label): the per-round ratio samples to the ``ew`` cell
    of the same configuration (``SpeedCell.reference_key``: the same T)."""
    with speed.torch_threads(THREADS):
        measurements = speed.measure(cells, repeats=repeats, warmup=warmup,
                                     steps_per_repeat=steps, block_reduce=BLOCK_REDUCE,
                                     cpu_clock=CPU_CLOCK)
    refs = {c.reference_key: m.step_samples for c, m in zip(cells, measurements, strict=True)
            if c.strategy.name == speed.REFERENCE}
    out: dict[str, dict[str, Any]] = {}
    for cell, m in zip(cells, measurements, strict=True):
        if cell.strategy.name == speed.REFERENCE:
            continue
        ref_steps = refs.get(cell.reference_key)
        if ref_steps is None:
            raise ValueError(f"speed cell {cell.label} has no {speed.REFERENCE} cell to "
                             "compare with")
        ratios = [s / r for s, r in zip(m.step_samples, ref_steps, strict=True)]
        out[cell.label] = {
            "cell": cell.to_dict(),
            "ratio_samples": ratios,
            "ratio_median": float(np.median(ratios)),
            "step_median_s": float(np.median(m.step_samples)),
            "reference_step_median_s": float(np.median(ref_steps)),
        }
    return out


# --------------------------------------------------------------------------- baseline


def _preset_toml(name: str) -> dict[str, Any]:
    return tomllib.loads((resources.files("bench") / "presets" / f"{name}.toml").read_text("utf-8"))


def _settings(args: argparse.Namespace, spec: SweepSpec,
              only: tuple[str, ...] | None) -> dict[str, Any]:
    """What the user chose (compared with the baseline's) and, for the record, the
    resolved sweep (not compared: a changed default must show up as changed metrics)."""
    return {"preset": args.preset, "preset_toml": _preset_toml(args.preset),
            "overrides": list(args.overrides), "sweep": spec.to_dict(), "threads": THREADS,
            "coverage": _coverage_settings(only)}


def _coverage_settings(only: tuple[str, ...] | None) -> dict[str, Any]:
    """The coverage's choices (compared with the baseline's) and, for the record, its
    components (not compared: a new one shows up as a trial missing from the baseline)."""
    if only is None:
        return {"only": None}
    weighting, sharing = coverage_components(only)
    return {"only": list(only), "settings": [[name, list(sets)]
                                             for name, sets in COVERAGE_SETTINGS],
            "common": list(COVERAGE_COMMON), "weighting": weighting, "sharing": sharing}


def _chosen(settings: dict[str, Any]) -> str:
    coverage = {k: v for k, v in (settings.get("coverage") or {}).items()
                if k in ("only", "settings", "common")}
    return canonical_json([settings.get("preset_toml"), settings.get("overrides"), coverage])


def read_baseline(folder: Path) -> dict[str, Any]:
    """The baseline in ``folder``; a ``ConfigError`` (one line) if missing or unusable."""
    path = folder / BASELINE_FILE
    hint = "create it with `mtlbench check --update`"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no baseline directory; {hint}")
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no baseline file; {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read baseline: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: corrupt baseline (not JSON: {err}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an mtlbench check baseline; {hint}")
    if data.get("version") != VERSION:
        raise ConfigError(f"{path}: baseline version {data.get('version')!r}, this mtlbench "
                          f"reads version {VERSION}; {hint}")
    try:
        trials = data["accuracy"]["trials"]
        cells = data["speed"]["cells"]
        ok = isinstance(trials, dict) and isinstance(cells, dict) and all(
            isinstance(c["ratio_samples"], list) and c["ratio_samples"] for c in cells.values()
        ) and isinstance(data["settings"]["preset_toml"], dict)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"{path}: corrupt baseline (missing or malformed fields); {hint}")
    return data


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="DIR",
                        help=f"baseline directory (default {DEFAULT_BASELINE})")
    parser.add_argument("--update", action="store_true",
                        help="run and (re)write the baseline instead of comparing")
    parser.add_argument("--preset", default="check", help="the fixed sweep (default 'check')")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key of the sweep")
    parser.add_argument("--coverage", default="all", metavar="NAMES",
                        help="accuracy: the coverage sweeps' strategies and architectures: "
                        "'all' built-in ones (default), 'none', or names separated by "
                        "commas ('cagrad,hps': cagrad on hard sharing; 'cagrad': on every "
                        "architecture)")
    parser.add_argument("--no-speed", action="store_true", help="accuracy only")
    parser.add_argument("--repeats", type=int, default=d["repeats"],
                        help=f"speed: timed rounds (default {d['repeats']})")
    parser.add_argument("--warmup", type=int, default=d["warmup"],
                        help=f"speed: untimed rounds (default {d['warmup']})")
    parser.add_argument("--steps", type=int, default=d["steps"],
                        help=f"speed: steps per cell and round, a sample is the fastest "
                        f"(default {d['steps']})")
    parser.add_argument("--large-tasks", type=int, default=d["large_tasks"], metavar="T",
                        help=f"speed: also time every cell at T tasks, so a cost growing "
                        f"faster than T shows (0: off; default {d['large_tasks']})")
    parser.add_argument("--min-effect", type=float, default=d["min_effect"],
                        help=f"speed: smallest slowdown that fails (default {d['min_effect']})")
    parser.add_argument("--alpha", type=float, default=d["alpha"],
                        help=f"speed: significance level (default {d['alpha']})")
    parser.add_argument("--rtol", type=float, default=d["rtol"],
                        help=f"accuracy: relative tolerance (default {d['rtol']})")
    parser.add_argument("--atol", type=float, default=d["atol"],
                        help=f"accuracy: absolute tolerance (default {d['atol']})")
    parser.add_argument("--json", dest="json_out", metavar="PATH",
                        help="also write the verdict as JSON")


def _validate(args: argparse.Namespace) -> None:
    if args.repeats < 2:
        raise ConfigError("--repeats: must be at least 2")
    if args.warmup < 0:
        raise ConfigError("--warmup: must be at least 0")
    if args.steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if args.large_tasks < 0:
        raise ConfigError("--large-tasks: must be >= 0")
    if not args.min_effect >= 0:
        raise ConfigError("--min-effect: must be >= 0")
    if not 0 < args.alpha < 1:
        raise ConfigError("--alpha: must be in (0, 1)")
    if not (args.rtol >= 0 and args.atol >= 0):
        raise ConfigError("--rtol/--atol: must be >= 0")


def _machine_warning(baseline: dict[str, Any], machine: dict[str, Any]) -> str | None:
    keys = ("cpu", "torch", "numpy")
    old = baseline.get("machine", {})
    diff = [f"{k}: {old.get(k)!r} -> {machine.get(k)!r}" for k in keys if old.get(k) != machine[k]]
    if not diff:
        return None
    return ("warning: baseline made on another machine/build (" + "; ".join(diff) +
            "); accuracy may differ beyond the tolerance for that reason alone")


def _trial_count(plan: dict[str, TrialSpec],
                 coverage: Sequence[tuple[str, SweepSpec]]) -> str:
    """``N trials (P of the preset, C of the coverage: S strategies x A architectures)``."""
    covered = sum(k.startswith(COVERAGE_PREFIX) for k in plan)
    if not coverage:
        return f"{len(plan)} trials (no coverage)"
    strategies = {w.name for _, sweep in coverage for w in sweep.weighting}
    architectures = {t.sharing.name for k, t in plan.items() if k.startswith(COVERAGE_PREFIX)}
    return (f"{len(plan)} trials ({len(plan) - covered} of the preset, {covered} of the "
            f"coverage: {len(strategies)} strategies x {len(architectures)} architectures)")


def _coverage_text(only: Sequence[str] | None) -> str:
    return "none" if only is None else ",".join(only) or "all"


def _load_warning() -> str | None:
    """A note when the machine is busier than its cores: some steps (the gradient-based
    ones) slow down more than ew's under contention, so ratios drift upwards a little."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"the machine is busy (1-min load average {load:.1f} on {cores} cores): "
            "speed ratios can drift under contention; rerun on a quiet machine to be sure")


def _speed_table(rows: list[dict[str, Any]]) -> str:
    table = [[r["strategy"], f"{r['baseline']:.3f}", f"{r['current']:.3f}",
              f"{r['change']:+.1%}", f"{r['p']:.2g}", r["verdict"]] for r in rows]
    return tabulate(table, headers=["speed cell (ratio to ew)", "baseline", "current", "change",
                                    "p (slower)", "verdict"], disable_numparse=True)


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _validate(args)
    folder = Path(args.baseline)
    baseline = None if args.update else read_baseline(folder)
    spec = load_spec(preset=args.preset, overrides=args.overrides)
    only = parse_coverage(args.coverage)
    settings = _settings(args, spec, only)
    if baseline is not None and _chosen(baseline["settings"]) != _chosen(settings):
        old = baseline["settings"].get("coverage") or {}
        raise ConfigError(
            f"{folder / BASELINE_FILE}: made with a different sweep (preset "
            f"{baseline['settings'].get('preset')!r}, --set {baseline['settings'].get('overrides')}"
            f", --coverage {_coverage_text(old.get('only', ()))}); use the same settings or "
            "rerun with --update"
        )
    coverage = coverage_specs(args.preset, args.overrides, only)
    plan = accuracy_plan(spec, coverage)
    machine = machine_info(None)
    machine["threads"] = THREADS
    injected = faults.current().injected()
    if any(injected.values()):
        if args.update:
            raise ConfigError("refusing to write a baseline with fault injection active "
                              "(bench.faults hooks installed)")
        print(f"warning: fault injection active: {injected}", file=sys.stderr)

    accuracy = run_accuracy(plan)
    cells = [] if args.no_speed else speed_cells(spec, args.large_tasks)
    ratios = measure_ratios(cells, repeats=args.repeats, warmup=args.warmup,
                            steps=args.steps) if cells else {}

    if args.update:
        document = {
            "format": FORMAT,
            "version": VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "machine": machine,
            "settings": settings,
            "injected": injected,
            "accuracy": {"rtol": args.rtol, "atol": args.atol, "trials": accuracy},
            "speed": {"reference": speed.REFERENCE, "repeats": args.repeats,
                      "warmup": args.warmup, "steps_per_repeat": args.steps,
                      "tasks": sorted({c.num_tasks for c in cells}),
                      "block_reduce": BLOCK_REDUCE, "cells": ratios},
        }
        atomic_write_json(folder / BASELINE_FILE, document)
        elapsed = time.perf_counter() - started
        print(f"baseline: {_trial_count(plan, coverage)}, {len(ratios)} speed cells -> "
              f"{folder / BASELINE_FILE} ({elapsed:.1f} s)")
        if args.json_out:
            atomic_write_json(Path(args.json_out), {"passed": True, "updated": True,
                                                    "injected": injected, "elapsed_s": elapsed})
        return 0

    assert baseline is not None
    warning = _machine_warning(baseline, machine)
    if warning:
        print(warning, file=sys.stderr)
    acc_rows = compare_accuracy(baseline["accuracy"]["trials"], accuracy, rtol=args.rtol,
                                atol=args.atol)

    speed_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    flagged: list[str] = []
    first: dict[str, SpeedVerdict] = {}
    base_cells = baseline["speed"]["cells"]
    for label, cur in ratios.items():
        base = base_cells.get(label)
        if base is None:
            notes.append(f"speed cell {label} is not in the baseline (run --update)")
            continue
        if canonical_json(base["cell"]) != canonical_json(cur["cell"]):
            # e.g. a strategy's default hyperparameters changed: still compared, as such a
            # change can be the very regression to catch
            notes.append(f"speed cell {label} is built differently from the baseline's")
        verdict = compare_speed(base["ratio_samples"], cur["ratio_samples"],
                                min_effect=args.min_effect, alpha=args.alpha)
        first[label] = verdict
        if verdict.regressed:
            flagged.append(label)
    for label in base_cells.keys() - ratios.keys():
        if not args.no_speed:
            notes.append(f"speed cell {label} of the baseline was not measured")

    confirm: dict[str, SpeedVerdict] = {}
    if flagged:
        keys = {c.reference_key for c in cells if c.label in flagged}
        rerun_cells = [c for c in cells if c.label in flagged or (
            c.strategy.name == speed.REFERENCE and c.reference_key in keys)]
        print(f"speed: {', '.join(flagged)} flagged; confirming with a rerun", file=sys.stderr)
        rerun = measure_ratios(rerun_cells, repeats=args.repeats, warmup=args.warmup,
                               steps=args.steps)
        for label in flagged:
            confirm[label] = compare_speed(base_cells[label]["ratio_samples"],
                                           rerun[label]["ratio_samples"],
                                           min_effect=args.min_effect, alpha=args.alpha)
    regressed_speed = [label for label in flagged if confirm[label].regressed]

    for label, verdict in first.items():
        final = confirm.get(label, verdict)
        if label in regressed_speed:
            state = "REGRESSED (confirmed)"
        elif label in flagged:
            state = "ok (not confirmed by rerun)"
        elif verdict.improved:
            state = "faster (consider --update)"
        else:
            state = "ok"
        speed_rows.append({"strategy": label, "baseline": verdict.baseline_median,
                           "current": final.current_median, "change": final.change,
                           "p": final.p_slower, "verdict": state})

    if speed_rows:
        print(_speed_table(speed_rows))
    load = _load_warning()
    if load and (flagged or regressed_speed):
        notes.append(load)
    for note in notes:
        print(f"note: {note}")
    failed = bool(acc_rows or regressed_speed)
    if failed:
        def num(v: Any) -> Any:
            return f"{v:.8g}" if isinstance(v, float) else v

        rows = [["accuracy", what, num(b), num(c), change] for what, b, c, change in acc_rows]
        rows += [["speed", f"{r['strategy']} step / ew step", f"{r['baseline']:.3f}",
                  f"{r['current']:.3f}", f"{r['change']:+.1%}"]
                 for r in speed_rows if r["strategy"] in regressed_speed]
        print("\nREGRESSIONS:")
        print(tabulate(rows, headers=["check", "what", "baseline", "current", "change"],
                       disable_numparse=True))
    elapsed = time.perf_counter() - started
    print(f"check {'FAILED' if failed else 'passed'}: {_trial_count(plan, coverage)} "
          f"(rtol {args.rtol:g}), {len(ratios)} speed cells (min effect {args.min_effect:.0%}, "
          f"alpha {args.alpha:g}), {elapsed:.1f} s")
    if args.json_out:
        atomic_write_json(Path(args.json_out), {
            "passed": not failed,
            "updated": False,
            "accuracy_mismatches": acc_rows,
            "speed_first": {k: asdict(v) for k, v in first.items()},
            "speed_flagged": flagged,
            "speed_confirm": {k: asdict(v) for k, v in confirm.items()},
            "speed_regressed": regressed_speed,
            "injected": injected,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "elapsed_s": elapsed,
        })
    return EXIT_REGRESSION if failed else 0


def _standalone(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.check``: the same command without the ``mtlbench`` front end."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise ConfigError(message)

    parser = _Parser(prog="mtlbench check", description=HELP)
    add_arguments(parser)
    try:
        return main(parser.parse_args(argv))
    except ConfigError as err:
        print(f"mtlbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_standalone())
