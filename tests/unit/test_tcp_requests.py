"""TCP requests in the catalog (``scheme: tcp``): what the loader accepts and refuses, what a
resolved request sends, how its TCP entries are found, and the external host's record of the
connection. The judgement on what real proxies wrote is in test_scenario_negative_controls.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.accesslog import AccessLogEntry
from harness.cluster.witness import TcpConnections
from harness.evidence import ExternalEvidenceError, RequestRef
from harness.evidence.external import check_tcp_record
from harness.scenarios import RenderContext, load_catalog, render_request
from harness.scenarios.model import TCP_BYTES_DEFAULT
from tests.unit.test_scenarios_loader import MANIFEST, raw_issues, write_scenario

TCP_MANIFEST = MANIFEST.replace(
    "{name: http, number: 80, protocol: HTTP}", "{name: tcp, number: 9000, protocol: TCP}"
)

TCP_SCENARIO = """\
name: demo
description: A TCP scenario for the loader's tests.
istio:
  min: "1.23"
manifests: [service-entry.yaml]
requests:
  - name: one
    scheme: tcp
    host: "{{ external_host }}"
    path: /one
EXTRA
    expect:
      status: 200
      via_gateway: true
EXPECT
      gateway:
        upstream_cluster: "outbound|{{ external_tcp_port }}||{{ external_host }}"
