"""User plugins: modules that register their own strategies, architectures or datasets.

Two ways in: a sweep file's ``plugins = ["my_strategies.py"]`` (paths relative to
the sweep file, or importable module names), and installed packages that
declare an entry point in the ``mtlbench.plugins`` group. Worker processes
import the same plugins before running trials.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.errors import ConfigError

__all__ = ["import_plugins", "import_run_plugins", "load_entry_points"]

_loaded: set[str] = set()


def _import_file(path: Path) -> None:
    name = f"mtlbench_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def import_plugins(plugins: Iterable[str]) -> None:
    """Import each plugin once per process: a ``.py`` file path or a module name."""
    for plugin in plugins:
        if plugin in _loaded:
            continue
        try:
            if plugin.endswith(".py"):
                path = Path(plugin)
                if not path.is_file():
                    raise ConfigError(f"plugin {plugin}: no such file")
                _import_file(path)
            else:
                importlib.import_module(plugin)
        except ConfigError:
            raise
        except (Exception, SystemExit) as err:  # sys.exit() in a plugin must not end the run
            reason = f"{type(err).__name__}: {err}"
            raise ConfigError(f"plugin {plugin}: import failed: {reason}") from None
        _loaded.add(plugin)


def load_entry_points() -> None:
    """Import the plugins that installed packages declare (group ``mtlbench.plugins``)."""
    for ep in entry_points(group="mtlbench.plugins"):
        if ep.value not in _loaded:
            ep.load()
            _loaded.add(ep.value)


def import_run_plugins(manifest: dict[str, Any] | None) -> None:
    """Import the plugins of a run's sweep (its manifest's ``sweep.plugins``), so that
    reports label their components like built-in ones (name plus the hyperparameters
    that differ from their defaults). A plugin that no longer imports is named in a note
    on stderr; its components' labels then show every hyperparameter."""
    plugins = ((manifest or {}).get("sweep") or {}).get("plugins") or []
    for plugin in plugins:
        if not isinstance(plugin, str) or plugin in _loaded:
            continue
        try:
            import_plugins([plugin])
        except ConfigError as err:
            print(f"note: {err}; labels of its components show every hyperparameter",
                  file=sys.stderr)
            _loaded.add(plugin)  # noted once per process
