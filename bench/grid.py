"""Grid: expand a sweep spec into trial specs, filter them, add single-task baselines.

A trial's id is a hash of its canonical JSON, so it is stable across runs and
machines. Every multi-task trial is measured against one single-task baseline
per task (architecture ``stl``, same data, model size, training budget and
seed); baselines are ordinary trials, shared by all trials that need them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from bench.config import Component, SweepSpec
from bench.errors import ConfigError

__all__ = ["BASELINE_SHARING", "BASELINE_WEIGHTING", "TrialSpec", "baseline_of", "expand"]

BASELINE_SHARING = "stl"
BASELINE_WEIGHTING = "ew"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines one trial's result (and nothing else)."""

    dataset: Component
    sharing: Component
    weighting: Component
    seed: int
    model: dict[str, Any]
    train: dict[str, Any]
    tasks: tuple[str, ...] | None = None  # None: all of the dataset's tasks
    probes: dict[str, Any] = field(default_factory=dict)  # training-time probes (0 = off)
    # Task-sampling policy; multi-task trials on multi-input data only (None elsewhere,
    # and then absent from the id, so single-input ids do not depend on the axis).
    sampling: Component | None = None
    # Where and how often the trial writes TensorBoard events (``bench.tensorboard``):
    # carried to workers with the spec, never part of its id or record.
    tensorboard: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def is_baseline(self) -> bool:
        return self.sharing.name == BASELINE_SHARING and self.tasks is not None

    def to_dict(self, *, logging: bool = True) -> dict[str, Any]:
        """The spec as JSON; ``logging=False`` leaves out the TensorBoard settings (what
        the id hashes and records hold)."""
        out = {
            "dataset": self.dataset.to_dict(),
            "sharing": self.sharing.to_dict(),
            "weighting": self.weighting.to_dict(),
            "seed": self.seed,
            "model": self.model,
            "train": self.train,
            "tasks": list(self.tasks) if self.tasks is not None else None,
            "probes": self.probes,
        }
        if self.sampling is not None:
            out["sampling"] = self.sampling.to_dict()
        if logging and self.tensorboard is not None:
            out["tensorboard"] = self.tensorboard
        return out

    @property
    def id(self) -> str:
        text = canonical_json(self.to_dict(logging=False))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        return cls(
            dataset=Component(d["dataset"]["name"], d["dataset"]["params"]),
            sharing=Component(d["sharing"]["name"], d["sharing"]["params"]),
            weighting=Component(d["weighting"]["name"], d["weighting"]["params"]),
            seed=d["seed"],
            model=d["model"],
            train=d["train"],
            tasks=tuple(d["tasks"]) if d.get("tasks") is not None else None,
            probes=d.get("probes", {}),
            sampling=(Component(d["sampling"]["name"], d["sampling"]["params"])
                      if d.get("sampling") is not None else None),
            tensorboard=d.get("tensorboard"),
        )


def baseline_of(spec: TrialSpec, task: str) -> TrialSpec:
    """The single-task baseline ``spec`` is measured against for ``task``."""
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    model = dict(spec.model)
    model.pop("matched_parameters", None)
    model.update(model.pop("reference", {}))  # baselines keep the sweep's own widths
    return TrialSpec(
        dataset=spec.dataset,
        sharing=Component(BASELINE_SHARING, SHARING.resolve(BASELINE_SHARING, {})),
        weighting=Component(BASELINE_WEIGHTING, WEIGHTING.resolve(BASELINE_WEIGHTING, {})),
        seed=spec.seed,
        model=model,
        train=spec.train,
        tasks=(task,),
        probes={},  # single-task trials have nothing to probe
        sampling=None,  # one task: every sample of a step is its own
    )


def _load(ds: Component, source: str = "") -> Any:
    """The dataset of ``ds`` (cached by ``bench.data.load``); a loader that fails, or runs
    out of memory (num_train = 10**8 with a wide input), is a one-line ConfigError."""
    from bench import data
    from bench.data import DATASETS

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


def _backbone(model: dict[str, Any]) -> Any:
    from strategies.sharing import BackboneSpec

    return BackboneSpec(
        hidden=tuple(model["hidden"]), tower=tuple(model["tower"]), dropout=model["dropout"],
        kind=model["backbone"], channels=tuple(model["channels"]),
    )


def _build_check(ds: Component, sh: Component, model: dict[str, Any], source: str) -> None:
    """Build the architecture on the meta device (no memory) so that a combination that
    cannot work (e.g. MTAN on an MLP backbone) is a ConfigError before anything runs."""
    import torch

    from strategies import sharing
    from strategies.sharing import SHARING

    dataset = _load(ds, source)
    try:
        with torch.device("meta"):
            sharing.get(sh.name, dataset.input_shape, dataset.tasks, _backbone(model),
                        **sh.params)
    except ValueError as err:
        raise ConfigError(f"{source}: sharing '{sh.name}' on dataset '{ds.name}': {err}") from None
    except (Exception, SystemExit) as err:  # a plugin architecture's own failure, named
        raise ConfigError(f"{source}: {SHARING.describe(sh.name)}: building it on dataset "
                          f"'{ds.name}' failed: {type(err).__name__}: {err}") from None


