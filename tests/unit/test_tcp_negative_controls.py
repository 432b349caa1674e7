"""The negative controls of scenario tcp-via-egress-gateway, judged on what real proxies wrote.

The lines and records in ``tests/unit/data/recorded/tcp-*`` (see its README) are what the istiod
tier's target sidecar, egress gateway and recorder wrote for the scenario's request (passing), and
for the same request with the scenario's VirtualService left out (the real proxies then sent it
straight to the host). Each is judged with the real evidence engine and the scenario's own
expectation; then one piece of evidence at a time is tampered with, and each tampered copy must
fail, naming the hop whose evidence changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from harness.evidence import (
    EntryLog,
    EvidenceError,
    ExternalEvidenceError,
    LinesLogSource,
    RequestRef,
    expect_external_record,
)
from harness.evidence.external import check_tcp_record
from harness.scenarios import RenderContext, render_request
from harness.scenarios.expect import judge
from harness.scenarios.model import ResolvedRequest
from tests.unit.test_scenario_negative_controls import CATALOG, QUICK, RECORDED, recorded

SCENARIO = "tcp-via-egress-gateway"
#: the run the lines were recorded in (run id 710181)
CONTEXT = RenderContext(
    istio_version="1.31-dev",
    namespace="e710181-tcp-via-egress-gateway",
    external_host="tcp-via-egress-gateway.egress-harness.test",
    run_id="710181",
)
TOKEN = "26ba4441-9538-4470-a84a-b973f29c0adc"
UNROUTED_TOKEN = "d139ffdf-7214-4ee4-ad53-bf83c7e023f9"
#: the egress gateway's pod address in that run, and the target pod's of the unrouted run
GATEWAY_ADDRESS = "10.244.1.3"
UNROUTED_TARGET_ADDRESS = "10.244.0.9"
#: the request's window: the target relay's inbound entry (started 10:41:14.310, 3 ms), widened a
#: little (the harness's own send and answer times were not kept)
SENT = datetime(2026, 12, 7, 10, 41, 14, 300000, tzinfo=UTC)
ANSWERED = datetime(2026, 12, 7, 10, 41, 14, 320000, tzinfo=UTC)
UNROUTED_SENT = datetime(2026, 12, 7, 10, 41, 55, 460000, tzinfo=UTC)
UNROUTED_ANSWERED = datetime(2026, 12, 7, 10, 41, 55, 480000, tzinfo=UTC)


def connections(name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((RECORDED / name).read_text(encoding="utf-8"))
    return records


SIDECAR = recorded("tcp-via-gateway.sidecar.log")
GATEWAY = recorded("tcp-via-gateway.gateway.log")
[RECORD] = connections("tcp-via-gateway.connections.json")
UNROUTED_SIDECAR = recorded("tcp-unrouted.sidecar.log")
[UNROUTED_RECORD] = connections("tcp-unrouted.connections.json")


def tcp_request() -> ResolvedRequest:
    scenario = CATALOG.get(SCENARIO)
    [spec] = scenario.requests
    return render_request(spec, CONTEXT, source=scenario.file)


def judge_tcp(
    sidecar: Sequence[str], gateway: Sequence[str], *, sent: datetime = SENT, answered: datetime = ANSWERED
) -> list[str]:
    ref = RequestRef.for_request(scheme="tcp", host=CONTEXT.external_host, sent_at=sent, answered_at=answered)
    proof = judge(
        tcp_request(),
        ref,
        sidecar=EntryLog(LinesLogSource("target sidecar", sidecar), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
    )
    return [h.hop for h in proof]


def witness_tcp(records: Sequence[dict[str, Any]], token: str = TOKEN) -> str:
    """What the cluster tier checks of the external host's record of a TCP request via the gateway."""
    record = expect_external_record(
        lambda: list(records), "rid-unused", from_ips={GATEWAY_ADDRESS}, path_token=token, timeout=0.1
    )
    return check_tcp_record(record, tcp_request().expect.tcp_bytes)


