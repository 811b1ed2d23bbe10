"""The package's shape: no import cycle between modules, and no module too large to read.

Imports are read from the source at module level (imports inside functions are the deliberate way
to load heavy or upper modules late, so they do not count). Imports under ``TYPE_CHECKING`` count for
the cycle test: a type-only import still ties the two modules together for a reader and for mypy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "driftscope"
MAX_LINES = 400  # flower/wrapper.py, engine/lifecycle.py and cli/__init__.py are the largest


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(path: Path, name: str, known: set[str], type_only: bool = True) -> set[str]:
    """driftscope modules imported at module level by ``path`` (module ``name``), with those
    under ``if TYPE_CHECKING:`` when ``type_only``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and (type_only or not _is_type_checking(node)):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def _graph(type_only: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _top_level_imports(path, name, known, type_only) for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path of module names), or None. A package importing its own
    submodules (``pkg/__init__`` -> ``pkg.sub``) is how packages re-export, and a submodule
    importing a sibling through the package is not a cycle Python trips on, so edges from a
    submodule to its own parent package are left out."""
    edges = {
        m: {t for t in targets if not (m.startswith(t + ".") and t != "driftscope")}
        for m, targets in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return [*stack[stack.index(t) :], t]
            if t not in state and (found := dfs(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := dfs(m)):
            return found
    return None


def test_the_import_graph_reader_sees_real_edges():
    graph = _graph()
    assert "driftscope.runfile.schema" in graph["driftscope.runfile.reader"]
    assert "driftscope.engine.events" in graph["driftscope.engine.recorder"]


def test_the_import_graph_reader_sees_type_only_edges():
    graph = _graph()
    assert "driftscope.models.layout" in graph["driftscope.algorithms.base"]
    assert "driftscope.models.layout" not in _graph(type_only=False)["driftscope.algorithms.base"]


def test_no_import_cycle_between_modules_type_only_imports_included():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = _graph()
    graph["driftscope.runfile.schema"] = {
        *graph["driftscope.runfile.schema"],
        "driftscope.runfile.reader",
    }
    cycle = _cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_the_size_limit(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by job"


def test_the_contributing_layout_table_names_every_module():
    """CONTRIBUTING's layout table lists every module: a new module must be placed in it."""
    readme = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    table = readme[readme.index("| stage | modules |") :].split("\n\n")[0]
    missing = []
    for path in _modules().values():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        folder, file = rel.rsplit("/", 1)
        if f"`{rel}`" not in table and not (f"`{folder}/`" in table and f"`{file}`" in table):
            missing.append(rel)
    assert not missing, f"CONTRIBUTING's layout table misses {missing}"
