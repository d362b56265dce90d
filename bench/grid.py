"""Grid: expand a sweep spec into trial specs, filter them, add single-task baselines.

A trial's id is a hash of its canonical JSON, so it is stable across runs and
machines. Every multi-task trial is measured against one single-task baseline
per task (architecture ``stl``, same data, model size, training budget and
seed); baselines are ordinary trials, shared by all trials that need them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from bench import data
from bench.data import DATASETS
from bench.engine import ENGINES
from bench.errors import ConfigError
from bench.records import v1_labels
from bench.registry import Registry
from bench.sampling import SAMPLING
from bench.spec import (
    BASELINE_SHARING,
    BASELINE_WEIGHTING,
    Component,
    Labels,
    ModelSettings,
    SweepSpec,
    TrialModel,
    TrialSpec,
    canonical_json,
    component_label,
)
from strategies import sharing
from strategies.sharing import SHARING, BackboneSpec, count_parameters, match_params
from strategies.weighting import WEIGHTING

__all__ = [
    "BASELINE_SHARING",
    "BASELINE_WEIGHTING",
    "TrialSpec",
    "baseline_of",
    "expand",
    "schema1_labels",
]


def baseline_of(spec: TrialSpec, task: str) -> TrialSpec:
    """The single-task baseline ``spec`` is measured against for ``task``: architecture
    ``stl`` with ``ew`` on that task alone, same data, sweep widths, training and seed."""
    base = TrialSpec(
        dataset=spec.dataset,
        sharing=Component(BASELINE_SHARING, SHARING.resolve(BASELINE_SHARING, {})),
        weighting=Component(BASELINE_WEIGHTING, WEIGHTING.resolve(BASELINE_WEIGHTING, {})),
        seed=spec.seed,
        model=spec.model.unmatched(),  # baselines keep the sweep's own widths
        train=spec.train,
        tasks=(task,),
        # single-task trials have nothing to probe, and one task owns every sample
    )
    return _labelled(base)


def _defaults(registry: Registry, name: str) -> dict[str, Any]:
    return {h.name: h.default for h in registry.hyperparameters(name)}


def _labelled(spec: TrialSpec) -> TrialSpec:
    """``spec`` with its report labels: names plus non-default hyperparameters."""
    labels = Labels(
        dataset=component_label(spec.dataset, _defaults(DATASETS, spec.dataset.name)),
        sharing=component_label(spec.sharing, _defaults(SHARING, spec.sharing.name)),
        weighting=component_label(spec.weighting, _defaults(WEIGHTING, spec.weighting.name)),
        sampling=(component_label(spec.sampling, _defaults(SAMPLING, spec.sampling.name))
                  if spec.sampling is not None else None),
    )
    return dataclasses.replace(spec, labels=labels)


def schema1_labels(raws: list[dict[str, Any]]) -> dict[str, Labels]:
    """Labels of records written before records held them (schema 1), as the grid gives
    them today: names plus the hyperparameters that differ from the registries'
    defaults. A component no registry knows any more (a plugin that is gone) keeps the
    run-relative label of :func:`bench.records.v1_labels`."""
    fallback = v1_labels(raws)
    registries = {"dataset": DATASETS, "sharing": SHARING, "weighting": WEIGHTING,
                  "sampling": SAMPLING}
    out: dict[str, Labels] = {}
    for raw in raws:
        rec_id = raw.get("id")
        if rec_id not in fallback:
            continue  # damaged: the store names it
        labels = fallback[rec_id].model_dump()
        spec = raw["spec"]
        for key, registry in registries.items():
            if spec.get(key) is not None and spec[key]["name"] in registry:
                component = Component.from_dict(spec[key])
                labels[key] = component_label(component, _defaults(registry, component.name))
        out[rec_id] = Labels(**labels)
    return out


def _load(ds: Component, source: str = "") -> Any:
    """The dataset of ``ds`` (cached by ``bench.data.load``); a loader that fails, or runs
    out of memory (num_train = 10**8 with a wide input), is a one-line ConfigError."""
    try:
        return data.load(ds.name, **ds.params)
    except ConfigError:
        raise
    except MemoryError as err:
        raise ConfigError(
            f"{source}: {DATASETS.describe(ds.name)} with {canonical_json(ds.params)} does "
            f"not fit in memory ({err}); choose smaller sizes") from None
    except Exception as err:  # a plugin's loader, or a size numpy cannot allocate
        raise ConfigError(f"{source}: {DATASETS.describe(ds.name)}: loading failed: "
                          f"{type(err).__name__}: {err}") from None


def task_names(dataset: Component) -> list[str]:
    return [t.name for t in _load(dataset).tasks]


def _build_on_meta(ds: Component, sh: Component, model: ModelSettings, source: str) -> None:
    """Build the architecture on the meta device (no memory) so that a combination that
    cannot work (e.g. MTAN on an MLP backbone) is a ConfigError before anything runs."""
    dataset = _load(ds, source)
    try:
        with torch.device("meta"):
            sharing.get(sh.name, dataset.input_shape, dataset.tasks,
                        BackboneSpec.of(model), **sh.params)
    except ValueError as err:
        raise ConfigError(f"{source}: sharing '{sh.name}' on dataset '{ds.name}': {err}") from None
    except (Exception, SystemExit) as err:  # a plugin architecture's own failure, named
        raise ConfigError(f"{source}: {SHARING.describe(sh.name)}: building it on dataset "
                          f"'{ds.name}' failed: {type(err).__name__}: {err}") from None


def _matched_model(
    ds: Component, sh: Component, model: ModelSettings, source: str
) -> TrialModel:
    """``model`` with widths rescaled so that ``sh`` has the parameter count of the target
    (``model.match_params``: an architecture name at the sweep's widths, or a count)."""
    target = model.match_params
    if target is None:
        return TrialModel(**model.model_dump())
    dataset = _load(ds, source)
    backbone = BackboneSpec.of(model)
    if isinstance(target, str):
        target = count_parameters(target, dataset.input_shape, dataset.tasks, backbone)
    try:
        matched = match_params(sh.name, dataset.input_shape, dataset.tasks, backbone, target,
                               **sh.params)
    except ValueError as err:
        raise ConfigError(f"{source}: model.match_params: {err}") from None
    return TrialModel(
        **{**model.model_dump(), "hidden": list(matched.hidden), "tower": list(matched.tower),
           "channels": list(matched.channels)},
        matched_parameters=target,
        reference={"hidden": list(model.hidden), "tower": list(model.tower),
                   "channels": list(model.channels)},
    )


def _is_multi_input(ds: Component) -> bool:
    return _load(ds).multi_input


def _has_baselines(ds: Component) -> bool:
    """Objective tasks (toy landscapes) have no data to train a single-task model on."""
    return all(t.kind != "objective" for t in _load(ds).tasks)


def _refuse_unsupported(spec: TrialSpec, source: str, seen: set[tuple[str, ...]]) -> None:
    """A ConfigError for a strategy that cannot run on this dataset, architecture and
    engine; each distinct combination is examined once per grid (``seen``)."""
    num_tasks = len(spec.tasks) if spec.tasks is not None else len(task_names(spec.dataset))
    key = (spec.weighting.name, canonical_json(spec.weighting.params), str(num_tasks),
           spec.sharing.name, spec.train.engine)
    if key in seen:
        return
    seen.add(key)
    strategy = WEIGHTING.get(spec.weighting.name)
    try:  # hyperparameters that depend on the task count (e.g. FAMO's min_losses)
        WEIGHTING.create(spec.weighting.name, **spec.weighting.params).reset(
            num_tasks, torch.device("cpu"), seed=spec.seed)
    except ValueError as err:
        raise ConfigError(f"{source}: weighting '{spec.weighting.name}' on dataset "
                          f"'{spec.dataset.name}': {err}") from None
    except (Exception, SystemExit) as err:  # a plugin strategy's own failure, named
        raise ConfigError(f"{source}: {WEIGHTING.describe(spec.weighting.name)}: creating it "
                          f"failed: {type(err).__name__}: {err}") from None
    if strategy.needs != "jacobian":
        return
    try:
        ENGINES[spec.train.engine]().require_support(strategy, SHARING.get(spec.sharing.name))
    except ValueError as err:
        raise ConfigError(f"{source}: train.engine: {err}") from None


def expand(sweep: SweepSpec) -> list[TrialSpec]:
    """All trials of ``sweep``: multi-task trials first, then their baselines (deduplicated).

    Each trial carries its report labels and the ids of its baselines (one per task;
    none for objective datasets, whose tasks have no data to train alone).
    ``stl`` in the sharing axis stands for the single-task baselines themselves.
    Raises ``ConfigError`` when the filters leave nothing to run, or when planning runs
    out of memory (e.g. match_params on very wide models).
    """
    try:
        return _expand(sweep)
    except MemoryError as err:
        raise ConfigError(f"{sweep.source}: planning the sweep ran out of memory ({err}); "
                          "choose smaller datasets or models") from None


def _expand(sweep: SweepSpec) -> list[TrialSpec]:
    variants = sweep.train_variants or (sweep.train,)
    matched: dict[tuple[str, ...], TrialModel] = {}
    seen: set[tuple[str, ...]] = set()
    trials: dict[str, TrialSpec] = {}
    baselines: dict[str, TrialSpec] = {}
    for train, ds, sh, wt, seed, sampling in itertools.product(
        variants, sweep.datasets, sweep.sharing, sweep.weighting, sweep.seeds, sweep.sampling
    ):
        combo = {"dataset": ds.name, "sharing": sh.name, "weighting": wt.name, "seed": seed,
                 "sampling": sampling.name}
        if sweep.include and not any(f.matches(combo) for f in sweep.include):
            continue
        if any(f.matches(combo) for f in sweep.exclude):
            continue
        key = (ds.name, canonical_json(ds.params), sh.name, canonical_json(sh.params))
        if key not in matched:
            _build_on_meta(ds, sh, sweep.model, sweep.source)
            matched[key] = _matched_model(ds, sh, sweep.model, sweep.source)
        if not _is_multi_input(ds):
            sampling = None  # the axis only applies to multi-input data; trials dedupe
        elif sampling.params.get("per_step") == "one" and wt.name != BASELINE_WEIGHTING:
            raise ConfigError(
                f"{sweep.source}: sampling '{sampling.name}' with per_step = \"one\" trains "
                f"one task per step, so only weighting '{BASELINE_WEIGHTING}' applies (got "
                f"'{wt.name}'); run it in a sweep of its own or use per_step = \"all\"")
        spec = TrialSpec(ds, sh, wt, seed, matched[key], train, probes=sweep.probes,
                         sampling=sampling)
        own: dict[str, str] = {}
        if _has_baselines(ds):
            for task in task_names(ds):
                base = baseline_of(spec, task)
                baselines.setdefault(base.id, base)
                own[task] = base.id
        if sh.name != BASELINE_SHARING:
            _refuse_unsupported(spec, sweep.source, seen)
            trials.setdefault(spec.id, _labelled(dataclasses.replace(spec, baselines=own)))
    if not trials and not baselines:
        raise ConfigError(f"{sweep.source}: the grid is empty (include/exclude remove every trial)")
    return list(trials.values()) + [b for k, b in baselines.items() if k not in trials]