def test_the_tcp_request_passes_on_what_the_istiod_tier_recorded() -> None:
    # the recorded entries are TCP ones with the payload's 4096 bytes each way
    assert ' "- - -" 0 - - - "-" 4096 4096 ' in SIDECAR[1] and ' "- - -" 0 - - - "-" 4096 4096 ' in GATEWAY[0]
    assert judge_tcp(SIDECAR, GATEWAY) == ["target sidecar", "egress gateway"]
    assert witness_tcp([RECORD]) == "4096 bytes in, 4096 echoed"
    # the three legs are one connection chain: sidecar -> gateway -> host, by their addresses
    assert "10.244.0.7:41326" in SIDECAR[1] and "10.244.0.7:41326" in GATEWAY[0]
    assert f"{RECORD['client_ip']}:{RECORD['client_port']}" == "10.244.1.3:57788"
    assert "10.244.1.3:57788" in GATEWAY[0]


@pytest.mark.parametrize(
    ("what", "sidecar", "gateway", "hop"),
    [
        (
            "sidecar bytes",
            [SIDECAR[0], SIDECAR[1].replace("4096 4096 2", "4096 12 2")],
            GATEWAY,
            "target sidecar",
        ),
        ("gateway bytes", SIDECAR, [GATEWAY[0].replace("4096 4096 1", "100 4096 1")], "egress gateway"),
        (
            "an HTTP entry at the sidecar",
            [SIDECAR[0], SIDECAR[1].replace('"- - -" 0 -', '"GET /x HTTP/1.1" 200 -')],
            GATEWAY,
            "target sidecar",
        ),
        (
            "the gateway sent it elsewhere",
            SIDECAR,
            [GATEWAY[0].replace("outbound|9000||tcp-via", "outbound|9001||tcp-via")],
            "egress gateway",
        ),
        (
            "the gateway's entry started before the request",
            SIDECAR,
            [GATEWAY[0].replace("10:41:14.313Z", "10:41:13.313Z")],
            "egress gateway",
        ),
        (
            "the gateway's entry is another connection's",
            SIDECAR,
            [GATEWAY[0].replace("10.244.0.7:41326 - -", "10.244.0.7:41327 - -")],
            "egress gateway",
        ),
        ("no gateway entry", SIDECAR, [], "egress gateway"),
        ("only the sidecar's inbound entry", SIDECAR[:1], GATEWAY, "target sidecar"),
    ],
    ids=lambda x: x if isinstance(x, str) and " " in x else None,
)
def test_tampered_tcp_evidence_fails_at_its_hop(
    what: str, sidecar: Sequence[str], gateway: Sequence[str], hop: str
) -> None:
    assert (sidecar, gateway) != (SIDECAR, GATEWAY), what
    with pytest.raises(EvidenceError) as caught:
        judge_tcp(sidecar, gateway)
    assert caught.value.hop == hop


def test_the_unrouted_tcp_request_went_straight_out_and_fails_at_the_sidecar() -> None:
    """The same request with the scenario's VirtualService left out, as the real proxies handled it:
    the sidecar sent it to the host's own cluster, and the host's record shows the workload."""
    with pytest.raises(EvidenceError) as caught:
        judge_tcp(UNROUTED_SIDECAR, [], sent=UNROUTED_SENT, answered=UNROUTED_ANSWERED)
    assert caught.value.hop == "target sidecar"
    assert "got 'outbound|9000||tcp-via-egress-gateway.egress-harness.test'" in str(caught.value)
    assert UNROUTED_RECORD["client_ip"] == UNROUTED_TARGET_ADDRESS
    with pytest.raises(ExternalEvidenceError, match="not from the egress gateway") as witnessed:
        witness_tcp([UNROUTED_RECORD], token=UNROUTED_TOKEN)
    assert witnessed.value.hop == "external host"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bytes_sent": 4000}, r"carried 4096 byte\(s\) in and 4000 echoed, expected 4096 each way"),
        ({"bytes_received": 1}, r"carried 1 byte\(s\) in and 4096 echoed"),
        ({"client_ip": UNROUTED_TARGET_ADDRESS}, "not from the egress gateway"),
        ({"path": "/other", "target": "/other", "head": "/other"}, "never reached the external host"),
    ],
)
def test_a_tampered_record_of_the_connection_fails_at_the_external_host(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExternalEvidenceError, match=message) as caught:
        witness_tcp([{**RECORD, **change}])
    assert caught.value.hop == "external host"
