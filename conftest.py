"""Root pytest configuration: tiers are markers, and a test's folder decides its tier.

tests/unit -> unit, tests/envoy -> envoy, tests/docker -> docker, tests/netns -> netns, tests/e2e -> e2e. A test may add
more markers itself; the folder's marker is always there so `-m envoy` selects the whole tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The cluster tier's options (--istio-version, --keep-cluster, ...), fixtures and failure diagnostics.
# The installed package already registers this module through its pytest11 entry point of the same
# name (pyproject.toml), and pytest then skips it here: it is registered once. Naming it here keeps the
# plugin where entry points are not loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, or no install).
pytest_plugins = ["harness.pytest_plugin"]

ROOT = Path(__file__).resolve().parent
_TIERS = ("unit", "envoy", "docker", "netns", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
        except ValueError:
            continue
        tier = rel.parts[0] if rel.parts else ""
        if tier in _TIERS:
            item.add_marker(getattr(pytest.mark, tier))
