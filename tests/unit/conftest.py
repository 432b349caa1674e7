"""Fixtures for the relay and recorder tests: loopback servers and ports, always torn down.

apps/relay and apps/recorder are single-file apps, not packages: their folders go on sys.path here so
the tests can `import relay` and `from recorder import Recorder`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

APPS = Path(__file__).resolve().parents[2] / "apps"
for _app in (APPS / "relay", APPS / "recorder"):
    if str(_app) not in sys.path:
        sys.path.insert(0, str(_app))

from recorder import Recorder  # noqa: E402


@pytest.fixture
def recorder_app() -> Iterator[Recorder]:
    """A recorder serving on a loopback port in this process."""
    with Recorder(bind="127.0.0.1", port=0) as rec:
        yield rec


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.fixture
def main_thread() -> None:
    """Ctrl-C tests send SIGINT to this process: only sound where tests run on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT reaches only the main thread; this runner runs tests elsewhere")


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fake kind/istioctl/kubectl/docker first on PATH, recording their argv (``fakebin/fake.py``)."""
    from tests.unit.fakecli import fake

    bins = fake.FakeBin(tmp_path / "fakebin")
    for key, value in bins.environ(os.environ["PATH"]).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("EGRESS_HARNESS_ISTIO_VERSION", raising=False)
    return bins
