"""The local Envoy tier behind the tier interface (``harness.tier``): a catalog scenario on a local mesh.

Envoy's configuration here is static (each proxy's bootstrap is generated from a routing plan), so
a scenario is applied by starting a local mesh whose routing is the image of the scenario's
manifests (``harness.localmesh.plan``), and removed by stopping it: each stage owns its mesh, and
"convergence" is the time the mesh took to start with every part answering. Bringing the tier up
starts nothing.

The evidence is the same as on a cluster: the target sidecar's and the egress gateway's access logs
(files, flushed every ``flush_interval_ms``), and the external host's record of its caller, which is
the gateway's loopback address when the request left through the gateway. A canary
(``LocalMesh.canary``) is sent straight to the gateway's listener for the gateway service's own
name, which it logs as 404 ``NR``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from harness.common.traffic import Traffic
from harness.evidence import (
    EntryLog,
    RequestRef,
    Wait,
    expect_external_attempts,
    expect_external_record,
    expect_no_external_record,
)
from harness.localmesh.envoy import EnvoyError, envoy_binary, envoy_version
from harness.localmesh.mesh import GATEWAY_SERVICE, LocalMesh, LogEncoding, RoutingPlan, Topology
from harness.localmesh.plan import NotEmulable, plan_for
from harness.localmesh.run import LOCAL_WAIT
from harness.scenarios.model import RenderContext, ResolvedRequest, Scenario
from harness.scenarios.render import render_request, render_scenario
from harness.tier import HopLogs, Sent, TierVersions

#: The Istio version the local tier stands for when rendering (its CRD schema is not involved).
LOCAL_ISTIO_VERSION = "1.30.3"


class LocalTier:
    """The emulated local mesh as a tier: ``with LocalTier() as tier: run_scenario(tier, scenario)``.

    ``encoding`` is the access-log encoding of every mesh; ``flush_interval_ms`` the Envoys'
    access-log flush interval (Istio's is one second; tests use a shorter one to run faster: the
    waits scale with it). ``keep_on_failure`` keeps a failed scenario's work directory (the
    proxies' configurations and logs) and names it as the failure's diagnostics.
    """

    name = "local"
    failures: tuple[type[Exception], ...] = ()

    def __init__(
        self,
        *,
        encoding: LogEncoding = "text",
        flush_interval_ms: int = 1000,
        keep_on_failure: bool = False,
        progress: bool = False,
        istio_version: str = LOCAL_ISTIO_VERSION,
    ) -> None:
        self.encoding: LogEncoding = encoding
        self.flush_interval_ms = flush_interval_ms
        self.keep_on_failure = keep_on_failure
        self.progress = progress
        self.istio_version = istio_version
        self._envoy: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def versions(self) -> TierVersions:
        """Istio emulated, and the Envoy the meshes run (None when no Envoy binary runs here)."""
        if self._envoy is None:
            try:
                self._envoy = envoy_version(envoy_binary())
            except EnvoyError:
                self._envoy = ""
        return TierVersions(istio=self.istio_version, envoy=self._envoy or None, emulated=True)

    def render_context(self) -> RenderContext:
        """What scenarios render with here: the local mesh's external host."""
        return RenderContext(istio_version=self.istio_version, external_host=Topology().external_host)

    def routing(self, scenario: Scenario, ctx: RenderContext | None = None) -> RoutingPlan:
        """The local image of the scenario's manifests; ``NotEmulable`` with the reason when it has none."""
        ctx = ctx or self.render_context()
        rendered = render_scenario(scenario, ctx)
        return plan_for(scenario, [d.document.value for d in rendered.documents], ctx)

    def skip_reason(self, scenario: Scenario) -> str | None:
        if any(r.scheme == "tcp" for r in scenario.requests):
            return (
                "the local tier cannot emulate it: its relays and external host speak HTTP only (scheme: tcp)"
            )
        try:
            self.routing(scenario)
        except NotEmulable as exc:
            return f"the local tier cannot emulate it: {exc}"
        return None

    def stage(self, scenario: Scenario) -> LocalStage:
        ctx = self.render_context()
        requests = [render_request(r, ctx, source=scenario.file) for r in scenario.requests]
        return LocalStage(
            self, self.routing(scenario, ctx), ctx, tuple(f"{r.host}:{r.port}" for r in requests)
        )


