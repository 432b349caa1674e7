"""A scenario's ``expect:`` block, judged on recorded Istio lines (issue 20: mutation testing).

Each kind of expectation asks its own hops for its own entries; these tests show, for each, which
entries pass and which fail, and where (the hop named by the failure).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from harness.evidence import EntryLog, EvidenceError, LinesLogSource, RequestRef, Wait
from harness.scenarios.expect import field_checks, hop_checks, judge, needs_canary
from harness.scenarios.model import Expectation, LogValue, ResolvedRequest
from tests.unit import accesslog_samples as s
from tests.unit.test_evidence_guards import ScriptedSource

HOST = "external.egress-harness.test"
GATEWAY = "istio-egressgateway.istio-system.svc.cluster.local"
NOW = Wait(timeout=0, interval=0.01, settle=0)


def request(
    *,
    status: int = 200,
    via_gateway: bool = True,
    blocked: str | None = None,
    sidecar: Mapping[str, LogValue] | None = None,
    gateway: Mapping[str, LogValue] | None = None,
    scheme: str = "http",
    port: int = 80,
) -> ResolvedRequest:
    expect = Expectation(status, via_gateway, blocked, dict(sidecar or {}), dict(gateway or {}))  # type: ignore[arg-type]
    return ResolvedRequest("r", ("client",), scheme, "GET", HOST, port, "/get", expect)


def log_of(hop: str, *lines: str) -> EntryLog:
    return EntryLog(LinesLogSource(hop, lines), hop=hop)


def rid(line: str, value: str = "rid-x") -> str:
    """A recorded line as the entry of the request under test."""
    for old in ('"rid-1"', '"rid-2"', '"rid-3"', '"rid-4"', '"rid-x"'):
        line = line.replace(old, f'"{value}"')
    return line


def hops(
    req: ResolvedRequest, sidecar: list[str], gateway: list[str], **kw: object
) -> list[tuple[str, int | None]]:
    proof = judge(
        req,
        RequestRef(request_id="rid-x"),
        sidecar=log_of("target sidecar", *map(rid, sidecar)),
        gateway=log_of("egress gateway", *map(rid, gateway)),
        wait=NOW,
        absence_window=0,
        **kw,  # type: ignore[arg-type]
    )
    return [(h.hop, h.entry.response_code) for h in proof]


def fails_at(req: ResolvedRequest, sidecar: list[str], gateway: list[str], **kw: object) -> str:
    with pytest.raises(EvidenceError) as caught:
        hops(req, sidecar, gateway, **kw)
    return caught.value.hop


CANARY = RequestRef(path_token=s.CANARY_TOKEN)


def test_field_checks_are_one_equality_per_field() -> None:
    gw = log_of("gw", s.GATEWAY_TO_EXTERNAL)
    gw.poll()
    [entry] = gw.entries
    checks = field_checks({"response_code": 200, "route_name": None, "authority": HOST})
    assert [str(c) for c in checks] == [
        "response_code == 200",
        "route_name == None",
        f"authority == {HOST!r}",
    ]
    assert all(c(entry) for c in checks)
    assert not field_checks({"response_code": 404})[0](entry)


def test_needs_canary_only_for_an_unblocked_direct_request() -> None:
    assert needs_canary(request(via_gateway=False).expect)
    assert not needs_canary(request(via_gateway=True).expect)
    assert not needs_canary(request(via_gateway=False, blocked="sidecar").expect)
    assert not needs_canary(request(via_gateway=True, blocked="gateway").expect)


def test_via_gateway_needs_the_sidecar_to_the_gateway_and_the_gateway_to_the_host() -> None:
    req = request()
    assert hops(req, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == [
        ("target sidecar", 200),
        ("egress gateway", 200),
    ]
    assert fails_at(req, [s.SIDECAR_PASSTHROUGH], [s.GATEWAY_TO_EXTERNAL]) == "target sidecar"
    assert fails_at(req, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_NO_ROUTE]) == "egress gateway"
    # the gateway's entry must carry the expected status and the host's own cluster and port
    assert fails_at(request(status=201), [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == "egress gateway"
    assert fails_at(request(port=8080), [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == "egress gateway"
    # any port of the gateway service (TLS origination reaches it on 443)
    on_443 = s.SIDECAR_TO_GATEWAY.replace("outbound|80|external|", "outbound|443|external|")
    assert hops(req, [on_443], [s.GATEWAY_TO_EXTERNAL])[0] == ("target sidecar", 200)
    # ...of the gateway service the judge is told
    assert (
        fails_at(
            req, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL], gateway_service="other.ns.svc.cluster.local"
        )
        == "target sidecar"
    )


def test_via_gateway_over_tls_ignores_the_http_status() -> None:
    # a TLS request passed through is a TCP entry: response code 0, whatever the client got
    tls = request(scheme="https", port=80, status=200)
    gateway_tcp = s.GATEWAY_TO_EXTERNAL.replace(" 200 - via_upstream ", " 0 - - ")
    assert hops(tls, [s.SIDECAR_TO_GATEWAY], [gateway_tcp])[1] == ("egress gateway", 0)
    assert fails_at(request(status=200), [s.SIDECAR_TO_GATEWAY], [gateway_tcp]) == "egress gateway"


def test_a_named_gateway_cluster_replaces_the_hosts_own_and_keeps_the_status() -> None:
    other = s.GATEWAY_TO_EXTERNAL.replace(f"outbound|80||{HOST}", "outbound|80||backend.example")
    named = {"upstream_cluster": "outbound|80||backend.example"}
    assert hops(request(gateway=named), [s.SIDECAR_TO_GATEWAY], [other])[1] == ("egress gateway", 200)
    assert fails_at(request(gateway=named, status=201), [s.SIDECAR_TO_GATEWAY], [other]) == "egress gateway"
    assert (
        fails_at(request(gateway=named), [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == "egress gateway"
    )
    # over TLS no status is asked
    tcp = other.replace(" 200 - via_upstream ", " 0 - - ")
    assert hops(request(gateway=named, scheme="https"), [s.SIDECAR_TO_GATEWAY], [tcp])[1] == (
        "egress gateway",
        0,
    )


def test_the_field_maps_add_checks_at_their_hops() -> None:
    ok = hops(
        request(sidecar={"route_name": None}, gateway={"response_flags": None}),
        [s.SIDECAR_TO_GATEWAY],
        [s.GATEWAY_TO_EXTERNAL],
    )
    assert len(ok) == 2
    bad_sidecar = request(sidecar={"route_name": "nope"})
    assert fails_at(bad_sidecar, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == "target sidecar"
    bad_gateway = request(gateway={"response_flags": "NR"})
    assert fails_at(bad_gateway, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == "egress gateway"
    blocked = request(status=502, via_gateway=False, blocked="sidecar", sidecar={"route_name": "allow_any"})
    assert fails_at(blocked, [s.SIDECAR_BLOCKED], []) == "target sidecar"
    refused = request(status=404, blocked="gateway", gateway={"response_flags": None})
    assert fails_at(refused, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_NO_ROUTE]) == "egress gateway"
    refused_sidecar = request(status=404, blocked="gateway", sidecar={"route_name": "x"})
    assert fails_at(refused_sidecar, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_NO_ROUTE]) == "target sidecar"
    direct = request(via_gateway=False, sidecar={"route_name": "block_all"})
    assert (
        fails_at(direct, [s.SIDECAR_PASSTHROUGH], [s.CANARY_GATEWAY], canary=lambda: CANARY)
        == "target sidecar"
    )


def test_blocked_at_the_sidecar_is_its_refusal_alone() -> None:
    req = request(status=502, via_gateway=False, blocked="sidecar")
    assert hops(req, [s.SIDECAR_BLOCKED], [s.GATEWAY_TO_EXTERNAL]) == [("target sidecar", 502)]
    assert fails_at(req, [s.SIDECAR_PASSTHROUGH], []) == "target sidecar"
    checks = hop_checks(req, sidecar=log_of("a"), gateway=log_of("b"))
    assert [(c.log.hop, c.absent) for c in checks] == [("a", False)]


def test_blocked_at_the_gateway_is_sent_there_and_refused_there() -> None:
    req = request(status=404, via_gateway=True, blocked="gateway")
    assert hops(req, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_NO_ROUTE]) == [
        ("target sidecar", 200),
        ("egress gateway", 404),
    ]
    assert hops(req, [s.SIDECAR_TO_GATEWAY], [s.RBAC_GATEWAY_DENIED.replace('"rid-x"', '"rid-x"')])[1] == (
        "egress gateway",
        403,
    )
    assert fails_at(req, [s.SIDECAR_PASSTHROUGH], [s.GATEWAY_NO_ROUTE]) == "target sidecar"
    assert fails_at(req, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL]) == "egress gateway"
    assert (
        fails_at(
            req, [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_NO_ROUTE], gateway_service="other.ns.svc.cluster.local"
        )
        == "target sidecar"
    )


def test_direct_is_the_sidecars_own_entry_and_none_at_a_live_gateway() -> None:
    req = request(via_gateway=False)
    sent: list[RequestRef] = []

    def canary() -> RequestRef:
        sent.append(CANARY)
        return CANARY

    assert hops(req, [s.SIDECAR_PASSTHROUGH], [s.CANARY_GATEWAY], canary=canary) == [("target sidecar", 200)]
    assert sent == [CANARY]
    assert (
        fails_at(req, [s.SIDECAR_PASSTHROUGH], [s.CANARY_GATEWAY, s.GATEWAY_TO_EXTERNAL], canary=canary)
        == "egress gateway"
    )
    assert fails_at(req, [s.SIDECAR_TO_GATEWAY], [s.CANARY_GATEWAY], canary=canary) == "target sidecar"
    # the host's own cluster on its own port is direct too; another port is not
    own = s.SIDECAR_PASSTHROUGH.replace("PassthroughCluster", f"outbound|80||{HOST}")
    assert hops(req, [own], [s.CANARY_GATEWAY], canary=canary) == [("target sidecar", 200)]
    assert (
        fails_at(request(via_gateway=False, port=8080), [own], [s.CANARY_GATEWAY], canary=canary)
        == "target sidecar"
    )
    # a named sidecar cluster replaces "direct"
    named = request(via_gateway=False, sidecar={"upstream_cluster": f"outbound|80|v1|{HOST}"})
    v1 = s.SIDECAR_PASSTHROUGH.replace("PassthroughCluster", f"outbound|80|v1|{HOST}")
    assert hops(named, [v1], [s.CANARY_GATEWAY], canary=canary) == [("target sidecar", 200)]


def test_a_direct_request_is_not_judged_without_a_canary() -> None:
    with pytest.raises(
        ValueError,
        match=r"^request r: its absence at 'egress gateway' needs a canary sent through that hop "
        r"\(judge\(\.\.\., canary=\.\.\.\)\): an empty or wrong log source shows no entry either$",
    ):
        hops(request(via_gateway=False), [s.SIDECAR_PASSTHROUGH], [])
    # the others need none
    assert len(hops(request(), [s.SIDECAR_TO_GATEWAY], [s.GATEWAY_TO_EXTERNAL])) == 2


def test_judge_watches_the_gateway_for_the_absence_window_and_polls_with_its_wait() -> None:
    class Later(LinesLogSource):
        def __init__(self, name: str, *lines: str) -> None:
            super().__init__(name)
            self.held, self.reads = list(lines), 0

        def read_new(self) -> list[str]:
            self.reads += 1
            if self.reads == 3:
                self.append(*self.held)
            return super().read_new()

    req = request(via_gateway=False)

    def run(gateway_lines: tuple[str, ...], sidecar_lines: tuple[str, ...], **kw: object) -> int:
        proof = judge(
            req,
            RequestRef(request_id="rid-x"),
            sidecar=EntryLog(Later("target sidecar", *map(rid, sidecar_lines)), hop="target sidecar"),
            gateway=EntryLog(Later("egress gateway", *map(rid, gateway_lines)), hop="egress gateway"),
            canary=lambda: CANARY,
            **kw,  # type: ignore[arg-type]
        )
        return len(proof)

    few = Wait(timeout=5, interval=0.01, settle=0)
    # the absence window is the judge's, not the wait's settle: a gateway entry at the fourth read
    # (after the window's first read, the canary's and the final one)
    late = ScriptedSource("egress gateway", {1: (s.CANARY_GATEWAY,), 4: (rid(s.GATEWAY_TO_EXTERNAL),)})
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        judge(
            req,
            RequestRef(request_id="rid-x"),
            sidecar=log_of("target sidecar", rid(s.SIDECAR_PASSTHROUGH)),
            gateway=EntryLog(late, hop="egress gateway"),
            canary=lambda: CANARY,
            wait=few,
            absence_window=1,
        )
    assert run((s.CANARY_GATEWAY,), (s.SIDECAR_PASSTHROUGH,), wait=few, absence_window=0) == 1
    with pytest.raises(EvidenceError, match="hop 'target sidecar'"):
        run((s.CANARY_GATEWAY,), (s.SIDECAR_PASSTHROUGH,), wait=NOW, absence_window=0)
    with pytest.raises(EvidenceError, match="an entry that should not exist"):
        run((s.CANARY_GATEWAY, s.GATEWAY_TO_EXTERNAL), (s.SIDECAR_PASSTHROUGH,), wait=few, absence_window=1)
