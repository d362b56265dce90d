"""The import graph: project modules import each other at module level only, downward.

A cycle among module-level imports would only run thanks to the order Python happens
to execute them in; an import inside a function hides a dependency from the reader.
Function-level imports of project modules are allowed only where an optional
dependency (tensorboard, ray, submitit, CUDA tooling) makes importing at the top
impossible or costly for everyone, listed in ``DEFERRED`` with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "strategies")

# module -> project modules it may import inside functions, and why.
DEFERRED: dict[str, dict[str, str]] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts = parts[:-1]
    return ".".join(parts) if parts else None


def _imported(node: ast.AST, module: str, is_package: bool) -> set[str]:
    """Project modules an Import/ImportFrom node brings in."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # ``from package import module`` needs the module (the package is only its
        # parent); ``from module import name`` needs the module.
        names = {f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                 for a in node.names}
    return {m for n in names if (m := _resolve(n)) is not None and m != module}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of ``module``; imports under
    ``if TYPE_CHECKING:`` are for annotations only and count as neither."""
    path = MODULES[module]
    tree = ast.parse(path.read_text("utf-8"))
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (inner if in_function else top).update(_imported(node, module, is_package))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef,
                                                          ast.AsyncFunctionDef)))

    visit(tree, False)
    return top, inner


GRAPH = {m: _imports(m) for m in MODULES}


def _cycle() -> list[str] | None:
    """One cycle of the module-level import graph, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(GRAPH[v][0]):
            if state.get(w) == 1:
                return [*path[path.index(w):], w]
            if w not in state and (found := dfs(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(GRAPH):
        if v not in state and (found := dfs(v)):
            return found
    return None


def test_module_level_imports_have_no_cycle():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_project_imports_inside_functions_are_only_the_listed_deferred_ones():
    hidden = {
        f"{module} imports {target} inside a function"
        for module, (_, inner) in GRAPH.items()
        for target in inner
        if target not in DEFERRED.get(module, {})
    }
    assert not hidden, "\n".join(sorted(hidden))


def test_the_spine_imports_no_component_and_no_stage_above_it():
    """bench.spec and bench.records are the bottom layer; the store reads records
    without the grid, the registries or any component."""
    def reach(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            for w in GRAPH[todo.pop()][0] - seen:
                seen.add(w)
                todo.append(w)
        return seen

    assert reach("bench.spec") <= {"bench"}
    assert reach("bench.records") <= {"bench", "bench.spec"}
    store = reach("bench.store")
    assert not {m for m in store if m.startswith(("strategies", "bench.grid", "bench.data",
                                                  "bench.config", "bench.registry"))}, store
