"""The external host as a real container: the recorder on a named network, reached by its dotted alias.

Needs a running Docker engine (the folder is the `docker` tier); no image is pulled: the image is
built from this machine's Python (harness.images) and cached by content hash.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.external import (
    DEFAULT_ALIAS,
    OWNER_LABEL,
    Container,
    ContainerStartError,
    Network,
    RecorderContainer,
    docker_unavailable_reason,
)
from harness.images import build_local_python_image, image_exists

ROOT = Path(__file__).resolve().parents[2]
RECORDER = ROOT / "apps" / "recorder" / "recorder.py"

_reason = docker_unavailable_reason()
pytestmark = pytest.mark.skipif(
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


@pytest.fixture(scope="module")
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


def test_client_reaches_recorder_by_alias_and_is_recorded(image: str, owner: str) -> None:
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    with RecorderContainer(image, network=network, alias=DEFAULT_ALIAS, owner=owner) as recorder:
        assert recorder.logs().startswith("listening on 0.0.0.0:80")
        with Container(
            image, network, command=["sleep", "300"], owner=owner, name=f"egress-harness-client-{owner}"
        ) as client:
            code, output = client.exec(
                [
                    "timeout",
                    "20",
                    "wget",
                    "-q",
                    "-O-",
                    "--header",
                    "x-request-id: abc",
                    f"http://{DEFAULT_ALIAS}/hello",
                ]
            )
            assert code == 0, output
            answer = json.loads(output)
            assert answer["host"] == DEFAULT_ALIAS
            assert answer["path"] == "/hello"

            records = recorder.wait_for_records("abc", timeout=10)
            assert len(records) == 1
            record = records[0]
            assert record["client_ip"] == client.container_ip
            assert record["host"] == DEFAULT_ALIAS
            assert record["path"] == "/hello"
            assert record["headers"]["x-request-id"] == "abc"
            assert recorder.container_ip != client.container_ip
            assert recorder.records("no-such-id") == []

        # the network exists while the recorder runs, with exactly that name
        assert network in _docker("network", "ls", "--format", "{{.Name}}").split()

    assert _leftovers(owner) == ([], [])
    assert network not in _docker("network", "ls", "--format", "{{.Name}}").split()


def test_existing_network_is_left_in_place(image: str, owner: str) -> None:
    name = f"egress-harness-test-{secrets.token_hex(4)}"
    with Network(name, owner=owner) as net:
        assert net.created
        with RecorderContainer(image, network=name, owner=owner) as recorder:
            assert recorder.records() == []
        # the recorder did not create the network, so it does not remove it
        containers, networks = _leftovers(owner)
        assert containers == []
        assert len(networks) == 1
        assert name in _docker("network", "ls", "--format", "{{.Name}}").split()
    assert _leftovers(owner) == ([], [])


def test_failing_start_names_the_container_and_leaves_nothing(image: str, owner: str) -> None:
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    bad = RecorderContainer(
        image,
        network=network,
        owner=owner,
        command=["python", "-c", "import sys; print('boom: no recorder today'); sys.exit(3)"],
        ready_timeout=20,
    )
    with pytest.raises(ContainerStartError) as info, bad:
        pytest.fail("the context should not be entered")
    message = str(info.value)
    assert bad.name in message
    assert "exited with code 3" in message
    assert "boom: no recorder today" in message
    assert _leftovers(owner) == ([], [])
    assert network not in _docker("network", "ls", "--format", "{{.Name}}").split()


def test_not_ready_in_time_names_the_container_and_leaves_nothing(image: str, owner: str) -> None:
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    slow = RecorderContainer(
        image,
        network=network,
        owner=owner,
        command=["sh", "-c", "echo never listening; exec sleep 300"],
        ready_timeout=2,
    )
    started = time.monotonic()
    with pytest.raises(ContainerStartError, match="not ready within 2s") as info:
        slow.start()
    assert time.monotonic() - started < 20
    assert slow.name in str(info.value)
    assert "never listening" in str(info.value)
    assert _leftovers(owner) == ([], [])


class _InterruptedRecorder(RecorderContainer):
    def ready(self) -> bool:
        raise KeyboardInterrupt


def test_ctrl_c_during_start_leaves_nothing(image: str, owner: str) -> None:
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    with pytest.raises(KeyboardInterrupt), _InterruptedRecorder(image, network=network, owner=owner):
        pytest.fail("the context should not be entered")
    assert _leftovers(owner) == ([], [])


def test_ctrl_c_inside_the_context_leaves_nothing(image: str, owner: str) -> None:
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    seen: list[str] = []

    def interrupted() -> None:
        with RecorderContainer(image, network=network, owner=owner):
            seen.extend(_leftovers(owner)[0])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert len(seen) == 1, "the recorder container ran inside the context"
    assert _leftovers(owner) == ([], [])
