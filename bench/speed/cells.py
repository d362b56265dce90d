"""Speed cells: one timed configuration each (:class:`SpeedCell`), and the cells of a
sweep spec x the command line's axes (:func:`build_cells`)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import data
from bench.config import Component, SweepSpec
from bench.engine import ENGINES
from bench.errors import ConfigError
from bench.grid import task_names
from bench.registry import suggest
from strategies.sharing import SHARING
from strategies.weighting import WEIGHTING

__all__ = [
    "REFERENCE",
    "SpeedCell",
    "build_cells",
    "default_tasks",
    "scaled_hidden",
    "with_all_strategies",
]

REFERENCE = "ew"  # the strategy every cell's step is compared with (ratio_to_ew)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class SpeedCell:
    """One timed configuration. ``engine`` is None for loss-based strategies."""

    strategy: Component
    engine: str | None
    sharing: Component
    num_tasks: int
    batch_size: int
    width: int
    hidden: tuple[int, ...]
    tower: tuple[int, ...]
    dropout: float
    input_shape: tuple[int, ...]
    train: dict[str, Any]  # optimizer settings (optimizer, lr, weight_decay, momentum[, heads])
    device: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(),
            "engine": self.engine,
            "sharing": self.sharing.to_dict(),
            "num_tasks": self.num_tasks,
            "batch_size": self.batch_size,
            "width": self.width,
            "hidden": list(self.hidden),
            "tower": list(self.tower),
            "dropout": self.dropout,
            "input_shape": list(self.input_shape),
            "train": dict(self.train),
            "device": self.device,
            "seed": self.seed,
        }

    @property
    def id(self) -> str:
        return hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """``strategy[(non-default params)]/engine/sharing/T/B/W``."""
        defaults = _strategy_defaults(self.strategy.name)
        params = ",".join(f"{k}={v}" for k, v in sorted(self.strategy.params.items())
                          if defaults.get(k, object()) != v)
        name = f"{self.strategy.name}({params})" if params else self.strategy.name
        engine = self.engine or "-"
        return (f"{name}/{engine}/{self.sharing.name}/T{self.num_tasks}/B{self.batch_size}"
                f"/W{self.width}")

    @property
    def reference_key(self) -> tuple[Any, ...]:
        """Settings a cell shares with the ``ew`` cell it is compared with."""
        return (_canonical(self.sharing.to_dict()), self.num_tasks, self.batch_size, self.width,
                self.device)


def _strategy_defaults(name: str) -> dict[str, Any]:

    if name not in WEIGHTING:
        return {}
    return {h.name: h.default for h in WEIGHTING.hyperparameters(name)}


def scaled_hidden(hidden: Sequence[int], width: int) -> tuple[int, ...]:
    """``hidden`` scaled so that its first layer has ``width`` units."""
    return tuple(max(1, round(h * width / hidden[0])) for h in hidden)


def _input_shape(spec: SweepSpec) -> tuple[int, ...]:

    ds = spec.datasets[0]
    return tuple(data.load(ds.name, **ds.params).input_shape)


def default_tasks(spec: SweepSpec) -> int:

    return len(task_names(spec.datasets[0]))


def build_cells(
    spec: SweepSpec,
    *,
    engines: Sequence[str] | None = None,
    tasks: Sequence[int] | None = None,
    batch_sizes: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    device: str | None = None,
) -> tuple[list[SpeedCell], list[str]]:
    """The cells of ``spec`` x the given axes, and one note per skipped (incompatible) cell."""

    engines = list(engines) if engines is not None else list(ENGINES)
    for name in engines:
        if name not in ENGINES:
            raise ConfigError(
                f"--engines: unknown engine '{name}'{suggest(name, list(ENGINES))}; "
                f"known: {', '.join(ENGINES)}"
            )
    model = spec.model
    if model.backbone != "mlp":
        raise ConfigError("speed: only the 'mlp' backbone is supported (model.backbone)")
    tasks = list(tasks) if tasks is not None else [default_tasks(spec)]
    batch_sizes = list(batch_sizes) if batch_sizes is not None else [spec.train.batch_size]
    widths = list(widths) if widths is not None else [model.hidden[0]]
    train = spec.train.model_dump()
    optim = {k: train[k] for k in ("optimizer", "lr", "weight_decay", "momentum")}
    if train.get("heads", "method") != "method":  # as trials do (the default keeps cell ids)
        optim["heads"] = train["heads"]
    device_name = device or train["device"]
    input_shape = _input_shape(spec)
    cells: list[SpeedCell] = []
    notes: list[str] = []
    for strategy, sharing in itertools.product(spec.weighting, spec.sharing):
        strategy_cls = WEIGHTING.get(strategy.name)
        sharing_cls = SHARING.get(sharing.name)
        cell_engines: list[str | None]
        if strategy_cls.needs == "jacobian":
            cell_engines = []
            for name in engines:
                try:
                    ENGINES[name]().require_support(strategy_cls, sharing_cls)
                except ValueError as err:
                    notes.append(f"skipped {strategy.name} x {name} x {sharing.name}: {err}")
                    continue
                cell_engines.append(name)
        else:
            cell_engines = [None]
        for engine, t, b, w in itertools.product(cell_engines, tasks, batch_sizes, widths):
            cells.append(
                SpeedCell(
                    strategy=strategy, engine=engine, sharing=sharing, num_tasks=t,
                    batch_size=b, width=w, hidden=scaled_hidden(model.hidden, w),
                    tower=tuple(model.tower), dropout=model.dropout, input_shape=input_shape,
                    train=optim, device=device_name, seed=spec.seeds[0],
                )
            )
    return cells, notes


def with_all_strategies(spec: SweepSpec) -> SweepSpec:
    """``spec`` with every registered strategy (default hyperparameters) as its weighting axis."""

    axis = tuple(Component(n, WEIGHTING.resolve(n, {})) for n in WEIGHTING.names())
    return dataclasses.replace(spec, weighting=axis)
