"""The one scenario runner (``harness.runner``) on a tier kept in memory.

``MemoryTier`` implements the tier interface (``harness.tier``) the way a real tier does at its
boundary: each request sent leaves the access-log lines real Envoys printed (``accesslog_samples``,
with the request's own id and host) in the target sidecar's and the egress gateway's logs, and a
record of its caller at the external host. Which lines a request leaves is its host's ``path``.
The real catalog's scenarios are judged by the real evidence engine: passed, failed with the hop,
skipped, error, and the stage removed whatever happened.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from harness.evidence import (
    EntryLog,
    EvidenceError,
    ExternalEvidenceError,
    LinesLogSource,
    RequestRef,
    Wait,
    expect_external_record,
    expect_no_external_record,
    new_canary_token,
)
from harness.report.results import ScenarioResult
from harness.runner import RequestOutcome, ScenarioRun, exercise, run_catalog, run_scenario
from harness.scenarios import RenderContext, load_catalog
from harness.scenarios.model import Expectation, ResolvedRequest, Scenario
from harness.tier import HopLogs, Sent, Stage, Tier, TierVersions, staged
from tests.unit.accesslog_samples import (
    CANARY_GATEWAY,
    CANARY_TOKEN,
    GATEWAY_NO_ROUTE,
    GATEWAY_TO_EXTERNAL,
    RBAC_GATEWAY_DENIED,
    SIDECAR_BLOCKED,
    SIDECAR_PASSTHROUGH,
    SIDECAR_TO_GATEWAY,
    TLS_GATEWAY_TO_EXTERNAL,
    TLS_SIDECAR_TO_GATEWAY,
    at,
)

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "scenarios")
MISSION = "http-via-egress-gateway"
DIRECT = "sidecar-only-egress"
REGISTRY_ONLY = "registry-only-blocked"

EXTERNAL = "external.egress-harness.test"
UNREGISTERED = "unregistered.egress-harness.test"
#: the addresses the external host sees: the gateway's (in the samples' gateway entry) and the workload's
GATEWAY_IP = "10.244.0.7"
WORKLOAD_IP = "10.244.0.12"

#: what a request to a host leaves behind, by path
PATHS = ("gateway", "direct", "passthrough", "blocked", "no-route", "denied", "tls-gateway")
PASSTHROUGH_TLS = "https-passthrough-via-egress-gateway"
AUTHZ = "authz-policy-on-egress-gateway"
CANARY_MISSING = "the gateway's log source shows no entry of a canary sent to it: the absence of the request proves nothing"


class NotConverged(Exception):
    """The memory tier's stand-in for a configuration that never took effect."""


def lines_for(
    path: str, rid: str, request: ResolvedRequest, subset: str = "external"
) -> tuple[list[str], list[str], int]:
    """The sidecar's and the gateway's lines of one request down ``path``, and the client's status."""
    host = request.host

    def mine(line: str) -> str:
        for sample_rid in ('"rid-1"', '"rid-2"', '"rid-3"', '"rid-4"', '"rid-x"'):
            line = line.replace(sample_rid, f'"{rid}"')
        line = line.replace("outbound|80|external|", f"outbound|80|{subset}|")
        return line.replace(EXTERNAL, host).replace("unregistered.example", host)

    if path == "gateway":
        return [mine(SIDECAR_TO_GATEWAY)], [mine(GATEWAY_TO_EXTERNAL)], 200
    if path == "no-route":
        return [mine(SIDECAR_TO_GATEWAY)], [mine(GATEWAY_NO_ROUTE)], 404
    if path == "denied":  # the gateway's AuthorizationPolicy refused it; the sidecar relays the 403
        relayed = SIDECAR_TO_GATEWAY.replace(" 200 - via_upstream ", " 403 - via_upstream ")
        return [mine(relayed)], [mine(RBAC_GATEWAY_DENIED)], 403
    if path == "tls-gateway":  # TLS the client encrypts itself: TCP entries with its SNI, no id, no path
        now = datetime.now(UTC)
        gateway = at(TLS_GATEWAY_TO_EXTERNAL, now).replace("outbound|8443||", f"outbound|{request.port}||")
        return [mine(at(TLS_SIDECAR_TO_GATEWAY, now))], [mine(gateway)], 200
    if path == "blocked":
        return [mine(SIDECAR_BLOCKED)], [], 502
    passthrough = mine(SIDECAR_PASSTHROUGH)
    if path == "direct":  # a ServiceEntry host without egress routing: its own outbound cluster
        return [passthrough.replace("PassthroughCluster", f"outbound|80||{host}")], [], 200
    return [passthrough], [], 200


