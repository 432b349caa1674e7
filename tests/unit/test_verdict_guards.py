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


class Fetches:
    """The recorder's records as a tier fetches them, counting the fetches; ``hold`` first fetches
    see none (the request has not reached the host yet)."""

    def __init__(self, recorder: Recorder, *, hold: int = 0, drop: tuple[str, ...] = ()) -> None:
        self.recorder, self.hold, self.drop, self.count = recorder, hold, drop, 0

    def __call__(self) -> Sequence[Record]:
        self.count += 1
        if self.count <= self.hold:
            return []
        return [{k: v for k, v in r.items() if k not in self.drop} for r in self.recorder.records()]


def test_the_record_is_awaited_until_the_timeout(recorder_app: Recorder) -> None:
    _call(recorder_app, GATEWAY_IP, "rid-late")
    fetch = Fetches(recorder_app, hold=2)
    record = expect_external_record(fetch, "rid-late", from_ips={GATEWAY_IP}, timeout=5.0, interval=0.01)
    assert record["client_ip"] == GATEWAY_IP and fetch.count == 3
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_external_record(Fetches(recorder_app, hold=2), "rid-late", from_ips={GATEWAY_IP}, timeout=0)
    assert caught.value.records == []


def test_a_record_from_another_caller_fails_at_once(recorder_app: Recorder) -> None:
    # the request has reached the host: waiting longer cannot change who called
    _call(recorder_app, WORKLOAD_IP, "rid-direct")
    fetch = Fetches(recorder_app)
    with pytest.raises(ExternalEvidenceError):
        expect_external_record(fetch, "rid-direct", from_ips={GATEWAY_IP}, timeout=5.0, interval=0.01)
    assert fetch.count == 1


def test_the_failures_name_the_request_the_callers_and_the_expected_ones(recorder_app: Recorder) -> None:
    _call(recorder_app, WORKLOAD_IP, "rid-a", path="/get?egh-token=tok-1")
    _call(recorder_app, "127.0.0.13", "rid-b", path="/get?egh-token=tok-1")
    by_token = Fetches(recorder_app)
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_external_record(
            by_token, "rid-none", path_token="tok-1", from_ips={GATEWAY_IP, "127.0.0.8"}, timeout=0
        )
    message = str(caught.value)
    ports = [r["client_port"] for r in recorder_app.records()]
    assert message == (
        "hop 'external host': the request with path token 'tok-1' reached the external host from "
        f"{WORKLOAD_IP}:{ports[0]}, 127.0.0.13:{ports[1]}, not from the egress gateway (127.0.0.7, 127.0.0.8)"
    )
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_external_record(
            Fetches(recorder_app),
            "rid-a",
            path_token="tok-2",
            from_ips={GATEWAY_IP},
            hop="recorder",
            timeout=0,
        )
    assert str(caught.value) == (
        "hop 'recorder': the request with path token 'tok-2' never reached the external host "
        f"(waited 0s; expected it from {GATEWAY_IP})"
    )
    assert caught.value.hop == "recorder" and caught.value.records == []
    with pytest.raises(ExternalEvidenceError, match=r"the request x-request-id=rid-c never reached"):
        expect_external_record(Fetches(recorder_app), "rid-c", from_ips={GATEWAY_IP}, timeout=0)


def test_a_refused_request_is_watched_for_the_window(recorder_app: Recorder) -> None:
    _call(recorder_app, WORKLOAD_IP, "rid-r", path="/x?egh-token=tok-r")
    # nothing recorded during the window: passes after watching it, sleeping between fetches
    quiet = Fetches(recorder_app, hold=1000)
    expect_no_external_record(quiet, "rid-r", window=0.2, interval=0.01)
    assert quiet.count > 2
    # a record that shows during the window fails, whenever it shows
    with pytest.raises(ExternalEvidenceError):
        expect_no_external_record(Fetches(recorder_app, hold=2), "rid-r", window=0.5, interval=0.01)
    # without a window, one look
    once = Fetches(recorder_app, hold=2)
    expect_no_external_record(once, "rid-r")
    assert once.count == 1
    # a record without its port still names its caller
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_no_external_record(Fetches(recorder_app, drop=("client_port",)), "x", path_token="tok-r")
    assert str(caught.value) == (
        "hop 'external host': the refused request with path token 'tok-r' reached the external host anyway "
        f"(called from {WORKLOAD_IP}:?)"
    )
    _call(recorder_app, GATEWAY_IP, "rid-r")
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_no_external_record(Fetches(recorder_app), "rid-r", hop="recorder")
    ports = [r["client_port"] for r in recorder_app.records()]
    assert str(caught.value).endswith(f"(called from {WORKLOAD_IP}:{ports[0]}, {GATEWAY_IP}:{ports[1]})")
    assert caught.value.hop == "recorder" and len(caught.value.records) == 2
