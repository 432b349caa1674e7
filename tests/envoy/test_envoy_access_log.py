"""Access-log lines written by a real Envoy with Istio's exact formats, read by harness.accesslog.

One Envoy (module scope) runs the mesh bootstrap of conftest.py; every listener writes the same
requests to three files: Istio's TEXT format (1.23+, ``%UPSTREAM_CLUSTER_RAW%``), its 1.11-1.22 TEXT
format (``%UPSTREAM_CLUSTER%``) and its JSON labels. Each test sends its own traffic, marked with a
unique ``x-request-id`` (HTTP) or client port (TCP), and polls the log files with a deadline.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx
import pytest

from harness.accesslog import (
    FIELDS,
    ISTIO_JSON_LABELS,
    ISTIO_TEXT_FORMAT,
    ISTIO_TEXT_FORMAT_1_11,
    AccessLogEntry,
    LogParser,
)
from harness.localmesh import envoyconfig as ec
from harness.localmesh.envoy import EnvoyProcess

#: The three files every listener writes: Istio's TEXT formats of 1.23+ and 1.11-1.22, its JSON.
ACCESS_LOGS: dict[str, str | dict[str, str]] = {
    "text": ISTIO_TEXT_FORMAT,
    "text_1_11": ISTIO_TEXT_FORMAT_1_11,
    "json": ISTIO_JSON_LABELS,
}
LOGS = list(ACCESS_LOGS)
HTTP_CLUSTER = "outbound|80||external.test"
TCP_CLUSTER = "outbound|9000||tcp-echo.test"


class Upstreams(Protocol):
    """conftest's ``upstreams`` fixture: the HTTP upstream and the TCP echo server."""

    http_port: int
    tcp_port: int
    body: bytes


# A user agent with spaces, a parenthesis and quotes, as real clients send.
USER_AGENT = 'curl/8.5.0 (x86_64-pc-linux-gnu; "quoted" agent)'


@pytest.fixture(scope="module")
def mesh(mesh_bootstrap: Callable[..., dict[str, Any]]) -> Iterator[EnvoyProcess]:
    def config(envoy: EnvoyProcess) -> dict[str, Any]:
        return mesh_bootstrap(envoy.access_log_path, ACCESS_LOGS)

    with EnvoyProcess(config, flush_interval_ms=50) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10.0) as c:
        yield c


def parser_for(log: str) -> LogParser:
    fmt = ACCESS_LOGS[log]
    return LogParser("json", None) if isinstance(fmt, dict) else LogParser("text", fmt)


def entry_of(envoy: EnvoyProcess, log: str, match: Callable[[AccessLogEntry], bool]) -> AccessLogEntry:
    """The one entry of ``log`` that ``match`` selects, waiting for it to be flushed."""
    parser = parser_for(log)

    def wanted(line: str) -> bool:
        entry = parser_for(log).parse_line(line)
        return entry is not None and match(entry)

    lines = envoy.wait_for_access_log(log, wanted, timeout=10.0)
    assert len(lines) == 1, f"{log}: more than one matching line:\n{''.join(lines)}"
    entry = parser.parse_line(lines[0])
    assert entry is not None, f"{log}: the parser did not read its own line {lines[0]!r}"
    return entry


def raw_line(envoy: EnvoyProcess, log: str, needle: str) -> str:
    lines = envoy.wait_for_access_log(log, lambda line: needle in line, timeout=10.0)
    assert len(lines) == 1
    return lines[0]


def send(client: httpx.Client, url: str, authority: str, **headers: str) -> tuple[str, httpx.Response]:
    request_id = str(uuid.uuid4())
    answer = client.get(
        url, headers={"host": authority, "x-request-id": request_id, "user-agent": USER_AGENT, **headers}
    )
    return request_id, answer


def by_request_id(request_id: str) -> Callable[[AccessLogEntry], bool]:
    return lambda entry: entry.request_id == request_id


def http_url(envoy: EnvoyProcess, path: str = "/") -> str:
    return f"http://127.0.0.1:{envoy.port('http')}{path}"


