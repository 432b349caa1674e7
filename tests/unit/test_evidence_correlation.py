"""Issue 10, items 2, 3 and 7, in the evidence engine: a TLS request is found by its SNI in its own
time window (never by an inbound entry), a gateway refuses with no route or an RBAC denial and the
external host then has no record, and an absence at a hop counts only once a canary sent through
that hop shows in the same log. The lines are the ones real Envoy wrote (``accesslog_samples``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.accesslog import ISTIO_TEXT, AccessLogEntry
from harness.evidence import (
    EntryLog,
    EvidenceError,
    ExternalEvidenceError,
    HopCheck,
    LinesLogSource,
    RequestRef,
    Wait,
    assert_blocked,
    assert_hops,
    expect_entry,
    expect_no_entry,
    expect_no_external_record,
    gateway_denied,
    gateway_no_route,
    gateway_refused,
    new_canary_token,
    sidecar_direct,
    sidecar_to_gateway,
)
from harness.scenarios import RenderContext, load_catalog, render_request
from harness.scenarios.expect import judge, needs_canary
from harness.tier import Sent
from tests.unit import accesslog_samples as s

REPO = Path(__file__).resolve().parents[2]
FAST = Wait(timeout=0.5, interval=0.02, settle=0.1)
HOST = "external.egress-harness.test"
GATEWAY = "istio-egressgateway.istio-system.svc.cluster.local"
CATALOG = load_catalog(REPO / "scenarios")
CANARY_MISSING = "the gateway's log source shows no entry of a canary sent to it: the absence of the request proves nothing"


def entry(line: str) -> AccessLogEntry:
    parsed = ISTIO_TEXT.parse(line)
    assert parsed is not None
    return parsed


def log_of(hop: str, *lines: str) -> tuple[EntryLog, LinesLogSource]:
    source = LinesLogSource(hop, lines)
    return EntryLog(source, hop=hop), source


def inbound_with(token: str) -> str:
    """The target sidecar's inbound entry of the chain request: its path is the target relay's
    ``/proxy?url=<destination>``, so the destination's path token shows in it too."""
    path = f"/proxy?url=https%3A%2F%2F{HOST}%3A443%2Fget%3Fegh-token%3D{token}"
    return s.SIDECAR_INBOUND_CHAIN.replace(s.INBOUND_PATH, path)


# --- 1. TLS requests: SNI, time window, never an inbound entry ---------------------------------------


def test_a_tls_request_is_found_by_its_sni_in_its_window_and_not_by_its_token() -> None:
    sent_at = datetime.now(UTC)
    token = "3f0c2a1e-0000-4000-8000-000000000001"
    sent = Sent("rid-1", 200, sent_at, path_token=token, answered_at=sent_at + timedelta(milliseconds=300))
    ref = sent.ref(HOST, scheme="https")
    assert (ref.sni, ref.request_id, ref.path_token) == (HOST, None, None)
    assert (ref.since, ref.until) == (sent.sent_at, sent.answered_at)
    inbound = inbound_with(token)
    tcp = s.at(s.TLS_SIDECAR_TO_GATEWAY, sent_at + timedelta(milliseconds=40))
    log, _ = log_of("target sidecar", inbound, tcp)
    found = expect_entry(log, ref, sidecar_to_gateway(port=443), wait=FAST)
    assert found.is_tcp and found.requested_server_name == HOST
    # the token is in the inbound entry only: by it, a TLS request finds nothing of its own
    assert token in inbound and token not in tcp
    assert not sent.ref(HOST).predicate()(entry(inbound)), "an inbound entry was taken as the request's"
    with pytest.raises(EvidenceError, match="no access-log entry"):
        expect_entry(log, sent.ref(HOST), wait=FAST)


def test_a_plain_http_request_keeps_its_token_or_request_id() -> None:
    sent = Sent("rid-1", 200, datetime.now(UTC), path_token="tok")
    assert sent.ref(HOST) == RequestRef(path_token="tok", host=HOST)
    assert Sent("rid-1", 200, datetime.now(UTC)).ref(HOST, scheme="http") == RequestRef(
        request_id="rid-1", host=HOST
    )


def test_inbound_entries_never_belong_to_a_request() -> None:
    inbound = entry(s.SIDECAR_INBOUND_CHAIN)  # x-request-id rid-1, cluster inbound|8080||, the token
    assert not RequestRef(request_id="rid-1").predicate()(inbound)
    assert not RequestRef(path_token="7cb97165-409f-4fcd-a245-11e9a49793d7").predicate()(inbound)
    assert RequestRef(request_id="rid-1").predicate()(entry(s.SIDECAR_TO_GATEWAY))


def test_the_window_allows_for_envoys_milliseconds_and_no_more_than_the_slack() -> None:
    sent_at = datetime(2026, 12, 7, 4, 31, 14, 309_900, tzinfo=UTC)  # Envoy logs this start as .309
    sent = Sent("-", 200, sent_at, answered_at=sent_at + timedelta(milliseconds=200))
    ref = sent.ref(HOST, scheme="https")
    belongs = ref.predicate()
    assert belongs(entry(s.at(s.TLS_SIDECAR_TO_GATEWAY, sent_at)))
    assert not belongs(entry(s.at(s.TLS_SIDECAR_TO_GATEWAY, sent_at + timedelta(seconds=1))))
    assert not belongs(entry(s.at(s.TLS_SIDECAR_TO_GATEWAY, sent_at - timedelta(seconds=1))))
    assert "sni=external.egress-harness.test" in str(ref) and "2026-12-07T04:31:14" in str(ref)


