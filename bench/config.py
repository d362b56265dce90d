"""Sweep specs: TOML files or packaged presets, ``--set`` overrides, and validation.

A sweep spec names the axes (datasets, sharing architectures, weighting
strategies, seeds) and the settings shared by all trials (model size, training).
Everything is validated before anything runs; the first problem becomes a
one-line :class:`~bench.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
import tempfile
import typing
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import pydantic
import tomllib
from pydantic import Field

from bench.data import DATASETS
from bench.errors import ConfigError
from bench.executors import EXECUTORS
from bench.plugins import import_plugins, load_entry_points
from bench.registry import Registry, suggest
from bench.sampling import DEFAULT_SAMPLING, SAMPLING
from bench.spec import (
    AXES,
    MAX_SEED,
    Component,
    ExecutorOptions,
    Filter,
    ModelSettings,
    ProbeSettings,
    SweepSpec,
    TensorBoardSettings,
    TrainSettings,
)
from strategies.sharing import SHARING
from strategies.weighting import WEIGHTING

__all__ = [
    "AXES",
    "Component",
    "SweepSpec",
    "TensorBoardSettings",
    "check_run_dir",
    "load_spec",
    "parse_override",
    "preset_names",
]


class _RawSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    # The default run directory is results/<name>: bounded well below a file name's 255.
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
    description: str = ""
    # Wall time of `mtlbench run` on this sweep as measured (seconds), and how (machine,
    # its load, command): what `mtlbench list presets` shows. In no trial id or manifest.
    measured_run_s: Annotated[float, Field(ge=0)] | None = None
    measured_on: str = ""
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default=[0], min_length=1)
    datasets: list[str | dict[str, Any]] = Field(min_length=1)
    sharing: list[str | dict[str, Any]] = Field(min_length=1)
    weighting: list[str | dict[str, Any]] = Field(min_length=1)
    # Task-sampling policies (multi-input datasets only; see bench.sampling).
    sampling: list[str | dict[str, Any]] = Field(default=["round_robin"], min_length=1)
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    # Training settings swept as axes: {"lr": [1e-3, 1e-2]} runs every trial once per value
    # (the product over keys); each trial's baselines use the same settings.
    train_grid: dict[str, list[Any]] = {}
    probes: ProbeSettings = ProbeSettings()
    tensorboard: TensorBoardSettings = TensorBoardSettings()
    executor: str = "process"  # a name in bench.executors.EXECUTORS
    workers: Annotated[int, Field(ge=1, le=1024)] | None = None
    time_limit_s: Annotated[float, Field(gt=0)] | None = None
    gpus_per_trial: Annotated[float, Field(ge=0, le=64)] = 0.0
    trials_per_gpu: Annotated[int, Field(ge=1, le=64)] = 1
    ray_address: str | None = None
    submitit: dict[str, Any] = {}
    plugins: list[str] = []
    include: list[Filter] = []
    exclude: list[Filter] = []

    @pydantic.field_validator("datasets", "sharing", "weighting", "sampling", "seeds",
                              mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return value if isinstance(value, list) else [value]


def preset_names() -> list[str]:
    folder = resources.files("bench") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None


def _plugin_paths(raw: dict[str, Any], path: str | Path | None) -> list[str]:
    """Plugin entries with ``.py`` paths made absolute, relative to the sweep file."""
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        return plugins  # the model validation below reports the type error
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    return [str((base / p).resolve()) if p.endswith(".py") else p for p in plugins]


def _read_source(path: str | Path | None, preset: str | None) -> tuple[dict[str, Any], str]:
    if path is not None and preset is not None:
        raise ConfigError("give either a sweep file or --preset, not both")
    if preset is not None:
        names = preset_names()
        if preset not in names:
            raise ConfigError(
                f"unknown preset '{preset}'{suggest(preset, names)}; known: {', '.join(names)}"
            )
        text = (resources.files("bench") / "presets" / f"{preset}.toml").read_text("utf-8")
        return _read_toml(text, f"preset '{preset}'"), f"preset '{preset}'"
    if path is None:
        raise ConfigError("no sweep given: pass a sweep file or --preset NAME")
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such sweep file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read sweep file: {err}") from None
    return _read_toml(text, str(p)), str(p)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=VALUE``; VALUE is read as a TOML value, else taken as a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def _apply_override(raw: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set '{text}': no item {part} in '{'.'.join(path[:i])}'")
            node = node[int(part)]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and path[i + 1] != "name":
            # 'weighting = "dwa"' then '--set weighting.temperature=3' is not a path.
            raise ConfigError(f"--set '{text}': '{'.'.join(path[: i + 1])}' is not a table")
        node = child
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set '{text}': no item {last} in '{'.'.join(path[:-1])}'")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set '{text}': '{'.'.join(path[:-1])}' is not a table")


def _format_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "list[str]", "list[int]", "int", "dict[str,any]", "function-after"}:
            continue  # pydantic union branch names, not user keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 300-character name stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _fields_at(model: type[pydantic.BaseModel], loc: Iterable[Any]) -> list[str]:
    """The keys of the (nested) settings table that ``loc`` points into; [] if not a table
    of fixed keys."""

    def table(annotation: Any) -> type[pydantic.BaseModel] | None:
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            return annotation
        # list[Filter], Optional[...]: the model inside
        return next((m for a in typing.get_args(annotation) if (m := table(a))), None)

    current: type[pydantic.BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, str) and part in current.model_fields:
            current = table(current.model_fields[part].annotation)
        # other parts (list indices, pydantic's union branch names) stay in the table
    return sorted(current.model_fields) if current is not None else []


def _component(
    entry: str | dict[str, Any], registry: Registry, key: str, source: str
) -> Component:
    if isinstance(entry, str):
        name, params = entry, {}
    else:
        params = dict(entry)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{source}: {key}: needs a 'name' (a string)")
    try:
        resolved = registry.resolve(name, params)
    except ConfigError as err:
        raise ConfigError(f"{source}: {key}: {err}") from None
    return Component(name, resolved)


def _train_variants(
    parsed: _RawSpec, raw_train: dict[str, Any], source: str
) -> tuple[TrainSettings, ...]:
    """Every combination of ``train_grid`` applied to ``train``, each validated."""

    grid = parsed.train_grid
    fields = list(TrainSettings.model_fields)
    for key, values in grid.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: train_grid.{key}: not a training setting{suggest(key, fields)}"
            )
        if not values:
            raise ConfigError(f"{source}: train_grid.{key}: needs at least one value")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{source}: train_grid.{key}: contains duplicates")
    if not grid:
        return (parsed.train,)
    variants = []
    for combo in itertools.product(*grid.values()):
        settings = {**raw_train, **dict(zip(grid, combo, strict=True))}
        try:
            variants.append(TrainSettings.model_validate(settings))
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            key = _format_loc(first["loc"])
            raise ConfigError(
                f"{source}: train_grid.{key}: {first['msg']} (got {first['input']!r})"
            ) from None
    return tuple(variants)


def _check_duplicate_components(spec: SweepSpec, source: str) -> None:
    """An entry listed twice (same name, same resolved hyperparameters) is an error, as
    a repeated seed is: the grid would silently hold its trials once."""

    for key, components in (("datasets", spec.datasets), ("sharing", spec.sharing),
                             ("weighting", spec.weighting), ("sampling", spec.sampling)):
        seen: dict[str, int] = {}
        for i, c in enumerate(components):
            ident = json.dumps([c.name, c.params], sort_keys=True, default=repr)
            if ident in seen:
                raise ConfigError(
                    f"{source}: {key}[{i}]: '{c.name}' is listed twice (as {key}[{seen[ident]}])"
                    " with the same parameters; remove one, or give them different ones")
            seen[ident] = i


def _check_filter_names(spec: SweepSpec, source: str) -> None:
    present = {
        "dataset": [c.name for c in spec.datasets],
        "sharing": [c.name for c in spec.sharing],
        "weighting": [c.name for c in spec.weighting],
        "sampling": [c.name for c in spec.sampling],
    }
    for kind, filters in (("include", spec.include), ("exclude", spec.exclude)):
        for i, flt in enumerate(filters):
            for axis, names in present.items():
                for value in flt.values(axis) or []:
                    if value not in names:
                        raise ConfigError(
                            f"{source}: {kind}[{i}].{axis}: '{value}' is not in the sweep's "
                            f"{axis} axis{suggest(value, names)}"
                        )
            for seed in flt.values("seed") or []:
                if seed not in spec.seeds:
                    raise ConfigError(
                        f"{source}: {kind}[{i}].seed: {seed} is not one of the sweep's seeds "
                        f"({', '.join(map(str, spec.seeds))})")


def check_run_dir(out: str | Path) -> None:
    """Refuse an ``--out`` that cannot become this sweep's run directory, before anything
    is written: a name the file system cannot hold, a place where nothing can be created
    (read-only, ``/proc``), or an existing folder that is not a run directory.

    Writability is probed with an unnamed temporary file (``O_TMPFILE`` where the file
    system has it), so the check leaves nothing behind and also holds for root."""

    def exists(p: Path) -> bool:
        try:
            return p.exists()
        except OSError:  # a name too long to look up
            return False

    path = Path(out)
    name_max = 255
    existing = path
    while not exists(existing) and existing != existing.parent:
        existing = existing.parent
    if exists(existing) and not existing.is_dir():
        raise ConfigError(f"--out {path}: {existing} exists and is not a directory")
    with contextlib.suppress(OSError, ValueError):
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    long = next((p for p in path.parts if len(os.fsencode(p)) > name_max), None)
    if long is not None:
        raise ConfigError(f"--out {path}: the name '{long[:40]}...' is longer than the file "
                          f"system allows ({name_max} bytes)")
    # A folder holding only a manifest being written is a concurrent sweep creating it.
    being_created = (path / "manifest.json").exists() or all(
        p.name.startswith(".manifest.json.") and p.name.endswith(".tmp")
        for p in path.iterdir()) if existing == path else True
    if existing == path and not being_created:
        raise ConfigError(f"--out {path}: an existing folder that is not a run directory (no "
                          "manifest.json); choose a new or empty folder")
    for folder in (existing, path / "trials"):
        if not folder.is_dir():
            continue
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            if err.errno == errno.ENOENT:  # /proc and the like: no files can be made there
                reason = "no files can be created there"
            raise ConfigError(f"--out {path}: cannot write in {folder}: {reason}") from None


def _executor_name(name: str, source: str) -> str:
    try:
        EXECUTORS.get(name)
    except ConfigError as err:
        raise ConfigError(f"{source}: executor: {err}") from None
    return name


def load_spec(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: Iterable[str] = (),
) -> SweepSpec:
    """Read, override and validate a sweep spec. Raises ``ConfigError`` on any problem."""
    raw, source = _read_source(path, preset)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(raw, keys, value, text)
    if "plugins" in raw:
        raw["plugins"] = _plugin_paths(raw, path)
        if isinstance(raw["plugins"], list) and all(isinstance(p, str) for p in raw["plugins"]):
            try:
                import_plugins(raw["plugins"])
            except ConfigError as err:
                raise ConfigError(f"{source}: plugins: {err}") from None
    load_entry_points()
    try:
        parsed = _RawSpec.model_validate(raw)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = _format_loc(first["loc"])
        if first["type"] == "extra_forbidden":  # a misspelt key: say which ones exist
            key, known = str(first["loc"][-1]), _fields_at(_RawSpec, first["loc"][:-1])
            hint = suggest(key, known) or (f" (known: {', '.join(known)})" if known else "")
            raise ConfigError(f"{source}: {where}: unknown key{hint}") from None
        got = f" (got {_short(first['input'])})" if first["type"] != "missing" else ""
        raise ConfigError(f"{source}: {where}: {first['msg']}{got}") from None

    spec = SweepSpec(
        name=parsed.name,
        description=parsed.description,
        source=source,
        seeds=tuple(parsed.seeds),
        datasets=tuple(
            _component(e, DATASETS, f"datasets[{i}]", source) for i, e in enumerate(parsed.datasets)
        ),
        sharing=tuple(
            _component(e, SHARING, f"sharing[{i}]", source) for i, e in enumerate(parsed.sharing)
        ),
        weighting=tuple(
            _component(e, WEIGHTING, f"weighting[{i}]", source)
            for i, e in enumerate(parsed.weighting)
        ),
        sampling=tuple(
            _component(e, SAMPLING, f"sampling[{i}]", source)
            for i, e in enumerate(parsed.sampling)
        ),
        model=parsed.model,
        train=parsed.train,
        probes=parsed.probes,
        executor=ExecutorOptions(
            kind=_executor_name(parsed.executor, source),
            workers=parsed.workers,
            time_limit_s=parsed.time_limit_s,
            plugins=tuple(parsed.plugins),
            ray_address=parsed.ray_address,
            gpus_per_trial=parsed.gpus_per_trial,
            trials_per_gpu=parsed.trials_per_gpu,
            submitit=dict(parsed.submitit),
        ),
        plugins=tuple(parsed.plugins),
        include=tuple(parsed.include),
        exclude=tuple(parsed.exclude),
        train_variants=_train_variants(parsed, dict(raw.get("train", {})), source),
        train_grid=dict(parsed.train_grid),
        tensorboard=parsed.tensorboard,
    )
    default_sampling = Component(DEFAULT_SAMPLING, SAMPLING.resolve(DEFAULT_SAMPLING, {}))
    spec = dataclasses.replace(spec, sampling_given=spec.sampling != (default_sampling,))
    for axis, values in (("seeds", spec.seeds),):
        if len(set(values)) != len(values):
            raise ConfigError(f"{source}: {axis}: contains duplicates")
    _check_duplicate_components(spec, source)
    _check_filter_names(spec, source)
    target = spec.model.match_params
    if isinstance(target, str) and target not in SHARING:
        raise ConfigError(
            f"{source}: model.match_params: unknown sharing '{target}'"
            f"{suggest(target, SHARING.names())}"
        )
    return spec