@pytest.mark.parametrize("log", LOGS)
def test_200_via_upstream_through_the_outbound_cluster(
    mesh: EnvoyProcess, client: httpx.Client, upstreams: Upstreams, log: str
) -> None:
    request_id, answer = send(client, http_url(mesh, "/get?x=1"), "external.test")
    assert answer.status_code == 200
    assert answer.content == upstreams.body

    entry = entry_of(mesh, log, by_request_id(request_id))
    assert entry.response_code == 200
    assert entry.response_code_details == "via_upstream"
    assert entry.response_flags is None
    assert entry.upstream_cluster == "outbound|80||external.test"
    assert entry.route_name == "default"
    assert entry.authority == "external.test"
    assert entry.request_id == request_id
    assert entry.method == "GET"
    assert entry.path == "/get?x=1"
    assert entry.protocol == "HTTP/1.1"
    assert entry.user_agent == USER_AGENT
    assert entry.upstream_host == f"127.0.0.1:{upstreams.http_port}"
    assert entry.downstream_local_address == f"127.0.0.1:{mesh.port('http')}"
    assert entry.downstream_remote_address is not None
    assert entry.downstream_remote_address.startswith("127.0.0.1:")
    assert entry.bytes_received == 0
    assert entry.bytes_sent == len(upstreams.body)
    assert isinstance(entry.duration, int)
    assert isinstance(entry.upstream_service_time, int)
    assert entry.x_forwarded_for is None
    assert entry.requested_server_name is None
    assert not entry.is_tcp


def test_upstream_cluster_as_each_text_generation_prints_it(mesh: EnvoyProcess, client: httpx.Client) -> None:
    """%UPSTREAM_CLUSTER% prints the alt_stat_name Istio 1.23+ sets (with its ';'), _RAW the name."""
    request_id, answer = send(client, http_url(mesh), "external.test")
    assert answer.status_code == 200
    assert f" {HTTP_CLUSTER}; " in raw_line(mesh, "text_1_11", request_id)
    assert f" {HTTP_CLUSTER} " in raw_line(mesh, "text", request_id)
    assert f'"upstream_cluster":"{HTTP_CLUSTER}"' in raw_line(mesh, "json", request_id)
    for log in LOGS:
        assert entry_of(mesh, log, by_request_id(request_id)).upstream_cluster == HTTP_CLUSTER


@pytest.mark.parametrize("log", LOGS)
def test_502_direct_response_on_block_all(mesh: EnvoyProcess, client: httpx.Client, log: str) -> None:
    request_id, answer = send(client, http_url(mesh, "/blocked"), "blocked.test")
    assert answer.status_code == 502

    entry = entry_of(mesh, log, by_request_id(request_id))
    assert entry.response_code == 502
    assert entry.response_code_details == "direct_response"
    assert entry.route_name == "block_all"
    assert entry.response_flags is None
    assert entry.upstream_cluster is None
    assert entry.upstream_host is None
    assert entry.authority == "blocked.test"
    assert entry.path == "/blocked"


@pytest.mark.parametrize("log", LOGS)
def test_404_no_route(mesh: EnvoyProcess, client: httpx.Client, log: str) -> None:
    request_id, answer = send(client, http_url(mesh, "/nowhere"), "unknown.test")
    assert answer.status_code == 404

    entry = entry_of(mesh, log, by_request_id(request_id))
    assert entry.response_code == 404
    assert entry.response_flags == "NR"
    assert entry.flags == {"NR"}
    assert entry.response_code_details == "route_not_found"
    assert entry.route_name is None
    assert entry.upstream_cluster is None
    assert entry.authority == "unknown.test"


@pytest.mark.parametrize("log", LOGS)
def test_passthrough_cluster(
    mesh: EnvoyProcess, client: httpx.Client, upstreams: Upstreams, log: str
) -> None:
    destination = f"127.0.0.1:{upstreams.http_port}"
    request_id, answer = send(
        client, http_url(mesh, "/pt"), "passthrough.test", **{"x-envoy-original-dst-host": destination}
    )
    assert answer.status_code == 200

    entry = entry_of(mesh, log, by_request_id(request_id))
    assert entry.upstream_cluster == ec.PASSTHROUGH_CLUSTER
    assert entry.route_name == ec.ROUTE_ALLOW_ANY
    assert entry.upstream_host == destination
    assert entry.response_code_details == "via_upstream"


