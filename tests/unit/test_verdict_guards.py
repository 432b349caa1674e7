"""Checks of the verdict code that only slower tiers used to exercise (issue 20's survivors).

Each test here states what a check is for, so deleting or bending that check turns it red:

- ``assert_not_through_gateway`` is two checks, the sidecar's direct entry and the gateway's
  absence: a request the sidecar logged as direct but the gateway logged too did go through it;
- ``expect_external_record`` accepts the external host's record only from the expected callers:
  the recorder (the real app, on loopback) records each request's peer address, and a request
  that reached it from the workload's own address did not come through the gateway.
"""

from __future__ import annotations

import http.client
from collections.abc import Sequence

import pytest
from recorder import Recorder

from harness.evidence import (
    EgressTarget,
    EntryLog,
    EvidenceError,
    ExternalEvidenceError,
    LinesLogSource,
    RequestRef,
    Wait,
    assert_not_through_gateway,
    expect_external_record,
    expect_no_external_record,
)
from harness.evidence.external import Record
from tests.unit import accesslog_samples as s

FAST = Wait(timeout=1.0, interval=0.02, settle=0.2)
HOST = "external.egress-harness.test"
#: Loopback addresses standing for the egress gateway and the calling workload (as the local mesh's).
GATEWAY_IP = "127.0.0.7"
WORKLOAD_IP = "127.0.0.12"


def log_of(hop: str, *lines: str) -> EntryLog:
    return EntryLog(LinesLogSource(hop, lines), hop=hop)


def _as(line: str, request_id: str) -> str:
    """A recorded line as the entry of another request (only its x-request-id changes)."""
    return line.replace('"rid-2"', f'"{request_id}"').replace('"rid-1"', f'"{request_id}"')


# --- assert_not_through_gateway: the gateway's absence is checked, not only the sidecar's entry -------


def test_not_through_gateway_fails_at_the_gateway_when_the_gateway_logged_the_request() -> None:
    # The sidecar's entry says "straight out" (PassthroughCluster) and holds up on its own; the
    # gateway's log has an entry of the same request: it went through the gateway after all, and
    # the verdict must say so at the gateway's hop.
    sidecar = log_of("target sidecar", _as(s.SIDECAR_PASSTHROUGH, "rid-7"))
    gateway = log_of("egress gateway", _as(s.GATEWAY_TO_EXTERNAL, "rid-7"))
    with pytest.raises(EvidenceError) as caught:
        assert_not_through_gateway(
            RequestRef(request_id="rid-7"),
            EgressTarget(HOST, 80),
            sidecar=sidecar,
            gateway=gateway,
            wait=FAST,
            window=0.05,
        )
    assert caught.value.hop == "egress gateway"
    assert caught.value.problem == "an entry that should not exist"
    assert [e.request_id for e, _ in caught.value.candidates] == ["rid-7"]


def test_not_through_gateway_passes_with_the_sidecar_entry_when_the_gateway_has_none() -> None:
    sidecar = log_of("target sidecar", _as(s.SIDECAR_PASSTHROUGH, "rid-7"))
    gateway = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL)  # rid-1's entry: another request
    proof = assert_not_through_gateway(
        RequestRef(request_id="rid-7"),
        EgressTarget(HOST, 80),
        sidecar=sidecar,
        gateway=gateway,
        wait=FAST,
        window=0.05,
    )
    assert proof.hop == "target sidecar"
    assert proof.entry.request_id == "rid-7" and proof.entry.upstream_cluster == "PassthroughCluster"


# --- the external host's record of its caller -------------------------------------------------------


def _call(recorder: Recorder, source_ip: str, request_id: str, path: str = "/get") -> None:
    """A request to the recorder from ``source_ip`` (a loopback address), as a proxy would send it."""
    conn = http.client.HTTPConnection("127.0.0.1", recorder.port, timeout=5, source_address=(source_ip, 0))
    try:
        conn.request("GET", path, headers={"Host": HOST, "X-Request-Id": request_id})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    finally:
        conn.close()


def _fetch(recorder: Recorder) -> Sequence[Record]:
    return recorder.records()  # type: ignore[return-value]


def test_the_recorder_records_the_callers_address(recorder_app: Recorder) -> None:
    _call(recorder_app, GATEWAY_IP, "rid-gw")
    _call(recorder_app, WORKLOAD_IP, "rid-direct")
    by_id = {r["headers"]["x-request-id"]: r["client_ip"] for r in recorder_app.records()}
    assert by_id == {"rid-gw": GATEWAY_IP, "rid-direct": WORKLOAD_IP}


def test_a_record_from_the_gateway_is_accepted(recorder_app: Recorder) -> None:
    _call(recorder_app, GATEWAY_IP, "rid-gw")
    record = expect_external_record(
        lambda: _fetch(recorder_app), "rid-gw", from_ips={GATEWAY_IP}, timeout=1.0
    )
    assert record["client_ip"] == GATEWAY_IP
    assert record["headers"]["x-request-id"] == "rid-gw"


def test_a_record_from_the_workload_itself_fails_naming_the_caller(recorder_app: Recorder) -> None:
    # The request reached the external host, but from the workload's own address: it went straight
    # out. Its record exists, so only the caller's address can tell the verdict apart.
    _call(recorder_app, WORKLOAD_IP, "rid-direct")
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_external_record(
            lambda: _fetch(recorder_app), "rid-direct", from_ips={GATEWAY_IP}, hop="recorder", timeout=1.0
        )
    message = str(caught.value)
    assert message.startswith("hop 'recorder': the request x-request-id=rid-direct reached the external host")
    assert f"from {WORKLOAD_IP}:" in message
    assert f"not from the egress gateway ({GATEWAY_IP})" in message
    assert caught.value.hop == "recorder"
    assert [r["client_ip"] for r in caught.value.records] == [WORKLOAD_IP]


def test_the_gateways_record_is_found_among_the_same_requests_other_callers(recorder_app: Recorder) -> None:
    # a retry that went straight out, then the one through the gateway: the gateway's is the proof
    _call(recorder_app, WORKLOAD_IP, "rid-both")
    _call(recorder_app, GATEWAY_IP, "rid-both")
    record = expect_external_record(
        lambda: _fetch(recorder_app), "rid-both", from_ips={GATEWAY_IP, "127.0.0.8"}, timeout=1.0
    )
    assert record["client_ip"] == GATEWAY_IP


def test_a_refused_request_that_reached_the_host_names_its_caller(recorder_app: Recorder) -> None:
    _call(recorder_app, WORKLOAD_IP, "rid-refused")
    expect_no_external_record(lambda: _fetch(recorder_app), "rid-other")
    with pytest.raises(ExternalEvidenceError, match=rf"anyway \(called from {WORKLOAD_IP}:\d+\)"):
        expect_no_external_record(lambda: _fetch(recorder_app), "rid-refused")
