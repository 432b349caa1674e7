"""The negative controls of the egress scenarios of issue 13, judged on what real proxies wrote.

Each test takes the lines the istiod tier's proxies wrote for a scenario's refused request
(``tests/unit/data/recorded``, see its README), judges them with the real evidence engine and the
scenario's own expectation (they pass), then tampers with one piece of evidence at a time: each
tampered copy must fail, naming the hop whose evidence was changed. The same for the external
host's record of a direct request (``external_caller: not-gateway``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.cluster.witness import check_tls_record, expects_external_tls
from harness.evidence import (
    EntryLog,
    EvidenceError,
    ExternalEvidenceError,
    LinesLogSource,
    RequestRef,
    Wait,
    expect_external_attempts,
    expect_external_record,
    expect_no_external_record,
)
from harness.scenarios import RenderContext, load_catalog, render_request
from harness.scenarios.expect import judge
from harness.scenarios.model import ResolvedRequest

REPO = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).parent / "data" / "recorded"
CATALOG = load_catalog(REPO / "scenarios")
QUICK = Wait(timeout=0.2, interval=0.02, settle=0.05)

REFUSED = "tls-origination-refused-untrusted-ca"
#: the run the lines were recorded in: its namespace, host and the request's path token
REFUSED_CONTEXT = RenderContext(
    istio_version="1.31-dev",
    namespace="e1b3867-tls-origination-refused-untrusted-ca",
    external_host="tls-origination-refused-untrusted-ca.egress-harness.test",
    run_id="1b3867",
)
REFUSED_TOKEN = "457f1c10-4b3a-4194-9b37-bab4df92b7c6"
GATEWAY_ADDRESS = "10.244.1.3"


def recorded(name: str) -> list[str]:
    return (RECORDED / name).read_text(encoding="utf-8").splitlines()


def refused_request() -> ResolvedRequest:
    scenario = CATALOG.get(REFUSED)
    [spec] = scenario.requests
    return render_request(spec, REFUSED_CONTEXT, source=scenario.file)


def judge_refused(sidecar: Sequence[str], gateway: Sequence[str]) -> list[str]:
    proof = judge(
        refused_request(),
        RequestRef(path_token=REFUSED_TOKEN),
        sidecar=EntryLog(LinesLogSource("target sidecar", sidecar), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
    )
    return [h.hop for h in proof]


SIDECAR = recorded("tls-origination-refused.sidecar.log")
GATEWAY = recorded("tls-origination-refused.gateway.log")


def test_the_refused_tls_origination_passes_on_what_the_istiod_tier_recorded() -> None:
    assert "CERTIFICATE_VERIFY_FAILED" in GATEWAY[0] and " 503 URX,UF " in GATEWAY[0]
    assert judge_refused(SIDECAR, GATEWAY) == ["target sidecar", "egress gateway"]
    # the external host has no record of it: the handshakes failed before any request was written
    expect_no_external_record(lambda: [], "rid", path_token=REFUSED_TOKEN)
    failures = json.loads((RECORDED / "tls-origination-refused.handshake-failures.json").read_text())
    assert {(f["client_ip"], f["sni"]) for f in failures} == {
        (GATEWAY_ADDRESS, REFUSED_CONTEXT.external_host)
    }
    assert all("UNKNOWN_CA" in f["error"] for f in failures)


@pytest.mark.parametrize(
    ("what", "old", "new"),
    [
        # the handshake failed for another reason than the certificate's verification
        ("no verification failure", "CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER"),
        # the gateway answered itself (no upstream connection failure)
        ("no UF flag", " 503 URX,UF ", " 503 URX "),
        # the gateway got through to the host: the CA verified it
        ("forwarded", " 503 URX,UF upstream_reset_before_response_started", " 200 - via_upstream"),
        # the request went elsewhere than the external host's TLS port
        ("other cluster", "outbound|443||", "outbound|80||"),
    ],
)
def test_a_tampered_gateway_entry_fails_the_refused_tls_origination_at_the_gateway(
    what: str, old: str, new: str
) -> None:
    assert old in GATEWAY[0], what
    tampered = [GATEWAY[0].replace(old, new)]
    with pytest.raises(EvidenceError) as caught:
        judge_refused(SIDECAR, tampered)
    assert caught.value.hop == "egress gateway", what


def test_a_sidecar_that_did_not_send_it_to_the_gateway_fails_the_refused_tls_origination() -> None:
    old = "outbound|443|external-tls-origination|istio-egressgateway.istio-system.svc.cluster.local"
    tampered = [SIDECAR[0].replace(old, "PassthroughCluster")]
    with pytest.raises(EvidenceError) as caught:
        judge_refused(tampered, GATEWAY)
    assert caught.value.hop == "target sidecar"


def test_a_refused_tls_origination_the_external_host_recorded_fails_there() -> None:
    record = {"client_ip": GATEWAY_ADDRESS, "client_port": 42318, "target": f"/get?egh-token={REFUSED_TOKEN}"}
    with pytest.raises(ExternalEvidenceError) as caught:
        expect_no_external_record(lambda: [record], "rid", path_token=REFUSED_TOKEN)
    assert caught.value.hop == "external host"
    assert "reached the external host anyway" in str(caught.value)


# ---------------------------------------------------- tls-origination-at-sidecar: a direct witness

SIDECAR_ORIGINATION = "tls-origination-at-sidecar"
SIDECAR_RECORD = json.loads((RECORDED / "tls-origination-at-sidecar.record.json").read_text())
SIDECAR_GATEWAY_ADDRESS = "10.244.1.4"
SIDECAR_HOST = "tls-origination-at-sidecar.egress-harness.test"


def witness_direct(record: dict[str, object]) -> str:
    """What ``ClusterStage.witness`` checks of a direct request's record: from a caller that is not
    the gateway, over TLS with the host as SNI (the scenario's last leg is the host's TLS port)."""
    scenario = CATALOG.get(SIDECAR_ORIGINATION)
    [spec] = scenario.requests
    context = RenderContext(istio_version="1.31-dev", external_host=SIDECAR_HOST, run_id="a62387")
    request = render_request(spec, context, source=scenario.file)
    assert request.expect.external_caller == "not-gateway" and not request.expect.via_gateway
    assert expects_external_tls(request, context.external_tls_port)
    token = str(record["target"]).partition("egh-token=")[2]
    found = expect_external_record(
        lambda: [record], "rid", not_from_ips={SIDECAR_GATEWAY_ADDRESS}, path_token=token, timeout=0.1
    )
    tls = check_tls_record(found, host=SIDECAR_HOST)
    return f"{found['client_ip']} {tls['sni']}"


def test_the_sidecar_origination_is_witnessed_direct_over_tls_on_what_the_recorder_recorded() -> None:
    assert witness_direct(SIDECAR_RECORD) == f"10.244.0.5 {SIDECAR_HOST}"


@pytest.mark.parametrize(
    ("what", "key", "value", "message"),
    [
        (
            "from the gateway",
            "client_ip",
            SIDECAR_GATEWAY_ADDRESS,
            "from the egress gateway (10.244.1.4), expected a direct call",
        ),
        ("plain HTTP", "tls", None, "over plain HTTP, expected TLS with SNI"),
        (
            "another SNI",
            "tls",
            {**SIDECAR_RECORD["tls"], "sni": "other.egress-harness.test"},
            "over TLS with SNI 'other",
        ),
    ],
)
def test_a_tampered_record_fails_the_sidecar_origination_at_the_external_host(
    what: str, key: str, value: object, message: str
) -> None:
    with pytest.raises(ExternalEvidenceError) as caught:
        witness_direct({**SIDECAR_RECORD, key: value})
    assert caught.value.hop == "external host", what
    assert message in str(caught.value), what


def test_a_direct_witness_needs_the_gateway_addresses_to_tell_it_by() -> None:
    with pytest.raises(ValueError, match="not_from_ips is empty"):
        expect_external_record(lambda: [SIDECAR_RECORD], "rid", not_from_ips=set())
    with pytest.raises(ValueError, match="give from_ips or not_from_ips"):
        expect_external_record(lambda: [SIDECAR_RECORD], "rid")


# ------------------------------------------- timeouts-and-retries-at-egress-gateway: UT and attempts

TIMEOUTS = "timeouts-and-retries-at-egress-gateway"
TIMEOUTS_HOST = "timeouts-and-retries-at-egress-gateway.egress-harness.test"
TIMEOUTS_GATEWAY_ADDRESS = "10.244.1.3"
TIMEOUTS_SIDECAR = recorded("timeouts-and-retries.sidecar.log")
TIMEOUTS_GATEWAY = recorded("timeouts-and-retries.gateway.log")
TIMEOUTS_RECORDS: list[dict[str, object]] = json.loads(
    (RECORDED / "timeouts-and-retries.records.json").read_text()
)


def timeouts_request(name: str) -> tuple[ResolvedRequest, str]:
    scenario = CATALOG.get(TIMEOUTS)
    context = RenderContext(istio_version="1.31-dev", external_host=TIMEOUTS_HOST, run_id="e0e72f7")
    [spec] = [s for s in scenario.requests if s.name == name]
    request = render_request(spec, context, source=scenario.file)
    [token] = {line.split("egh-token=")[1].split(" ")[0] for line in TIMEOUTS_GATEWAY if request.path in line}
    return request, token


def judge_timeouts(name: str, gateway: Sequence[str], records: Sequence[dict[str, object]]) -> int:
    """The hop logs and the external host's records, as the runner and ``ClusterStage.witness``
    judge them; the number of attempts the host saw."""
    request, token = timeouts_request(name)
    judge(
        request,
        RequestRef(path_token=token),
        sidecar=EntryLog(LinesLogSource("target sidecar", TIMEOUTS_SIDECAR), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
    )
    assert request.expect.external_attempts is not None
    found = expect_external_attempts(
        lambda: records,
        "rid",
        request.expect.external_attempts,
        from_ips={TIMEOUTS_GATEWAY_ADDRESS},
        path_token=token,
    )
    return len(found)


def test_the_timeout_and_the_retries_pass_on_what_the_istiod_tier_recorded() -> None:
    assert judge_timeouts("slow-host-times-out", TIMEOUTS_GATEWAY, TIMEOUTS_RECORDS) == 1
    assert judge_timeouts("failing-host-retried", TIMEOUTS_GATEWAY, TIMEOUTS_RECORDS) == 3
    attempts = [
        r["headers"]["x-envoy-attempt-count"] for r in TIMEOUTS_RECORDS if "egh-status" in str(r["path"])
    ]  # type: ignore[index]
    assert attempts == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("slow-host-times-out", " 504 UT response_timeout ", " 504 - via_upstream "),  # the host's own 504
        ("slow-host-times-out", " 504 UT response_timeout ", " 200 - via_upstream "),
        ("failing-host-retried", " 502 URX via_upstream ", " 502 - via_upstream "),  # no retry ran out
    ],
)
def test_a_tampered_gateway_entry_fails_the_timeouts_scenario_at_the_gateway(
    name: str, old: str, new: str
) -> None:
    assert sum(old in line for line in TIMEOUTS_GATEWAY) == 1
    tampered = [line.replace(old, new) for line in TIMEOUTS_GATEWAY]
    with pytest.raises(EvidenceError) as caught:
        judge_timeouts(name, tampered, TIMEOUTS_RECORDS)
    assert caught.value.hop == "egress gateway"


def test_tampered_attempts_fail_the_retries_at_the_external_host() -> None:
    retried = [r for r in TIMEOUTS_RECORDS if "egh-status" in str(r["path"])]
    others = [r for r in TIMEOUTS_RECORDS if r not in retried]
    # one attempt fewer: the retry policy did not run twice
    with pytest.raises(
        ExternalEvidenceError,
        match=r"reached the external host 2 time\(s\), expected 3 \(x-envoy-attempt-count of each: 1, 2\)",
    ):
        judge_timeouts("failing-host-retried", TIMEOUTS_GATEWAY, others + retried[:2])
    # one attempt more: someone else retried too
    with pytest.raises(ExternalEvidenceError, match=r"4 time\(s\), expected 3"):
        judge_timeouts("failing-host-retried", TIMEOUTS_GATEWAY, others + retried + retried[-1:])
    # an attempt from the workload itself, not the gateway
    direct = {**retried[2], "client_ip": "10.244.0.5"}
    with pytest.raises(ExternalEvidenceError, match=r"1 of the 3 records .* came from 10\.244\.0\.5"):
        judge_timeouts("failing-host-retried", TIMEOUTS_GATEWAY, others + retried[:2] + [direct])


# ------------------------------------------------- one-host-two-ports, wildcard-tls-passthrough-...

PASSTHROUGH_GATEWAY_ADDRESS = "10.244.1.3"


def tls_ref(line: str, host: str) -> RequestRef:
    """A TLS request the workload encrypts itself, found as the runner finds it: by SNI, in a time
    window around the entry's start (the capture's own send and answer times were not kept)."""
    started = datetime.fromisoformat(line[1:25].replace("Z", "+00:00"))
    return RequestRef(
        sni=host, since=started - timedelta(seconds=0.5), until=started + timedelta(seconds=0.5)
    )


def render_named(scenario_name: str, request_name: str, host: str) -> ResolvedRequest:
    scenario = CATALOG.get(scenario_name)
    context = RenderContext(istio_version="1.31-dev", external_host=host, run_id="capture")
    [spec] = [s for s in scenario.requests if s.name == request_name]
    return render_request(spec, context, source=scenario.file)


TWO_PORTS_HOST = "one-host-two-ports.egress-harness.test"
TWO_PORTS_SIDECAR = recorded("one-host-two-ports.sidecar.log")
TWO_PORTS_GATEWAY = recorded("one-host-two-ports.gateway.log")
TWO_PORTS_RECORDS: list[dict[str, Any]] = json.loads(
    (RECORDED / "one-host-two-ports.records.json").read_text()
)
[TWO_PORTS_TLS_LINE] = [line for line in TWO_PORTS_SIDECAR if '"- - -"' in line]
[CANARY_LINE] = [line for line in TWO_PORTS_GATEWAY if "egh-live-" in line]
CANARY = RequestRef(path_token=CANARY_LINE.split("egh-token=")[1].split(" ")[0])
[TLS_DIRECT_RECORD] = [r for r in TWO_PORTS_RECORDS if r["client_ip"] == "10.244.0.10"]


def judge_tls_direct(sidecar: Sequence[str], gateway: Sequence[str], record: dict[str, Any]) -> str:
    request = render_named("one-host-two-ports", "tls-direct", TWO_PORTS_HOST)
    judge(
        request,
        tls_ref(TWO_PORTS_TLS_LINE, TWO_PORTS_HOST),
        sidecar=EntryLog(LinesLogSource("target sidecar", sidecar), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
        absence_window=0.05,
        canary=lambda: CANARY,
    )
    assert request.expect.external_caller == "not-gateway" and expects_external_tls(request)
    token = str(record["path"]).split("egh-token=")[1]
    found = expect_external_record(
        lambda: [record], "rid", not_from_ips={PASSTHROUGH_GATEWAY_ADDRESS}, path_token=token, timeout=0.1
    )
    return str(check_tls_record(found, host=TWO_PORTS_HOST)["sni"])


def test_one_host_two_ports_tells_the_direct_tls_port_apart_on_what_the_istiod_tier_recorded() -> None:
    assert judge_tls_direct(TWO_PORTS_SIDECAR, TWO_PORTS_GATEWAY, TLS_DIRECT_RECORD) == TWO_PORTS_HOST


def test_one_host_two_ports_fails_when_its_tls_port_went_through_the_gateway() -> None:
    # the sidecar sent the TLS port to the gateway
    to_gateway = [
        line.replace(
            f"outbound|443||{TWO_PORTS_HOST}",
            "outbound|443|external-tls|istio-egressgateway.istio-system.svc.cluster.local",
        )
        for line in TWO_PORTS_SIDECAR
    ]
    with pytest.raises(EvidenceError) as caught:
        judge_tls_direct(to_gateway, TWO_PORTS_GATEWAY, TLS_DIRECT_RECORD)
    assert caught.value.hop == "target sidecar"
    # the gateway has an entry of the connection (its SNI, in its time window)
    gateway_entry = TWO_PORTS_TLS_LINE.replace("10.244.0.10:55222", "10.244.1.3:44600")
    with pytest.raises(EvidenceError) as caught:
        judge_tls_direct(TWO_PORTS_SIDECAR, [*TWO_PORTS_GATEWAY, gateway_entry], TLS_DIRECT_RECORD)
    assert caught.value.hop == "egress gateway"
    # the external host saw the gateway call
    with pytest.raises(ExternalEvidenceError) as caught_external:
        judge_tls_direct(
            TWO_PORTS_SIDECAR, TWO_PORTS_GATEWAY, {**TLS_DIRECT_RECORD, "client_ip": "10.244.1.3"}
        )
    assert caught_external.value.hop == "external host"


def test_one_host_two_ports_absence_needs_its_canary_in_the_gateway_log() -> None:
    without_canary = [line for line in TWO_PORTS_GATEWAY if "egh-live-" not in line]
    with pytest.raises(EvidenceError, match="canary") as caught:
        judge_tls_direct(TWO_PORTS_SIDECAR, without_canary, TLS_DIRECT_RECORD)
    assert caught.value.hop == "egress gateway"


WILDCARD_HOSTS = (
    "wildcard-tls-passthrough-via-egress-gateway.egress-harness.test",
    "unregistered-wildcard-tls-passthrough-via-egress-gateway.egress-harness.test",
)
WILDCARD_SIDECAR = recorded("wildcard-tls-passthrough.sidecar.log")
WILDCARD_GATEWAY = recorded("wildcard-tls-passthrough.gateway.log")
WILDCARD_RECORDS: list[dict[str, Any]] = json.loads(
    (RECORDED / "wildcard-tls-passthrough.records.json").read_text()
)


def judge_subdomain(index: int, gateway: Sequence[str], records: Sequence[dict[str, Any]]) -> str:
    name = ("first-subdomain", "second-subdomain")[index]
    scenario = CATALOG.get("wildcard-tls-passthrough-via-egress-gateway")
    context = RenderContext(
        istio_version="1.31-dev", external_host=WILDCARD_HOSTS[0], unregistered_host=WILDCARD_HOSTS[1]
    )
    [spec] = [s for s in scenario.requests if s.name == name]
    request = render_request(spec, context, source=scenario.file)
    host = WILDCARD_HOSTS[index]
    assert request.host == host
    [line] = [line for line in WILDCARD_SIDECAR if line.rstrip().endswith(f" {host} -")]
    judge(
        request,
        tls_ref(line, host),
        sidecar=EntryLog(LinesLogSource("target sidecar", WILDCARD_SIDECAR), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
    )
    mine = [r for r in records if (r.get("tls") or {}).get("sni") == host][-1:]
    [record] = mine or [{"path": "", "client_ip": None}]
    token = str(record["path"]).partition("egh-token=")[2] or "none"
    found = expect_external_record(
        lambda: records, "rid", from_ips={PASSTHROUGH_GATEWAY_ADDRESS}, path_token=token, timeout=0.1
    )
    return str(check_tls_record(found, host=host)["sni"])


def test_each_subdomain_passes_through_the_gateway_with_its_own_sni_on_what_the_istiod_tier_recorded() -> (
    None
):
    assert [judge_subdomain(i, WILDCARD_GATEWAY, WILDCARD_RECORDS) for i in (0, 1)] == list(WILDCARD_HOSTS)


def test_a_subdomain_whose_sni_the_gateway_or_the_host_did_not_see_fails() -> None:
    # the gateway's entry of the second connection carries the first host's SNI
    first, second = WILDCARD_HOSTS
    tampered = [line.replace(f" {second} -", f" {first} -") for line in WILDCARD_GATEWAY]
    with pytest.raises(EvidenceError) as caught:
        judge_subdomain(1, tampered, WILDCARD_RECORDS)
    assert caught.value.hop == "egress gateway"
    # the external host recorded the second subdomain's request with the first one's SNI
    renamed = [
        {**r, "tls": {**r["tls"], "sni": first}} if (r.get("tls") or {}).get("sni") == second else r
        for r in WILDCARD_RECORDS
    ]
    with pytest.raises(ExternalEvidenceError) as caught_external:
        judge_subdomain(1, WILDCARD_GATEWAY, renamed)
    assert caught_external.value.hop == "external host"


# ------------------------------------------------------------- identity-authz-on-egress-gateway

IDENTITY_HOST = "identity-authz-on-egress-gateway.egress-harness.test"
IDENTITY_PEER_HOST = "unregistered-identity-authz-on-egress-gateway.egress-harness.test"
IDENTITY_SIDECAR = recorded("identity-authz.sidecar.log")
IDENTITY_GATEWAY = recorded("identity-authz.gateway.log")
IDENTITY_PEER_ONLY = recorded("identity-authz.peer-only-policy.gateway.log")
IDENTITY_RECORDS: list[dict[str, Any]] = json.loads((RECORDED / "identity-authz.records.json").read_text())


def judge_identity(
    name: str, sidecar: Sequence[str], gateway: Sequence[str], records: Sequence[dict[str, Any]]
) -> str:
    scenario = CATALOG.get("identity-authz-on-egress-gateway")
    context = RenderContext(
        istio_version="1.31-dev", external_host=IDENTITY_HOST, unregistered_host=IDENTITY_PEER_HOST
    )
    [spec] = [s for s in scenario.requests if s.name == name]
    request = render_request(spec, context, source=scenario.file)
    [token] = {
        line.split("egh-token=")[1].split(" ")[0]
        for line in sidecar
        if f"identity-{'own' if name.startswith('own') else 'peer'}-host" in line
    }
    judge(
        request,
        RequestRef(path_token=token),
        sidecar=EntryLog(LinesLogSource("target sidecar", sidecar), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
    )
    if request.expect.blocked:
        expect_no_external_record(lambda: records, "rid", path_token=token)
        return "no record"
    found = expect_external_record(
        lambda: records, "rid", from_ips={"10.244.1.3"}, path_token=token, timeout=0.1
    )
    return str(found["client_ip"])


def test_identity_authz_passes_on_what_the_istiod_tier_recorded() -> None:
    assert (
        judge_identity("own-identity-allowed", IDENTITY_SIDECAR, IDENTITY_GATEWAY, IDENTITY_RECORDS)
        == "10.244.1.3"
    )
    assert (
        judge_identity("other-identity-denied", IDENTITY_SIDECAR, IDENTITY_GATEWAY, IDENTITY_RECORDS)
        == "no record"
    )


def test_identity_authz_fails_where_the_identity_did_not_decide() -> None:
    # with the policy allowing another namespace only, real istiod refused the workload's own host:
    # that entry fails the allowed request at the gateway (the 200 depends on the identity)
    own_token = IDENTITY_PEER_ONLY[0].split("egh-token=")[1].split(" ")[0]
    sidecar = [
        line.replace(line.split("egh-token=")[1].split(" ")[0], own_token)
        if "identity-own-host" in line
        else line
        for line in IDENTITY_SIDECAR
    ]
    with pytest.raises(EvidenceError) as caught:
        judge_identity("own-identity-allowed", sidecar, IDENTITY_PEER_ONLY, IDENTITY_RECORDS)
    assert caught.value.hop == "egress gateway"
    # the gateway let the other identity through
    let_through = [
        line.replace(" 403 - rbac_access_denied_matched_policy[none] ", " 200 - via_upstream ")
        for line in IDENTITY_GATEWAY
    ]
    with pytest.raises(EvidenceError) as caught:
        judge_identity("other-identity-denied", IDENTITY_SIDECAR, let_through, IDENTITY_RECORDS)
    assert caught.value.hop == "egress gateway"
    # the external host recorded the refused request
    [peer] = [line for line in IDENTITY_SIDECAR if "identity-peer-host" in line]
    token = peer.split("egh-token=")[1].split(" ")[0]
    leaked = {"client_ip": "10.244.1.3", "client_port": 1, "path": f"/get?egh-token={token}"}
    with pytest.raises(ExternalEvidenceError) as caught_external:
        judge_identity(
            "other-identity-denied", IDENTITY_SIDECAR, IDENTITY_GATEWAY, [*IDENTITY_RECORDS, leaked]
        )
    assert caught_external.value.hop == "external host"


def test_an_attempt_count_needs_a_count_and_the_callers_to_tell_them_by() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        expect_external_attempts(lambda: TIMEOUTS_RECORDS, "rid", 0, from_ips={"10.244.1.3"})
    with pytest.raises(ValueError, match="give from_ips or not_from_ips"):
        expect_external_attempts(lambda: TIMEOUTS_RECORDS, "rid", 1)


# ------------------------------------ bypass-sidecar-excludes-external, bypass-without-sidecar

BYPASS_GATEWAY_ADDRESS = "10.244.1.3"
#: the calling workload's pod in the excluded run, and the one without a sidecar
EXCLUDED_TARGET_ADDRESS = "10.244.1.20"
BARE_TARGET_ADDRESS = "10.244.1.15"
EXCLUDED_SIDECAR = recorded("bypass-excluded.sidecar.log")
EXCLUDED_GATEWAY = recorded("bypass-excluded.gateway.log")
[EXCLUDED_RECORD] = json.loads((RECORDED / "bypass-excluded.records.json").read_text())
EXCLUDED_TOKEN = str(EXCLUDED_RECORD["path"]).partition("egh-token=")[2]
#: the same request of the same scenario with the annotation removed (a captured caller): what its
#: sidecar, the gateway and the external host recorded
[CAPTURED_SIDECAR_LINE] = recorded("bypass-excluded.captured.sidecar.log")
[CAPTURED_GATEWAY_LINE] = recorded("bypass-excluded.captured.gateway.log")
[CAPTURED_RECORD] = json.loads((RECORDED / "bypass-excluded.captured.records.json").read_text())
CAPTURED_TOKEN = str(CAPTURED_RECORD["path"]).partition("egh-token=")[2]
BARE_GATEWAY = recorded("bypass-without-sidecar.gateway.log")
[BARE_RECORD] = json.loads((RECORDED / "bypass-without-sidecar.records.json").read_text())
BARE_TOKEN = str(BARE_RECORD["path"]).partition("egh-token=")[2]


def canaries(lines: Sequence[str]) -> list[RequestRef]:
    """The canaries a log holds, in the order they were sent (one per absence check)."""
    tokens = [line.split("egh-token=")[1].split(" ")[0] for line in lines if '"GET /egh-live-' in line]
    return [RequestRef(path_token=t) for t in dict.fromkeys(tokens)]


def judge_bypass(
    name: str,
    sidecar: Sequence[str] | None,
    gateway: Sequence[str],
    record: dict[str, Any],
    *,
    workload: str,
    token: str,
) -> str:
    """The hop logs and the external host's record of a bypass scenario's request, as the runner
    and ``ClusterStage.witness`` (``external_caller: workload``) judge them; the caller it saw."""
    scenario = CATALOG.get(name)
    assert not scenario.caller.captured
    [spec] = scenario.requests
    host = f"{name}.egress-harness.test"
    request = render_request(
        spec,
        RenderContext(istio_version="1.31-dev", external_host=host, run_id="476f1f"),
        source=scenario.file,
    )
    assert request.expect.sidecar_absent and request.expect.external_caller == "workload"
    sent = canaries([*(sidecar or []), *gateway])
    judge(
        request,
        RequestRef(path_token=token),
        sidecar=None
        if sidecar is None
        else EntryLog(LinesLogSource("target sidecar", sidecar), hop="target sidecar"),
        gateway=EntryLog(LinesLogSource("egress gateway", gateway), hop="egress gateway"),
        wait=QUICK,
        absence_window=0.05,
        canary=lambda: sent.pop(0),
    )
    found = expect_external_record(
        lambda: [record],
        "rid",
        from_ips={workload},
        path_token=token,
        timeout=0.1,
        expected_caller="the calling workload 'target'",
    )
    assert workload != BYPASS_GATEWAY_ADDRESS
    return str(found["client_ip"])


def judge_excluded(
    sidecar: Sequence[str] = EXCLUDED_SIDECAR,
    gateway: Sequence[str] = EXCLUDED_GATEWAY,
    record: dict[str, Any] = EXCLUDED_RECORD,
) -> str:
    return judge_bypass(
        "bypass-sidecar-excludes-external",
        sidecar,
        gateway,
        record,
        workload=EXCLUDED_TARGET_ADDRESS,
        token=EXCLUDED_TOKEN,
    )


def test_the_excluded_address_bypasses_sidecar_and_gateway_on_what_the_istiod_tier_recorded() -> None:
    # the sidecar logged the request coming in (inbound) and the canaries going out, not the request
    assert any(EXCLUDED_TOKEN in line and "inbound|8080||" in line for line in EXCLUDED_SIDECAR)
    assert len(canaries(EXCLUDED_SIDECAR)) == len(canaries(EXCLUDED_GATEWAY)) == 2
    assert judge_excluded() == EXCLUDED_TARGET_ADDRESS


def test_the_bare_workload_bypasses_the_gateway_on_what_the_istiod_tier_recorded() -> None:
    assert (
        judge_bypass(
            "bypass-without-sidecar",
            None,
            BARE_GATEWAY,
            BARE_RECORD,
            workload=BARE_TARGET_ADDRESS,
            token=BARE_TOKEN,
        )
        == BARE_TARGET_ADDRESS
    )


def test_a_captured_request_fails_the_bypass_at_the_hop_that_logged_it() -> None:
    """The lines the sidecar and the gateway really wrote when the same scenario ran without the
    annotation (the request captured and sent through the gateway), put in for this request."""
    assert CAPTURED_TOKEN in CAPTURED_SIDECAR_LINE and CAPTURED_TOKEN in CAPTURED_GATEWAY_LINE
    assert "outbound|80|external|istio-egressgateway" in CAPTURED_SIDECAR_LINE
    sidecar_entry = CAPTURED_SIDECAR_LINE.replace(CAPTURED_TOKEN, EXCLUDED_TOKEN)
    with pytest.raises(EvidenceError) as caught:
        judge_excluded(sidecar=[*EXCLUDED_SIDECAR, sidecar_entry])
    assert caught.value.hop == "target sidecar"
    assert "an entry that should not exist" in str(caught.value)
    gateway_entry = CAPTURED_GATEWAY_LINE.replace(CAPTURED_TOKEN, EXCLUDED_TOKEN)
    for judged in (
        lambda: judge_excluded(gateway=[*EXCLUDED_GATEWAY, gateway_entry]),
        lambda: judge_bypass(
            "bypass-without-sidecar",
            None,
            [
                *BARE_GATEWAY,
                CAPTURED_GATEWAY_LINE.replace(CAPTURED_TOKEN, BARE_TOKEN),
            ],
            BARE_RECORD,
            workload=BARE_TARGET_ADDRESS,
            token=BARE_TOKEN,
        ),
    ):
        with pytest.raises(EvidenceError) as caught:
            judged()
        assert caught.value.hop == "egress gateway"


def test_a_bypass_the_external_host_saw_from_the_gateway_fails_there() -> None:
    # the record of the captured run: the external host's caller was the gateway
    assert CAPTURED_RECORD["client_ip"] == BYPASS_GATEWAY_ADDRESS
    from_gateway = {**CAPTURED_RECORD, "path": EXCLUDED_RECORD["path"], "target": EXCLUDED_RECORD["target"]}
    with pytest.raises(ExternalEvidenceError) as caught:
        judge_excluded(record=from_gateway)
    assert caught.value.hop == "external host"
    assert "not from the calling workload 'target' (10.244.1.20)" in str(caught.value)
    # nor does another workload's address pass for the caller's own
    with pytest.raises(ExternalEvidenceError):
        judge_excluded(record={**EXCLUDED_RECORD, "client_ip": BARE_TARGET_ADDRESS})
    # and a request the host never saw is no bypass at all
    with pytest.raises(ExternalEvidenceError, match="never reached the external host"):
        judge_excluded(
            record={**EXCLUDED_RECORD, "path": "/get?egh-token=other", "target": "/get?egh-token=other"}
        )


def test_a_bypass_absence_needs_its_canaries_in_both_logs() -> None:
    for sidecar, gateway, hop in (
        ([line for line in EXCLUDED_SIDECAR if "egh-live-" not in line], EXCLUDED_GATEWAY, "target sidecar"),
        (EXCLUDED_SIDECAR, [], "egress gateway"),
    ):
        with pytest.raises(EvidenceError, match="canary") as caught:
            judge_excluded(sidecar=sidecar, gateway=gateway)
        assert caught.value.hop == hop