def tcp_exchange(port: int, payload: bytes) -> tuple[str, bytes]:
    """Connect, send, read until the peer closes or ``payload``'s length came back.

    Returns the client's address (how the log names it) and what came back. A peer that closes with
    unread data in its buffer resets the connection: that counts as closed.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        host, client_port = conn.getsockname()[:2]
        received = b""
        try:
            conn.sendall(payload)
            while len(received) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return f"{host}:{client_port}", received


def by_client(address: str) -> Callable[[AccessLogEntry], bool]:
    return lambda entry: entry.downstream_remote_address == address


@pytest.mark.parametrize("log", LOGS)
def test_tcp_proxy_entry(mesh: EnvoyProcess, upstreams: Upstreams, log: str) -> None:
    payload = b"ping " * 200
    client_address, echoed = tcp_exchange(mesh.port("tcp"), payload)
    assert echoed == payload

    entry = entry_of(mesh, log, by_client(client_address))
    assert entry.is_tcp
    assert (entry.method, entry.path, entry.protocol) == (None, None, None)
    assert entry.response_code == 0
    assert entry.response_flags is None
    assert entry.upstream_cluster == TCP_CLUSTER
    assert entry.upstream_host == f"127.0.0.1:{upstreams.tcp_port}"
    assert entry.bytes_received == len(payload)
    assert entry.bytes_sent == len(payload)
    assert entry.downstream_local_address == f"127.0.0.1:{mesh.port('tcp')}"
    assert entry.request_id is None
    assert entry.authority is None
    assert entry.route_name is None


@pytest.mark.parametrize("log", LOGS)
def test_tcp_to_a_cluster_without_endpoints_is_uh_blackhole(mesh: EnvoyProcess, log: str) -> None:
    client_address, echoed = tcp_exchange(mesh.port("blackhole"), b"anyone there?")
    assert echoed == b"", "Envoy should close a connection to a cluster with no healthy host"

    entry = entry_of(mesh, log, by_client(client_address))
    assert entry.is_tcp
    assert entry.response_code == 0
    assert entry.response_flags == "UH"
    assert entry.upstream_cluster == ec.BLACKHOLE_CLUSTER
    assert entry.upstream_host is None
    assert entry.bytes_sent == 0


@pytest.mark.parametrize("log", LOGS)
def test_ipv6_downstream(mesh: EnvoyProcess, client: httpx.Client, ipv6_loopback: bool, log: str) -> None:
    if not ipv6_loopback:
        pytest.skip("loopback IPv6 ([::1]) cannot be bound on this machine")
    port = mesh.port("http6")
    request_id, answer = send(client, f"http://[::1]:{port}/v6", "external.test")
    assert answer.status_code == 200

    entry = entry_of(mesh, log, by_request_id(request_id))
    assert entry.downstream_local_address == f"[::1]:{port}"
    assert entry.downstream_remote_address is not None
    assert entry.downstream_remote_address.startswith("[::1]:")
    assert entry.upstream_cluster == HTTP_CLUSTER
    assert entry.response_code == 200


def _traffic(kind: str, mesh: EnvoyProcess, client: httpx.Client) -> Callable[[AccessLogEntry], bool]:
    if kind == "tcp":
        return by_client(tcp_exchange(mesh.port("tcp"), b"x" * 10)[0])
    if kind == "blackhole":
        return by_client(tcp_exchange(mesh.port("blackhole"), b"x")[0])
    authority = {"200": "external.test", "502": "blocked.test", "404": "unknown.test"}[kind]
    request_id, _ = send(client, http_url(mesh, "/same"), authority)
    return by_request_id(request_id)


@pytest.mark.parametrize("kind", ["200", "502", "404", "tcp", "blackhole"])
def test_text_and_json_entries_of_one_request_are_equal(
    mesh: EnvoyProcess, client: httpx.Client, kind: str
) -> None:
    """Three loggers on one listener: the entries are equal field by field, start_time included.

    The raw lines differ (TEXT ``-`` vs JSON ``null``; JSON ``"response_flags":"-"``; the header
    operator ``upstream_service_time`` is a JSON string ``"0"``; ``%UPSTREAM_CLUSTER%`` carries the
    alt_stat_name's ``;``), and the parser folds each difference away.
    """
    match = _traffic(kind, mesh, client)
    entries = {log: entry_of(mesh, log, match) for log in LOGS}
    json_entry = entries["json"]
    for log in ("text", "text_1_11"):
        for field in FIELDS:
            text_value, json_value = getattr(entries[log], field), getattr(json_entry, field)
            assert text_value == json_value, f"{kind}: {field}: {log} {text_value!r} != json {json_value!r}"
        assert entries[log].extra == json_entry.extra == {}
        assert entries[log] == json_entry


def test_user_agent_holding_quote_space_quote_does_not_shift_text_fields(
    mesh: EnvoyProcess, client: httpx.Client
) -> None:
    tricky = 'evil" "forged-id" "forged.example'
    request_id, answer = send(client, http_url(mesh), "external.test", **{"user-agent": tricky})
    assert answer.status_code == 200
    json_entry = entry_of(mesh, "json", by_request_id(request_id))
    assert json_entry.user_agent == tricky
    assert json_entry.authority == "external.test"
    text_entry = parser_for("text").parse_line(raw_line(mesh, "text", request_id))
    assert text_entry is not None
    assert (text_entry.user_agent, text_entry.request_id, text_entry.authority) == (
        tricky,
        request_id,
        "external.test",
    )
