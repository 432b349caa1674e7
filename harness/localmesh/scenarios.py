"""Run a scenario on the local Envoy tier, from the same ``scenario.yaml`` the cluster tier uses.

The scenario's manifests become a local routing plan (``localplan``), each request goes down the
local chain to its host, and its ``expect:`` block is judged by the evidence engine (``expect``),
plus the external host's witness for requests that must leave through the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.common.traffic import Traffic
from harness.evidence import HopEvidence, RequestRef, expect_external_record
from harness.localmesh.mesh import LocalMesh, LogEncoding, Topology
from harness.localmesh.plan import plan_for
from harness.localmesh.run import LOCAL_WAIT
from harness.scenarios.expect import judge
from harness.scenarios.model import RenderContext, ResolvedRequest, Scenario
from harness.scenarios.render import render_request, render_scenario

#: The Istio version the local tier stands for when rendering (its CRD schema is not involved).
LOCAL_ISTIO_VERSION = "1.30.3"


@dataclass
class RequestOutcome:
    """One request of a scenario on the local tier."""

    request: ResolvedRequest
    request_id: str
    status: int
    error: AssertionError | None = None
    proof: list[HopEvidence] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None


def run_locally(
    scenario: Scenario, *, encoding: LogEncoding = "text", flush_interval_ms: int = 1000
) -> list[RequestOutcome]:
    """Every request of ``scenario`` through a local mesh built from its manifests.

    Raises ``NotEmulable`` (before starting anything) when the local tier has no image of it.
    ``flush_interval_ms`` is the Envoys' access-log flush interval (Istio's is one second; tests
    use a shorter one to run faster: the waits scale with it).
    """
    topo = Topology(encoding=encoding)
    ctx = RenderContext(istio_version=LOCAL_ISTIO_VERSION, external_host=topo.external_host)
    rendered = render_scenario(scenario, ctx)
    plan = plan_for(scenario, [d.document.value for d in rendered.documents], ctx)
    outcomes: list[RequestOutcome] = []
    with (
        LocalMesh(Topology(encoding=encoding, plan=plan, flush_interval_ms=flush_interval_ms)) as mesh,
        Traffic() as traffic,
    ):
        sidecar, gateway = mesh.entry_log("target-sidecar"), mesh.entry_log("egress-gateway")
        for spec in scenario.requests:
            request = render_request(spec, ctx, source=scenario.file)
            answer = traffic.send(mesh.chain_url(request.path, host=request.host, port=request.port))
            outcome = RequestOutcome(request, answer.request_id, answer.status)
            try:
                outcome.proof = judge(
                    request,
                    RequestRef(request_id=answer.request_id, host=request.host),
                    sidecar=sidecar,
                    gateway=gateway,
                    wait=LOCAL_WAIT,
                    absence_window=mesh.topology.flush_interval_ms / 1000 + 0.25,
                )
                if request.expect.via_gateway:
                    expect_external_record(
                        mesh.external_records, answer.request_id, from_ips={mesh.topology.gateway_ip}
                    )
                if answer.status != request.expect.status:
                    raise AssertionError(
                        f"request {request.name!r}: the client got {answer.status}, "
                        f"expected {request.expect.status}"
                    )
            except AssertionError as exc:
                outcome.error = exc
            outcomes.append(outcome)
    return outcomes
