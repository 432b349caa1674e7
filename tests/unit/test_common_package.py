"""harness.common's own API: small, and cheap to import (no HTTP client, no YAML, no tier)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import harness.common
from harness.common import paths, proc

pytestmark = pytest.mark.unit


def test_the_package_exports_paths_and_processes() -> None:
    assert len(harness.common.__all__) == len(set(harness.common.__all__))
    for name in harness.common.__all__:
        assert getattr(harness.common, name) is getattr(paths if name == "REPO_ROOT" else proc, name)


def test_importing_it_loads_only_the_standard_library_and_itself() -> None:
    probe = (
        "import sys, harness.common;"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('harness', 'httpx', 'yaml', 'kubernetes', 'pytest'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["harness", "harness.common", "harness.common.paths", "harness.common.proc"]
