"""The external host as a real container: the recorder on a named network, reached by its dotted alias.

Needs a running Docker engine (the folder is the `docker` tier); no image is pulled: the image is
built from this machine's Python (harness.cluster.images) and cached by content hash.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from harness.cluster.external import (
    DEFAULT_ALIAS,
    OWNER_LABEL,
    Container,
    ContainerStartError,
    NameTakenError,
    Network,
    RecorderContainer,
    check_names_free,
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


ECHO_CLIENT = """
import socket
payload = b"/tcp?egh-token=tcp-in-docker\\n" + b"." * 300
with socket.create_connection(("%s", 9000), timeout=10) as conn:
    conn.sendall(payload)
    echo = b""
    while len(echo) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            break
        echo += chunk
print(len(payload), echo == payload)
"""


def test_a_client_reaches_the_recorders_tcp_echo_by_alias_and_the_connection_is_recorded(
    image: str, owner: str
) -> None:
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    with RecorderContainer(image, network=network, alias=DEFAULT_ALIAS, owner=owner) as recorder:
        assert recorder.tcp_port == 9000
        with Container(
            image, network, command=["sleep", "300"], owner=owner, name=f"egress-harness-client-{owner}"
        ) as client:
            code, output = client.exec(["timeout", "20", "python", "-c", ECHO_CLIENT % DEFAULT_ALIAS])
            assert (code, output.split()) == (0, ["329", "True"]), output
            [record] = recorder.connections(path_contains="tcp-in-docker")
            assert record["client_ip"] == client.container_ip
            assert (record["bytes_received"], record["bytes_sent"]) == (329, 329)
            assert record["head"] == "/tcp?egh-token=tcp-in-docker"
    assert _leftovers(owner) == ([], [])


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


def test_a_name_another_container_answers_to_is_refused_and_nothing_is_left(image: str, owner: str) -> None:
    """Two runs on one machine share kind's network: Docker's DNS would answer a name both recorders
    carry with both addresses. The second recorder refuses to start, naming the name and the holder."""
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    scenario = "scenario-a.egress-harness.test"
    with RecorderContainer(image, network=network, aliases=[scenario], owner=owner) as first:
        second = RecorderContainer(
            image, network=network, aliases=["scenario-b.egress-harness.test", scenario], owner=owner
        )
        with pytest.raises(NameTakenError) as info:
            second.start()
        message = str(info.value)
        assert first.name in message
        assert network in message
        assert DEFAULT_ALIAS in message and scenario in message
        assert "scenario-b.egress-harness.test" not in message  # only the names that are taken
        assert info.value.taken == {DEFAULT_ALIAS: [first.name], scenario: [first.name]}
        # nothing of the second is left, the first still answers
        assert _leftovers(owner)[0] == [str(first.id)[:12]]
        assert first.ready()
        # what a run asks before its minutes of work: the same answer, naming the holder's owner
        with pytest.raises(NameTakenError, match=f"{OWNER_LABEL}={owner}") as early:
            check_names_free(network, ["free.egress-harness.test", scenario], what="the recorders of run r1")
        assert early.value.taken == {scenario: [first.name]}
        assert str(early.value).startswith("the recorders of run r1 cannot take these names")
        check_names_free(network, ["free.egress-harness.test"], what="a run")
        check_names_free(f"{network}-none", [scenario], what="a run")  # no network yet: nothing taken
        # a container's own name is a DNS name on the network too
        with pytest.raises(NameTakenError, match=first.name):
            Container(image, network, command=["sleep", "300"], aliases=[first.name], owner=owner).start()
    assert _leftovers(owner) == ([], [])


def test_names_taken_while_starting_fail_the_later_container(image: str, owner: str) -> None:
    """Two runs that start at the same moment both find the names free: the one whose container was
    created later sees the other after joining the network, removes itself and fails."""
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    other = RecorderContainer(image, network=network, owner=owner, name=f"egress-harness-other-{owner}")

    class _Raced(RecorderContainer):
        def check_names_free(self) -> None:
            super().check_names_free()
            other.start()  # the other run's recorder joins right after this one's check

    raced = _Raced(image, network=network, owner=owner)
    with Network(network, owner=owner):
        try:
            with pytest.raises(NameTakenError, match=other.name) as info:
                raced.start()
            assert raced.id is not None, "the check after joining the network failed the start"
            assert other.ready()
            assert _leftovers(owner)[0] == [str(other.id)[:12]]
            assert info.value.taken == {DEFAULT_ALIAS: [other.name]}
        finally:
            other.stop()
    assert _leftovers(owner) == ([], [])


def test_dockers_dns_answers_a_shared_alias_with_every_container_carrying_it(image: str, owner: str) -> None:
    """Why names are exclusive: two containers under one alias (made around the harness's check,
    with the docker CLI) are both in the answer, so a client reaches either one."""
    network = f"egress-harness-test-{secrets.token_hex(4)}"
    alias = "shared.egress-harness.test"
    label = f"{OWNER_LABEL}={owner}"
    with Network(network, owner=owner):
        names = [f"egress-harness-dns-{owner}-{i}" for i in (1, 2)]
        try:
            for name in names:
                _docker("run", "-d", "--rm", "--name", name, "--label", label, "--network", network,
                        "--network-alias", alias, image, "sleep", "120")  # fmt: skip
            addresses = {
                _docker(
                    "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', n
                ).strip()
                for n in names
            }
            script = (
                "import socket, sys; "
                "print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)})))"
            )
            answer = _docker(
                "run", "--rm", "--label", label, "--network", network, image, "python", "-c", script, alias
            )
            assert set(answer.split()) == addresses and len(addresses) == 2
            # and the harness sees both holders of the name
            with pytest.raises(NameTakenError) as info:
                check_names_free(network, [alias], what="a third")
            assert sorted(info.value.taken[alias]) == names
        finally:
            for name in names:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=30, check=False)
    assert _leftovers(owner) == ([], [])