class LocalStage:
    """One scenario on the local tier: a local mesh routing as its manifests say, while it is applied."""

    def __init__(
        self, tier: LocalTier, plan: RoutingPlan, context: RenderContext, upstreams: tuple[str, ...] = ()
    ) -> None:
        self.tier = tier
        self.plan = plan
        #: what the relays may fetch besides the mesh's own hosts: the scenario's requests
        self.upstreams = upstreams
        self.context = context
        self.wait: Wait | None = LOCAL_WAIT
        #: the gateway's log is watched this long for an entry that must not appear: a flush and some
        self.absence_window = tier.flush_interval_ms / 1000 + 0.25
        self.mesh: LocalMesh | None = None
        self._traffic: Traffic | None = None
        self._logs: HopLogs | None = None

    def _started(self) -> LocalMesh:
        if self.mesh is None or self._traffic is None:
            raise RuntimeError("the scenario is not applied (LocalStage.apply)")
        return self.mesh

    def apply(self) -> float:
        """Start the local mesh with the scenario's routing; the seconds until every part answered."""
        topology = Topology(
            encoding=self.tier.encoding,
            plan=self.plan,
            flush_interval_ms=self.tier.flush_interval_ms,
            upstreams=self.upstreams,
        )
        started = time.monotonic()
        # kept until ``remove`` decides (a mesh that fails to start removes its directory unless kept)
        self.mesh = LocalMesh(topology, keep_workdir=self.tier.keep_on_failure, progress=self.tier.progress)
        self.mesh.start()
        self._logs = HopLogs(
            sidecar=self.mesh.entry_log("target-sidecar"),
            gateway=self.mesh.entry_log("egress-gateway"),
            gateway_service=GATEWAY_SERVICE,
        )
        self._traffic = Traffic(headers=self.mesh.headers)
        return round(time.monotonic() - started, 3)

    def send(self, request: ResolvedRequest) -> Sent:
        """``client -> proxy -> target -> request.host:port/path`` down the local chain."""
        mesh = self._started()
        assert self._traffic is not None
        sent_at = datetime.now(UTC)
        answer = self._traffic.send(mesh.chain_url(request.path, host=request.host, port=request.port))
        answered_at = datetime.now(UTC)
        return Sent(
            answer.request_id,
            answer.status,
            sent_at,
            answer.failed_hop,
            answer.error,
            answered_at=answered_at,
        )

    def hop_logs(self, sent: Sent) -> HopLogs:
        """The target sidecar's and the gateway's log files (read on from where the last request left)."""
        self._started()
        assert self._logs is not None
        return self._logs

    def entry_log(self, part: str) -> EntryLog:
        """A fresh reader of one part's log (``proxy-sidecar`` too), for a closer look."""
        return self._started().entry_log(part)

    def witness(self, request: ResolvedRequest, sent: Sent) -> str:
        """The recorder's record of the request, called from the gateway's address (for a direct
        request, ``external_caller: not-gateway``: from another address)."""
        mesh = self._started()
        gateway = {mesh.topology.gateway_ip}
        if request.expect.via_gateway:
            record = expect_external_record(mesh.external_records, sent.request_id, from_ips=gateway)
        else:
            record = expect_external_record(mesh.external_records, sent.request_id, not_from_ips=gateway)
        if request.expect.external_attempts is not None:
            expect_external_attempts(
                mesh.external_records,
                sent.request_id,
                request.expect.external_attempts,
                from_ips=gateway if request.expect.via_gateway else None,
                not_from_ips=None if request.expect.via_gateway else gateway,
            )
        return f"external host (called from {record.get('client_ip')})"

    def witness_absence(self, request: ResolvedRequest, sent: Sent) -> str:
        """The recorder has no record of the refused request."""
        expect_no_external_record(self._started().external_records, sent.request_id)
        return "external host (no record)"

    def canary(self) -> RequestRef:
        """A canary straight to the gateway Envoy (``LocalMesh.canary``), which logs it."""
        return self._started().canary()

    def proxy_versions(self) -> list[str]:
        """None: the local proxies are Envoy, not Istio's builds (``LocalTier.versions`` names it)."""
        return []

    def diagnose(self, exc: BaseException, *, label: str) -> Path | None:
        """With ``keep_on_failure``: the mesh's work directory (configurations, logs), kept."""
        if self.tier.keep_on_failure and self.mesh is not None:
            return self.mesh.workdir
        return None

    def remove(self, *, failed: bool) -> bool:
        """Stop the mesh; its work directory goes too, unless it failed and the tier keeps failures."""
        kept = failed and self.tier.keep_on_failure
        traffic, self._traffic = self._traffic, None
        mesh, self.mesh = self.mesh, None
        try:
            if traffic is not None:
                traffic.close()
        finally:
            if mesh is not None:
                mesh.keep_workdir = kept
                mesh.stop()
        return kept and mesh is not None
