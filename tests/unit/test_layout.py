"""The shape of ``harness/``: no import circle among its modules, no module over 850 lines, every
package's public names importable from its ``__init__``, and the cluster tier's lazy ``__init__``
in step with its modules (and cheap to import)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "harness"
MAX_LINES = 850


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST) -> set[str]:
    """Every harness module ``tree`` imports, at module level or inside a function (an import that
    runs only when called is still an edge of the graph), but not under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("harness")
        ):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else str(node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the harness modules importing it runs: what it imports, and the ``__init__`` of
    each package on the way to them (importing ``a.b.c`` runs ``a`` and ``a.b`` first)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for target in filter(None, map(_resolve, _imported(ast.parse(path.read_text(encoding="utf-8"))))):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                # a module's own packages are running already when it is imported
                if step in MODULES and step != name and not name.startswith(step + "."):
                    edges.add(step)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_the_package_init_edge() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from harness.cluster.run import E2ERun\n"
        "def f():\n    from harness.cluster import kube\n    import harness.common.proc\n"
    )
    assert _imported(tree) == {"harness.cluster.kube", "harness.common.proc"}
    graph = import_graph()
    # importing harness.cluster.kube runs harness/cluster/__init__.py first
    assert "harness.cluster" in graph["harness.upgrade.api"]


def test_no_import_circle_among_the_harness_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_850_lines(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {lines} lines; split it by concern"


PACKAGES = sorted(n for n, p in MODULES.items() if p.name == "__init__.py")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_of_a_package_is_importable_from_it(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not have: {missing}"


def test_the_cluster_packages_lazy_exports_match_its_modules() -> None:
    from harness import cluster

    tree = ast.parse(MODULES["harness.cluster"].read_text(encoding="utf-8"))
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if _is_type_checking(node):
            for item in ast.walk(node):
                if isinstance(item, ast.ImportFrom):
                    typed.update({a.name: str(item.module) for a in item.names})
    assert typed == cluster._WHERE  # what mypy sees is what is loaded
    assert sorted(cluster.__all__) == sorted(typed)
    for name, module in typed.items():
        assert getattr(cluster, name) is getattr(importlib.import_module(module), name), name
    assert "E2ERun" in dir(cluster)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        cluster.nothing  # noqa: B018


def test_building_the_cli_does_not_import_the_cluster_tier() -> None:
    code = (
        "import sys, harness.cli\n"
        "harness.cli.build_parser()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'kubernetes')"
        " or m in ('harness.cluster.run', 'harness.cluster.runner'))\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
