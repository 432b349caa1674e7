"""What a wheel carries besides the code: ``manifests/``, ``apps/`` and ``scenarios/`` as ``harness/_data``.

``setup.py`` copies them into the build (its ``copy_packaged_data``), MANIFEST.in puts them into the
sdist, and ``harness.common.paths`` finds them when no checkout surrounds the package. The last test
imports a copy of the package laid out as a wheel installs it, outside the checkout.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.common import paths

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
#: a file of each packaged folder that the harness reads at run time
NEEDED = (
    "manifests/istio/egress.yaml",
    "manifests/kind/cluster.yaml",
    "manifests/apps/relay.yaml",
    "apps/relay/relay.py",
    "apps/relay/Dockerfile",
    "apps/recorder/recorder.py",
    "apps/recorder/Dockerfile",
    "scenarios/http-via-egress-gateway/scenario.yaml",
)


def _setup() -> dict[str, Any]:
    """setup.py's names, without running setup() (it does only as ``__main__``, as the build runs it)."""
    return runpy.run_path(str(REPO / "setup.py"), run_name="setup_under_test")


def test_the_checkout_is_the_root_here() -> None:
    assert paths.REPO_ROOT == REPO
    assert (paths.REPO_ROOT / "manifests" / "istio" / "egress.yaml").is_file()


def test_project_root_prefers_a_checkout_then_the_packaged_data(tmp_path: Path) -> None:
    package = tmp_path / "site" / "harness"
    (package / paths.PACKAGED_DATA / "manifests").mkdir(parents=True)
    assert paths.project_root(package) == package / paths.PACKAGED_DATA  # an installed wheel
    (tmp_path / "site" / "manifests").mkdir()
    assert paths.project_root(package) == tmp_path / "site"  # a checkout wins
    bare = tmp_path / "bare" / "harness"
    bare.mkdir(parents=True)
    assert paths.project_root(bare) == tmp_path / "bare"  # neither: where a checkout would have it


def test_the_sdist_carries_every_packaged_folder() -> None:
    manifest = (REPO / "MANIFEST.in").read_text(encoding="utf-8").split()
    grafted = {manifest[i + 1] for i, word in enumerate(manifest[:-1]) if word == "graft"}
    assert grafted == set(paths.PACKAGED_FOLDERS)
    for name in paths.PACKAGED_FOLDERS:
        assert (REPO / name).is_dir(), name


def test_the_build_copies_the_folders_without_caches(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    for name in paths.PACKAGED_FOLDERS:
        shutil.copytree(REPO / name, checkout / name)
    cache = checkout / "apps" / "relay" / "__pycache__"  # as a test run leaves it
    cache.mkdir(exist_ok=True)
    (cache / "relay.cpython-311.pyc").write_bytes(b"")
    (checkout / "scenarios" / ".DS_Store").write_bytes(b"")
    data = _setup()["copy_packaged_data"](checkout, tmp_path / "build")
    assert data == tmp_path / "build" / "harness" / paths.PACKAGED_DATA
    for needed in NEEDED:
        assert (data / needed).read_bytes() == (REPO / needed).read_bytes(), needed
    assert not (data / "scenarios" / ".DS_Store").exists()
    assert not [p for p in data.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
    copied = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert "scenarios/http-via-egress-gateway/service-entry.yaml" in copied
    with pytest.raises(FileNotFoundError, match="a wheel must carry it"):
        _setup()["copy_packaged_data"](tmp_path / "empty", tmp_path / "build2")


def test_an_installed_layout_finds_its_files_in_the_package(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "harness", site / "harness", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _setup()["copy_packaged_data"](REPO, site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import harness; from harness.common.paths import REPO_ROOT;"
        "print(harness.__file__); print(REPO_ROOT)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported, root = (Path(line) for line in done.stdout.splitlines())
    assert imported == site / "harness" / "__init__.py"  # the copy, not the checkout
    assert root == site / "harness" / paths.PACKAGED_DATA
    for needed in NEEDED:
        assert (root / needed).is_file(), needed
