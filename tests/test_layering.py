"""The package's layering (docs/architecture.md), from an AST import graph of predictor/.

* no import cycle between the modules of ``predictor``;
* ``predictor.core`` imports nothing of the package but ``predictor.config``
  and ``predictor.errors`` (and its own modules);
* nothing in ``predictor`` imports ``bench`` (or ``tests``).

Every import counts, wherever it stands (module level, inside a function,
under ``TYPE_CHECKING``): a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "predictor"
CORE_MAY_IMPORT = frozenset({"predictor.config", "predictor.errors"})
FORBIDDEN_ROOTS = ("bench", "tests")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports (absolute names; a package import names its __init__)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # ``from pkg import module``
                    out.add(sub)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def internal(deps: set[str], known: set[str]) -> set[str]:
    """The package modules among ``deps`` (``a.b.c`` counts as ``a.b`` if only that exists)."""
    out = set()
    for dep in deps:
        parts = dep.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts and parts[0] == "predictor":
            out.add(".".join(parts))
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a list of nodes, or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in sorted(edges[node]):
            if color[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if color[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in sorted(edges):
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def package_edges() -> dict[str, set[str]]:
    g = graph()
    known = set(g)
    # A module's import of its own package's __init__ is how Python loads it,
    # not a dependency of the design: left out of the cycle check.
    return {
        name: {d for d in internal(deps, known) if d != name and not name.startswith(d + ".")}
        for name, deps in g.items()
    }


def test_the_graph_sees_imports_of_every_form(tmp_path: Path) -> None:
    """The parser itself: absolute, relative, ``from pkg import module``, deferred."""
    known = {"predictor.a", "predictor.b", "predictor.pkg", "predictor.pkg.m", "predictor.c"}
    src = (
        "import predictor.a\n"
        "from . import b\n"
        "from .pkg import m\n"
        "def f():\n"
        "    from predictor import c\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(src)
    deps = imports_of("predictor.probe", path, known)
    assert internal(deps, known) == known
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(package_edges())
    assert cycle is None, " -> ".join(cycle or [])


def test_core_imports_only_config_and_errors() -> None:
    edges = package_edges()
    bad = {
        (name, dep)
        for name, deps in edges.items()
        if name == "predictor.core" or name.startswith("predictor.core.")
        for dep in deps
        if not (dep == "predictor.core" or dep.startswith("predictor.core."))
        and dep not in CORE_MAY_IMPORT
        and dep != "predictor"
    }
    assert not bad, sorted(bad)


@pytest.mark.parametrize("root", FORBIDDEN_ROOTS)
def test_predictor_never_imports_bench_or_tests(root: str) -> None:
    bad = {
        (name, dep)
        for name, deps in graph().items()
        for dep in deps
        if dep == root or dep.startswith(root + ".")
    }
    assert not bad, sorted(bad)
