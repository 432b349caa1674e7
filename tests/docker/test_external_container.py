"""The external host as a real container: the recorder on a named network, reached by its dotted alias.

Needs a running Docker engine (the folder is the `docker` tier); no image is pulled: the image is
built from this machine's Python (harness.cluster.images) and cached by content hash.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from harness.cluster.external import (
    DEFAULT_ALIAS,
    Container,
    ContainerStartError,
    Network,
    RecorderContainer,
)
from tests.docker.conftest import _docker, _leftovers, needs_docker

pytestmark = needs_docker


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
