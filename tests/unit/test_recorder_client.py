"""The harness's side of the recorder's TCP echo: RecorderClient.connections against the real
recorder (apps/recorder, in this process), and the TCP port the container and netns recorders get."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from recorder import Recorder

from harness.cluster.external import (
    DEFAULT_TCP_PORT,
    DEFAULT_TLS_PORT,
    AttachedRecorder,
    RecorderContainer,
    RecorderTLS,
)


def _echo(address: tuple[str, int], line: bytes) -> int:
    """One connection: send ``line``, read the echo, close; the client's own port."""
    with socket.create_connection(address, timeout=5) as sock:
        port = int(sock.getsockname()[1])
        sock.sendall(line)
        echoed = b""
        while len(echoed) < len(line):
            chunk = sock.recv(65536)
            assert chunk, echoed
            echoed += chunk
        assert echoed == line
    return port


def test_connections_reads_the_recorders_tcp_records_with_its_filters(tmp_path: Path) -> None:
    with Recorder(port=0, tcp_port=0) as rec:
        client = AttachedRecorder(
            rec.url, name="r", alias="a", aliases=["a"], port=rec.port, tls_port=None, tcp_port=rec.tcp_port
        )
        assert client.tcp_port == rec.tcp_port and client.connections() == []
        ports = [_echo(rec.tcp_address, f"/t?egh-token={t}\n".encode()) for t in ("one", "two")]
        deadline = time.monotonic() + 5
        found = client.connections()
        while len(found) < 2 or not all(c["closed"] for c in found):  # closed once the recorder saw EOF
            assert time.monotonic() < deadline, found
            time.sleep(0.01)
            found = client.connections()
        assert [(c["client_port"], c["head"], c["bytes_sent"]) for c in found] == [
            (ports[0], "/t?egh-token=one", 17),
            (ports[1], "/t?egh-token=two", 17),
        ]
        [two] = client.connections(path_contains="egh-token=two")
        assert two["client_port"] == ports[1]
        assert client.connections(since=found[0]["seq"]) == [two]
        assert client.connections(path_contains="nothing") == []
        assert client.records() == []  # the HTTP records are apart


def test_an_attached_recorder_without_a_tcp_port_has_none() -> None:
    client = AttachedRecorder(
        "http://127.0.0.1:1", name="r", alias="a", aliases=["a"], port=80, tls_port=None
    )
    assert client.tcp_port is None  # not given: a state written before the TCP echo existed


def _container(**kwargs: Any) -> RecorderContainer:
    return RecorderContainer("istio-egress-harness/recorder:dev", "kind", client=object(), **kwargs)


def test_the_recorder_container_always_echoes_tcp_on_its_tcp_port() -> None:
    plain = _container()
    assert (plain.tcp_port, DEFAULT_TCP_PORT) == (9000, 9000)
    assert plain.command is not None
    assert plain.command[plain.command.index("--tcp-port") + 1] == "9000"
    assert plain.publish == [80]  # the control API only: the TCP echo is for the network's callers
    tls = RecorderTLS(b"cert", b"key")
    other = _container(tls=tls, tcp_port=9100)
    assert other.command is not None and other.tcp_port == 9100
    assert other.command[other.command.index("--tcp-port") + 1] == "9100"
    assert other.command[-6:] == tls.flags(DEFAULT_TLS_PORT)
    with pytest.raises(ValueError, match="the TCP port 80 is the HTTP port too"):
        _container(tcp_port=80)
    with pytest.raises(ValueError, match="the TCP port 443 is the TLS port too"):
        _container(tls=tls, tcp_port=443)
    assert _container(tcp_port=443).tcp_port == 443  # no TLS: 443 is free


def test_a_relays_tcp_leg_to_the_real_recorder_is_found_by_its_token_and_passes_the_checks(
    tmp_path: Path,
) -> None:
    """The contract between the two apps and the harness, without a cluster: the relay (a process)
    sends its TCP payload to the recorder's echo port, the recorder echoes it and records the
    connection, and the harness finds that record by the token in its first line and checks it."""
    from harness.cluster.witness import TcpConnections
    from harness.common.traffic import Traffic, chain_url
    from harness.evidence.external import check_tcp_record
    from tests.unit.test_relay import RelayPool

    path = "/tcp-via-egress-gateway?egh-bytes=4096&egh-token=tok-relay"
    pool = RelayPool(tmp_path)
    try:
        target = pool("target")
        with Recorder(port=0, tcp_port=0) as rec, Traffic(timeout=10.0) as traffic:
            response = traffic.send(chain_url([target.proxy_url], f"{rec.tcp_url}{path}"))
            assert response.status == 200, response.text
            tcp = response.json["tcp"]
            assert (tcp["sent"], tcp["received"], tcp["peer"]) == (4096, 4096, f"127.0.0.1:{rec.tcp_port}")
            client = AttachedRecorder(
                rec.url,
                name="r",
                alias="a",
                aliases=["a"],
                port=rec.port,
                tls_port=None,
                tcp_port=rec.tcp_port,
            )
            deadline = time.monotonic() + 5
            found = client.connections(path_contains="egh-token=tok-relay")
            while not found or found[0]["closed"] is None:  # the relay closes after the echo
                assert time.monotonic() < deadline, found
                time.sleep(0.01)
                found = client.connections(path_contains="egh-token=tok-relay")
            [record] = found
            assert f"{record['client_ip']}:{record['client_port']}" == tcp["local"]
            assert record["head"] == path
            assert check_tcp_record(record, 4096) == "4096 bytes in, 4096 echoed"
            assert TcpConnections(client).records(path_contains="egh-token=tok-relay") == [record]
    finally:
        pool.stop_all()


def test_the_recorders_echo_where_the_scenarios_tcp_requests_go() -> None:
    """The container and netns recorders take DEFAULT_TCP_PORT unless told; a scenario's tcp request
    goes to RenderContext.external_tcp_port: the two must agree."""
    from harness.scenarios.model import EXTERNAL_TCP_PORT, RenderContext

    assert DEFAULT_TCP_PORT == EXTERNAL_TCP_PORT == RenderContext(istio_version="1.31-dev").external_tcp_port