@dataclass
class MemoryTier:
    """A tier whose proxies are two lists of log lines and whose external host is a list of records."""

    paths: dict[str, str] = field(default_factory=lambda: {EXTERNAL: "gateway", UNREGISTERED: "blocked"})
    #: request paths the gateway refuses (an AuthorizationPolicy), whatever the host's path
    denied: frozenset[str] = frozenset()
    #: the gateway subset the sidecar's entries name
    subset: str = "external"
    #: the gateway's log shows what the gateway logs (False: a dead source, e.g. access logs off)
    gateway_live: bool = True
    #: the external host records every request, also a refused one (broken evidence)
    leaky: bool = False
    #: the address the external host records for a request that went out (None: by its path)
    caller: str | None = None
    #: a status the client gets instead of the path's, by host
    status: dict[str, int] = field(default_factory=dict)
    skip: str | None = None
    stage_error: Exception | None = None
    apply_error: Exception | None = None
    send_error: BaseException | None = None
    remove_error: Exception | None = None
    proxies_error: Exception | None = None
    keep_on_failure: bool = False
    name: str = "memory"
    istio_version: str = "1.30.3"
    failures: tuple[type[Exception], ...] = (NotConverged,)
    events: list[str] = field(default_factory=list)
    stages: list[MemoryStage] = field(default_factory=list)
    up: bool = False

    def __enter__(self) -> Self:
        self.up = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.up = False

    def versions(self) -> TierVersions:
        return TierVersions(istio=self.istio_version, envoy="1.36.4", kubernetes="v1.33.1")

    def skip_reason(self, scenario: Scenario) -> str | None:
        return self.skip

    def stage(self, scenario: Scenario) -> MemoryStage:
        if self.stage_error is not None:
            raise self.stage_error
        stage = MemoryStage(self, scenario)
        self.stages.append(stage)
        return stage


class MemoryStage:
    def __init__(self, tier: MemoryTier, scenario: Scenario) -> None:
        self.tier = tier
        self.scenario = scenario
        self.context = RenderContext(
            istio_version=tier.istio_version, external_host=EXTERNAL, unregistered_host=UNREGISTERED
        )
        self.wait: Wait | None = Wait(timeout=0.3, interval=0.01, settle=0.02)
        self.absence_window = 0.05
        self.sidecar = LinesLogSource("target sidecar")
        self.gateway = LinesLogSource("egress gateway")
        self.records: list[dict[str, Any]] = []
        self.applied = False
        self.removed: bool | None = None

    def apply(self) -> float | None:
        self.tier.events.append(f"apply {self.scenario.name}")
        self.applied = True
        if self.tier.apply_error is not None:
            raise self.tier.apply_error
        return 1.5

    def send(self, request: ResolvedRequest) -> Sent:
        assert self.applied and self.removed is None, "sent on a stage that is not applied"
        rid = f"rid-{sum(e.startswith('send') for e in self.tier.events) + 1}"
        self.tier.events.append(f"send {request.name} {rid}")
        if self.tier.send_error is not None:
            raise self.tier.send_error
        sent_at = datetime.now(UTC)
        path = "denied" if request.path in self.tier.denied else self.tier.paths[request.host]
        sidecar, gateway, status = lines_for(path, rid, request, self.tier.subset)
        self.sidecar.append(*sidecar)
        if self.tier.gateway_live:
            self.gateway.append(*gateway)
        if path in ("gateway", "direct", "passthrough", "tls-gateway") or self.tier.leaky:
            caller = self.tier.caller or (GATEWAY_IP if "gateway" in path else WORKLOAD_IP)
            self.records.append({"client_ip": caller, "headers": {"x-request-id": rid}})
        status = self.tier.status.get(request.host, status)
        failed_hop = "target" if status >= 500 else None
        return Sent(rid, status, sent_at, failed_hop=failed_hop, answered_at=datetime.now(UTC))

    def hop_logs(self, sent: Sent) -> HopLogs:
        return HopLogs(
            sidecar=EntryLog(self.sidecar, hop="target sidecar", encoding="text"),
            gateway=EntryLog(self.gateway, hop="egress gateway", encoding="text"),
        )

    def witness(self, request: ResolvedRequest, sent: Sent) -> str | None:
        self.tier.events.append(f"witness {request.name}")
        record = expect_external_record(
            lambda: self.records, sent.request_id, from_ips={GATEWAY_IP}, timeout=0.1
        )
        return f"external host (called from {record['client_ip']})"

    def witness_absence(self, request: ResolvedRequest, sent: Sent) -> str | None:
        self.tier.events.append(f"absence {request.name}")
        expect_no_external_record(lambda: self.records, sent.request_id)
        return "external host (no record)"

    def canary(self) -> RequestRef:
        token = new_canary_token()
        self.tier.events.append("canary")
        if self.tier.gateway_live:
            self.gateway.append(CANARY_GATEWAY.replace(CANARY_TOKEN, token))
        return RequestRef(path_token=token)

    def proxy_versions(self) -> list[str]:
        if self.tier.proxies_error is not None:
            raise self.tier.proxies_error
        return ["1.30.3"]

    def diagnose(self, exc: BaseException, *, label: str) -> Path | None:
        self.tier.events.append(f"diagnose {label} {type(exc).__name__}")
        return Path("artifacts") / label

    def remove(self, *, failed: bool) -> bool:
        self.tier.events.append(f"remove failed={failed}")
        self.removed = failed
        if self.tier.remove_error is not None:
            raise self.tier.remove_error
        return failed and self.tier.keep_on_failure


