"""The evidence engine: predicates, incremental sources, hop assertions and their failure messages."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.accesslog import ISTIO_TEXT, AccessLogEntry
from harness.evidence import (
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
    expect_entry,
    expect_no_entry,
    gateway_no_route,
    sidecar_blocked,
    sidecar_direct,
    sidecar_to_gateway,
)
from harness.evidence import (
    predicates as p,
)
from tests.unit import accesslog_samples as s

FAST = Wait(timeout=1.0, interval=0.02, settle=0.2)
HOST = "external.egress-harness.test"


def entry(line: str) -> AccessLogEntry:
    parsed = ISTIO_TEXT.parse(line)
    assert parsed is not None
    return parsed


def log_of(hop: str, *lines: str) -> EntryLog:
    return EntryLog(LinesLogSource(hop, lines), hop=hop)


# --- predicates ---------------------------------------------------------------------------------


def test_leaf_predicates() -> None:
    gw = entry(s.GATEWAY_TO_EXTERNAL)
    assert p.status(200)(gw) and not p.status(404)(gw)
    assert p.outbound_cluster(HOST, 80)(gw)
    assert p.outbound_cluster(HOST, 80, None)(gw)
    assert not p.outbound_cluster(HOST, 80, "v1")(gw)
    assert not p.outbound_cluster(HOST, 443)(gw)
    assert p.authority(HOST, 80)(gw) and p.authority(HOST)(gw) and not p.authority(HOST, 8080)(gw)
    assert p.flags()(gw) and not p.flags("NR")(gw)
    assert p.path("/path?q=1")(gw) and p.path_contains("q=1")(gw)
    assert p.details("via_upstream")(gw)
    assert p.field_matches("upstream_host", r"172\.18\.0\.\d+:80")(gw)
    assert not p.field_matches("upstream_host", r"172\.18")(gw)  # the whole value must match
    assert not p.field_matches("route_name", ".*")(gw)  # an absent field matches nothing
    assert p.http()(gw) and not p.tcp()(gw)
    sc = entry(s.SIDECAR_TO_GATEWAY)
    assert p.outbound_cluster("istio-egressgateway.istio-system.svc.cluster.local", 80, "external")(sc)
    with pytest.raises(ValueError, match="unknown access-log field 'colour'"):
        p.field("colour", "red")


def test_flags_with_several_values() -> None:
    e = AccessLogEntry(response_flags="UF,URX")
    assert p.flags("UF")(e) and p.flags("URX", "UF")(e) and not p.flags("NR")(e)


def test_composition_and_mismatch_messages() -> None:
    gw = entry(s.GATEWAY_NO_ROUTE)
    check = p.status(200) & p.cluster(f"outbound|80||{HOST}") & ~p.flags("NR")
    assert not check(gw)
    why = check.mismatches(gw)
    assert why == [
        "response_code == 200 (got 404)",
        f"upstream_cluster == 'outbound|80||{HOST}' (got None)",
        "not (response_flags has NR)",
    ]
    assert (
        str(check)
        == f"response_code == 200 and upstream_cluster == 'outbound|80||{HOST}' and not (response_flags has NR)"
    )
    either = p.status(200) | p.status(404)
    assert either(gw) and either.mismatches(gw) == []
    neither = p.status(200) | p.status(503)
    assert neither.mismatches(gw)[0].startswith("none of: response_code == 200 (got 404)")


def test_egress_predicates_on_istio_lines() -> None:
    assert sidecar_to_gateway()(entry(s.SIDECAR_TO_GATEWAY))
    assert not sidecar_to_gateway()(entry(s.SIDECAR_PASSTHROUGH))
    assert sidecar_direct(HOST, 80)(entry(s.SIDECAR_PASSTHROUGH))
    assert sidecar_blocked()(entry(s.SIDECAR_BLOCKED))
    assert sidecar_blocked()(entry(s.SIDECAR_BLACKHOLE))
    assert not sidecar_blocked()(entry(s.SIDECAR_PASSTHROUGH))
    assert gateway_no_route()(entry(s.GATEWAY_NO_ROUTE))
    assert not gateway_no_route()(entry(s.GATEWAY_TO_EXTERNAL))


# --- sources ------------------------------------------------------------------------------------


def test_file_source_reads_only_new_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    src = FileLogSource(path)
    assert src.read_new() == []  # not there yet
    path.write_text("one\ntw")
    assert src.read_new() == ["one"]
    with path.open("a") as fh:
        fh.write("o\nthree\n")
    assert src.read_new() == ["two", "three"]
    assert src.read_new() == []


def test_file_source_starts_over_after_truncation_and_can_start_at_end(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    path.write_text("old 1\nold 2\n")
    assert FileLogSource(path, from_end=True).read_new() == []
    src = FileLogSource(path)
    assert src.read_new() == ["old 1", "old 2"]
    path.write_text("new\n")  # shorter: truncated and rewritten
    assert src.read_new() == ["new"]


def test_entry_log_keeps_entries_and_counts_noise() -> None:
    source = LinesLogSource("gw", [s.NOISE[0], s.GATEWAY_TO_EXTERNAL])
    log = EntryLog(source, hop="egress gateway")
    assert [e.request_id for e in log.poll()] == ["rid-1"]
    source.append(s.GATEWAY_NO_ROUTE, s.NOISE[1])
    assert [e.request_id for e in log.poll()] == ["rid-4"]
    assert len(log.entries) == 2 and log.skipped == 2
    assert log.entries[0].source == "egress gateway"


# --- assertions ---------------------------------------------------------------------------------


def test_expect_entry_waits_for_a_line_written_later(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    path.write_text(s.NOISE[0] + "\n")
    log = EntryLog(FileLogSource(path), hop="egress gateway")

    def write_later() -> None:
        time.sleep(0.2)
        with path.open("a") as fh:
            fh.write(s.GATEWAY_TO_EXTERNAL + "\n")

    writer = threading.Thread(target=write_later)
    writer.start()
    try:
        found = expect_entry(
            log, RequestRef(request_id="rid-1"), p.status(200), wait=Wait(timeout=5, interval=0.02)
        )
    finally:
        writer.join()
    assert found.upstream_cluster == f"outbound|80||{HOST}"


def test_missing_entry_fails_with_hop_request_scan_count_and_nearest() -> None:
    log = log_of("egress gateway", s.GATEWAY_NO_ROUTE, s.NOISE[0], s.GATEWAY_TLS)
    started = time.monotonic()
    with pytest.raises(EvidenceError) as info:
        expect_entry(log, RequestRef(request_id="rid-404", host=HOST), p.status(200), wait=FAST)
    assert time.monotonic() - started >= FAST.timeout
    err = info.value
    msg = str(err)
    assert err.hop == "egress gateway"
    assert "hop 'egress gateway': no access-log entry within 1s for request x-request-id=rid-404" in msg
    assert "expected: response_code == 200" in msg
    assert "scanned:  2 entries (1 other lines skipped) from egress gateway" in msg
    assert "nearest entries:" in msg and "rid-4" in msg  # same authority ranks first
    assert [e.request_id for e in err.nearest][0] == "rid-4"


def test_wrong_entry_fails_after_settle_not_timeout_and_says_what_differed() -> None:
    log = log_of("egress gateway", s.GATEWAY_NO_ROUTE)
    wait = Wait(timeout=30, interval=0.02, settle=0.2)
    started = time.monotonic()
    with pytest.raises(EvidenceError) as info:
        expect_entry(
            log, RequestRef(request_id="rid-4"), p.status(200) & p.outbound_cluster(HOST, 80), wait=wait
        )
    assert time.monotonic() - started < 5
    msg = str(info.value)
    assert "1 entry of the request, none as expected" in msg
    assert "- response_code == 200 (got 404)" in msg
    assert f"- upstream_cluster == outbound|80|*|{HOST} (got None)" in msg


def test_expect_entry_picks_the_matching_one_of_several_entries_of_a_request() -> None:
    # The target's sidecar logs the request twice: inbound from proxy, outbound to the gateway.
    log = log_of("target sidecar", s.SIDECAR_INBOUND, s.SIDECAR_TO_GATEWAY)
    found = expect_entry(log, RequestRef(request_id="rid-1"), sidecar_to_gateway(), wait=FAST)
    assert found.upstream_cluster.startswith("outbound|80|external|istio-egressgateway")  # type: ignore[union-attr]


def test_expect_no_entry() -> None:
    expect_no_entry(log_of("gw", s.GATEWAY_TO_EXTERNAL), RequestRef(request_id="rid-2"), window=0.1)
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        expect_no_entry(log_of("gw", s.GATEWAY_TO_EXTERNAL), RequestRef(request_id="rid-1"), window=0.1)


def test_tcp_correlation_by_sni_cluster_and_window() -> None:
    log = log_of("egress gateway", s.GATEWAY_TLS, s.GATEWAY_TO_EXTERNAL)
    sent = datetime(2026, 11, 28, 7, 0, 3, tzinfo=UTC)
    ref = RequestRef(sni=HOST, cluster=f"outbound|443||{HOST}", since=sent, until=sent, slack=2)
    found = expect_entry(log, ref, p.tcp(), wait=FAST)
    assert found.bytes_sent == 4321
    too_late = RequestRef(sni=HOST, since=datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC), slack=2)
    with pytest.raises(EvidenceError, match="no access-log entry"):
        expect_entry(log, too_late, wait=FAST)
    with pytest.raises(ValueError, match="needs a request_id"):
        RequestRef()


def test_through_gateway_passes_on_via_gateway_logs() -> None:
    sidecar = log_of("target sidecar", s.SIDECAR_INBOUND, s.SIDECAR_TO_GATEWAY)
    gateway = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL)
    proof = assert_through_gateway(
        RequestRef(request_id="rid-1"), EgressTarget(HOST, 80), gateway=gateway, sidecar=sidecar, wait=FAST
    )
    assert [h.hop for h in proof] == ["target sidecar", "egress gateway"]


def test_through_gateway_fails_at_the_sidecar_when_it_went_direct() -> None:
    sidecar = log_of("target sidecar", s.SIDECAR_PASSTHROUGH)
    gateway = log_of("egress gateway")
    with pytest.raises(EvidenceError) as info:
        assert_through_gateway(
            RequestRef(request_id="rid-2"),
            EgressTarget(HOST, 80),
            gateway=gateway,
            sidecar=sidecar,
            wait=FAST,
        )
    assert info.value.hop == "target sidecar"
    assert "(got 'PassthroughCluster')" in str(info.value)


def test_through_gateway_fails_at_the_gateway_when_it_had_no_route() -> None:
    line = s.SIDECAR_TO_GATEWAY.replace('"rid-1"', '"rid-4"')
    sidecar = log_of("target sidecar", line)
    gateway = log_of("egress gateway", s.GATEWAY_NO_ROUTE)
    with pytest.raises(EvidenceError) as info:
        assert_through_gateway(
            RequestRef(request_id="rid-4"),
            EgressTarget(HOST, 80),
            gateway=gateway,
            sidecar=sidecar,
            wait=FAST,
        )
    assert info.value.hop == "egress gateway"
    assert "(got 404)" in str(info.value)


def test_not_through_gateway_and_blocked() -> None:
    sidecar = log_of("target sidecar", s.SIDECAR_PASSTHROUGH, s.SIDECAR_BLOCKED)
    gateway = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL)
    assert_not_through_gateway(
        RequestRef(request_id="rid-2"), EgressTarget(HOST, 80), sidecar=sidecar, gateway=gateway, window=0.1
    )
    # The request that did go through the gateway fails "not through": the gateway saw it.
    via = log_of("target sidecar", s.SIDECAR_TO_GATEWAY)
    with pytest.raises(EvidenceError):
        assert_not_through_gateway(
            RequestRef(request_id="rid-1"),
            EgressTarget(HOST, 80),
            sidecar=via,
            gateway=gateway,
            wait=FAST,
            window=0.1,
        )
    assert (
        assert_blocked(RequestRef(request_id="rid-3"), sidecar=sidecar, wait=FAST).entry.response_code == 502
    )
    gw = log_of("egress gateway", s.GATEWAY_NO_ROUTE)
    assert assert_blocked(RequestRef(request_id="rid-4"), gateway=gw, wait=FAST).hop == "egress gateway"
    with pytest.raises(ValueError, match="needs the sidecar's or the gateway's log"):
        assert_blocked(RequestRef(request_id="x"))


def test_assert_hops_with_an_absent_hop() -> None:
    sidecar = log_of("target sidecar", s.SIDECAR_PASSTHROUGH)
    gateway = log_of("egress gateway", s.GATEWAY_TO_EXTERNAL)
    proof = assert_hops(
        RequestRef(request_id="rid-2"),
        [HopCheck(sidecar, sidecar_direct(HOST, 80)), HopCheck(gateway, absent=True)],
        wait=FAST,
    )
    assert [h.hop for h in proof] == ["target sidecar"]


def test_wait_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="interval > 0"):
        Wait(interval=0)
