"""The README's layout section names every package of ``harness/`` and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _layout_entries() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    (tree,) = re.findall(r"```\n(harness/\n.*?)```", section, flags=re.DOTALL)
    entries, parent = [], ""
    for line in tree.splitlines():
        name = line.split()[0]
        if not line.startswith(" "):
            parent = name if name == "harness/" else ""
        entries.append(name if not line.startswith(" ") else parent + name)
    return entries


def test_every_package_of_harness_is_in_the_layout() -> None:
    listed = set(_layout_entries())
    harness = REPO / "harness"
    packages = {
        f"{path.parent.relative_to(REPO).as_posix()}/"
        for path in harness.rglob("__init__.py")
        if len(path.parent.relative_to(harness).parts) in (1, 2)  # packages and their subpackages
    }
    assert packages <= listed, sorted(packages - listed)


def test_everything_the_layout_names_exists() -> None:
    for entry in _layout_entries():
        assert (REPO / entry).exists(), entry


def _scenario_table() -> dict[str, str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Scenarios\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| .+ \| ([a-z, ]+) \|$", section, flags=re.MULTILINE)
    return dict(rows)


def test_the_scenario_table_lists_the_catalog_and_the_local_tier_says_the_same() -> None:
    from harness.localmesh.tier import LocalTier
    from harness.scenarios import load_catalog

    table = _scenario_table()
    catalog = load_catalog(REPO / "scenarios")
    assert sorted(table) == sorted(catalog.names())
    local = LocalTier()
    for scenario in catalog.scenarios:
        tiers = table[scenario.name].split(", ")
        assert "istiod" in tiers and "kind" in tiers, scenario.name
        assert ("local" in tiers) == (local.skip_reason(scenario) is None), scenario.name