def run(tier: MemoryTier, name: str, **kw: Any) -> ScenarioRun:
    with tier:
        return run_scenario(tier, CATALOG.get(name), **kw)


def test_the_memory_tier_is_a_tier() -> None:
    tier: Tier = MemoryTier()
    stage: Stage = MemoryStage(MemoryTier(), CATALOG.get(MISSION))
    assert tier.name == "memory" and stage.absence_window > 0


def test_a_scenario_that_holds_passes_with_what_each_hop_showed() -> None:
    tier = MemoryTier()
    done = run(tier, MISSION)
    result = done.result
    assert result.outcome == "passed", result.message
    assert (result.scenario, result.phase, result.istio_version, result.hop) == (
        MISSION,
        "single",
        "1.30.3",
        None,
    )
    assert result.message == (
        f"via-gateway: HTTP 200, target sidecar -> egress gateway -> external host (called from {GATEWAY_IP})"
    )
    assert result.convergence_s == 1.5 and result.proxy_versions == ["1.30.3"] and result.duration_s >= 0
    [request] = done.requests
    assert (request.request.name, request.request_id, request.status, request.passed) == (
        "via-gateway",
        "rid-1",
        200,
        True,
    )
    assert [h.hop for h in request.proof] == ["target sidecar", "egress gateway"]
    assert all(h.entry.request_id == "rid-1" for h in request.proof)
    assert tier.events == [
        f"apply {MISSION}",
        "send via-gateway rid-1",
        "witness via-gateway",
        "remove failed=False",
    ]
    assert done.lines() == [f"PASS  {MISSION}/via-gateway  status 200  id rid-1"]
    assert done.error is None and done.diagnostics is None and not done.kept


def test_a_request_that_went_straight_out_fails_at_the_target_sidecar_and_the_stage_is_removed() -> None:
    tier = MemoryTier(paths={EXTERNAL: "passthrough"})
    done = run(tier, MISSION, test_id="tests/x::t[a]")
    result = done.result
    assert (result.outcome, result.hop) == ("failed", "target sidecar")
    assert "PassthroughCluster" in result.message
    assert result.message.endswith("\ndiagnostics: artifacts/tests/x::t[a]")
    assert done.diagnostics == Path("artifacts/tests/x::t[a]")
    assert result.proxy_versions == ["1.30.3"] and result.convergence_s == 1.5
    # diagnostics while the scenario is still there, then removed; no witness for a failed request
    assert tier.events == [
        f"apply {MISSION}",
        "send via-gateway rid-1",
        "diagnose tests/x::t[a] EvidenceError",
        "remove failed=True",
    ]
    [request] = done.requests
    assert not request.passed and request.hop == "target sidecar" and done.error is request.error
    lines = done.lines()
    assert lines[0] == f"FAIL  {MISSION}/via-gateway  status 200  id rid-1"
    assert (
        lines[1]
        == "      hop 'target sidecar': 1 entry of the request, none as expected for request x-request-id=rid-1"
    )
    assert all(line.startswith("      ") for line in lines[1:]) and "PassthroughCluster" in "\n".join(lines)
    assert lines[-1] == "      diagnostics: artifacts/tests/x::t[a]"
    assert not any(line.startswith(("ERROR", f"FAIL  {MISSION}:")) for line in lines)


