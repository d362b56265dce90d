"""The typed spine: what a sweep, a trial and an executor are, as types.

Everything else imports downward from here (``config`` parses into these types,
``grid`` produces :class:`TrialSpec` objects, executors and trials consume them);
it imports only the standard library and pydantic, so it can never be part of an
import cycle.

A trial's id is the sha256 of its identity (:meth:`TrialSpec.identity`) as canonical
JSON: the resolved components, seed, model, training settings, tasks and probes.
Where the trial logs, which baselines it is measured against and how the report
labels it travel with the spec but are never part of the id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

__all__ = [
    "AXES",
    "BASELINE_SHARING",
    "BASELINE_WEIGHTING",
    "MAX_SEED",
    "MAX_WEIGHT_DECAY",
    "Component",
    "ExecutorOptions",
    "Filter",
    "Labels",
    "ModelSettings",
    "ProbeSettings",
    "SweepSpec",
    "TensorBoardSettings",
    "TrainSettings",
    "TrialModel",
    "TrialSpec",
    "canonical_json",
    "component_label",
    "short_hash",
]

AXES = ("dataset", "sharing", "weighting", "seed", "sampling")
#: What a single-task baseline trains with: its own network, one task, equal weighting.
BASELINE_SHARING = "stl"
BASELINE_WEIGHTING = "ew"

_STRICT = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)
# Seeds are 0 .. 2**32 - 1: what torch.manual_seed (< 2**64) and NumPy's legacy
# RandomState (< 2**32) that plugins may use both accept.
MAX_SEED = 2**32 - 1
MAX_WEIGHT_DECAY = 10.0


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of ``obj`` that ids hash (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj``'s canonical JSON: a trial's or cell's id."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


class ModelSettings(pydantic.BaseModel):
    """Network size shared by every architecture in the sweep."""

    model_config = _STRICT
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default=[64, 64], min_length=1)
    tower: list[Annotated[int, Field(ge=1, le=65536)]] = []
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    backbone: Literal["mlp", "cnn"] = "mlp"
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default=[16, 32], min_length=1)
    # Equal capacity: rescale each architecture's widths to the parameter count of this
    # architecture at the widths above (a name), or to this count (an integer).
    match_params: str | Annotated[int, Field(ge=1)] | None = None


class TrialModel(ModelSettings):
    """A trial's network: the sweep's :class:`ModelSettings`, with the widths the grid
    chose when ``match_params`` rescaled them (``matched_parameters`` is the target
    count, ``reference`` the sweep's own widths, which the baselines keep)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    matched_parameters: int | None = None
    reference: dict[str, list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump()
        for key in ("matched_parameters", "reference"):
            if out[key] is None:  # absent unless match_params rescaled (ids predate them)
                del out[key]
        return out

    def unmatched(self) -> TrialModel:
        """The sweep's own widths (what a single-task baseline trains)."""
        if self.reference is None:
            return self.model_copy(update={"matched_parameters": None})
        return self.model_copy(update={**self.reference, "matched_parameters": None,
                                       "reference": None})


class TrainSettings(pydantic.BaseModel):
    """Training budget and optimizer, identical for every trial (baselines included)."""

    model_config = _STRICT
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3
    # Bounded like lr: beyond it every parameter is wiped out in a step or two (1e308
    # overflowed to NaN in every trial); a typo, refused before anything runs.
    weight_decay: Annotated[float, Field(ge=0.0, le=MAX_WEIGHT_DECAY)] = 0.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    epochs: Annotated[int, Field(ge=1, le=100_000)] = 10
    # Multi-input data: samples per task per step on average (a step holds batch_size * T).
    batch_size: Annotated[int, Field(ge=1)] = 128
    eval_batch_size: Annotated[int, Field(ge=1)] = 4096
    engine: Literal["loop", "vmap", "gramian", "autogram", "auto", "rep"] = "loop"
    # Gradient-based strategies: what trains the task heads. "method": the strategy's own
    # default (its official code); "own": each task's own loss gradient (torchjd's
    # mtl_backward); "weighted": w_t times it, with the strategy's task weights.
    heads: Literal["method", "own", "weighted"] = "method"
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps|auto)$")] = "cpu"
    # CUDA only: deterministic kernels (torch.use_deterministic_algorithms); slower.
    deterministic: bool = False
    # CPU intra-op threads of each trial. Part of the trial because CPU results depend on
    # it (reduction order); executors run cores // threads trials at once.
    threads: Annotated[int, Field(ge=1, le=256)] = 1

    def to_dict(self) -> dict[str, Any]:
        """The settings as a trial's identity holds them. ``heads`` is left out at its
        default, so trial ids (and resumable run directories) from before it existed hold."""
        out = self.model_dump()
        if out["heads"] == "method":
            del out["heads"]
        return out


ProbeEvery = Annotated[int, Field(ge=0)] | Literal["auto"]


class ProbeSettings(pydantic.BaseModel):
    """Training-time probes of multi-task trials: every N steps (0 = off), or ``"auto"``:
    about ``bench.probes.AUTO_PROBES`` (20) probes per trial, every
    max(1, total steps // 20) steps, whatever the trial's length."""

    model_config = _STRICT
    conflict_every: ProbeEvery = 0
    affinity_every: ProbeEvery = 0

    def to_dict(self) -> dict[str, Any]:
        """The probes that are on (a trial without probes has ``{}`` in its identity)."""
        return {k: v for k, v in self.model_dump().items() if v}


class TensorBoardSettings(pydantic.BaseModel):
    """TensorBoard event files of ``mtlbench run`` (``bench.tensorboard``). Not part of any
    trial id, like the executor settings: logging changes no result."""

    model_config = _STRICT
    enabled: bool = True
    # Step scalars (task losses, weights, shared gradient norm, step time) every N steps.
    every: Annotated[int, Field(ge=1, le=1_000_000)] = 10


class Filter(pydantic.BaseModel):
    """A combination pattern: every given axis must match (names, or seeds)."""

    model_config = _STRICT
    dataset: str | list[str] | None = None
    sharing: str | list[str] | None = None
    weighting: str | list[str] | None = None
    seed: int | list[int] | None = None
    sampling: str | list[str] | None = None

    def values(self, axis: str) -> list[Any] | None:
        value = getattr(self, axis)
        if value is None:
            return None
        return value if isinstance(value, list) else [value]

    def matches(self, combo: dict[str, Any]) -> bool:
        return all(
            combo[axis] in allowed
            for axis in AXES
            if (allowed := self.values(axis)) is not None
        )


@dataclass(frozen=True)
class Component:
    """A registered component with its fully resolved hyperparameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Component:
        return cls(d["name"], dict(d["params"]))


def _as_json(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as JSON reads them back (tuples become lists); as given if not JSON."""
    try:
        return json.loads(json.dumps(params))
    except (TypeError, ValueError):
        return dict(params)


def component_label(component: Component, defaults: dict[str, Any] | None = None) -> str:
    """``name`` plus the hyperparameters that differ from ``defaults`` (all of them
    without defaults), e.g. ``cagrad(c=0.9)``. Values are shown as a record's JSON holds
    them (``ls(weights=[1.0, 0.5])``, not the registry's tuple), so a label is the same
    whether computed by the grid or from a record read back."""
    params = _as_json(component.params)
    if defaults is not None:
        defaults = _as_json(defaults)
        params = {k: v for k, v in params.items() if defaults.get(k, object()) != v}
    if not params:
        return component.name
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{component.name}({inner})"


class Labels(pydantic.BaseModel):
    """How reports name a trial's components: the name plus the hyperparameters that
    differ from the registry's defaults, computed once by the grid (which knows the
    registries) and kept in the record, so reading a run needs no registry."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    dataset: str
    sharing: str
    weighting: str
    sampling: str | None = None


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines one trial's result, plus what travels with it.

    The identity (``dataset`` .. ``sampling``) is what :attr:`id` hashes. ``baselines``
    (task -> id of the single-task trial it is measured against), ``labels`` and
    ``tensorboard`` are set by the grid and ``run``; they change no result."""

    dataset: Component
    sharing: Component
    weighting: Component
    seed: int
    model: TrialModel
    train: TrainSettings
    tasks: tuple[str, ...] | None = None  # None: all of the dataset's tasks
    probes: ProbeSettings = field(default_factory=ProbeSettings)  # training-time probes
    # Task-sampling policy; multi-task trials on multi-input data only (None elsewhere,
    # and then absent from the id, so single-input ids do not depend on the axis).
    sampling: Component | None = None
    baselines: dict[str, str] = field(default_factory=dict, compare=False)
    labels: Labels | None = field(default=None, compare=False)
    # Where and how often the trial writes TensorBoard events (``bench.tensorboard``).
    tensorboard: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def is_baseline(self) -> bool:
        """A single-task baseline: the ``stl`` architecture on one task."""
        return self.sharing.name == BASELINE_SHARING and self.tasks is not None

    def identity(self) -> dict[str, Any]:
        """What determines the result, as JSON: what :attr:`id` hashes and records hold
        under ``spec``."""
        out = {
            "dataset": self.dataset.to_dict(),
            "sharing": self.sharing.to_dict(),
            "weighting": self.weighting.to_dict(),
            "seed": self.seed,
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "tasks": list(self.tasks) if self.tasks is not None else None,
            "probes": self.probes.to_dict(),
        }
        if self.sampling is not None:
            out["sampling"] = self.sampling.to_dict()
        return out

    @property
    def id(self) -> str:
        return short_hash(self.identity())

    def to_message(self) -> dict[str, Any]:
        """The spec as JSON for another process: identity plus what travels with it."""
        out = self.identity()
        out["baselines"] = dict(self.baselines)
        out["labels"] = self.labels.model_dump() if self.labels is not None else None
        if self.tensorboard is not None:
            out["tensorboard"] = self.tensorboard
        return out

    @classmethod
    def from_message(cls, d: dict[str, Any]) -> TrialSpec:
        """A spec from :meth:`to_message` (or from a record's ``spec``: its identity)."""
        train = dict(d["train"])
        return cls(
            dataset=Component.from_dict(d["dataset"]),
            sharing=Component.from_dict(d["sharing"]),
            weighting=Component.from_dict(d["weighting"]),
            seed=d["seed"],
            model=TrialModel.model_validate(d["model"]),
            train=TrainSettings.model_validate(train),
            tasks=tuple(d["tasks"]) if d.get("tasks") is not None else None,
            probes=ProbeSettings.model_validate(d.get("probes") or {}),
            sampling=(Component.from_dict(d["sampling"])
                      if d.get("sampling") is not None else None),
            baselines=dict(d.get("baselines") or {}),
            labels=Labels.model_validate(d["labels"]) if d.get("labels") else None,
            tensorboard=d.get("tensorboard"),
        )


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run trials; none of this changes a trial's id or result."""

    kind: str = "process"
    workers: int | None = None
    time_limit_s: float | None = None
    plugins: tuple[str, ...] = ()
    ray_address: str | None = None
    gpus_per_trial: float = 0.0
    trials_per_gpu: int = 1
    submitit: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the axes with resolved components, and shared settings."""

    name: str
    description: str
    source: str
    seeds: tuple[int, ...]
    datasets: tuple[Component, ...]
    sharing: tuple[Component, ...]
    weighting: tuple[Component, ...]
    sampling: tuple[Component, ...]
    model: ModelSettings
    train: TrainSettings
    probes: ProbeSettings
    executor: ExecutorOptions
    plugins: tuple[str, ...]
    include: tuple[Filter, ...]
    exclude: tuple[Filter, ...]
    # One TrainSettings per combination of the train_grid (just ``train`` without one).
    train_variants: tuple[TrainSettings, ...] = ()
    train_grid: dict[str, list[Any]] = field(default_factory=dict)
    # Logging only: left out of to_dict (the manifest), so it never blocks a resume.
    tensorboard: TensorBoardSettings = field(default_factory=TensorBoardSettings)
    # False when the sampling axis is the default policy alone: the manifest then leaves
    # it out, so run directories of sweeps from before the axis stay resumable.
    sampling_given: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The sweep as the manifest records it (what a resume must match)."""
        out = {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "datasets": [c.to_dict() for c in self.datasets],
            "sharing": [c.to_dict() for c in self.sharing],
            "weighting": [c.to_dict() for c in self.weighting],
            "model": self.model.model_dump(),
            "train": self.train.model_dump(),
            "probes": self.probes.model_dump(),
            "plugins": list(self.plugins),
            "include": [f.model_dump(exclude_none=True) for f in self.include],
            "exclude": [f.model_dump(exclude_none=True) for f in self.exclude],
        }
        if self.sampling_given:
            out["sampling"] = [c.to_dict() for c in self.sampling]
        if self.train_grid:
            out["train_grid"] = dict(self.train_grid)
        return out
