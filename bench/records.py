"""What a run directory holds, as types: trial records and speed records.

A record is written once, by the process that ran the trial, and read by the
store, the report, ``compare`` and the gate. Both kinds carry a
``schema_version``; a record from before versions existed (schema 1) is upgraded
in memory when read (:func:`upgrade_trial`), so run directories written by earlier
releases still load, resume and report. Nothing here knows the grid or the
registries: a record holds what reading it needs (its baselines' ids, its labels).

Schema history:

- 1: no ``schema_version``; baselines were recomputed from the spec at read time and
  labels from the registries.
- 2: ``schema_version``, ``baselines`` (task -> trial id) and ``labels``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic

from bench.spec import (
    BASELINE_SHARING,
    BASELINE_WEIGHTING,
    Component,
    Labels,
    TrialSpec,
    component_label,
    short_hash,
)

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "EpochEntry",
    "SpeedRecord",
    "TrialRecord",
    "TrialTiming",
    "upgrade_trial",
    "v1_labels",
]

SCHEMA_VERSION = 2
Status = Literal["ok", "diverged", "oom", "timeout", "error"]
STATUSES: tuple[str, ...] = ("ok", "diverged", "oom", "timeout", "error")
# Scores of one split: task -> metric -> value (None where a metric is undefined).
SplitMetrics = dict[str, dict[str, float | None]]

_OPEN = pydantic.ConfigDict(extra="allow", frozen=True)  # later fields survive a read


class TrialTiming(pydantic.BaseModel):
    """A trial's clock (``bench.timing.trial_timing``): set-up and the first (warm-up)
    epoch are recorded apart and left out of ``step_s``, ``samples_per_s`` and
    ``trial_s``; ``step_spread`` is the IQR / median of the per-epoch step times."""

    model_config = _OPEN
    setup_s: float | None = None
    warmup_s: float | None = None
    warmup_steps: int | None = None
    train_s: float | None = None
    steps: int | None = None
    step_s: float | None = None
    step_spread: float | None = None
    epoch_step_s: list[float] = []
    samples_per_s: float | None = None
    trial_s: float | None = None


class EpochEntry(pydantic.BaseModel):
    """One epoch of a trial's history: mean training loss per task, validation scores,
    training seconds so far and (strategies with task weights) the mean weights."""

    model_config = _OPEN
    epoch: int
    train_loss: dict[str, float | None]
    val: SplitMetrics
    seconds: float
    weights: dict[str, float | None] | None = None


class TrialRecord(pydantic.BaseModel):
    """One trial's result as ``trials/<id>.json`` holds it.

    Every status has ``id``, ``spec`` (its identity), ``status``, ``error`` and
    ``finished_at``; ``ok`` records add the scores of the selected checkpoint
    (``metrics``: split -> task -> metric), ``history``, sizes, probes and ``timing``;
    ``diverged`` ones the epoch and step; ``error``/``oom`` a ``traceback``."""

    model_config = _OPEN
    schema_version: int = SCHEMA_VERSION
    id: str
    spec: TrialSpec
    status: Status
    error: str | None = None
    baselines: dict[str, str] = {}
    labels: Labels
    finished_at: str | None = None
    wall_s: float | None = None
    metrics: dict[str, SplitMetrics] = {}
    best_epoch: int | None = None
    history: list[EpochEntry] = []
    tasks: list[str] = []
    parameters: int | None = None
    shared_parameters: int | None = None
    flops_per_sample: int | None = None
    architecture_stats: dict[str, Any] = {}
    strategy_stats: dict[str, Any] = {}
    probes: dict[str, Any] = {}
    timing: TrialTiming | None = None
    env: dict[str, Any] = {}
    traceback: str | None = None
    diverged_epoch: int | None = None
    diverged_step: int | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _spec(cls, data: Any) -> Any:
        """The spec read from its identity, with the record's baselines and labels."""
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            message = {**data["spec"], "baselines": data.get("baselines"),
                       "labels": data.get("labels")}
            data = {**data, "spec": TrialSpec.from_message(message)}
        return data

    @pydantic.model_validator(mode="after")
    def _ok_has_metrics(self) -> TrialRecord:
        if self.status == "ok" and not self.metrics:
            raise ValueError("'ok' record without metrics")
        return self

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON (what the store writes)."""
        out = self.model_dump(exclude={"spec"})  # python mode keeps NaN scores as NaN
        out["spec"] = self.spec.identity()
        return out

    @classmethod
    def of(cls, spec: TrialSpec, status: Status, **fields: Any) -> TrialRecord:
        """A record of ``spec``: its id, identity, baselines and labels, plus ``fields``."""
        labels = spec.labels or _plain_labels(spec.identity())
        return cls(id=spec.id, spec=spec, status=status, baselines=dict(spec.baselines),
                   labels=labels, **fields)


_LABELLED = ("dataset", "sharing", "weighting", "sampling")


def _plain_labels(spec: dict[str, Any], shown: dict[tuple[str, str], set[str]] | None = None
                  ) -> Labels:
    """Labels without the registries: names plus the hyperparameters in ``shown`` (axis,
    name) -> keys, or all of them without ``shown``."""
    def label(key: str) -> str:
        c = Component.from_dict(spec[key])
        if shown is not None:
            keep = shown.get((key, c.name), set())
            c = Component(c.name, {k: v for k, v in c.params.items() if k in keep})
        return component_label(c)

    return Labels(dataset=label("dataset"), sharing=label("sharing"),
                  weighting=label("weighting"),
                  sampling=label("sampling") if spec.get("sampling") else None)


def v1_labels(raws: list[dict[str, Any]]) -> dict[str, Labels]:
    """Labels of schema-1 records (which hold none), from the run alone: a component's
    name plus the hyperparameters that differ between the run's components of that name
    (``ls(weights=[1, 0])`` beside ``ls(weights=[0, 1])``; a lone ``cagrad`` stays bare)."""
    values: dict[tuple[str, str], dict[str, set[str]]] = {}
    for raw in raws:
        spec = raw.get("spec") or {}
        for key in _LABELLED:
            c = spec.get(key)
            if isinstance(c, dict) and isinstance(c.get("params"), dict):
                seen = values.setdefault((key, c.get("name", "")), {})
                for k, v in c["params"].items():
                    seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    shown = {axis: {k for k, vs in params.items() if len(vs) > 1}
             for axis, params in values.items()}
    out = {}
    for raw in raws:
        try:
            out[raw["id"]] = _plain_labels(raw["spec"], shown)
        except (KeyError, TypeError, pydantic.ValidationError):
            continue  # a damaged record: the store names it when it validates
    return out


def _v1_baselines(raw: dict[str, Any]) -> dict[str, str]:
    """The baseline ids of a schema-1 record, by the rule of schema 1: architecture
    ``stl`` and weighting ``ew`` (both without hyperparameters then), the same data,
    training and seed, the sweep's own widths, one task, no probes, no sampling."""
    spec = raw["spec"]
    if spec["sharing"]["name"] == BASELINE_SHARING and spec.get("tasks") is not None:
        return {}
    if raw.get("status") != "ok":
        return {}
    model = dict(spec["model"])
    model.pop("matched_parameters", None)
    model.update(model.pop("reference", {}))
    out = {}
    for task in raw.get("metrics", {}).get("test", {}):
        base = {"dataset": spec["dataset"],
                "sharing": {"name": BASELINE_SHARING, "params": {}},
                "weighting": {"name": BASELINE_WEIGHTING, "params": {}},
                "seed": spec["seed"], "model": model, "train": spec["train"],
                "tasks": [task], "probes": {}}
        out[task] = short_hash(base)
    return out


