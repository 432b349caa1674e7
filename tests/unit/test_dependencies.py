"""pyproject.toml's dependencies against what the code imports: no pinned dependency that nothing
imports, and no third-party import that only arrives as some other package's dependency.

The import names come from the code's syntax (``ast``), every ``import`` and ``from ... import``
anywhere in a module (a lazy import counts); which distribution provides a module comes from the
installed metadata (``importlib.metadata.packages_distributions``).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
#: the code the harness ships and runs (tests and bench use the dev dependencies)
SOURCES = ("harness", "apps/relay", "apps/recorder")
FIRST_PARTY = {"harness", "relay", "recorder"}


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
    return _normalise(match.group(1))


def _project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _runtime() -> set[str]:
    return {_requirement_name(r) for r in _project()["dependencies"]}  # type: ignore[attr-defined]


def _optional() -> set[str]:
    extras: dict[str, list[str]] = _project().get("optional-dependencies", {})  # type: ignore[attr-defined, assignment]
    return {_requirement_name(r) for group in extras.values() for r in group}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for every module neither stdlib nor our own."""
    found: dict[str, set[str]] = {}
    for root in SOURCES:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _providers(module: str) -> set[str]:
    return {_normalise(d) for d in packages_distributions().get(module, [])}


def test_the_scan_sees_the_imports_it_judges() -> None:
    """The scan finds what the code is known to import (so an empty scan cannot pass the tests below)."""
    imports = _third_party_imports()
    assert "harness/cluster/kube.py" in imports["kubernetes"]
    assert "harness/cluster/external.py" in imports["docker"]
    assert _providers("yaml") == {"pyyaml"}


def test_every_runtime_dependency_is_imported() -> None:
    imported = {d for module in _third_party_imports() for d in _providers(module)}
    unused = sorted(_runtime() - imported)
    assert not unused, (
        f"pyproject.toml pins {', '.join(unused)}, which nothing in {', '.join(SOURCES)} imports: drop it"
    )


def test_every_third_party_import_is_a_dependency_by_name() -> None:
    declared = _runtime() | _optional()
    missing = {
        module: sorted(files)
        for module, files in _third_party_imports().items()
        if not _providers(module) & declared
    }
    assert not missing, (
        "imported, but no dependency in pyproject.toml provides it (only another package's dependency "
        f"brings it): {missing}"
    )


def test_the_docker_sdk_is_a_runtime_dependency() -> None:
    """The external host (``harness.cluster.external``) runs in ``egress-harness e2e up``, not only
    under the dev tools: the Docker SDK is a dependency of the harness itself."""
    assert "docker" in _runtime()
