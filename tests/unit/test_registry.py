"""Registry: hyperparameters read once per component (cached), errors naming the component."""

from __future__ import annotations

import typing
from typing import Annotated

import pytest
from pydantic import Field

from bench import registry as registry_module
from bench.errors import ConfigError
from bench.registry import Registry


class Opaque:
    """A type pydantic knows no validator for."""


@pytest.fixture
def hint_calls(monkeypatch) -> list[object]:
    """Every get_type_hints call the registry makes (what made planning slow)."""
    calls: list[object] = []

    def counting(obj, *args, **kwargs):
        calls.append(obj)
        return typing.get_type_hints(obj, *args, **kwargs)

    monkeypatch.setattr(registry_module, "get_type_hints", counting)
    registry_module._signature.cache_clear()
    return calls


def test_hyperparameters_are_read_once_per_component(hint_calls):
    reg: Registry = Registry("thing")

    @reg.register("a")
    class A:
        """A."""

        def __init__(self, size: int, *, lr: Annotated[float, Field(gt=0)] = 0.1,
                     steps: int = 3) -> None:
            pass

    for _ in range(100):
        assert [(h.name, h.default) for h in reg.hyperparameters("a")] == [
            ("lr", 0.1), ("steps", 3)]
        reg.resolve("a", {"steps": 4})
        reg.resolve("a", {})
    assert len(hint_calls) == 1

    # Registering clears the cache: a component registered anew is read anew.
    @reg.register("b")
    def b(*, width: int = 8) -> None:
        """B."""

    assert [h.name for h in reg.hyperparameters("b")] == ["width"]
    reg.hyperparameters("a")
    assert len(hint_calls) == 3


def test_resolved_defaults_are_fresh_copies():
    reg: Registry = Registry("thing")

    @reg.register("c")
    def c(*, widths: list[int] = [4, 4], scale: float = 1.0) -> None:  # noqa: B006
        """C."""

    first = reg.resolve("c", {})
    first["widths"].append(99)
    first["scale"] = 2.0
    assert reg.resolve("c", {}) == {"widths": [4, 4], "scale": 1.0}
    assert reg.resolve("c", {"scale": 3.0}) == {"widths": [4, 4], "scale": 3.0}


def test_component_errors_are_config_errors_naming_it():
    reg: Registry = Registry("thing")

    @reg.register("no_default")
    def no_default(*, c: float) -> None:
        """No default."""

    @reg.register("undefined")
    def undefined(*, c: NotDefinedAnywhere = 1) -> None:  # type: ignore[name-defined]  # noqa: F821
        """An annotation naming nothing."""

    @reg.register("opaque")
    def opaque(*, c: Opaque = Opaque()) -> None:  # noqa: B008
        """An annotation pydantic has no validator for."""

    origin = f"(plugin {__file__})"  # registered outside bench/ and strategies/
    with pytest.raises(ConfigError, match=r"^thing 'no_default' \(plugin .*\): hyperparameter "
                                          r"'c' needs a default$") as info:
        reg.resolve("no_default", {})
    assert origin in str(info.value)
    with pytest.raises(ConfigError, match=r"thing 'undefined' .*cannot read its "
                                          r"hyperparameters: NameError"):
        reg.hyperparameters("undefined")
    with pytest.raises(ConfigError, match=r"thing 'opaque' .*its hyperparameters cannot be "
                                          r"validated"):
        reg.resolve("opaque", {})


def test_built_in_components_are_not_called_plugins():
    from strategies.weighting import WEIGHTING

    assert WEIGHTING.describe("ew") == "weighting 'ew'"