def _matched_model(
    ds: Component, sh: Component, model: dict[str, Any], source: str
) -> dict[str, Any]:
    """``model`` with widths rescaled so that ``sh`` has the parameter count of the target
    (``model.match_params``: an architecture name at the sweep's widths, or a count)."""
    import dataclasses

    from strategies.sharing import count_parameters, match_params

    target = model.get("match_params")
    if target is None:
        return model
    dataset = _load(ds, source)
    backbone = _backbone(model)
    if isinstance(target, str):
        target = count_parameters(target, dataset.input_shape, dataset.tasks, backbone)
    try:
        matched = match_params(sh.name, dataset.input_shape, dataset.tasks, backbone, target,
                               **sh.params)
    except ValueError as err:
        raise ConfigError(f"{source}: model.match_params: {err}") from None
    widths = dataclasses.asdict(matched)
    reference = {k: model[k] for k in ("hidden", "tower", "channels")}
    return {**model, "hidden": list(widths["hidden"]), "tower": list(widths["tower"]),
            "channels": list(widths["channels"]), "matched_parameters": target,
            "reference": reference}


def _is_multi_input(ds: Component) -> bool:
    return _load(ds).multi_input


def _has_baselines(ds: Component) -> bool:
    """Objective tasks (toy landscapes) have no data to train a single-task model on."""
    return all(t.kind != "objective" for t in _load(ds).tasks)


def _check_compatible(spec: TrialSpec, source: str, checked: set[tuple[str, ...]]) -> None:
    """Config errors for a strategy that cannot run on this dataset, architecture and
    engine; each distinct combination is checked once per grid (``checked``)."""
    from bench.engine import ENGINES
    from strategies.sharing import SHARING
    from strategies.weighting import WEIGHTING

    num_tasks = len(spec.tasks) if spec.tasks is not None else len(task_names(spec.dataset))
    key = (spec.weighting.name, canonical_json(spec.weighting.params), str(num_tasks),
           spec.sharing.name, spec.train["engine"])
    if key in checked:
        return
    checked.add(key)
    strategy = WEIGHTING.get(spec.weighting.name)
    try:  # hyperparameters that depend on the task count (e.g. FAMO's min_losses)
        import torch

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
        ENGINES[spec.train["engine"]]().require_support(strategy, SHARING.get(spec.sharing.name))
    except ValueError as err:
        raise ConfigError(f"{source}: train.engine: {err}") from None


def _train_dict(train: Any) -> dict[str, Any]:
    """The training settings as a trial records them. ``heads`` is left out at its
    default, so trial ids (and resumable run directories) from before it existed hold."""
    out = train.model_dump()
    if out.get("heads") == "method":
        del out["heads"]
    return out


def expand(sweep: SweepSpec) -> list[TrialSpec]:
    """All trials of ``sweep``: multi-task trials first, then their baselines (deduplicated).

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
    model = sweep.model.model_dump()
    variants = [_train_dict(t) for t in (sweep.train_variants or (sweep.train,))]
    probes = {k: v for k, v in sweep.probes.model_dump().items() if v}
    matched: dict[tuple[str, ...], dict[str, Any]] = {}
    checked: set[tuple[str, ...]] = set()
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
            _build_check(ds, sh, model, sweep.source)
            matched[key] = _matched_model(ds, sh, model, sweep.source)
        if not _is_multi_input(ds):
            sampling = None  # the axis only applies to multi-input data; trials dedupe
        elif sampling.params.get("per_step") == "one" and wt.name != BASELINE_WEIGHTING:
            raise ConfigError(
                f"{sweep.source}: sampling '{sampling.name}' with per_step = \"one\" trains "
                f"one task per step, so only weighting '{BASELINE_WEIGHTING}' applies (got "
                f"'{wt.name}'); run it in a sweep of its own or use per_step = \"all\"")
        spec = TrialSpec(ds, sh, wt, seed, matched[key], train, probes=probes,
                         sampling=sampling)
        if sh.name != BASELINE_SHARING:
            _check_compatible(spec, sweep.source, checked)
            trials.setdefault(spec.id, spec)
        if _has_baselines(ds):
            for task in task_names(ds):
                base = baseline_of(spec, task)
                baselines.setdefault(base.id, base)
    if not trials and not baselines:
        raise ConfigError(f"{sweep.source}: the grid is empty (include/exclude remove every trial)")
    return list(trials.values()) + [b for k, b in baselines.items() if k not in trials]