def test_a_gateway_without_a_route_fails_at_the_egress_gateway() -> None:
    done = run(MemoryTier(paths={EXTERNAL: "no-route"}), MISSION)
    assert (done.result.outcome, done.result.hop) == ("failed", "egress gateway")
    assert "route_not_found" in done.result.message or "404" in done.result.message


def test_the_external_witness_alone_catches_a_caller_that_is_not_the_gateway() -> None:
    tier = MemoryTier(caller=WORKLOAD_IP)
    done = run(tier, MISSION)
    assert (done.result.outcome, done.result.hop) == ("failed", "external host")
    assert isinstance(done.error, ExternalEvidenceError)
    assert f"from {WORKLOAD_IP}" in done.result.message and GATEWAY_IP in done.result.message


def test_the_default_diagnostics_label_is_phase_version_scenario() -> None:
    tier = MemoryTier(paths={EXTERNAL: "passthrough"})
    run(tier, MISSION, phase="after", version="1.31.0")
    assert f"diagnose after-1.31.0-{MISSION} EvidenceError" in tier.events


def test_a_status_the_client_did_not_expect_fails_after_the_hops_agreed() -> None:
    tier = MemoryTier(paths={EXTERNAL: "direct"}, status={EXTERNAL: 503})
    done = run(tier, DIRECT)
    assert (done.result.outcome, done.result.hop) == ("failed", None)
    assert done.result.message.startswith(
        "request direct-from-sidecar: the client got HTTP 503, expected 200 (x-request-id rid-1; failed hop target: -)"
    )
    # a request that goes straight out has no witness at the gateway's side
    assert not any(e.startswith("witness") for e in tier.events)


def test_a_negative_control_and_registry_only_pass_on_their_own_paths() -> None:
    direct = run(MemoryTier(paths={EXTERNAL: "direct"}), DIRECT)
    assert direct.result.outcome == "passed", direct.result.message
    assert direct.result.message == "direct-from-sidecar: HTTP 200, target sidecar"
    registry = run(MemoryTier(paths={EXTERNAL: "direct", UNREGISTERED: "blocked"}), REGISTRY_ONLY)
    assert registry.result.outcome == "passed", registry.result.message
    assert [o.status for o in registry.requests] == [502, 200]


def test_a_direct_request_that_asks_for_its_caller_is_witnessed_at_the_external_host() -> None:
    tier = MemoryTier(paths={EXTERNAL: "direct"})
    stage = MemoryStage(tier, CATALOG.get(DIRECT))
    stage.apply()
    request = ResolvedRequest(
        "direct-witnessed",
        ("ingress", "proxy", "target"),
        "http",
        "GET",
        EXTERNAL,
        80,
        "/",
        Expectation(status=200, via_gateway=False, external_caller="not-gateway"),
    )
    outcome = exercise(stage, request)
    # the memory stage's witness wants the gateway's address: a direct caller fails it, at the host
    assert "witness direct-witnessed" in tier.events
    assert isinstance(outcome.error, ExternalEvidenceError) and outcome.hop == "external host"


def test_every_request_runs_unless_told_to_stop_at_the_first_failure() -> None:
    # both requests of registry-only-blocked go through the gateway: both fail at the target sidecar
    tier = MemoryTier(paths={EXTERNAL: "gateway", UNREGISTERED: "gateway"})
    done = run(tier, REGISTRY_ONLY)
    assert [(o.request.name, o.hop) for o in done.requests] == [
        ("unregistered-blocked", "target sidecar"),
        ("registered-allowed", "target sidecar"),
    ]
    assert done.result.hop == "target sidecar" and done.error is done.requests[0].error
    assert done.result.message.count("hop 'target sidecar'") == 2
    assert [line[:4] for line in done.lines() if not line.startswith(" ")] == ["FAIL", "FAIL"]

    first_only = MemoryTier(paths={EXTERNAL: "gateway", UNREGISTERED: "gateway"})
    stopped = run(first_only, REGISTRY_ONLY, keep_going=False)
    assert [o.request.name for o in stopped.requests] == ["unregistered-blocked"]
    assert stopped.result.outcome == "failed" and first_only.events[-1] == "remove failed=True"