"""


def scenario(tmp_path: Path, *, extra: str = "", expect: str = "", scheme: str = "tcp") -> Path:
    text = TCP_SCENARIO.replace("EXTRA\n", extra).replace("EXPECT\n", expect)
    return write_scenario(
        tmp_path, text.replace("scheme: tcp", f"scheme: {scheme}"), files={"service-entry.yaml": TCP_MANIFEST}
    )


def issues(tmp_path: Path, **kw: str) -> list[tuple[str, str]]:
    scenario(tmp_path, **kw)
    return [(i.field, i.message) for i in raw_issues(tmp_path)]


def test_a_tcp_request_loads_and_resolves_to_the_echo_port_with_its_payload_size(tmp_path: Path) -> None:
    scenario(tmp_path, expect="      tcp_bytes: 4096\n")
    [spec] = load_catalog(tmp_path).get("demo").requests
    assert (spec.scheme, spec.bytes, spec.expect.tcp_bytes) == ("tcp", 4096, 4096)
    context = RenderContext(istio_version="1.31-dev", external_tcp_port=9100)
    request = render_request(spec, context, source=tmp_path / "demo" / "scenario.yaml")
    assert (request.port, request.bytes) == (9100, 4096)
    assert request.url == "tcp://external.egress-harness.test:9100/one?egh-bytes=4096"
    assert request.expect.gateway["upstream_cluster"] == "outbound|9100||external.egress-harness.test"


def test_a_tcp_request_without_a_size_sends_the_default_and_its_own_bytes_win(tmp_path: Path) -> None:
    scenario(tmp_path / "a")
    [spec] = load_catalog(tmp_path / "a").get("demo").requests
    assert (spec.bytes, spec.expect.tcp_bytes) == (TCP_BYTES_DEFAULT, None)
    scenario(tmp_path / "b", extra="    bytes: 300\n", expect="      tcp_bytes: 300\n")
    [spec] = load_catalog(tmp_path / "b").get("demo").requests
    assert spec.bytes == 300


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        (
            {"extra": "    bytes: 10\n"},
            "requests[0].bytes",
            "10: a TCP payload is 256 to 1048576 bytes",
        ),
        (
            {"expect": "      tcp_bytes: 2000000\n"},
            "requests[0].expect.tcp_bytes",
            "2000000: a TCP payload is 256 to 1048576 bytes",
        ),
        (
            {"extra": "    bytes: 512\n", "scheme": "http"},
            "requests[0].bytes",
            "the payload size of a TCP request: only with scheme: tcp (not http)",
        ),
        (
            {"expect": "      tcp_bytes: 512\n", "scheme": "https"},
            "requests[0].expect.tcp_bytes",
            "counts a TCP connection's bytes: only for a request with scheme: tcp (not https)",
        ),
        (
            {"extra": "    method: POST\n"},
            "requests[0].method",
            "a TCP request sends bytes, not an HTTP request: drop method",
        ),
        (
            {"expect": "      external_attempts: 2\n"},
            "requests[0].expect.external_attempts",
            "a TCP request is one connection",
        ),
        (
            {"extra": "    bytes: 512\n", "expect": "      tcp_bytes: 1024\n"},
            "requests[0].expect.tcp_bytes",
            "1024, but the request sends 512 bytes and the external host echoes every byte",
        ),
        (
            {"expect": "      tcp_bytes: yes\n"},
            "requests[0].expect.tcp_bytes",
            "expected int",
        ),
    ],
    ids=[
        "bytes-too-few",
        "tcp-bytes-too-many",
        "bytes-on-http",
        "tcp-bytes-on-https",
        "method",
        "attempts",
        "mismatch",
        "not-int",
    ],
)
def test_the_loader_refuses_what_a_tcp_request_cannot_mean(
    tmp_path: Path, kw: dict[str, str], field: str, message: str
) -> None:
    found = issues(tmp_path, **kw)
    assert any(f == field and m.startswith(message) for f, m in found), found


def test_a_blocked_tcp_request_counts_no_bytes(tmp_path: Path) -> None:
    text = TCP_SCENARIO.replace("EXTRA\n", "").replace(
        '      via_gateway: true\nEXPECT\n      gateway:\n        upstream_cluster: "outbound|{{ external_tcp_port }}||{{ external_host }}"\n',
        "      via_gateway: false\n      blocked: sidecar\n      tcp_bytes: 512\n",
    )
    write_scenario(
        tmp_path, text.replace("status: 200", "status: 502"), files={"service-entry.yaml": TCP_MANIFEST}
    )
    found = [(i.field, i.message) for i in raw_issues(tmp_path)]
    assert found == [
        (
            "requests[0].expect.tcp_bytes",
            "a connection blocked at the sidecar carries nothing to the external host: drop tcp_bytes",
        )
    ]


def entry(**fields: Any) -> AccessLogEntry:
    return AccessLogEntry(**fields)


def test_a_tcp_request_is_found_by_a_plain_tcp_entry_in_its_window() -> None:
    sent = datetime(2026, 12, 7, 11, 0, 0, tzinfo=UTC)
    ref = RequestRef.for_request(
        scheme="tcp", host="h.test", sent_at=sent, answered_at=sent + timedelta(seconds=1)
    )
    belongs = ref.predicate()
    inside = "2026-12-07T11:00:00.500Z"
    assert belongs(entry(start_time=inside, response_code=0, upstream_cluster="outbound|9000||h.test"))
    # an HTTP entry (a canary, another scenario's request), a TLS one (an SNI), inbound, outside the window
    assert not belongs(entry(start_time=inside, method="GET", response_code=404))
    assert not belongs(entry(start_time=inside, response_code=0, requested_server_name="h.test"))
    assert not belongs(entry(start_time=inside, response_code=0, upstream_cluster="inbound|8080||"))
    assert not belongs(entry(start_time="2026-12-07T11:00:02.000Z", response_code=0))
    assert str(ref).startswith("TCP plain started within [2026-12-07T10:59:59.950Z, ")
    with pytest.raises(ValueError, match="a TCP request is found by when it was sent"):
        RequestRef.for_request(scheme="tcp", host="h.test")
    with pytest.raises(ValueError, match="a plain TCP request is found only by when it was sent"):
        RequestRef(tcp=True)


def connection(**over: Any) -> dict[str, Any]:
    record = {
        "seq": 1,
        "client_ip": "10.244.1.3",
        "client_port": 40000,
        "bytes_received": 4096,
        "bytes_sent": 4096,
        "head": "/tcp?egh-bytes=4096&egh-token=t",
        "path": "/tcp?egh-bytes=4096&egh-token=t",
        "target": "/tcp?egh-bytes=4096&egh-token=t",
        "tls": None,
    }
    return record | over


def test_the_external_record_of_a_connection_must_carry_the_bytes_each_way() -> None:
    assert check_tcp_record(connection(), 4096) == "4096 bytes in, 4096 echoed"
    assert check_tcp_record(connection(), None) == "4096 bytes in, 4096 echoed"
    with pytest.raises(
        ExternalEvidenceError, match=r"carried 4096 byte\(s\) in and 12 echoed, expected 4096 each way"
    ):
        check_tcp_record(connection(bytes_sent=12), 4096)
    with pytest.raises(ExternalEvidenceError, match="expected at least one byte each way"):
        check_tcp_record(connection(bytes_received=0, bytes_sent=0), None)
    with pytest.raises(ExternalEvidenceError, match="not a TCP connection's"):
        check_tcp_record({"client_ip": "10.0.0.1", "path": "/x"}, 4096)


class Recorder:
    """Stands for the recorder's control API client at its process boundary: what it was asked."""

    name, alias, aliases, port, tls_port, tcp_port = "rec", "a.test", ["a.test"], 80, None, 9000
    url, address = "http://x", "10.0.0.9"

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def connections(
        self, *, path_contains: str | None = None, since: int | None = None
    ) -> list[dict[str, Any]]:
        self.asked.append({"path_contains": path_contains, "since": since})
        return [connection()]


def test_the_tcp_witness_reads_connections_by_token_and_never_by_request_id() -> None:
    recorder = Recorder()
    view = TcpConnections(recorder)  # type: ignore[arg-type]
    assert view.records(path_contains="tok") == [connection()]
    assert recorder.asked == [{"path_contains": "tok", "since": None}]
    assert (view.url, view.address, view.tcp_port, view.handshake_failures()) == (
        "http://x",
        "10.0.0.9",
        9000,
        [],
    )
    with pytest.raises(ValueError, match="carries no x-request-id"):
        view.records("rid-1")
