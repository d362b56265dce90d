"""Name -> component registries with typed, validated hyperparameters.

A component is a class or function. Its hyperparameters are its keyword-only
parameters, with type annotations (``Annotated[float, Field(gt=0)]`` for ranges)
and defaults; positional parameters are context the harness passes in (the
tasks, the input shape, ...). Validation reuses pydantic so that wrong types and
out-of-range values give precise messages.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_type_hints

import pydantic

from bench.errors import ConfigError

__all__ = ["HyperParam", "Registry", "suggest"]

T = TypeVar("T", bound=Callable[..., Any])
# Packages whose components are built in; any other module registered through a plugin.
_OWN_PACKAGES = ("bench", "strategies")
_IMMUTABLE = (bool, int, float, str, type(None))


def suggest(name: str, choices: list[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class HyperParam:
    """One hyperparameter of a registered component."""

    name: str
    annotation: Any
    default: Any


@functools.cache
def _signature(obj: Callable[..., Any]) -> tuple[tuple[HyperParam, ...], str | None]:
    """Hyperparameters of a component and the first one without a default (or None).

    Cached per component object: type hints and signatures cost about 0.5 ms, and a
    10,000-trial run asks for them several times per trial. ``Registry.register`` and
    ``unregister`` clear it (cheap: registration happens at import).
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    hints = get_type_hints(target, include_extras=True)
    params = []
    for p in inspect.signature(target).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            return (), p.name
        params.append(HyperParam(p.name, hints.get(p.name, Any), p.default))
    return tuple(params), None


class Registry(Generic[T]):
    """Registry of one kind of component (``weighting``, ``sharing``, ``dataset``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._models: dict[str, type[pydantic.BaseModel]] = {}
        self._defaults: dict[str, dict[str, Any]] = {}  # resolve(name, {}) of each name

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            self._models.pop(name, None)
            self._defaults.pop(name, None)
            _signature.cache_clear()
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and interactive sessions)."""
        self._items.pop(name, None)
        self._models.pop(name, None)
        self._defaults.pop(name, None)
        _signature.cache_clear()

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{suggest(name, self.names())}; "
                f"known: {', '.join(self.names())}"
            ) from None

    def is_builtin(self, name: str) -> bool:
        """Registered by the project itself (not by a plugin)."""
        module = getattr(self._items.get(name), "__module__", None) or ""
        return module.split(".")[0] in _OWN_PACKAGES

    def describe(self, name: str) -> str:
        """``kind 'name'``, plus the file or module of a component that a plugin
        registered (so that an error in it points at the user's code)."""
        module = getattr(self._items.get(name), "__module__", None) or ""
        if not module or self.is_builtin(name):
            return f"{self.kind} '{name}'"
        origin = getattr(sys.modules.get(module), "__file__", None) or module
        return f"{self.kind} '{name}' (plugin {origin})"

    def hyperparameters(self, name: str) -> list[HyperParam]:
        """The keyword-only parameters of ``name``, with annotations and defaults."""
        obj = self.get(name)
        try:
            params, missing = _signature(obj)
        except Exception as err:  # e.g. an annotation naming something undefined
            raise ConfigError(f"{self.describe(name)}: cannot read its hyperparameters: "
                              f"{type(err).__name__}: {err}") from None
        if missing:
            raise ConfigError(
                f"{self.describe(name)}: hyperparameter '{missing}' needs a default"
            )
        return list(params)

    def _model(self, name: str) -> type[pydantic.BaseModel]:
        if name not in self._models:
            fields = {h.name: (h.annotation, h.default) for h in self.hyperparameters(name)}
            try:
                self._models[name] = pydantic.create_model(
                    f"{self.kind}_{name}",
                    __config__=pydantic.ConfigDict(extra="forbid", strict=True),
                    **fields,
                )
            except (pydantic.PydanticUserError, TypeError) as err:
                # An annotation pydantic has no validator for (a plugin's own class).
                raise ConfigError(f"{self.describe(name)}: its hyperparameters cannot be "
                                  f"validated: {err}") from None
        return self._models[name]

    def resolve(self, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``params`` for ``name`` and return all hyperparameters, defaults filled in.

        Raises ``ConfigError`` naming the offending key.
        """
        if not params and name in self._defaults:
            # Asked once or more per trial when a run is planned or loaded.
            defaults = self._defaults[name]
            if all(isinstance(v, _IMMUTABLE) for v in defaults.values()):
                return dict(defaults)
            return copy.deepcopy(defaults)
        model = self._model(name)
        known = [h.name for h in self.hyperparameters(name)]
        for key in params:
            if key not in known:
                hint = suggest(key, known) or (
                    f" (known: {', '.join(known)})" if known else " (it takes none)"
                )
                raise ConfigError(f"unknown hyperparameter '{key}' for {self.kind} '{name}'{hint}")
        try:
            validated = model.model_validate(dict(params))
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"{self.kind} '{name}': {key}: {first['msg']} (got {first.get('input')!r})"
            ) from None
        out = validated.model_dump()
        if not params:
            self._defaults[name] = copy.deepcopy(out)
        return out

    def create(self, name: str, *args: Any, **params: Any) -> Any:
        """Instantiate (or call) ``name`` with context ``args`` and validated ``params``."""
        return self.get(name)(*args, **self.resolve(name, params))

    def summary(self, name: str) -> str:
        """First line of the component's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""
