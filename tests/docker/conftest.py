"""Shared by the docker tier: the skip when no engine answers, the recorder image (built from this
machine's Python, cached by content hash), a per-test owner label, and the leftover check."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster.external import OWNER_LABEL, docker_unavailable_reason
from harness.cluster.images import build_local_python_image, image_exists

ROOT = Path(__file__).resolve().parents[2]
RECORDER = ROOT / "apps" / "recorder" / "recorder.py"

_reason = docker_unavailable_reason()
#: every module of this folder sets ``pytestmark = needs_docker``
needs_docker = pytest.mark.skipif(
    _reason is not None,
    reason=f"needs a running Docker engine (start dockerd, e.g. as .ci/run does): {_reason}",
)


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def _leftovers(owner: str) -> tuple[list[str], list[str]]:
    label = f"label={OWNER_LABEL}={owner}"
    containers = _docker("ps", "-a", "-q", "--filter", label).split()
    networks = _docker("network", "ls", "-q", "--filter", label).split()
    return containers, networks


@pytest.fixture(scope="session")
def image() -> str:
    started = time.monotonic()
    tag = build_local_python_image("egress-harness/recorder", RECORDER)
    assert image_exists(tag)
    # second call: the content-hash tag is found, nothing is rebuilt
    again = time.monotonic()
    assert build_local_python_image("egress-harness/recorder", RECORDER) == tag
    assert time.monotonic() - again < 2.0, "the cached image should be found, not rebuilt"
    assert time.monotonic() - started < 120
    return tag


@pytest.fixture
def owner() -> Iterator[str]:
    token = f"test-{secrets.token_hex(4)}"
    yield token
    # belt and braces: whatever a failing test left behind goes, but the test asserts on it first
    containers, networks = _leftovers(token)
    for c in containers:
        subprocess.run(["docker", "rm", "-f", c], capture_output=True, timeout=30, check=False)
    for n in networks:
        subprocess.run(["docker", "network", "rm", n], capture_output=True, timeout=30, check=False)