def test_a_skipped_scenario_touches_nothing() -> None:
    messages: list[str] = []
    tier = MemoryTier(skip="needs outboundTrafficPolicy REGISTRY_ONLY")
    done = run(tier, REGISTRY_ONLY, progress=messages.append)
    assert (done.result.outcome, done.result.message) == (
        "skipped",
        "needs outboundTrafficPolicy REGISTRY_ONLY",
    )
    assert done.result.ok and tier.stages == [] and tier.events == []
    assert messages == [f"scenario {REGISTRY_ONLY}: skipped: needs outboundTrafficPolicy REGISTRY_ONLY"]
    assert done.lines() == [f"SKIP  {REGISTRY_ONLY}: needs outboundTrafficPolicy REGISTRY_ONLY"]


def test_a_request_that_cannot_be_sent_is_an_error_and_the_stage_is_still_removed() -> None:
    tier = MemoryTier(send_error=RuntimeError("connection refused"))
    done = run(tier, MISSION)
    assert (done.result.outcome, done.result.message.splitlines()[0], done.result.hop) == (
        "error",
        "RuntimeError: connection refused",
        None,
    )
    assert isinstance(done.error, RuntimeError) and done.requests == ()
    assert tier.events[-2:] == [
        "diagnose single-1.30.3-http-via-egress-gateway RuntimeError",
        "remove failed=True",
    ]
    assert done.lines()[0] == f"ERROR {MISSION}: RuntimeError: connection refused"


def test_a_configuration_that_never_converges_is_a_failure_the_tier_names() -> None:
    tier = MemoryTier(apply_error=NotConverged("the proxies never had the VirtualService"))
    done = run(tier, MISSION)
    assert done.result.outcome == "failed" and done.result.convergence_s is None
    assert done.result.message.startswith("the proxies never had the VirtualService")
    assert tier.events[-1] == "remove failed=True" and done.requests == ()
    assert done.lines()[0] == f"FAIL  {MISSION}: the proxies never had the VirtualService"
    # the same exception from a tier that does not name it: an error
    other = MemoryTier(apply_error=NotConverged("x"), failures=())
    assert run(other, MISSION).result.outcome == "error"


def test_a_stage_that_cannot_be_made_is_an_error_with_nothing_to_remove() -> None:
    tier = MemoryTier(stage_error=RuntimeError("lock held by another run"))
    done = run(tier, MISSION)
    assert done.result.outcome == "error"
    assert done.result.message == f"scenario {MISSION} could not run: RuntimeError: lock held by another run"
    assert tier.events == []


