"""The gate's reference: the committed ``DIR/baseline.json`` (file name and format kept
from when it was called the baseline) that a check compares with and ``--update``
writes, and the settings it must have been made with."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from bench.config import SweepSpec
from bench.errors import ConfigError
from bench.gate.plan import COVERAGE_COMMON, COVERAGE_SETTINGS, THREADS, coverage_components
from bench.grid import canonical_json

__all__ = [
    "DEFAULT_REFERENCE",
    "FORMAT",
    "REFERENCE_FILE",
    "VERSION",
    "chosen",
    "machine_warning",
    "read_reference",
    "settings_of",
]

REFERENCE_FILE = "baseline.json"
FORMAT = "mtlbench-check-baseline"
VERSION = 2  # 2: the coverage sweeps (trials keyed 'coverage/<setting>: ...')
DEFAULT_REFERENCE = "results/baselines/check"


def _preset_toml(name: str) -> dict[str, Any]:
    return tomllib.loads((resources.files("bench") / "presets" / f"{name}.toml").read_text("utf-8"))


def settings_of(args: argparse.Namespace, spec: SweepSpec,
              only: tuple[str, ...] | None) -> dict[str, Any]:
    """What the user chose (compared with the reference's) and, for the record, the
    resolved sweep (not compared: a changed default must show up as changed metrics)."""
    return {"preset": args.preset, "preset_toml": _preset_toml(args.preset),
            "overrides": list(args.overrides), "sweep": spec.to_dict(), "threads": THREADS,
            "coverage": _coverage_settings(only)}


def _coverage_settings(only: tuple[str, ...] | None) -> dict[str, Any]:
    """The coverage's choices (compared with the reference's) and, for the record, its
    components (not compared: a new one shows up as a trial missing from the reference)."""
    if only is None:
        return {"only": None}
    weighting, sharing = coverage_components(only)
    return {"only": list(only), "settings": [[name, list(sets)]
                                             for name, sets in COVERAGE_SETTINGS],
            "common": list(COVERAGE_COMMON), "weighting": weighting, "sharing": sharing}


# Preset keys that document the preset and change no trial: not compared.
DOCUMENTATION_KEYS = ("description", "measured_run_s", "measured_on")


def chosen(settings: dict[str, Any]) -> str:
    coverage = {k: v for k, v in (settings.get("coverage") or {}).items()
                if k in ("only", "settings", "common")}
    preset = settings.get("preset_toml")
    if isinstance(preset, dict):
        preset = {k: v for k, v in preset.items() if k not in DOCUMENTATION_KEYS}
    return canonical_json([preset, settings.get("overrides"), coverage])


def read_reference(folder: Path) -> dict[str, Any]:
    """The reference in ``folder``; a ``ConfigError`` (one line) if missing or unusable."""
    path = folder / REFERENCE_FILE
    hint = "create it with `mtlbench check --update`"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no reference directory; {hint}")
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no reference file; {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the reference: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: corrupt reference (not JSON: {err}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an mtlbench check reference; {hint}")
    if data.get("version") != VERSION:
        raise ConfigError(f"{path}: reference version {data.get('version')!r}, this mtlbench "
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
        raise ConfigError(f"{path}: corrupt reference (missing or malformed fields); {hint}")
    return data


def machine_warning(reference: dict[str, Any], machine: dict[str, Any]) -> str | None:
    keys = ("cpu", "torch", "numpy")
    old = reference.get("machine", {})
    diff = [f"{k}: {old.get(k)!r} -> {machine.get(k)!r}" for k in keys if old.get(k) != machine[k]]
    if not diff:
        return None
    return ("warning: reference made on another machine/build (" + "; ".join(diff) +
            "); accuracy may differ beyond the tolerance for that reason alone")