def test_a_second_request_to_the_same_sni_a_moment_later_is_not_taken_for_the_first() -> None:
    t0 = datetime.now(UTC)
    first = Sent("-", 200, t0, answered_at=t0 + timedelta(milliseconds=150))
    # the first went straight out; the second, 0.7 s later, through the gateway
    direct = s.at(s.TLS_SIDECAR_TO_GATEWAY, t0 + timedelta(milliseconds=20)).replace(
        "outbound|443|external-tls|istio-egressgateway.istio-system.svc.cluster.local",
        f"outbound|8443||{HOST}",
    )
    later = s.at(s.TLS_SIDECAR_TO_GATEWAY, t0 + timedelta(milliseconds=700))
    log, _ = log_of("target sidecar", direct, later)
    with pytest.raises(EvidenceError) as info:
        expect_entry(log, first.ref(HOST, scheme="https"), sidecar_to_gateway(port=None), wait=FAST)
    assert "1 entry of the request, none as expected" in str(info.value)
    assert f"(got 'outbound|8443||{HOST}')" in str(info.value)
    second = Sent("-", 200, t0 + timedelta(milliseconds=690), answered_at=t0 + timedelta(milliseconds=800))
    assert expect_entry(log, second.ref(HOST, scheme="https"), sidecar_to_gateway(port=None), wait=FAST)


def test_a_tls_absence_at_the_gateway_is_its_sni_in_its_window() -> None:
    t0 = datetime.now(UTC)
    sent = Sent("-", 200, t0, path_token="tok", answered_at=t0 + timedelta(milliseconds=100))
    seen, _ = log_of("egress gateway", s.at(s.TLS_GATEWAY_TO_EXTERNAL, t0 + timedelta(milliseconds=30)))
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        expect_no_entry(seen, sent.ref(HOST, scheme="https"), window=0.05)
    # the same SNI earlier (another request) is not this request's
    earlier, _ = log_of("egress gateway", s.at(s.TLS_GATEWAY_TO_EXTERNAL, t0 - timedelta(seconds=5)))
    expect_no_entry(earlier, sent.ref(HOST, scheme="https"), window=0.05)


# --- 2. refused at the gateway: no route, or an RBAC denial; nothing at the external host -----------


def test_a_gateway_refusal_is_no_route_or_an_rbac_denial() -> None:
    denied = entry(s.RBAC_GATEWAY_DENIED)
    assert gateway_denied()(denied) and gateway_refused()(denied) and not gateway_no_route()(denied)
    for line in (s.GATEWAY_NO_ROUTE, s.CANARY_GATEWAY):
        assert gateway_refused()(entry(line))
    # the sidecar relays the gateway's 403 (via_upstream): that is not a refusal by the gateway
    relayed = s.SIDECAR_TO_GATEWAY.replace(" 200 - via_upstream ", " 403 - via_upstream ")
    for line in (s.GATEWAY_TO_EXTERNAL, relayed, s.TLS_GATEWAY_TO_EXTERNAL):
        assert not gateway_refused()(entry(line))
    assert "rbac_access_denied" in str(gateway_refused())
    gw, _ = log_of("egress gateway", s.RBAC_GATEWAY_DENIED)
    assert assert_blocked(RequestRef(request_id="rid-x"), gateway=gw, wait=FAST).entry.response_code == 403


def test_the_authz_scenarios_denied_request_is_judged_refused_at_the_gateway() -> None:
    scenario = CATALOG.get("authz-policy-on-egress-gateway")
    request = render_request(
        scenario.requests[1], RenderContext(istio_version="1.30.3", external_host=HOST), source=scenario.file
    )
    assert (request.name, request.expect.blocked, request.expect.via_gateway) == (
        "denied-path",
        "gateway",
        True,
    )
    sidecar_line = s.SIDECAR_TO_GATEWAY.replace(" 200 - via_upstream ", " 403 - via_upstream ").replace(
        "outbound|80|external|", "outbound|80|external-authz|"
    )
    sidecar, _ = log_of("target sidecar", sidecar_line.replace('"rid-1"', '"rid-x"'))
    gateway, _ = log_of("egress gateway", s.RBAC_GATEWAY_DENIED)
    proof = judge(request, RequestRef(request_id="rid-x"), sidecar=sidecar, gateway=gateway, wait=FAST)
    assert [(h.hop, h.entry.response_code) for h in proof] == [
        ("target sidecar", 403),
        ("egress gateway", 403),
    ]


