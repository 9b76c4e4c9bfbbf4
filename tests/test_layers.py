"""The package's import layers: every import (at module level or inside a function) runs down the floors, never up
or sideways, and no two modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "weakseg"
# Floors from the ground up; a module may import from its own package or a lower floor, not from a sibling on its
# floor. Top-level modules (``weakseg/config.py``) count as packages of their own.
FLOORS: list[set[str]] = [
    {"weakseg", "errors"},
    {"utils", "config", "distributed"},
    {"ops", "data", "models"},
    {"losses", "pseudo"},
    {"methods"},
    {"engine"},
    {"bench", "demo"},
    {"cli"},
]
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def module_files() -> dict[str, Path]:
    """``weakseg.x.y`` → its file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (``from p import m`` counts as ``p.m`` when
    ``m`` is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_floor() -> None:
    assert {package_of(module) for module in module_files()} == set(FLOOR)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module imports target`` for every import into another package on the same floor or above."""
    return [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if package_of(target) != package_of(module) and FLOOR[package_of(target)] >= FLOOR[package_of(module)]
    ]


def test_imports_run_down_the_floors() -> None:
    wrong = upward_imports(import_graph())
    assert not wrong, "\n".join(wrong)


def test_no_module_depends_on_itself_through_others() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", ["losses", "methods", "data", "models"])
def test_the_lower_floors_never_reach_the_engine(package: str) -> None:
    graph = import_graph()
    assert not [
        (m, t) for m, t in graph.items() if package_of(m) == package and any(package_of(x) == "engine" for x in t)
    ]


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    graph = {"weakseg.losses.a": {"weakseg.engine.b"}, "weakseg.engine.b": {"weakseg.losses.a"}}
    assert cycles(graph) == [["weakseg.engine.b", "weakseg.losses.a"]]
    assert upward_imports(graph) == ["weakseg.losses.a imports weakseg.engine.b"]
    sideways = {"weakseg.losses.a": {"weakseg.pseudo.c"}, "weakseg.pseudo.c": set()}
    assert upward_imports(sideways) == ["weakseg.losses.a imports weakseg.pseudo.c"] and cycles(sideways) == []
