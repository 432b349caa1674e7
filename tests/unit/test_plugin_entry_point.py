"""The pytest plugin reaches other repositories through the installed package: a ``pytest11`` entry point.

A platform team's repository installs the package and gets the harness's options and fixtures with
no conftest; this repository, whose root conftest also names the plugin, registers it once. The runs
below are real pytest processes of this venv's Python, in a folder outside the checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness.pytest_plugin

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "harness.pytest_plugin"
DISTRIBUTION = "istio-egress-harness"
USAGE_ERROR = 4  # pytest's exit code for a bad command line
SCENARIO = "http-via-egress-gateway"  # the one scenario of the other repository's own catalog

OWN_TEST = '''
"""A test of a repository of its own: no conftest, only the installed package."""


def test_the_harness_plugin_is_there(pytestconfig, upgrade_plan, e2e_results):
    assert pytestconfig.getoption("--istio-version") == "1.29.6"
    assert upgrade_plan is not None
    assert upgrade_plan.describe() == "in-place upgrade 1.29.6 -> 1.30.3"
    assert e2e_results.results == []
'''
OWN_ARGS = (
    "--istio-version",
    "1.29.6",
    "--upgrade-from",
    "1.29.6",
    "--upgrade-to",
    "1.30.3",
    "--upgrade-mode",
    "in-place",
)


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would steer the child pytest (its own settings, this
    session's xdist worker id, the harness's variables, a PYTHONPATH into the checkout)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "EGRESS_HARNESS_")) and key != "PYTHONPATH"
    }
    env.update(extra)
    return env


def _pytest(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env if env is not None else _environment(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _pytest11() -> list[importlib.metadata.EntryPoint]:
    entry_points = importlib.metadata.distribution(DISTRIBUTION).entry_points
    return [ep for ep in entry_points if ep.group == "pytest11"]


@pytest.fixture
def own_repo(tmp_path: Path) -> Path:
    """A repository of its own, outside the checkout, with one test file and no conftest."""
    repo = tmp_path / "platform-repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_egress.py").write_text(OWN_TEST, encoding="utf-8")
    assert not repo.resolve().is_relative_to(REPO)
    return repo


def test_the_installed_distribution_names_the_plugin() -> None:
    (entry_point,) = _pytest11()
    # the name is the module's: the root conftest's pytest_plugins then finds it registered
    assert (entry_point.name, entry_point.value) == (PLUGIN, PLUGIN)
    assert entry_point.load() is harness.pytest_plugin


def test_a_repository_of_its_own_gets_the_options_and_fixtures(own_repo: Path) -> None:
    done = _pytest(own_repo, *OWN_ARGS, "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout
    assert not list(own_repo.rglob("conftest.py"))

    # without the entry point's plugin the same command line is refused: the options are the plugin's
    off = _pytest(own_repo, "-p", f"no:{PLUGIN}", *OWN_ARGS, "tests")
    assert off.returncode == USAGE_ERROR, off.stdout + off.stderr
    assert "unrecognized arguments: --istio-version" in off.stderr


def test_this_session_has_the_plugin_once_under_the_entry_points_name(pytestconfig: pytest.Config) -> None:
    manager = pytestconfig.pluginmanager
    assert manager.get_plugin(PLUGIN) is harness.pytest_plugin
    assert [name for name, plugin in manager.list_name_plugin() if plugin is harness.pytest_plugin] == [
        PLUGIN
    ]
    if not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        # loaded by the entry point (before any conftest), so the root conftest registered nothing
        loaded_by = [dist.project_name for plugin, dist in manager.list_plugin_distinfo()]
        assert DISTRIBUTION in loaded_by


@pytest.mark.parametrize("autoload", [True, False], ids=["entry-points", "autoload-off"])
def test_this_repository_starts_with_the_entry_point_and_the_conftest_together(autoload: bool) -> None:
    """The entry point and the root conftest name the same plugin: pytest starts (no double
    registration) and knows the plugin's options, also where entry points are not loaded."""
    env = _environment() if autoload else _environment(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    done = _pytest(
        REPO,
        "--collect-only",
        "-q",
        "--istio-version",
        "1.29.6",
        "tests/unit/test_plugin_entry_point.py::test_the_installed_distribution_names_the_plugin",
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_the_installed_distribution_names_the_plugin" in done.stdout


def test_the_readme_example_is_a_complete_test_file_of_another_repository(own_repo: Path) -> None:
    """The README's example, as the only test of a repository of its own: it is collected, its
    fixtures resolve, and on a machine that cannot run the cluster tier it is skipped saying why."""
    example = readme_example()
    (own_repo / "tests" / "test_egress.py").write_text(example, encoding="utf-8")
    shutil.copytree(REPO / "scenarios" / SCENARIO, own_repo / "scenarios" / SCENARIO)
    missing = own_repo / "no-such-kubeconfig"  # an existing cluster that is not there: always skipped
    done = _pytest(own_repo, "-v", "-rs", "--kubeconfig", str(missing), "--external", "internet", "tests")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"\b1 skipped\b", done.stdout), output
    assert f"tests/test_egress.py::test_egress_scenario[{SCENARIO}] SKIPPED" in done.stdout
    assert "the cluster tier cannot run here" in done.stdout
    assert f"kubeconfig {missing} does not exist" in done.stdout


def readme_example() -> str:
    """The Python block of the README's section "Using the harness from your own repository"."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Using the harness from your own repository", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section shows exactly one Python test file"
    return textwrap.dedent(blocks[0])