def upgrade_trial(raw: dict[str, Any], labels: dict[str, Labels] | None = None) -> dict[str, Any]:
    """``raw`` (a record as read from JSON) in the current schema. Schema-1 records get
    their baselines by the schema-1 rule and ``labels[id]`` when given (else names plus
    their non-empty hyperparameters)."""
    version = raw.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return raw
    if version != 1:
        raise ValueError(f"schema_version {version!r}: this mtlbench reads 1 to "
                         f"{SCHEMA_VERSION}; upgrade mtlbench")
    out = dict(raw)
    out["schema_version"] = SCHEMA_VERSION
    out["baselines"] = _v1_baselines(raw)
    given = (labels or {}).get(raw.get("id", ""))
    out["labels"] = (given or _plain_labels(raw["spec"])).model_dump()  # KeyError: damaged
    return out


class SpeedRecord(pydantic.BaseModel):
    """One cell of ``mtlbench speed`` as ``speed/<cell_id>.json`` holds it: the step and
    its phases timed (``{median_s, iqr_s}`` each) on one machine; ``ratio_to_ew`` is the
    step's median over ``ew``'s in the same run. See ``bench.speed.make_record``."""

    model_config = _OPEN
    schema_version: int = SCHEMA_VERSION
    kind: Literal["speed"] = "speed"
    cell_id: str
    label: str
    strategy: str
    strategy_params: dict[str, Any] = {}
    engine: str | None = None
    sharing: str
    sharing_params: dict[str, Any] = {}
    num_tasks: int
    batch_size: int
    width: int
    hidden: list[int] = []
    input_shape: list[int] = []
    train: dict[str, Any] = {}
    seed: int = 0
    device: str
    repeats: int
    warmup: int = 0
    steps_per_repeat: int = 1
    timer: str = ""
    phases: dict[str, dict[str, float | None]]
    phase_share: dict[str, float | None] = {}
    step: dict[str, Any]
    samples_per_s: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    ratio_to_ew: float | None = None
    machine: dict[str, Any] = {}
    created_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def dumps(record: TrialRecord | SpeedRecord) -> str:
    """The record's file content."""
    return json.dumps(record.to_dict(), indent=1, sort_keys=True, allow_nan=True)
