"""The gate's accuracy plan: the preset's sweep plus the coverage sweeps (every built-in
strategy x every built-in architecture, read from the registries), each trial keyed by
its components' names (see :mod:`bench.gate`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bench.config import SweepSpec, load_spec
from bench.errors import ConfigError
from bench.grid import BASELINE_WEIGHTING, TrialSpec, expand
from bench.registry import suggest
from strategies.sharing import SHARING
from strategies.weighting import WEIGHTING

__all__ = [
    "COVERAGE_COMMON",
    "COVERAGE_PREFIX",
    "COVERAGE_SETTINGS",
    "DEFAULTS",
    "THREADS",
    "accuracy_plan",
    "coverage_components",
    "coverage_specs",
    "parse_coverage",
    "trial_count",
]

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
THREADS = 1  # trials and timed cells run on one CPU thread


def _trial_key(trial: Any, spec: SweepSpec) -> str:
    """A trial's name in the reference: its components' names (not their resolved
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
    registry.get(name)  # an unknown name: a ConfigError naming it
    return registry.is_builtin(name)


def parse_coverage(text: str) -> tuple[str, ...] | None:
    """``--coverage``: ``"all"`` -> ``()`` (no restriction), ``"none"`` -> None, else the
    component names (strategies and/or architectures); unknown names are a ConfigError."""

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
                              "bench.gate.plan.COVERAGE_SETTINGS that it accepts")
    return [(setting, _coverage_spec(preset, overrides, setting, placed[setting], weighting))
            for setting, _ in COVERAGE_SETTINGS if setting in placed]


def accuracy_plan(spec: SweepSpec,
                  coverage: Sequence[tuple[str, SweepSpec]] = ()) -> dict[str, TrialSpec]:
    """Every trial of the accuracy part by its key in the reference: the preset's sweep
    ``spec``, then the coverage sweeps (keys ``coverage/<setting>: ...``)."""
    plan = {_trial_key(trial, spec): trial for trial in expand(spec)}
    for setting, sweep in coverage:
        for trial in expand(sweep):
            plan[f"{COVERAGE_PREFIX}{setting}: {_trial_key(trial, sweep)}"] = trial
    return plan


def trial_count(plan: dict[str, TrialSpec],
                 coverage: Sequence[tuple[str, SweepSpec]]) -> str:
    """``N trials (P of the preset, C of the coverage: S strategies x A architectures)``."""
    covered = sum(k.startswith(COVERAGE_PREFIX) for k in plan)
    if not coverage:
        return f"{len(plan)} trials (no coverage)"
    strategies = {w.name for _, sweep in coverage for w in sweep.weighting}
    architectures = {t.sharing.name for k, t in plan.items() if k.startswith(COVERAGE_PREFIX)}
    return (f"{len(plan)} trials ({len(plan) - covered} of the preset, {covered} of the "
            f"coverage: {len(strategies)} strategies x {len(architectures)} architectures)")


def coverage_text(only: Sequence[str] | None) -> str:
    return "none" if only is None else ",".join(only) or "all"
