"""The evidence engine's checks, each pinned by what it is for (issue 20: mutation testing).

The lines are the recorded Istio/Envoy lines of ``accesslog_samples``; a variant changes one field
of a recorded entry to show that the predicate looks at that field. A log whose lines show up only
at a later read (``LaterSource``) tells whether an assertion polls for as long as it was told: no
clock is measured.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.accesslog import ISTIO_TEXT, AccessLogEntry
from harness.evidence import (
    CANARY_MISSING,
    EgressTarget,
    EntryLog,
    EvidenceError,
    FileLogSource,
    HopCheck,
    LinesLogSource,
    RequestRef,
    Wait,
    assert_blocked,
    assert_hops,
    assert_not_through_gateway,
    assert_through_gateway,
    expect_absent,
    expect_canary,
    expect_entry,
    expect_no_entry,
    gateway_denied,
    gateway_forwarded,
    gateway_forwarded_http,
    gateway_no_route,
    gateway_refused,
    sidecar_blocked,
    sidecar_direct,
    sidecar_to_gateway,
)
from harness.evidence import predicates as p
from harness.evidence.assertions import parse_time
from tests.unit import accesslog_samples as s

HOST = "external.egress-harness.test"
GATEWAY = "istio-egressgateway.istio-system.svc.cluster.local"
#: Gives up at once: the first read decides.
NOW = Wait(timeout=0, interval=0.01, settle=0)
#: Long enough for a few reads.
FEW = Wait(timeout=5, interval=0.01, settle=0)


def entry(line: str) -> AccessLogEntry:
    parsed = ISTIO_TEXT.parse(line)
    assert parsed is not None
    return parsed


class LaterSource(LinesLogSource):
    """A log whose lines appear at its ``after``-th read (1: at once), as a flush would write them."""

    def __init__(self, name: str, lines: tuple[str, ...], *, after: int) -> None:
        super().__init__(name)
        self._held = list(lines)
        self._after = after
        self.reads = 0

    def read_new(self) -> list[str]:
        self.reads += 1
        if self.reads == self._after:
            self.append(*self._held)
        return super().read_new()


def log_of(hop: str, *lines: str, after: int = 1) -> EntryLog:
    return EntryLog(LaterSource(hop, lines, after=after), hop=hop)


# --- egress predicates: each part of each pattern matters ---------------------------------------------


def test_sidecar_blocked_needs_every_part_of_the_http_refusal_or_of_the_black_hole() -> None:
    http = entry(s.SIDECAR_BLOCKED)
    tcp = entry(s.SIDECAR_BLACKHOLE)
    assert sidecar_blocked()(http) and sidecar_blocked()(tcp)
    assert sidecar_blocked()(entry(s.TLS_SIDECAR_BLACKHOLE))
    for changed in (
        http._replace(response_code=503),
        http._replace(response_code_details="via_upstream"),
        http._replace(route_name="allow_any"),
        tcp._replace(response_flags=None),
        tcp._replace(upstream_cluster="PassthroughCluster"),
    ):
        assert not sidecar_blocked()(changed), changed


def test_gateway_no_route_over_http_and_tls_needs_each_part() -> None:
    http = entry(s.GATEWAY_NO_ROUTE)
    tls = AccessLogEntry(response_code=0, response_flags="NR", response_code_details="filter_chain_not_found")
    assert gateway_no_route()(http) and gateway_no_route()(tls)
    for changed in (
        http._replace(response_code=200),
        http._replace(response_flags=None),
        http._replace(response_code_details="via_upstream"),
        tls._replace(response_code=502),
        tls._replace(response_flags="UH"),
        tls._replace(response_code_details="route_not_found"),
    ):
        assert not gateway_no_route()(changed), changed
    assert (
        gateway_no_route()
        .mismatches(entry(s.GATEWAY_TO_EXTERNAL))[0]
        .startswith("none of: response_code == 404 (got 200)")
    )


def test_gateway_denied_is_a_403_from_rbac() -> None:
    denied = entry(s.RBAC_GATEWAY_DENIED)
    assert gateway_denied()(denied) and gateway_refused()(denied)
    assert not gateway_denied()(denied._replace(response_code=200))
    assert not gateway_denied()(denied._replace(response_code_details="via_upstream"))
    assert gateway_refused()(entry(s.GATEWAY_NO_ROUTE))
    assert not gateway_refused()(entry(s.GATEWAY_TO_EXTERNAL))


def test_sidecar_direct_is_passthrough_or_the_hosts_own_cluster_on_its_port() -> None:
    direct = entry(s.SIDECAR_PASSTHROUGH)
    own = direct._replace(upstream_cluster=f"outbound|80||{HOST}")
    assert sidecar_direct(HOST, 80)(direct) and sidecar_direct(HOST, 80)(own)
    assert not sidecar_direct(HOST, 8080)(own)
    assert not sidecar_direct("other.example", 80)(own)
    assert not sidecar_direct(HOST, 80)(entry(s.SIDECAR_TO_GATEWAY))


def test_sidecar_to_gateway_checks_the_port_the_service_and_the_subset() -> None:
    http = entry(s.SIDECAR_TO_GATEWAY)  # port 80, subset "external"
    tls = entry(s.TLS_SIDECAR_TO_GATEWAY)  # port 443, subset "external-tls"
    assert sidecar_to_gateway()(http) and not sidecar_to_gateway()(tls)
    assert sidecar_to_gateway(port=443)(tls) and not sidecar_to_gateway(port=443)(http)
    assert sidecar_to_gateway(port=None)(http) and sidecar_to_gateway(port=None)(tls)
    assert sidecar_to_gateway(subset="external")(http)
    assert not sidecar_to_gateway(subset="other")(http)
    assert not sidecar_to_gateway(gateway_service="other-gateway.ns.svc.cluster.local")(http)


def test_gateway_forwarded_checks_status_port_subset_and_for_http_the_authority() -> None:
    gw = entry(s.GATEWAY_TO_EXTERNAL)  # 200, outbound|80||HOST, authority HOST
    assert gateway_forwarded(HOST, 80)(gw)
    assert not gateway_forwarded(HOST, 80)(gw._replace(response_code=503))
    assert gateway_forwarded(HOST, 80, status=None)(gw._replace(response_code=503))
    assert not gateway_forwarded(HOST, 8080)(gw)
    assert not gateway_forwarded(HOST, 80, subset="v1")(gw)
    assert gateway_forwarded(HOST, 80, subset=None)(gw)
    assert (
        str(gateway_forwarded(HOST, 80))
        == f"response_code == 200 and upstream_cluster == outbound|80|*|{HOST}"
    )
    assert gateway_forwarded_http(HOST, 80)(gw)
    assert gateway_forwarded_http(HOST, 80)(gw._replace(authority=f"{HOST}:80"))
    assert not gateway_forwarded_http(HOST, 80)(gw._replace(authority="other.example"))
    assert not gateway_forwarded_http(HOST, 80)(gw._replace(response_code=404))
    assert not gateway_forwarded_http(HOST, 80, subset="v1")(gw)
    assert gateway_forwarded_http(HOST, 80, status=None)(gw._replace(response_code=503))
    # the port is checked in the cluster and in the authority, each on its own
    on_8080 = gw._replace(upstream_cluster=f"outbound|8080||{HOST}", authority=f"{HOST}:8080")
    assert gateway_forwarded_http(HOST, 8080)(on_8080)
    assert not gateway_forwarded_http(HOST, 8080)(on_8080._replace(upstream_cluster=f"outbound|80||{HOST}"))
    assert not gateway_forwarded_http(HOST, 8080)(on_8080._replace(authority=f"{HOST}:9999"))
    assert not gateway_forwarded_http(HOST, 8080)(gw._replace(upstream_cluster=f"outbound|80||{HOST}"))


# --- the path assertions pass the caller's wait and window on ---------------------------------------


def test_assert_through_gateway_polls_as_long_as_told() -> None:
    def logs(after: int) -> tuple[EntryLog, EntryLog]:
        return log_of("target sidecar", s.SIDECAR_TO_GATEWAY, after=after), log_of(
            "egress gateway", s.GATEWAY_TO_EXTERNAL, after=after
        )

    sidecar, gateway = logs(after=3)
    proof = assert_through_gateway(
        RequestRef(request_id="rid-1"), EgressTarget(HOST, 80), gateway=gateway, sidecar=sidecar, wait=FEW
    )
    assert [(h.hop, h.entry.request_id) for h in proof] == [
        ("target sidecar", "rid-1"),
        ("egress gateway", "rid-1"),
    ]
    sidecar, gateway = logs(after=3)
    with pytest.raises(EvidenceError) as caught:
        assert_through_gateway(
            RequestRef(request_id="rid-1"), EgressTarget(HOST, 80), gateway=gateway, sidecar=sidecar, wait=NOW
        )
    assert caught.value.hop == "target sidecar"
    # without the sidecar's log, the gateway's alone
    with pytest.raises(EvidenceError) as caught:
        assert_through_gateway(
            RequestRef(request_id="rid-1"), EgressTarget(HOST, 80), gateway=logs(after=3)[1], wait=NOW
        )
    assert caught.value.hop == "egress gateway"


def test_assert_through_gateway_checks_the_gateway_port_and_status_it_is_given() -> None:
    # TLS origination: the sidecar sends plain HTTP to the gateway's port 443 (ISTIO_MUTUAL)
    tls_sidecar = s.SIDECAR_TO_GATEWAY.replace('"rid-1"', '"rid-t"').replace("outbound|80|", "outbound|443|")
    gateway_line = s.GATEWAY_TO_EXTERNAL.replace('"rid-1"', '"rid-t"')
    ref = RequestRef(request_id="rid-t")

    def run(**kw: object) -> list[str]:
        proof = assert_through_gateway(
            ref,
            EgressTarget(HOST, 80),
            gateway=log_of("egress gateway", gateway_line),
            sidecar=log_of("target sidecar", tls_sidecar),
            wait=NOW,
            **kw,  # type: ignore[arg-type]
        )
        return [h.hop for h in proof]

    assert run(gateway_port=443) == ["target sidecar", "egress gateway"]
    with pytest.raises(EvidenceError, match="hop 'target sidecar'"):
        run()  # port 80 by default: the sidecar went to 443
    with pytest.raises(EvidenceError, match="hop 'target sidecar'"):
        run(gateway_port=443, gateway_service="other-gateway.ns.svc.cluster.local")
    with pytest.raises(EvidenceError, match="hop 'egress gateway'"):
        run(gateway_port=443, status=201)
    assert run(gateway_port=443, status=None) == ["target sidecar", "egress gateway"]
    with pytest.raises(EvidenceError, match="hop 'egress gateway'"):
        assert_through_gateway(
            ref,
            EgressTarget(HOST, 80, subset="v1"),
            gateway=log_of("egress gateway", gateway_line),
            wait=NOW,
        )
    with pytest.raises(EvidenceError, match="hop 'egress gateway'"):
        assert_through_gateway(
            ref, EgressTarget(HOST, 8080), gateway=log_of("egress gateway", gateway_line), wait=NOW
        )


def test_assert_not_through_gateway_polls_the_sidecar_and_watches_the_gateway_for_its_window() -> None:
    ref = RequestRef(request_id="rid-2")
    direct = s.SIDECAR_PASSTHROUGH
    late_gateway = s.GATEWAY_TO_EXTERNAL.replace('"rid-1"', '"rid-2"')
    proof = assert_not_through_gateway(
        ref,
        EgressTarget(HOST, 80),
        sidecar=log_of("target sidecar", direct, after=3),
        gateway=log_of("egress gateway", late_gateway, after=3),
        wait=FEW,
        window=0,  # one read of the gateway's log: its entry comes later
    )
    assert (proof.hop, proof.entry.request_id) == ("target sidecar", "rid-2")
    with pytest.raises(EvidenceError) as caught:
        assert_not_through_gateway(
            ref,
            EgressTarget(HOST, 80),
            sidecar=log_of("target sidecar", direct, after=3),
            gateway=log_of("egress gateway"),
            wait=NOW,
            window=0,
        )
    assert caught.value.hop == "target sidecar"
    with pytest.raises(EvidenceError) as caught:
        assert_not_through_gateway(
            ref,
            EgressTarget(HOST, 80),
            sidecar=log_of("target sidecar", direct),
            gateway=log_of("egress gateway", late_gateway, after=3),
            wait=NOW,
            window=2,  # several reads: the entry shows
        )
    assert caught.value.hop == "egress gateway"
    # the sidecar's entry must be direct to the target's own host and port
    with pytest.raises(EvidenceError, match="hop 'target sidecar'"):
        assert_not_through_gateway(
            ref,
            EgressTarget(HOST, 80),
            sidecar=log_of("target sidecar", s.SIDECAR_TO_GATEWAY.replace('"rid-1"', '"rid-2"')),
            gateway=log_of("egress gateway"),
            wait=NOW,
            window=0,
        )


def test_assert_not_through_gateway_accepts_the_hosts_own_cluster_on_its_port() -> None:
    # with a ServiceEntry and no gateway routing the sidecar goes to outbound|P||H, not passthrough
    own = s.SIDECAR_PASSTHROUGH.replace("PassthroughCluster", f"outbound|80||{HOST}")
    ref = RequestRef(request_id="rid-2")
    proof = assert_not_through_gateway(
        ref,
        EgressTarget(HOST, 80),
        sidecar=log_of("target sidecar", own),
        gateway=log_of("gw"),
        wait=NOW,
        window=0,
    )
    assert proof.entry.upstream_cluster == f"outbound|80||{HOST}"
    with pytest.raises(EvidenceError, match="hop 'target sidecar'"):
        assert_not_through_gateway(
            ref,
            EgressTarget(HOST, 8080),
            sidecar=log_of("target sidecar", own),
            gateway=log_of("gw"),
            wait=NOW,
            window=0,
        )


def test_assert_not_through_gateway_takes_the_canary_and_its_wait() -> None:
    ref = RequestRef(request_id="rid-2")
    canary_ref = RequestRef(path_token=s.CANARY_TOKEN)
    sent: list[str] = []

    def canary() -> RequestRef:
        sent.append("canary")
        return canary_ref

    proof = assert_not_through_gateway(
        ref,
        EgressTarget(HOST, 80),
        sidecar=log_of("target sidecar", s.SIDECAR_PASSTHROUGH),
        gateway=log_of("egress gateway", s.CANARY_GATEWAY, after=3),
        wait=FEW,
        window=0,
        canary=canary,
    )
    assert proof.hop == "target sidecar" and sent == ["canary"]
    with pytest.raises(EvidenceError) as caught:
        assert_not_through_gateway(
            ref,
            EgressTarget(HOST, 80),
            sidecar=log_of("target sidecar", s.SIDECAR_PASSTHROUGH),
            gateway=log_of("egress gateway", s.CANARY_GATEWAY, after=3),
            wait=NOW,
            window=0,
            canary=canary,
        )
    assert caught.value.hop == "egress gateway" and caught.value.problem == CANARY_MISSING


def test_assert_blocked_polls_as_long_as_told_and_names_the_hop() -> None:
    ref = RequestRef(request_id="rid-3")
    proof = assert_blocked(ref, sidecar=log_of("target sidecar", s.SIDECAR_BLOCKED, after=3), wait=FEW)
    assert (proof.hop, proof.entry.route_name) == ("target sidecar", "block_all")
    with pytest.raises(EvidenceError):
        assert_blocked(ref, sidecar=log_of("target sidecar", s.SIDECAR_BLOCKED, after=3), wait=NOW)
    with pytest.raises(EvidenceError, match="hop 'target sidecar'"):
        assert_blocked(
            ref, sidecar=log_of("target sidecar", s.SIDECAR_PASSTHROUGH.replace("rid-2", "rid-3")), wait=NOW
        )
    ref4 = RequestRef(request_id="rid-4")
    proof = assert_blocked(ref4, gateway=log_of("egress gateway", s.GATEWAY_NO_ROUTE, after=3), wait=FEW)
    assert (proof.hop, proof.entry.response_code) == ("egress gateway", 404)
    with pytest.raises(EvidenceError):
        assert_blocked(ref4, gateway=log_of("egress gateway", s.GATEWAY_NO_ROUTE, after=3), wait=NOW)
    with pytest.raises(EvidenceError, match="hop 'egress gateway'"):
        assert_blocked(
            ref4,
            gateway=log_of("egress gateway", s.GATEWAY_NO_ROUTE.replace(" 404 NR ", " 200 - ")),
            wait=NOW,
        )
    with pytest.raises(ValueError, match=r"^assert_blocked needs the sidecar's or the gateway's log$"):
        assert_blocked(ref4)


def test_assert_hops_passes_its_wait_and_absence_window_and_the_checks_expectation() -> None:
    ref = RequestRef(request_id="rid-1")
    later = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL, after=3)
    with pytest.raises(EvidenceError):
        assert_hops(ref, [HopCheck(later)], wait=NOW)
    later = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL, after=3)
    [proof] = assert_hops(ref, [HopCheck(later)], wait=FEW)
    assert (proof.hop, proof.entry.request_id) == ("egress gateway", "rid-1")
    # an absent hop: its own expectation decides which entries count, for the window given
    gw = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL)
    assert assert_hops(ref, [HopCheck(gw, p.status(404), absent=True)], wait=NOW, absence_window=0) == []
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        assert_hops(
            ref, [HopCheck(log_of("egress gateway", s.GATEWAY_TO_EXTERNAL), absent=True)], absence_window=0
        )
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        assert_hops(
            ref,
            [HopCheck(log_of("egress gateway", s.GATEWAY_TO_EXTERNAL, after=3), absent=True)],
            wait=NOW,
            absence_window=2,
        )
    # without absence_window, the wait's settle is the window
    assert (
        assert_hops(
            ref,
            [HopCheck(log_of("egress gateway", s.GATEWAY_TO_EXTERNAL, after=3), absent=True)],
            wait=Wait(timeout=0, interval=0.01, settle=0),
        )
        == []
    )
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        assert_hops(
            ref,
            [HopCheck(log_of("egress gateway", s.GATEWAY_TO_EXTERNAL, after=3), absent=True)],
            wait=Wait(timeout=0, interval=0.01, settle=2),
        )
    # a canary of an absent hop goes with it, and is awaited with the wait
    with pytest.raises(EvidenceError) as caught:
        assert_hops(
            ref,
            [
                HopCheck(
                    log_of("egress gateway", s.CANARY_GATEWAY, after=3),
                    absent=True,
                    canary=lambda: RequestRef(path_token=s.CANARY_TOKEN),
                )
            ],
            wait=NOW,
            absence_window=0,
        )
    assert caught.value.problem == CANARY_MISSING
    assert (
        assert_hops(
            ref,
            [
                HopCheck(
                    log_of("egress gateway", s.CANARY_GATEWAY, after=3),
                    absent=True,
                    canary=lambda: RequestRef(path_token=s.CANARY_TOKEN),
                )
            ],
            wait=FEW,
            absence_window=0,
        )
        == []
    )


# --- expect_no_entry / expect_absent / expect_canary --------------------------------------------------


def test_expect_no_entry_watches_for_the_whole_window_and_says_what_it_found() -> None:
    ref = RequestRef(request_id="rid-1")
    expect_no_entry(log_of("gw", s.GATEWAY_TO_EXTERNAL, after=3), ref, window=0)
    with pytest.raises(EvidenceError) as caught:
        expect_no_entry(
            log_of("egress gateway", s.NOISE[0], s.GATEWAY_TO_EXTERNAL, after=3),
            ref,
            window=0.5,
            interval=0.01,
        )
    err = caught.value
    assert err.hop == "egress gateway" and err.request is ref
    assert err.problem == "an entry that should not exist" and err.scanned == 1
    assert err.expected == "no entry with any entry"
    assert [(e.request_id, why) for e, why in err.candidates] == [("rid-1", ["matched: any entry"])]
    assert str(err).splitlines()[:3] == [
        "hop 'egress gateway': an entry that should not exist for request x-request-id=rid-1",
        "  expected: no entry with any entry",
        "  scanned:  1 entries (1 other lines skipped) from egress gateway",
    ]
    # only the entries that pass the expectation count
    expect_no_entry(log_of("gw", s.GATEWAY_TO_EXTERNAL), ref, p.status(404), window=0)
    with pytest.raises(EvidenceError, match=r"expected: no entry with response_code == 200"):
        expect_no_entry(log_of("gw", s.GATEWAY_TO_EXTERNAL), ref, p.status(200), window=0)


def test_expect_absent_keeps_the_expectation_and_the_canarys_wait() -> None:
    ref = RequestRef(request_id="rid-1")
    canary_ref = RequestRef(path_token=s.CANARY_TOKEN)
    assert expect_absent(log_of("gw", s.GATEWAY_TO_EXTERNAL), ref, p.status(404), window=0) is None
    seen = expect_absent(
        log_of("gw", s.GATEWAY_TO_EXTERNAL, s.CANARY_GATEWAY),
        ref,
        p.status(404),
        window=0,
        canary=lambda: canary_ref,
    )
    assert seen is not None and seen.path == f"/{s.CANARY_TOKEN}"
    # the request's entry flushed with the canary (both show at the third read) still fails
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        expect_absent(
            log_of("gw", s.GATEWAY_TO_EXTERNAL, s.CANARY_GATEWAY, after=3),
            ref,
            window=0,
            canary=lambda: canary_ref,
            wait=FEW,
        )
    # ...unless it does not pass the expectation
    seen = expect_absent(
        log_of("gw", s.GATEWAY_TO_EXTERNAL, s.CANARY_GATEWAY, after=3),
        ref,
        p.status(404),
        window=0,
        canary=lambda: canary_ref,
        wait=FEW,
    )
    assert seen is not None
    with pytest.raises(EvidenceError, match="no entry of a canary"):
        expect_absent(
            log_of("gw", s.CANARY_GATEWAY, after=3), ref, window=0, canary=lambda: canary_ref, wait=NOW
        )


def test_a_missing_canary_fails_for_the_request_naming_the_hop_and_the_canary() -> None:
    ref = RequestRef(request_id="rid-9")
    canary_ref = RequestRef(path_token=s.CANARY_TOKEN)
    log = log_of("egress gateway", s.NOISE[0], s.GATEWAY_TO_EXTERNAL)
    with pytest.raises(EvidenceError) as caught:
        expect_canary(log, canary_ref, ref, wait=NOW)
    err = caught.value
    assert (err.hop, err.request, err.problem, err.scanned) == ("egress gateway", ref, CANARY_MISSING, 1)
    assert err.expected == f"an entry of the canary (path token {s.CANARY_TOKEN!r}), any status, within 0s"
    assert [e.request_id for e in err.nearest] == ["rid-1"]
    lines = str(err).splitlines()
    assert lines[0] == f"hop 'egress gateway': {CANARY_MISSING} for request x-request-id=rid-9"
    assert lines[2] == "  scanned:  1 entries (1 other lines skipped) from egress gateway"
    assert isinstance(err.__cause__, EvidenceError)
    # the canary's entry, once it shows, whatever its status
    later = log_of("egress gateway", s.CANARY_GATEWAY, after=3)
    assert expect_canary(later, canary_ref, ref, wait=FEW).response_code == 404


# --- RequestRef ---------------------------------------------------------------------------------------


T0 = datetime(2026, 11, 28, 7, 0, 4, tzinfo=UTC)  # GATEWAY_TLS's start time


def test_wait_accepts_zero_timeout_and_settle_and_refuses_negatives() -> None:
    assert Wait(timeout=0, interval=0.01, settle=0) == NOW
    for bad in ({"timeout": -0.1}, {"interval": 0}, {"settle": -0.1}):
        with pytest.raises(ValueError, match="Wait needs timeout >= 0, interval > 0, settle >= 0"):
            Wait(**bad)  # type: ignore[arg-type]


def test_parse_time_reads_envoys_and_istiods_times_as_utc() -> None:
    assert parse_time("2026-11-28T07:00:04.000Z") == T0
    assert parse_time("2026-11-28T07:00:04") == T0  # no zone: UTC
    assert parse_time("2026-11-28T08:00:04+01:00") == T0
    assert parse_time("2026-11-28T07:00:04").tzinfo is not None  # type: ignore[union-attr]
    assert parse_time("yesterday") is None and parse_time("") is None and parse_time(None) is None


def test_for_request_finds_http_by_token_or_id_and_tls_by_sni_and_time() -> None:
    assert RequestRef.for_request(request_id="r", path_token="t", host=HOST) == RequestRef(
        path_token="t", host=HOST
    )
    assert RequestRef.for_request(request_id="r", host=HOST) == RequestRef(request_id="r", host=HOST)
    tls = RequestRef.for_request(
        scheme="https", host=HOST, request_id="r", sent_at=T0, answered_at=T0, slack=0.5
    )
    assert (tls.sni, tls.since, tls.until, tls.slack, tls.request_id, tls.path_token) == (
        HOST,
        T0,
        T0,
        0.5,
        None,
        None,
    )
    with pytest.raises(
        ValueError, match=r"^a TLS request is found by its SNI and when it was sent: give host and sent_at$"
    ):
        RequestRef.for_request(scheme="https", host=HOST)
    with pytest.raises(ValueError, match="give host and sent_at"):
        RequestRef.for_request(scheme="https", sent_at=T0)
    with pytest.raises(
        ValueError, match=r"^an HTTP request is found by its path token or its x-request-id: give one$"
    ):
        RequestRef.for_request(host=HOST)


def test_a_ref_says_what_it_looks_for() -> None:
    assert str(RequestRef(request_id="r", path_token="t")) == "x-request-id=r"
    assert str(RequestRef(path_token="t")) == "path token 't'"
    assert str(RequestRef(sni=HOST)) == f"TCP sni={HOST}"
    assert str(RequestRef(cluster="c")) == "TCP cluster=c"
    assert (
        str(RequestRef(sni=HOST, cluster="c", since=T0, until=T0 + timedelta(seconds=1), slack=0.25))
        == f"TCP sni={HOST} cluster=c started within [2026-11-28T07:00:03.750Z, 2026-11-28T07:00:05.250Z]"
    )
    assert (
        str(RequestRef(sni=HOST, since=T0, slack=0))
        == f"TCP sni={HOST} started within [2026-11-28T07:00:04.000Z, ...]"
    )
    assert (
        str(RequestRef(sni=HOST, until=T0, slack=0))
        == f"TCP sni={HOST} started within [..., 2026-11-28T07:00:04.000Z]"
    )
    # a zone other than UTC is printed in UTC, as Envoy prints start times
    plus_one = T0.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+01:00").tzinfo)
    assert str(RequestRef(sni=HOST, since=plus_one, slack=0)).endswith("[2026-11-28T07:00:04.000Z, ...]")


def test_the_window_includes_its_bounds_and_reaches_the_slack() -> None:
    tls = entry(s.GATEWAY_TLS)  # started at T0
    assert RequestRef(sni=HOST, since=T0, until=T0, slack=0).predicate()(tls)
    assert RequestRef(sni=HOST, since=T0 + timedelta(seconds=1), slack=1).predicate()(tls)
    assert RequestRef(sni=HOST, until=T0 - timedelta(seconds=1), slack=1).predicate()(tls)
    assert not RequestRef(sni=HOST, since=T0 + timedelta(seconds=1), slack=0.5).predicate()(tls)
    assert not RequestRef(sni=HOST, until=T0 - timedelta(seconds=1), slack=0.5).predicate()(tls)
    assert not RequestRef(sni="other.example", since=T0, slack=1).predicate()(tls)
    assert not RequestRef(sni=HOST, since=T0, slack=1).predicate()(tls._replace(start_time=None))
    assert RequestRef(cluster=f"outbound|443||{HOST}").predicate()(tls)
    assert not RequestRef(cluster=f"outbound|80||{HOST}").predicate()(tls)
    window = RequestRef(sni=HOST, since=T0, until=T0, slack=0).predicate()
    assert window.mismatches(tls._replace(start_time="2026-11-28T07:00:05.000Z")) == [
        "start_time within [2026-11-28T07:00:04.000Z, 2026-11-28T07:00:04.000Z]"
    ]
    open_ended = RequestRef(sni=HOST, until=T0, slack=0).predicate()
    assert open_ended.mismatches(tls._replace(start_time="2026-11-28T07:00:05.000Z")) == [
        "start_time within [..., 2026-11-28T07:00:04.000Z]"
    ]


def test_closest_first_puts_the_entries_inside_the_window_first() -> None:
    at = [T0 + timedelta(milliseconds=ms) for ms in (-300, 0, 200, 500, -100)]
    entries = [AccessLogEntry(start_time=t.isoformat(), request_id=str(i)) for i, t in enumerate(at)]
    entries.append(AccessLogEntry(start_time=None, request_id="none"))
    ref = RequestRef(sni=HOST, since=T0, until=T0 + timedelta(milliseconds=200), slack=1)
    assert [e.request_id for e in ref.closest_first(entries)] == ["1", "2", "4", "0", "3", "none"]
    early_only = RequestRef(sni=HOST, since=T0, slack=1)
    assert [e.request_id for e in early_only.closest_first(entries)] == ["1", "2", "3", "4", "0", "none"]
    late_only = RequestRef(sni=HOST, until=T0, slack=1)
    assert [e.request_id for e in late_only.closest_first(entries)] == ["0", "1", "4", "2", "3", "none"]
    assert RequestRef(sni=HOST).closest_first(entries) == entries


def test_nearest_ranks_id_token_host_sni_and_cluster() -> None:
    base = AccessLogEntry()
    entries = [
        base._replace(request_id="0"),  # nothing alike
        base._replace(request_id="rid", authority="x"),  # the id: 8
        base._replace(request_id="2", path="/a?tok"),  # the token: 8
        base._replace(request_id="3", authority=f"{HOST}:80"),  # the host as authority: 4
        base._replace(request_id="4", requested_server_name=HOST),  # the SNI: 1 over HTTP, 4 over TCP
        base._replace(request_id="5", upstream_cluster=f"outbound|443||{HOST}"),  # the host's cluster: 2
        base._replace(request_id="6", upstream_cluster="c"),  # the ref's cluster: 2
    ]
    by_id = RequestRef(request_id="rid", host=HOST, cluster="c")
    assert [e.request_id for e in by_id.nearest(entries)] == ["rid", "3", "6", "5", "4"]
    by_token = RequestRef(path_token="tok", host=HOST)
    assert [e.request_id for e in by_token.nearest(entries, limit=3)] == ["2", "3", "5"]
    by_sni = RequestRef(sni=HOST)
    assert [e.request_id for e in by_sni.nearest(entries)] == ["4", "3", "5"]
    # nothing alike: the last few entries of the log
    assert [e.request_id for e in RequestRef(request_id="zzz").nearest(entries)] == ["4", "5", "6"]
    assert [e.request_id for e in RequestRef(request_id="zzz").nearest(entries, limit=2)] == ["5", "6"]


def test_an_evidence_error_without_entries_says_the_log_has_none() -> None:
    ref = RequestRef(request_id="rid-1")
    with pytest.raises(EvidenceError) as caught:
        expect_entry(log_of("egress gateway"), ref, wait=NOW)
    assert str(caught.value).splitlines() == [
        "hop 'egress gateway': no access-log entry within 0s for request x-request-id=rid-1",
        "  expected: any entry",
        "  scanned:  0 entries (0 other lines skipped) from egress gateway",
        "  the log has no access-log entries at all",
    ]
    with pytest.raises(EvidenceError) as caught:
        expect_entry(
            log_of("egress gateway", s.GATEWAY_TO_EXTERNAL, s.GATEWAY_NO_ROUTE),
            RequestRef(request_id="rid-4"),
            p.status(200),
            wait=NOW,
        )
    assert caught.value.problem == "1 entry of the request, none as expected"
    assert str(caught.value).splitlines()[3:] == [
        "  entries of this request that did not match:",
        f"    {entry(s.GATEWAY_NO_ROUTE)._replace(source='egress gateway').short()}",
        "      - response_code == 200 (got 404)",
    ]
    twice = log_of("egress gateway", s.GATEWAY_NO_ROUTE, s.GATEWAY_NO_ROUTE)
    with pytest.raises(EvidenceError, match="2 entries of the request, none as expected"):
        expect_entry(twice, RequestRef(request_id="rid-4"), p.status(200), wait=NOW)


# --- predicates: what a failure message says ----------------------------------------------------------


def test_a_predicates_description_and_mismatches_are_its_words() -> None:
    tcp, http = entry(s.GATEWAY_TLS), entry(s.GATEWAY_TO_EXTERNAL)
    assert p.tcp().mismatches(tcp) == [] and p.tcp().mismatches(http) == ["a TCP entry"]
    assert p.http().mismatches(http) == [] and p.http().mismatches(tcp) == ["an HTTP entry"]
    assert str(p.field_matches("upstream_host", r"172\..*")) == r"upstream_host ~ /172\..*/"
    assert str(p.flags()) == "no response flags"
    assert str(p.flags("UF", "NR")) == "response_flags has NR,UF"
    assert str(p.authority(HOST)) == f"authority == {HOST}"
    assert str(p.authority(HOST, 80)) == f"authority == {HOST}:80"
    assert p.flags().mismatches(entry(s.GATEWAY_NO_ROUTE)) == ["no response flags (got 'NR')"]
    # an any_of names each alternative's own mismatches, an all_of's joined by '/'
    either = p.any_of(p.all_of(p.status(503), p.route("r")), p.status(404))
    assert either.mismatches(http) == [
        "none of: response_code == 503 (got 200)/route_name == 'r' (got None); response_code == 404 (got 200)"
    ]


def test_authority_accepts_the_default_ports_bare_and_nothing_else() -> None:
    bare = AccessLogEntry(authority=HOST)
    assert p.authority(HOST, 80)(bare) and p.authority(HOST, 443)(bare)
    assert not p.authority(HOST, 8443)(bare) and not p.authority(HOST, 444)(bare)
    assert p.authority(HOST, 8443)(AccessLogEntry(authority=f"{HOST}:8443"))
    assert p.authority(HOST)(AccessLogEntry(authority=f"{HOST}:8443")) and p.authority(HOST)(bare)
    assert not p.authority(HOST)(AccessLogEntry(authority="other.example"))
    assert not p.authority(HOST)(AccessLogEntry(authority=f"{HOST}.evil"))
    assert not p.authority(HOST)(AccessLogEntry()) and not p.authority(HOST, 80)(AccessLogEntry())


# --- the file source -----------------------------------------------------------------------------------


def test_a_replaced_log_file_is_read_from_its_start(tmp_path: Path) -> None:
    # kubelet's rotation or a restarted container: a new file (new inode) under the same name, here
    # longer than what was read of the old one
    path = tmp_path / "gw.log"
    path.write_text("old 1\n")
    src = FileLogSource(path)
    assert src.read_new() == ["old 1"]
    fresh = tmp_path / "gw.log.new"
    fresh.write_text("new 1\nnew 2\nnew 3\n")
    fresh.replace(path)
    assert src.read_new() == ["new 1", "new 2", "new 3"]
    assert src.read_new() == []
    # from the end of a file that exists: only what comes after
    ended = FileLogSource(path, from_end=True)
    with path.open("a") as fh:
        fh.write("new 4\n")
    assert ended.read_new() == ["new 4"]
    # from the end of a file not there yet: all of it once it is
    later = tmp_path / "later.log"
    waiting = FileLogSource(later, from_end=True)
    assert waiting.read_new() == []
    later.write_text("first\n")
    assert waiting.read_new() == ["first"]


def test_bytes_that_are_not_utf8_are_replaced_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    path.write_bytes(b"caf\xe9\n" + s.GATEWAY_TO_EXTERNAL.encode() + b"\n")
    src = FileLogSource(path)
    lines = src.read_new()
    assert lines[0] == "caf\ufffd" and lines[1] == s.GATEWAY_TO_EXTERNAL
    assert src.name == str(path)


class ScriptedSource(LinesLogSource):
    """A log whose n-th read yields ``script[n]`` (the flushes of a proxy, one per read)."""

    def __init__(self, name: str, script: dict[int, tuple[str, ...]]) -> None:
        super().__init__(name)
        self.script, self.reads = script, 0

    def read_new(self) -> list[str]:
        self.reads += 1
        self.append(*self.script.get(self.reads, ()))
        return super().read_new()


def test_after_the_canary_the_log_is_read_once_more_not_watched_again() -> None:
    # read 1: the window (none); read 2: the canary's entry; read 3: the check that nothing of the
    # request came with it; the request's entry written after that is not the absence's business
    ref = RequestRef(request_id="rid-1")
    source = ScriptedSource("gw", {2: (s.CANARY_GATEWAY,), 4: (s.GATEWAY_TO_EXTERNAL,)})
    seen = expect_absent(
        EntryLog(source, hop="gw"),
        ref,
        window=0,
        canary=lambda: RequestRef(path_token=s.CANARY_TOKEN),
        wait=FEW,
    )
    assert seen is not None and source.reads == 3
    # a missing canary fails for the request whose absence it was to prove
    with pytest.raises(EvidenceError) as caught:
        expect_absent(
            log_of("gw"), ref, window=0, canary=lambda: RequestRef(path_token=s.CANARY_TOKEN), wait=NOW
        )
    assert caught.value.request is ref


def test_an_evidence_errors_words_for_a_timestamp_are_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert str(RequestRef(sni=HOST, since=T0, slack=0)).endswith("[2026-11-28T07:00:04.000Z, ...]")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_composite_descriptions_and_single_alternatives() -> None:
    a, b, c = p.status(200), p.route("r"), p.flags("NR")
    assert str(p.any_of(a, b)) == "response_code == 200 or route_name == 'r'"
    assert (
        str(p.all_of(c, p.any_of(a, b)))
        == "response_flags has NR and (response_code == 200 or route_name == 'r')"
    )
    assert (
        str(p.any_of(p.any_of(a, b), c))
        == "response_code == 200 or route_name == 'r' or response_flags has NR"
    )
    assert str(a | b | c) == "response_code == 200 or route_name == 'r' or response_flags has NR"
    gw = entry(s.GATEWAY_NO_ROUTE)
    assert p.any_of(a).mismatches(gw) == ["response_code == 200 (got 404)"]
    assert p.any_of(a) is a and p.all_of(a) is a


def test_outbound_cluster_with_any_port_and_a_given_subset() -> None:
    v1 = AccessLogEntry(upstream_cluster=f"outbound|443|v1|{HOST}")
    assert p.outbound_cluster(HOST, None, "v1")(v1)
    assert not p.outbound_cluster(HOST, None, "v2")(v1)
    assert not p.outbound_cluster(HOST, None, None)(v1)
    assert p.outbound_cluster(HOST, None, None)(v1._replace(upstream_cluster=f"outbound|443||{HOST}"))
    assert p.outbound_cluster(HOST, 443, "v1")(v1) and not p.outbound_cluster(HOST, 80, "v1")(v1)
    assert str(p.outbound_cluster(HOST, 443, "v1")) == f"upstream_cluster == 'outbound|443|v1|{HOST}'"
    assert str(p.outbound_cluster(HOST, None)) == f"upstream_cluster == outbound|*|*|{HOST}"
    assert str(p.outbound_cluster(HOST, None, "v1")) == f"upstream_cluster == outbound|*|v1|{HOST}"
    assert str(p.outbound_cluster(HOST, 80)) == f"upstream_cluster == outbound|80|*|{HOST}"


def test_nearest_weighs_id_and_token_over_host_over_clusters() -> None:
    base = AccessLogEntry()
    ref = RequestRef(request_id="rid", path_token="tok", host=HOST, cluster="c")

    def order(*entries: AccessLogEntry, by: RequestRef = ref) -> list[str | None]:
        return [e.route_name for e in by.nearest(list(entries))]

    all_but_id = base._replace(
        route_name="host+sni+clusters 4+1+2+2",
        authority=HOST,
        requested_server_name=HOST,
        upstream_cluster=f"outbound|80||{HOST}",
    )
    id_only = base._replace(route_name="id 8", request_id="rid")
    own_cluster = RequestRef(request_id="rid", host=HOST, cluster=f"outbound|80||{HOST}")
    assert order(all_but_id, id_only, by=own_cluster) == ["host+sni+clusters 4+1+2+2", "id 8"]
    # each feature adds to the others
    assert order(
        base._replace(route_name="id+token", request_id="rid", path="/tok"),
        base._replace(route_name="id+host", request_id="rid", authority=HOST),
    ) == ["id+token", "id+host"]
    for extra in (
        {"authority": HOST},
        {"requested_server_name": HOST},
        {"upstream_cluster": f"outbound|80||{HOST}"},
        {"upstream_cluster": "c"},
    ):
        more = base._replace(route_name="id+", request_id="rid", **extra)
        assert order(more, id_only) == ["id+", "id 8"], extra
    # over TCP the SNI weighs as much as the authority: a tie keeps the later entry first
    tcp = RequestRef(sni=HOST)
    by_sni = base._replace(route_name="sni", requested_server_name=HOST)
    by_authority = base._replace(route_name="authority", authority=HOST)
    assert order(by_sni, by_authority, by=tcp) == ["authority", "sni"]
    assert order(by_authority, by_sni, by=tcp) == ["sni", "authority"]
    # the token weighs as much as the id
    by_token = RequestRef(path_token="tok", host=HOST, cluster=f"outbound|80||{HOST}")
    token_only = base._replace(route_name="token 8", path="/tok")
    assert order(all_but_id, token_only, by=by_token) == ["host+sni+clusters 4+1+2+2", "token 8"]
    # the host's cluster and the ref's cluster weigh the same: a tie keeps the later entry first
    hosts = base._replace(route_name="host's cluster", upstream_cluster=f"outbound|80||{HOST}")
    refs = base._replace(route_name="ref's cluster", upstream_cluster="c")
    two = RequestRef(request_id="zzz", host=HOST, cluster="c")
    assert order(hosts, refs, by=two) == ["ref's cluster", "host's cluster"]
    assert order(refs, hosts, by=two) == ["host's cluster", "ref's cluster"]
    # five at most by default
    many = [base._replace(route_name=str(i), request_id="rid") for i in range(7)]
    assert len(ref.nearest(many)) == 5


def test_the_subset_in_a_description_of_any_port() -> None:
    assert str(p.outbound_cluster(HOST, None, None)) == f"upstream_cluster == outbound|*||{HOST}"


def test_a_short_line_shows_a_dash_for_no_flags() -> None:
    assert " 200 - via_upstream " in entry(s.GATEWAY_TO_EXTERNAL).short()


def test_a_wrong_entry_waits_for_the_settle_for_a_better_one_and_polls_at_the_interval() -> None:
    ref = RequestRef(request_id="rid-4")
    wrong = s.GATEWAY_NO_ROUTE
    right = s.GATEWAY_NO_ROUTE.replace(" 404 NR route_not_found ", " 200 - via_upstream ")
    source = ScriptedSource("gw", {1: (wrong,), 3: (right,)})
    found = expect_entry(
        EntryLog(source, hop="gw"), ref, p.status(200), wait=Wait(timeout=5, interval=0.01, settle=2)
    )
    assert found.response_code == 200 and source.reads == 3
    # a log that never shows the entry is read at the interval, not in a busy loop
    idle = ScriptedSource("gw", {})
    with pytest.raises(EvidenceError):
        expect_entry(EntryLog(idle, hop="gw"), ref, wait=Wait(timeout=0.3, interval=0.1, settle=0))
    assert 2 <= idle.reads <= 10


def test_an_error_shows_the_nearest_entries_under_their_heading() -> None:
    with pytest.raises(EvidenceError) as caught:
        expect_entry(
            log_of("gw", s.GATEWAY_TO_EXTERNAL), RequestRef(request_id="rid-404", host=HOST), wait=NOW
        )
    assert str(caught.value).splitlines()[3:] == [
        "  nearest entries:",
        f"    {entry(s.GATEWAY_TO_EXTERNAL)._replace(source='gw').short()}",
    ]


def test_more_words_and_rules_of_the_engine() -> None:
    with pytest.raises(ValueError, match="unknown access-log field") as caught:
        p.field("colour", "red")
    assert str(caught.value) == "unknown access-log field 'colour'; fields are: " + ", ".join(
        AccessLogEntry._fields[:24]
    )
    with pytest.raises(
        ValueError, match=r"^RequestRef needs a request_id, a path_token, an sni, a cluster or tcp$"
    ):
        RequestRef()
    inbound = entry(s.SIDECAR_INBOUND)
    assert str(p.inbound()) == "an inbound entry" and p.inbound()(inbound)
    assert p.not_(p.inbound()).mismatches(inbound) == ["not (an inbound entry)"]
    # an inbound entry with the request's SNI is not the request's, over TCP too
    tls_inbound = entry(s.GATEWAY_TLS)._replace(upstream_cluster="inbound|443||")
    assert not RequestRef(sni=HOST).predicate()(tls_inbound)
    assert RequestRef(sni=HOST).predicate()(entry(s.GATEWAY_TLS))


def test_entries_inside_the_window_keep_their_log_order() -> None:
    at = [T0 + timedelta(milliseconds=ms) for ms in (0, 200, 100)]
    entries = [AccessLogEntry(start_time=t.isoformat(), request_id=str(i)) for i, t in enumerate(at)]
    ref = RequestRef(sni=HOST, since=T0, until=T0 + timedelta(milliseconds=200), slack=1)
    assert [e.request_id for e in ref.closest_first(entries)] == ["0", "1", "2"]


def test_an_entry_log_reads_with_the_format_it_is_given() -> None:
    log = EntryLog(
        LinesLogSource("gw", ["200 r", s.GATEWAY_TO_EXTERNAL]),
        hop="gw",
        text_format="%RESPONSE_CODE% %ROUTE_NAME%",
    )
    assert [(e.response_code, e.route_name) for e in log.poll()] == [(200, "r")]
    assert log.skipped == 1