def test_a_refused_request_must_have_no_record_at_the_external_host() -> None:
    records: list[dict[str, Any]] = [
        {"client_ip": "10.0.0.1", "path": "/get?egh-token=other", "headers": {"x-request-id": "rid-2"}}
    ]
    fetched: list[int] = []

    def fetch() -> list[dict[str, Any]]:
        fetched.append(1)
        return records

    expect_no_external_record(fetch, "rid-1", path_token="mine")
    expect_no_external_record(fetch, "rid-1")
    assert fetched, "the external host's records were never read"
    records.append({"client_ip": "172.18.0.2", "path": "/denied?egh-token=mine", "headers": {}})
    with pytest.raises(ExternalEvidenceError) as info:
        expect_no_external_record(fetch, "rid-1", path_token="mine")
    assert info.value.hop == "external host"
    assert str(info.value).startswith(
        "hop 'external host': the refused request with path token 'mine' reached the external host anyway"
    )
    assert "172.18.0.2" in str(info.value)


# --- 3. an absence counts only with a canary in the same log -----------------------------------------


def canary_into(source: LinesLogSource | None) -> Callable[[], RequestRef]:
    """A canary sent through the gateway; ``source`` None: its log source never shows it."""

    def send() -> RequestRef:
        token = new_canary_token()
        if source is not None:
            source.append(s.CANARY_GATEWAY.replace(s.CANARY_TOKEN, token))
        return RequestRef(path_token=token, host=GATEWAY)

    return send


def test_an_absence_counts_only_once_a_canary_shows_the_log_source_live() -> None:
    sidecar, _ = log_of("target sidecar", s.SIDECAR_PASSTHROUGH)
    ref = RequestRef(request_id="rid-2")
    direct = HopCheck(sidecar, sidecar_direct(HOST, 80))

    gateway, source = log_of("egress gateway")
    proof = assert_hops(
        ref,
        [direct, HopCheck(gateway, absent=True, canary=canary_into(source))],
        wait=FAST,
        absence_window=0.05,
    )
    assert [h.hop for h in proof] == ["target sidecar"]

    dead, _ = log_of("egress gateway")  # a source that never shows anything: the absence proves nothing
    with pytest.raises(EvidenceError) as info:
        assert_hops(
            ref,
            [direct, HopCheck(dead, absent=True, canary=canary_into(None))],
            wait=FAST,
            absence_window=0.05,
        )
    assert info.value.hop == "egress gateway"
    assert CANARY_MISSING in str(info.value)
    assert str(info.value).startswith(f"hop 'egress gateway': {CANARY_MISSING}")
    assert "egh-live-" in str(info.value)  # it names the canary it looked for


def test_the_requests_entry_flushed_with_the_canary_still_fails_the_absence() -> None:
    sidecar, _ = log_of("target sidecar", s.SIDECAR_PASSTHROUGH)
    gateway, source = log_of("egress gateway")
    canary = canary_into(source)

    def late() -> RequestRef:
        ref = canary()
        source.append(s.GATEWAY_TO_EXTERNAL.replace('"rid-1"', '"rid-2"'))
        return ref

    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        assert_hops(
            RequestRef(request_id="rid-2"),
            [HopCheck(sidecar, sidecar_direct(HOST, 80)), HopCheck(gateway, absent=True, canary=late)],
            wait=FAST,
            absence_window=0.0,
        )


def test_judge_sends_a_canary_for_an_absence_and_will_not_judge_one_without() -> None:
    scenario = CATALOG.get("sidecar-only-egress")
    request = render_request(
        scenario.requests[0], RenderContext(istio_version="1.30.3", external_host=HOST), source=scenario.file
    )
    assert needs_canary(request.expect)
    line = s.SIDECAR_PASSTHROUGH.replace("PassthroughCluster", f"outbound|80||{HOST}")
    sidecar, _ = log_of("target sidecar", line)
    gateway, source = log_of("egress gateway")
    sent: list[RequestRef] = []

    def canary() -> RequestRef:
        sent.append(canary_into(source)())
        return sent[-1]

    ref = RequestRef(request_id="rid-2")
    judge(request, ref, sidecar=sidecar, gateway=gateway, wait=FAST, absence_window=0.05, canary=canary)
    assert len(sent) == 1
    with pytest.raises(ValueError, match="needs a canary"):
        judge(request, ref, sidecar=sidecar, gateway=gateway, wait=FAST, absence_window=0.05)
    via = CATALOG.get("http-via-egress-gateway").requests[0]
    assert not needs_canary(via.expect)


def test_of_two_entries_of_a_tls_request_the_one_inside_its_own_window_is_taken() -> None:
    t0 = datetime.now(UTC)
    sent = Sent("-", 200, t0, answered_at=t0 + timedelta(milliseconds=100))
    # the previous request's connection started 30 ms before this one was sent (inside the slack)
    previous = s.at(s.TLS_SIDECAR_TO_GATEWAY, t0 - timedelta(milliseconds=30)).replace(
        "127.0.0.1:56710", "127.0.0.1:40001"
    )
    mine = s.at(s.TLS_SIDECAR_TO_GATEWAY, t0 + timedelta(milliseconds=20))
    log, _ = log_of("target sidecar", previous, mine)
    found = expect_entry(log, sent.ref(HOST, scheme="https"), wait=FAST)
    assert found.downstream_remote_address == "127.0.0.1:56710"