def test_ctrl_c_removes_the_stage_and_goes_on_up() -> None:
    tier = MemoryTier(send_error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(tier, MISSION)
    assert tier.events[-1] == "remove failed=False"
    assert not any(e.startswith("diagnose") for e in tier.events)


def test_a_removal_that_fails_turns_a_pass_into_an_error_and_is_added_to_a_failure() -> None:
    passed = run(MemoryTier(remove_error=RuntimeError("namespace stuck")), MISSION)
    assert passed.result.outcome == "error"
    assert passed.result.message.startswith(
        f"removing scenario {MISSION} failed: RuntimeError: namespace stuck\nvia-gateway: HTTP 200"
    )
    failed = run(MemoryTier(paths={EXTERNAL: "passthrough"}, remove_error=RuntimeError("stuck")), MISSION)
    assert (failed.result.outcome, failed.result.hop) == ("failed", "target sidecar")
    assert failed.result.message.endswith(f"removing scenario {MISSION} failed: RuntimeError: stuck")


def test_a_tier_that_keeps_failures_says_so() -> None:
    done = run(MemoryTier(paths={EXTERNAL: "passthrough"}, keep_on_failure=True), MISSION)
    assert done.kept and done.result.outcome == "failed"
    assert not run(MemoryTier(keep_on_failure=True), MISSION).kept


def test_unreadable_proxy_versions_do_not_change_the_outcome() -> None:
    messages: list[str] = []
    done = run(MemoryTier(proxies_error=RuntimeError("no pods")), MISSION, progress=messages.append)
    assert done.result.outcome == "passed" and done.result.proxy_versions == []
    assert messages == [f"could not read the proxies' versions of scenario {MISSION}: RuntimeError: no pods"]


def test_a_request_blocked_at_the_gateway_has_no_witness() -> None:
    tier = MemoryTier(paths={EXTERNAL: "no-route"})
    stage = MemoryStage(tier, CATALOG.get(MISSION))
    stage.apply()
    request = ResolvedRequest(
        name="no-route",
        chain=("ingress", "proxy", "target"),
        scheme="http",
        method="GET",
        host=EXTERNAL,
        port=80,
        path="/",
        expect=Expectation(status=404, via_gateway=True, blocked="gateway"),
    )
    outcome = exercise(stage, request)
    assert outcome.passed, outcome.error
    assert [h.hop for h in outcome.proof] == ["target sidecar", "egress gateway"]
    assert outcome.witness is None and not any(e.startswith("witness") for e in tier.events)
    assert outcome.line == "no-route: HTTP 404, target sidecar -> egress gateway"
    # ...but the external host is asked: it must have no record of a request the gateway refused
    assert tier.events[-1] == "absence no-route"


def test_a_refused_request_that_reached_the_external_host_fails_there() -> None:
    tier = MemoryTier(paths={EXTERNAL: "no-route"}, leaky=True)
    stage = MemoryStage(tier, CATALOG.get(MISSION))
    stage.apply()
    request = ResolvedRequest(
        "no-route",
        ("ingress", "proxy", "target"),
        "http",
        "GET",
        EXTERNAL,
        80,
        "/",
        Expectation(status=404, via_gateway=True, blocked="gateway"),
    )
    outcome = exercise(stage, request)
    assert isinstance(outcome.error, ExternalEvidenceError) and outcome.hop == "external host"
    assert "the refused request x-request-id=rid-1 reached the external host anyway" in str(outcome.error)


def test_the_authz_scenario_passes_with_its_denied_request_refused_by_rbac_at_the_gateway() -> None:
    tier = MemoryTier(denied=frozenset({"/denied"}), subset="external-authz")
    done = run(tier, AUTHZ)
    assert done.result.outcome == "passed", done.result.message
    allowed, denied = done.requests
    assert (allowed.status, denied.status) == (200, 403)
    assert [h.entry.response_code_details for h in denied.proof] == [
        "via_upstream",
        "rbac_access_denied_matched_policy[none]",
    ]
    assert "witness allowed-path" in tier.events and "absence denied-path" in tier.events


def test_a_tls_request_the_workload_encrypts_is_judged_by_its_sni_in_its_time_window() -> None:
    done = run(MemoryTier(paths={EXTERNAL: "tls-gateway"}), PASSTHROUGH_TLS)
    assert done.result.outcome == "passed", done.result.message
    [request] = done.requests
    assert [(h.hop, h.entry.requested_server_name, h.entry.response_code) for h in request.proof] == [
        ("target sidecar", EXTERNAL, 0),
        ("egress gateway", EXTERNAL, 0),
    ]
    assert request.sent.answered_at is not None and request.sent.answered_at >= request.sent.sent_at


def test_an_absence_at_a_gateway_whose_log_shows_nothing_proves_nothing() -> None:
    live = MemoryTier(paths={EXTERNAL: "direct"})
    done = run(live, DIRECT)
    assert done.result.outcome == "passed", done.result.message
    assert live.events[1:3] == ["send direct-from-sidecar rid-1", "canary"]
    dead = MemoryTier(paths={EXTERNAL: "direct"}, gateway_live=False)
    done = run(dead, DIRECT)
    assert (done.result.outcome, done.result.hop) == ("failed", "egress gateway")
    assert isinstance(done.error, EvidenceError) and CANARY_MISSING in done.result.message


def test_run_catalog_runs_each_scenario_and_reports_it_as_it_ends() -> None:
    tier = MemoryTier(paths={EXTERNAL: "direct", UNREGISTERED: "blocked"})
    seen: list[str] = []
    scenarios = [CATALOG.get(DIRECT), CATALOG.get(MISSION), CATALOG.get(REGISTRY_ONLY)]
    with tier:
        runs = run_catalog(
            tier, scenarios, phase="before", version="1.29.0", each=lambda r: seen.append(r.result.scenario)
        )
    assert seen == [DIRECT, MISSION, REGISTRY_ONLY]
    results: list[ScenarioResult] = [r.result for r in runs]
    assert [(r.outcome, r.phase, r.istio_version) for r in results] == [
        ("passed", "before", "1.29.0"),
        ("failed", "before", "1.29.0"),  # the mission went straight out
        ("passed", "before", "1.29.0"),
    ]
    assert results[1].hop == "target sidecar"
    assert [s.removed for s in tier.stages] == [False, True, False]


def test_staged_applies_for_the_block_and_removes_after_it() -> None:
    tier = MemoryTier()
    with staged(tier, CATALOG.get(MISSION)) as stage:
        assert isinstance(stage, MemoryStage) and stage.applied
    assert tier.events == [f"apply {MISSION}", "remove failed=False"]
    with pytest.raises(ValueError, match="boom"), staged(tier, CATALOG.get(MISSION)):
        raise ValueError("boom")
    assert tier.events[-1] == "remove failed=True"
    failing = MemoryTier(apply_error=NotConverged("never"))
    with pytest.raises(NotConverged), staged(failing, CATALOG.get(MISSION)):
        pytest.fail("the block must not run when the apply failed")
    assert failing.events == [f"apply {MISSION}", "remove failed=True"]


def test_tier_versions_make_a_header() -> None:
    assert MemoryTier().versions().header() == "Istio 1.30.3, Envoy 1.36.4, Kubernetes v1.33.1"
    assert (
        TierVersions("1.30.3", envoy="1.36.4", emulated=True).header()
        == "Istio 1.30.3 (emulated), Envoy 1.36.4"
    )
    assert TierVersions("1.30.3").header() == "Istio 1.30.3"


def test_a_request_outcome_reads_like_the_cluster_summary() -> None:
    request = ResolvedRequest(
        "r", ("proxy", "target"), "http", "GET", EXTERNAL, 80, "/", Expectation(200, True)
    )
    outcome = RequestOutcome(
        request, Sent("rid-9", 200, datetime.now(UTC)), witness="external host (called from x)"
    )
    assert outcome.line == "r: HTTP 200, external host (called from x)"
    assert dataclasses.replace(outcome, error=AssertionError("no")).hop is None


def test_the_time_from_the_answer_to_the_passing_judgement_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    late = 0.05
    send, hop_logs = MemoryStage.send, MemoryStage.hop_logs

    def slow_logs(self: MemoryStage, sent: Sent) -> HopLogs:
        time.sleep(late)  # the access logs reach the harness a while after the answer
        return hop_logs(self, sent)

    monkeypatch.setattr(MemoryStage, "hop_logs", slow_logs)
    [request] = run(MemoryTier(), MISSION).requests
    assert request.passed and request.judged_s is not None and late <= request.judged_s < late + 0.5

    # from the answer as the tier recorded it (here a second before ``send`` returned) ...
    def answered(self: MemoryStage, request: ResolvedRequest, ago: float | None) -> Sent:
        sent = send(self, request)
        at = None if ago is None else datetime.now(UTC) - timedelta(seconds=ago)
        return dataclasses.replace(sent, answered_at=at)

    monkeypatch.setattr(MemoryStage, "send", lambda self, r: answered(self, r, 1.0))
    [request] = run(MemoryTier(), MISSION).requests
    assert request.judged_s is not None and 1.0 + late <= request.judged_s < 1.5 + late
    # ... else from the moment ``send`` returned
    monkeypatch.setattr(MemoryStage, "send", lambda self, r: answered(self, r, None))
    [request] = run(MemoryTier(), MISSION).requests
    assert request.judged_s is not None and late <= request.judged_s < late + 0.5
    # a judgement that failed has no time
    [request] = run(MemoryTier(paths={EXTERNAL: "passthrough"}), MISSION).requests
    assert not request.passed and request.judged_s is None
