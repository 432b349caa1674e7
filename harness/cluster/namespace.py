"""One namespace of a cluster run and what a test does in it: the chain, scenarios, evidence.

:class:`RunNamespace` is what ``harness.cluster.run.E2ERun`` offers once its parts are up, for the
run namespace; ``E2ERun.scoped`` makes one for a scenario namespace of the catalog (its own hosts,
ingress path and applied scenarios; the same cluster, recorders, PKI and client).

A scenario is applied with :meth:`RunNamespace.apply_scenario`: rendered for this namespace, written
to the run directory, checked by ``istioctl analyze`` (``harness.scenarios.preflight.analyze``:
against the live cluster, or files only), applied with server-side apply (its credential Secrets
first, ``harness.cluster.credentials``), and then awaited until the proxies have it
(``harness.cluster.convergence``); :meth:`RunNamespace.delete_scenario` waits until they dropped it
again. Requests go down the chain with :meth:`RunNamespace.send_chain` (``harness.cluster.chain``);
the hop logs (:meth:`RunNamespace.sidecar_log`, :meth:`RunNamespace.gateway_log`) and the external
host's record (:meth:`RunNamespace.expect_external_from_gateway`, ``harness.cluster.witness``) are the
evidence. :meth:`RunNamespace.skip_reason` says why a scenario cannot run here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.cluster.acks import ACK_INTERVAL_S, proxy_status, wait_for_acks
from harness.cluster.apps import RelayApps, ingress_host
from harness.cluster.chain import (
    CANARY_PORT,
    CHAIN_READY_TIMEOUT_S,
    RELAY_PORT,
    TARGET_APP,
    ChainResult,
    chain_for,
    send_until_answered,
)
from harness.cluster.convergence import (
    CONVERGE_TIMEOUT_S,
    DEFAULT_GATEWAY,
    ISTIOCTL_TIMEOUT_S,
    OUTBOUND_POLICY_SIDECAR,
    ConfigMarker,
    ProxyKind,
    ScenarioGateway,
    convergence_markers,
    outbound_policy_sidecar,
    proxy_config,
    proxy_pods,
    proxy_versions,
    reached_proxies,
    scenario_gateway,
    wait_for_markers,
)
from harness.cluster.credentials import (
    CredentialNames,
    CredentialSecret,
    create_credentials,
    credential_names,
    credential_secrets,
    delete_credentials,
    wait_for_gateway_secrets,
)
from harness.cluster.errors import E2EError, ScenarioNotApplicable
from harness.cluster.external import RecorderClient
from harness.cluster.gatewayapi import (
    GATEWAY_API_GROUP,
    GATEWAY_API_VERSION,
)
from harness.cluster.hosts import (
    EXTERNAL_TLS_PORT,
    RUN_LABEL,
    SCENARIO_LABEL,
    dns_label,
)
from harness.cluster.istio import ISTIO_NAMESPACE, kube_target_args
from harness.cluster.kube import Kube, ObjectRef
from harness.cluster.lock import ScenarioLock
from harness.cluster.options import E2EOptions
from harness.cluster.podlogs import PodLogSource
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.cluster.providers.netns.cluster import NetnsCluster
from harness.cluster.requirements import (
    CREDENTIAL_REQUIREMENTS,
    INTERNET_SERVES,
    RECORDER_SERVES_DEFAULT,
    external_requirement,
    recorder_serves,
)
from harness.cluster.state import RunState
from harness.cluster.witness import RunDiagnostics, caller_addresses
from harness.common.certs import TestPKI
from harness.common.proc import progress
from harness.common.traffic import TOKEN_HEADER, ChainResponse, Traffic, new_request_id, with_path_token
from harness.evidence import EntryLog, RequestRef, Wait
from harness.evidence.external import Record, expect_external_record
from harness.scenarios.preflight import FILE_ONLY_TOLERATED, AnalyzeMessage, analyze

#: how far before a request's sending its hop logs are read (clocks of pods and client differ)
LOG_SLACK_S = 5.0


@dataclass
class AppliedScenario:
    scenario: Any
    rendered: Any
    manifest: Path
    refs: list[ObjectRef]
    markers: list[ConfigMarker]
    findings: list[AnalyzeMessage] = field(default_factory=list)
    converged_s: float = 0.0
    #: seconds from the apply to the latest push istiod sent the proxies it reaches, all ACKed (None: not awaited)
    acked_s: float | None = None
    removed: bool = False
    #: the gateway the scenario's egress traffic leaves through
    gateway: ScenarioGateway = DEFAULT_GATEWAY
    #: the credential Secrets made for it in the gateway's namespace, and their refs until deleted
    credentials: list[CredentialSecret] = field(default_factory=list)
    secret_refs: list[ObjectRef] = field(default_factory=list)


@dataclass(frozen=True)
class RequestOutcome:
    """A scenario request sent down the chain and judged by its hop logs."""

    request: Any
    result: ChainResult
    evidence: list[Any]
    ref: RequestRef


class RunNamespace:
    """One namespace of a cluster run (see the module docstring).

    The attributes are the run's: ``harness.cluster.run.E2ERun`` sets them when it starts or
    attaches, and a scoped view shares them but for the namespace, hosts, ingress path and applied
    scenarios. ``parent`` is the run a view belongs to (None for the run itself).
    """

    options: E2EOptions
    state: RunState | None
    run_dir: Path
    run_id: str
    namespace: str
    started_at: datetime
    cluster: KindCluster | ExistingCluster | NetnsCluster | None
    kube: Kube | None
    recorder: RecorderClient | None
    #: the recorder that requires client certificates (with the PKI, container mode)
    mtls_recorder: RecorderClient | None
    #: the run's certificates (container mode with external_tls; read back when attached)
    pki: TestPKI | None
    istioctl: str | None
    ingress_url: str
    timings: dict[str, float]
    applied: list[AppliedScenario]
    #: seconds between two reads of the proxies' configuration while waiting for a scenario
    converge_interval_s: float
    #: the hosts scenarios render with, and where the ingress reaches this namespace's proxy
    external_host: str
    unregistered_host: str
    #: the external host of a scenario that needs mutual TLS (a name of the mTLS recorder)
    mtls_host: str
    ingress_path: str
    ingress_gateway: str
    relay_image: str
    relay_manifest: Path | None
    #: the run's token, which its ingress routes require (``harness.cluster.apps.require_token``)
    ingress_token: str
    #: whether the cluster has the Gateway API CRDs (known once the run started)
    gateway_api_present: bool
    parent: RunNamespace | None
    _traffic: Traffic | None
    _stack: contextlib.ExitStack

    @property
    def ca_pem(self) -> bytes | None:
        """The run's CA certificate, which the relays trust (None without a PKI)."""
        return self.pki.ca.cert_pem if self.pki is not None else None

    # the run this namespace belongs to

    @property
    def root(self) -> RunNamespace:
        return self.parent if self.parent is not None else self

    def scenario_lock(self) -> ScenarioLock:
        """The lock scenarios of this run share (in the ``e2e up`` run directory when attached)."""
        root = self.root
        return ScenarioLock(root.state.run_dir if root.state is not None else root.run_dir)

    # small accessors

    def _kube(self) -> Kube:
        if self.kube is None:
            raise E2EError("the run has not started")
        return self.kube

    def _healthz_url(self) -> str:
        return f"http://{TARGET_APP}.{self.namespace}.svc.cluster.local:{RELAY_PORT}/healthz"

    def _send(self, url: str) -> ChainResponse:
        if self.parent is not None:
            return self.parent._send(url)
        if self._traffic is None:
            self._traffic = self._stack.enter_context(Traffic(headers=self.ingress_headers))
        return self._traffic.send(url)

    @property
    def ingress_headers(self) -> dict[str, str]:
        """What the client sends the ingress gateway: the run's own host (its ingress route matches
        only that one, :func:`harness.cluster.apps.ingress_host`) and the run's token (without it the
        route answers 404)."""
        headers = {"Host": ingress_host(self.root.namespace)}
        if self.root.ingress_token:
            headers[TOKEN_HEADER] = self.root.ingress_token
        return headers

    def run_upstreams(self) -> list[str]:
        """What this namespace's relays may fetch besides the chain (``host:port``): its external
        hosts (the host, the unregistered and the mTLS one) on the plain and TLS ports, and the
        default egress gateway's service on the canaries' port. Nothing else: no relay of the harness
        fetches what a request names unless it is one of these (apps/relay refuses it with 403)."""
        ports = (self.options.external_port, EXTERNAL_TLS_PORT)
        hosts = dict.fromkeys((self.external_host, self.unregistered_host, self.mtls_host))
        return [*(f"{h}:{p}" for h in hosts for p in ports), f"{DEFAULT_GATEWAY.service}:{CANARY_PORT}"]

    def relay_apps(
        self,
        *,
        keep: bool = False,
        upstreams: Sequence[str] | None = None,
        image: str | None = None,
        pin_to_control_plane: bool = False,
    ) -> RelayApps:
        """This namespace's relays (not deployed yet) as the run makes them: fetching the chain and
        ``upstreams`` (default :meth:`run_upstreams`) only, reached through an ingress route that
        requires the run's token, every object labelled with the run."""
        return RelayApps(
            self._kube(),
            self.namespace,
            image=image or self.relay_image,
            keep=keep,
            ca_pem=self.ca_pem,
            token=self.root.ingress_token or None,
            upstreams=self.run_upstreams() if upstreams is None else upstreams,
            labels={RUN_LABEL: self.run_id},
            pin_to_control_plane=pin_to_control_plane,
            callers=True,
        )

    def _kube_args(self) -> list[str]:
        """istioctl's flags for this run's cluster."""
        return kube_target_args(self.kubeconfig, self.context)

    @property
    def kubeconfig(self) -> Path:
        if self.cluster is None:
            raise E2EError("the run has not started")
        return self.cluster.kubeconfig

    @property
    def context(self) -> str | None:
        return self.cluster.context if self.cluster is not None else None

    @property
    def source_nat(self) -> bool:
        if self.options.pod_source_nat is not None:
            return self.options.pod_source_nat
        return isinstance(self.cluster, KindCluster)

    # traffic

    def wait_chain_ready(self, *, deadline_s: float = CHAIN_READY_TIMEOUT_S) -> ChainResult:
        """Until ``client -> ingress -> proxy -> target`` of this namespace answers (target's /healthz)."""
        url = chain_for(self.ingress_url, self.namespace, self._healthz_url(), ingress_path=self.ingress_path)
        return send_until_answered(lambda: self._send(url), deadline_s=deadline_s)

    def send_chain(
        self,
        host: str,
        port: int,
        path: str,
        *,
        scheme: str = "http",
        deadline_s: float = CHAIN_READY_TIMEOUT_S,
    ) -> ChainResult:
        """One request ``client -> ingress -> proxy -> target -> scheme://host:port/path``.

        Retried (fresh x-request-id each time) until both relays answer; the result says how long
        that took. Whatever the external hop answered is returned as it came.
        """
        base = f"{scheme}://{host}:{port}{path}"

        def attempt() -> ChainResponse:
            # the request's id is also a token in its path: Istio's gateways give a request from a
            # caller they do not count as internal a fresh x-request-id, the path stays
            token = new_request_id()
            destination = with_path_token(base, token)
            url = chain_for(self.ingress_url, self.namespace, destination, ingress_path=self.ingress_path)
            return dataclasses.replace(self._send(url), path_token=token)

        result = send_until_answered(attempt, deadline_s=deadline_s)
        key = f"chain:{host}:{port}"
        self.timings[key] = round(result.waited_s, 3)
        return result

    # evidence

    def gateway_log(self, since: datetime | None = None, gateway: ScenarioGateway | None = None) -> EntryLog:
        gw = gateway or DEFAULT_GATEWAY
        source = PodLogSource(self._kube(), gw.namespace, gw.selector, since=since or self.started_at)
        return EntryLog(source, hop="egress gateway", encoding=self._encoding())

    def sidecar_log(self, app: str = TARGET_APP, since: datetime | None = None) -> EntryLog:
        source = PodLogSource(self._kube(), self.namespace, f"app={app}", since=since or self.started_at)
        return EntryLog(source, hop=f"{app} sidecar", encoding=self._encoding())

    def _encoding(self) -> Literal["text", "json"]:
        return "json" if self.options.access_log_encoding == "JSON" else "text"

    def callers(self, namespace: str, selector: str) -> set[str]:
        """The addresses the external host would see for the pods of ``selector``."""
        return caller_addresses(self._kube().list_pods(namespace, selector), source_nat=self.source_nat)

    def gateway_callers(self, gateway: ScenarioGateway | None = None) -> set[str]:
        gw = gateway or DEFAULT_GATEWAY
        return self.callers(gw.namespace, gw.selector)

    def workload_callers(self, app: str = TARGET_APP) -> set[str]:
        return self.callers(self.namespace, f"app={app}")

    def caller_witness_discriminates(self, app: str = TARGET_APP) -> bool:
        """Whether the external host can tell the egress gateway from ``app`` by the caller's address."""
        return self.gateway_callers().isdisjoint(self.workload_callers(app))

    def external_records(self, request_id: str | None = None) -> list[dict[str, Any]]:
        if self.recorder is None:
            return []
        return self.recorder.records(request_id)

    def expect_external_from_gateway(
        self,
        request_id: str,
        *,
        timeout: float = 5.0,
        gateway: ScenarioGateway | None = None,
        recorder: RecorderClient | None = None,
        path_token: str | None = None,
    ) -> Record:
        """The record of ``request_id`` at the external host (``recorder``, default the run's
        recorder), whose caller is an egress gateway address."""
        return expect_external_record(
            self._records_of(recorder, request_id, path_token),
            request_id,
            from_ips=self.gateway_callers(gateway),
            timeout=timeout,
            path_token=path_token,
        )

    def _records_of(
        self, recorder: RecorderClient | None, request_id: str, path_token: str | None
    ) -> Callable[[], list[dict[str, Any]]]:
        """How to read the external host's records of a request (by its path token when it has one)."""
        chosen = recorder or self.recorder
        if chosen is None:
            raise E2EError("no recorder in this run (--external internet): the external host keeps no record")
        if path_token:
            return lambda: chosen.records(path_contains=path_token)
        return lambda: chosen.records(request_id)

    def expect_external_direct(
        self,
        request_id: str,
        *,
        timeout: float = 5.0,
        gateway: ScenarioGateway | None = None,
        recorder: RecorderClient | None = None,
        path_token: str | None = None,
    ) -> Record:
        """The record of ``request_id`` at the external host (``recorder``, default the run's
        recorder), whose caller is not an egress gateway address: the workload went straight out.
        E2EError when the host cannot tell the gateway from the workload by address."""
        records = self._records_of(recorder, request_id, path_token)
        gateway_ips = _apart(self.gateway_callers(gateway), self.workload_callers())
        return expect_external_record(
            records,
            request_id,
            not_from_ips=gateway_ips,
            timeout=timeout,
            path_token=path_token,
        )

    def expect_external_from_workload(
        self,
        request_id: str,
        *,
        timeout: float = 5.0,
        gateway: ScenarioGateway | None = None,
        recorder: RecorderClient | None = None,
        path_token: str | None = None,
        app: str = TARGET_APP,
    ) -> Record:
        """The record of ``request_id`` at the external host (``recorder``, default the run's
        recorder), whose caller is the calling workload's own address (``app``'s pods, or their
        nodes' under source NAT): it went straight out, past every proxy. E2EError when the host
        cannot tell the gateway from the workload by address."""
        records = self._records_of(recorder, request_id, path_token)
        workload = self.workload_callers(app)
        if not workload:
            raise E2EError(f"no pod of {app!r} in {self.namespace} to tell the external host's caller by")
        _apart(self.gateway_callers(gateway), workload)
        return expect_external_record(
            records,
            request_id,
            from_ips=workload,
            timeout=timeout,
            path_token=path_token,
            expected_caller=f"the calling workload {app!r}",
        )

    def proxy_versions(self, gateway: ScenarioGateway | None = None) -> list[str]:
        """The Istio versions of the target's sidecar and the gateway (their istio-proxy image tags)."""
        gw = gateway or DEFAULT_GATEWAY
        kube = self._kube()
        return proxy_versions(
            kube.list_pods(self.namespace, f"app={TARGET_APP}") + kube.list_pods(gw.namespace, gw.selector)
        )

    # scenarios

    def render_context(self, scenario: Any | None = None) -> Any:
        """What templates render with in this namespace; for ``scenario``, its own credential names
        and, when its external host must require client certificates, the mTLS recorder's host."""
        from harness.scenarios import RenderContext

        mutual = scenario is not None and external_requirement(scenario) == "mtls"
        names = credential_names(self.namespace, scenario.name) if scenario is not None else CredentialNames()
        return RenderContext(
            istio_version=self.options.istio_version,
            namespace=self.namespace,
            external_host=self.mtls_host if mutual else self.external_host,
            external_port=self.options.external_port,
            external_tls_port=EXTERNAL_TLS_PORT,
            unregistered_host=self.unregistered_host,
            run_id=self.run_id,
            **names,
        )

    def recorder_for(self, scenario: Any) -> RecorderClient | None:
        """The recorder that plays ``scenario``'s external host: the mTLS one for ``mtls``."""
        if external_requirement(scenario) == "mtls":
            return self.mtls_recorder
        return self.recorder

    def external_serves(self) -> tuple[str, ...]:
        """What this run's external hosts serve (http, tls, mtls), both recorders together."""
        root = self.root
        if root.state is not None:
            recorders = [r for r in (root.state.recorder, root.state.mtls_recorder) if r is not None]
            if not recorders:
                return INTERNET_SERVES if root.state.external == "internet" else RECORDER_SERVES_DEFAULT
            return tuple(dict.fromkeys(kind for r in recorders for kind in r.serves))
        made = [r for r in (root.recorder, root.mtls_recorder) if r is not None]
        if made:
            return tuple(dict.fromkeys(kind for r in made for kind in recorder_serves(r)))
        return INTERNET_SERVES if self.options.external == "internet" else RECORDER_SERVES_DEFAULT

    @property
    def on_existing_cluster(self) -> bool:
        """The run visits a cluster it did not make (``--kubeconfig``): only its namespaces are its own."""
        root = self.root
        if root.state is not None and root.state.cluster == "existing":
            return True
        return self.options.existing_cluster

    def skip_reason(self, scenario: Any) -> str | None:
        """Why ``scenario`` cannot run in this run, or None: its Istio range, the outbound policy and
        access-log encoding of the install, the Gateway API CRDs, what the external host serves."""
        ok, why = scenario.istio.applies_to(self.options.istio_version)
        if not ok:
            return str(why)
        needs = scenario.requires
        # an outbound policy other than the install's is set for the scenario's namespace by a
        # Sidecar (outbound_policy_sidecar): no scenario is skipped for it
        if self.options.access_log_encoding not in needs.access_log_encoding:
            return f"runs with access-log encoding {'/'.join(needs.access_log_encoding)} only"
        if needs.gateway_api and not self.root.gateway_api_present:
            return (
                f"needs the Gateway API CRDs ({GATEWAY_API_GROUP}), which this cluster does not have: run "
                f"with --gateway-api (or `egress-harness e2e up --gateway-api`) to install {GATEWAY_API_VERSION}"
            )
        kind = external_requirement(scenario)
        serves = self.external_serves()
        if kind not in serves:
            return f"needs an external host that serves {kind.upper()}; " + self._serves_why(serves)
        for key, what in CREDENTIAL_REQUIREMENTS.items():
            if not getattr(needs, key, False):
                continue
            if self.root.pki is None:
                return (
                    f"needs the run to create a Secret with {what} in the gateway's namespace "
                    f"(requires.{key}); this run has no certificates (its external host serves no TLS)"
                )
            if self.on_existing_cluster and not self.options.allow_gateway_secrets:
                return (
                    f"needs the run to create a Secret with {what} in {ISTIO_NAMESPACE} (requires.{key}); "
                    "on an existing cluster the run creates and deletes only its own namespaces: pass "
                    "--allow-gateway-secrets to let it create and delete that Secret"
                )
        return None

    def _serves_why(self, serves: Sequence[str]) -> str:
        have = "/".join(s.upper() for s in serves)
        if self.options.external == "internet":
            return (
                f"with --external internet the external host is {self.options.host}, a real host whose "
                f"certificates are not the run's (the relays and the gateway trust only the run's CA), so "
                f"only its {have} is used"
            )
        root = self.root
        if root.recorder is None and (root.state is None or root.state.recorder is None):
            return f"this run has no recorder; it serves {have} only"
        if "tls" not in serves and "mtls" not in serves:
            return (
                f"this run's external host serves {have} only (this run's recorder was started without "
                "TLS: no certificates were made for it)"
            )
        return f"this run's external hosts serve {have} only (no recorder that requires client certificates)"

    def apply_scenario(self, scenario: Any, *, wait_s: float = CONVERGE_TIMEOUT_S) -> AppliedScenario:
        """Render, preflight, apply, and wait until the proxies have the scenario's configuration
        (its objects in their configuration dumps, then istiod's pushes since the apply ACKed)."""
        from harness.scenarios import render_scenario

        reason = self.skip_reason(scenario)
        if reason:
            raise ScenarioNotApplicable(f"scenario {scenario.name}: {reason}")
        ctx = self.render_context(scenario)
        rendered = render_scenario(scenario, ctx)
        directory = self.run_dir / "scenarios" / scenario.name
        directory.mkdir(parents=True, exist_ok=True)
        manifest = directory / "manifests.yaml"
        manifest.write_text(rendered.text)
        findings = self._preflight(manifest)
        progress(
            f"applying scenario {scenario.name} ({len(rendered.documents)} objects) into {self.namespace}"
        )
        kube = self._kube()
        credentials = credential_secrets(scenario, ctx, self.pki) if self.pki is not None else []
        documents = [d.body for d in rendered.documents]
        text = self._with_outbound_policy(scenario, documents, rendered.text, manifest)
        secret_refs = self.create_credentials(credentials, scenario)
        applied_at = datetime.now(UTC)
        try:
            refs = kube.apply(text, namespace=self.namespace)
        except BaseException:
            self.delete_credentials(secret_refs)
            raise
        gateway = scenario_gateway(documents, self.namespace)
        markers = convergence_markers(documents, self.namespace, gateway_labels=gateway.labels)
        if not scenario.caller.has_sidecar:
            # the calling workload has no sidecar to take the scenario: only the gateway's is awaited
            markers = [m for m in markers if m.proxy != "sidecar"]
        applied = AppliedScenario(
            scenario,
            rendered,
            manifest,
            refs,
            markers,
            findings,
            gateway=gateway,
            credentials=credentials,
            secret_refs=secret_refs,
        )
        self.applied.append(applied)
        self._await_proxies(applied, documents, applied_at=applied_at, wait_s=wait_s)
        return applied

    def _preflight(self, manifest: Path) -> list[AnalyzeMessage]:
        """``istioctl analyze`` of the scenario's manifest (against the live cluster by default)."""
        if self.options.analyze == "off" or not self.istioctl:
            return []
        files_only = self.options.analyze == "files"
        return list(
            analyze(
                [manifest],
                self.istioctl,
                timeout=ISTIOCTL_TIMEOUT_S,
                mode="files" if files_only else "cluster",
                kube_args=kube_target_args(self.kubeconfig, self.context),
                namespace=self.namespace,
                tolerate=FILE_ONLY_TOLERATED if files_only else (),
            ).messages
        )

    def _with_outbound_policy(self, scenario: Any, documents: list[Any], text: str, manifest: Path) -> str:
        """The manifest's text, with a namespace Sidecar setting the outbound traffic policy the
        scenario needs when the install has the other one (added to ``documents`` and ``manifest``)."""
        policy = scenario.requires.outbound_traffic_policy
        if not policy or policy == self.options.outbound_traffic_policy:
            return text
        sidecar = outbound_policy_sidecar(self.namespace, policy)
        progress(
            f"scenario {scenario.name} needs outboundTrafficPolicy {policy} (the install has "
            f"{self.options.outbound_traffic_policy}): Sidecar {OUTBOUND_POLICY_SIDECAR} sets it in {self.namespace}"
        )
        documents.append(sidecar)
        text = f"{text.rstrip()}\n---\n{yaml.safe_dump(sidecar, sort_keys=False)}"
        manifest.write_text(text)
        return text

    def _await_proxies(
        self, applied: AppliedScenario, documents: Sequence[Any], *, applied_at: datetime, wait_s: float
    ) -> None:
        """Until the proxies hold the scenario (a Gateway API gateway rolled out first), ACKed istiod's
        pushes since ``applied_at`` and, with credentials, the gateway read them; the timings."""
        name, gateway, markers = applied.scenario.name, applied.gateway, applied.markers
        started = time.monotonic()

        def remaining() -> float:
            return max(1.0, wait_s - (time.monotonic() - started))

        if gateway.deployment:
            # a Gateway API Gateway: Istio deploys its proxy first
            self._kube().wait_rollout(gateway.namespace, gateway.deployment, deadline_s=wait_s)
        waited = self.wait_config(markers, present=True, deadline_s=remaining(), what=name, gateway=gateway)
        applied.acked_s = self.wait_acks(
            reached_proxies(documents, markers, self.namespace, gateway),
            since=applied_at,
            deadline_s=remaining(),
            what=name,
            gateway=gateway,
        )
        if applied.acked_s is not None:
            self.timings[f"acked:{self.namespace}:{name}"] = applied.acked_s
        if applied.credentials:
            # the gateway asks for a credential once a cluster of the applied rules names it
            waited += self.wait_gateway_secrets(applied.credentials, deadline_s=remaining(), gateway=gateway)
        applied.converged_s = round(time.monotonic() - started, 3) if gateway.deployment else round(waited, 3)
        self.timings[f"converge:{self.namespace}:{name}"] = applied.converged_s
        if self.parent is None:
            self.timings[f"converge:{name}"] = applied.converged_s

    def delete_scenario(self, applied: AppliedScenario, *, wait_s: float = CONVERGE_TIMEOUT_S) -> None:
        """Delete the scenario's objects and wait until the proxies dropped them; then its credential
        Secrets (also when that failed)."""
        if applied.removed:
            return
        try:
            self._kube().delete_objects(applied.refs)
            applied.removed = True
            name = applied.scenario.name
            markers = applied.markers
            if applied.gateway.deployment:
                # the scenario's own gateway goes with its objects: only the sidecar is left to drop them
                markers = [m for m in markers if m.proxy == "sidecar"]
            self.timings[f"removed:{self.namespace}:{name}"] = self.wait_config(
                markers, present=False, deadline_s=wait_s, what=f"{name} removal", gateway=applied.gateway
            )
        finally:
            refs, applied.secret_refs = applied.secret_refs, []
            self.delete_credentials(refs)

    # credential Secrets in the gateway's namespace

    def create_credentials(self, credentials: Sequence[CredentialSecret], scenario: Any) -> list[ObjectRef]:
        """Server-side apply each Secret (labelled with the run and the scenario); on a failure the
        ones made are deleted again. Their content is never written to the run directory."""
        if not credentials:
            return []
        labels = {RUN_LABEL: self.run_id, SCENARIO_LABEL: dns_label(scenario.name)}
        return create_credentials(self._kube(), credentials, labels, scenario=scenario.name)

    def delete_credentials(self, refs: Sequence[ObjectRef]) -> None:
        if refs:
            delete_credentials(self._kube(), refs)

    def secret_dump(self, pod: str, namespace: str) -> str:
        """``istioctl proxy-config secret <pod>.<ns> -o json``: the proxy's SDS secrets."""
        return proxy_config(self.istioctl, "secret", pod, namespace, self._kube_args())

    def wait_gateway_secrets(
        self,
        credentials: Sequence[CredentialSecret],
        *,
        deadline_s: float = CONVERGE_TIMEOUT_S,
        interval_s: float | None = None,
        gateway: ScenarioGateway | None = None,
    ) -> float:
        """Poll every gateway pod's SDS secrets until each credential's resources are ACTIVE there;
        the seconds it took. ConvergenceError naming the Secret(s) at the deadline."""
        return wait_for_gateway_secrets(
            credentials,
            pods=lambda namespace, selector: self._kube().list_pods(namespace, selector),
            dump=self.secret_dump,
            gateway=gateway,
            deadline_s=deadline_s,
            interval_s=self.converge_interval_s if interval_s is None else interval_s,
        )

    @contextlib.contextmanager
    def scenario(self, scenario: Any) -> Iterator[AppliedScenario]:
        applied = self.apply_scenario(scenario)
        try:
            yield applied
        finally:
            self.delete_scenario(applied)

    def run_request(
        self,
        request: Any,
        *,
        wait: Wait | None = None,
        absence_window: float = 2.0,
        gateway: ScenarioGateway | None = None,
    ) -> RequestOutcome:
        """Send a scenario request (a ResolvedRequest) down the chain and judge it by the hop logs."""
        from harness.scenarios.expect import judge

        if tuple(request.chain) != ("ingress", "proxy", "target"):
            raise E2EError(
                f"request {request.name}: only the full chain ingress -> proxy -> target runs here"
            )
        gw = gateway or DEFAULT_GATEWAY
        result = self.send_chain(request.host, request.port, request.target_path, scheme=request.scheme)
        since = result.sent_at - timedelta(seconds=LOG_SLACK_S)
        ref = result.ref(request.host)
        evidence = judge(
            request,
            ref,
            sidecar=self.sidecar_log(TARGET_APP, since=since),
            gateway=self.gateway_log(since=since, gateway=gw),
            wait=wait,
            absence_window=absence_window,
            gateway_service=gw.service,
        )
        if result.response.status != request.expect.status:
            raise AssertionError(
                f"request {request.name}: the client got HTTP {result.response.status}, expected "
                f"{request.expect.status} (x-request-id {result.request_id}; failed hop "
                f"{result.response.failed_hop or '-'}: {result.response.error or '-'})"
            )
        return RequestOutcome(request, result, evidence, ref)

    # configuration in the proxies

    def proxy_pods(self, gateway: ScenarioGateway | None = None) -> dict[ProxyKind, list[tuple[str, str]]]:
        return proxy_pods(self._kube(), self.namespace, gateway)

    def config_dump(self, pod: str, namespace: str) -> str:
        """``istioctl proxy-config all <pod>.<ns> -o json``: the proxy's whole configuration."""
        return proxy_config(self.istioctl, "all", pod, namespace, self._kube_args())

    def wait_acks(
        self,
        kinds: Sequence[ProxyKind],
        *,
        since: datetime,
        deadline_s: float = CONVERGE_TIMEOUT_S,
        what: str = "configuration",
        gateway: ScenarioGateway | None = None,
    ) -> float | None:
        """Until the proxies of ``kinds`` ACKed a push istiod sent since ``since`` (istiod's sync
        status); the seconds to the latest such push. A NACK raises ``NackError`` naming the proxy."""
        if not kinds or not self.istioctl:
            return None
        istioctl = self.istioctl

        def proxies() -> list[str]:
            pods = self.proxy_pods(gateway)
            return [f"{pod}.{ns}" for kind in kinds for pod, ns in pods[kind]]

        status_args = self._kube_args()
        if self.options.istio_revision:
            # without it istioctl asks only the default revision's istiod (Istio 1.28+)
            status_args += ["--revision", self.options.istio_revision]
        return wait_for_acks(
            proxies,
            lambda: proxy_status(istioctl, status_args),
            since=since,
            what=what,
            deadline_s=deadline_s,
            interval_s=ACK_INTERVAL_S,
        )

    def wait_config(
        self,
        markers: Sequence[ConfigMarker],
        *,
        present: bool = True,
        deadline_s: float = CONVERGE_TIMEOUT_S,
        interval_s: float | None = None,
        what: str = "configuration",
        gateway: ScenarioGateway | None = None,
    ) -> float:
        """Poll the proxies' configuration until every marker is there (or gone); the seconds it took."""
        return wait_for_markers(
            markers,
            pods=lambda: self.proxy_pods(gateway),
            dump=self.config_dump,
            present=present,
            deadline_s=deadline_s,
            interval_s=self.converge_interval_s if interval_s is None else interval_s,
            what=what,
        )

    # diagnostics

    def diagnostics(self, gateway: ScenarioGateway | None = None) -> Any:
        gw = gateway or DEFAULT_GATEWAY
        manifests = [a.manifest for a in self.applied]
        if self.relay_manifest is not None and self.relay_manifest.exists():
            manifests.insert(0, self.relay_manifest)
        tls_recorders = {
            label: recorder
            for label, recorder in (("recorder", self.recorder), ("mtls-recorder", self.mtls_recorder))
            if recorder is not None and getattr(recorder, "tls_port", None) is not None
        }
        return RunDiagnostics(
            self.options.artifacts_dir,
            kube=self.kube,
            istioctl=self.istioctl,
            kubeconfig=self.kubeconfig if self.cluster is not None else None,
            context=self.context,
            namespace=self.namespace,
            since=self.started_at,
            manifests=manifests,
            recorder=self.recorder,
            kind_cluster=self.cluster if isinstance(self.cluster, KindCluster) else None,
            gateway_namespace=gw.namespace,
            gateway_selector=gw.selector,
            tls_recorders=tls_recorders,
        )


def _apart(gateway_ips: set[str], workload_ips: set[str]) -> set[str]:
    """``gateway_ips``, once it shares no address with ``workload_ips``: otherwise the external host
    cannot tell a direct call from one through the gateway, and that is said (E2EError)."""
    shared = gateway_ips & workload_ips
    if shared:
        raise E2EError(
            f"the external host sees the egress gateway and the workload from the same address "
            f"({', '.join(sorted(shared))}): a direct call cannot be told from one through the gateway"
        )
    return gateway_ips
