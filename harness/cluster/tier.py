"""The cluster tier behind the tier interface (``harness.tier``): a catalog scenario in a namespace of
its own on a started cluster run.

:class:`ClusterTier` is built from a started (or attached) :class:`harness.cluster.run.E2ERun`:
bringing the run up and tearing it down stay the run's (``with E2ERun(...) as run``, or
``egress-harness e2e up``/``down``); entering the tier starts nothing. Each scenario gets
(:meth:`ClusterTier.stage`):

- a namespace ``<prefix>-<scenario>`` (``harness.cluster.hosts.scenario_namespace_name``), labelled
  with ``namespace_labels`` (sidecar injection, or an upgrade's revision) and the run's labels, and
  its own external host names (``harness.cluster.hosts.scenario_hosts``);
- the run's scenario lock (``harness.cluster.lock``): shared, or held alone by a scenario whose
  objects reach beyond its namespace; taken by ``stage`` and released by ``remove``.

:meth:`ClusterStage.apply` makes the namespace with its relays and ingress route
(``harness.cluster.chain.NamespaceRelays``), waits until the chain answers through the ingress,
then applies the scenario and waits until the proxies have it (``RunNamespace.apply_scenario``:
``harness.cluster.convergence``). Requests go ``client -> ingress -> proxy -> target -> host``;
the evidence is the target sidecar's and the scenario's egress gateway's pod logs and the
recorder's record of the caller (with, over TLS, its SNI and client certificate:
``harness.cluster.witness``), or its lack of one for a refused request. A scenario that expects the
gateway to have no entry of a request also gets a Gateway giving the gateway a port-80 listener
(``harness.cluster.chain.liveness_gateway``), and its canaries go down the same chain to
``http://<gateway service>:80/egh-live-<uuid>``. :meth:`ClusterStage.remove` removes the scenario's objects (awaited
until the proxies dropped them) and deletes the namespace, unless a failed scenario is kept
(keep-on-failure).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

import yaml

from harness.cluster.apps import CallerPod, caller_pod, has_sidecar
from harness.cluster.chain import (
    CANARY_PORT,
    CHAIN_READY_TIMEOUT_S,
    TARGET_APP,
    NamespaceRelays,
    liveness_gateway,
    send_canary,
)
from harness.cluster.convergence import CONVERGE_TIMEOUT_S, DEFAULT_GATEWAY, ScenarioGateway, scenario_gateway
from harness.cluster.errors import ConvergenceError, E2EError
from harness.cluster.external import RecorderClient
from harness.cluster.hosts import (
    RUN_LABEL,
    SCENARIO_LABEL,
    dns_label,
    scenario_hosts,
    scenario_namespace_name,
)
from harness.cluster.istio import flush_interval_s
from harness.cluster.kube import INJECTION_LABELS
from harness.cluster.lock import ScenarioLock, exclusive_reason
from harness.cluster.namespace import LOG_SLACK_S
from harness.cluster.providers.kind import KindCluster
from harness.cluster.requirements import external_requirement
from harness.cluster.run import E2ERun
from harness.cluster.witness import TcpConnections, check_tls_record, expects_external_tls, handshake_hint
from harness.common.proc import progress
from harness.evidence import RequestRef, Wait
from harness.evidence.external import (
    ExternalEvidenceError,
    check_tcp_record,
    expect_external_attempts,
    expect_no_external_record,
)
from harness.scenarios.expect import needs_canary
from harness.scenarios.model import RenderContext, ResolvedRequest, Scenario
from harness.scenarios.preflight import AnalyzeError
from harness.scenarios.render import render_request, render_scenario
from harness.tier import HopLogs, Sent, TierVersions

#: how the catalog's requests are judged where Envoy flushes access logs every second (Istio's default)
SCENARIO_WAIT = Wait(timeout=20.0, interval=0.25, settle=2.0)


def scenario_wait(flush_s: float) -> Wait:
    """How a request's hop logs are polled when the proxies flush every ``flush_s`` seconds: settle
    and the absence window (:func:`absence_window`) two flush intervals, at least half a second."""
    if flush_s >= 1.0:
        return SCENARIO_WAIT
    return Wait(timeout=SCENARIO_WAIT.timeout, interval=0.1, settle=absence_window(flush_s))


def absence_window(flush_s: float) -> float:
    """How long a log is watched for an entry that must not appear: two flush intervals, at least 0.5 s."""
    return max(0.5, 2 * flush_s)


#: how long the tier's exit waits for the scenario namespaces it deleted to be gone
NAMESPACE_DELETE_S = 180.0

#: the only chain a request runs down on this tier
CHAIN = ("ingress", "proxy", "target")


class ClusterTier:
    """A started :class:`E2ERun` as a tier: each scenario in a namespace of its own (see the module
    docstring). ``with ClusterTier(run) as tier: harness.runner.run_scenario(tier, scenario)``.

    ``wait``: how long the hop assertions poll a log; ``lock``: the run's scenario lock (default:
    the run's); ``keep_on_failure`` (default: the run's option) keeps a failed scenario's namespace
    and Secrets; ``collect_diagnostics``: a failure's diagnostics are collected before the removal;
    ``chain_deadline_s``: how long the namespace's chain may take to answer; ``converge_s``: how long
    the proxies may take to have (or drop) a scenario.
    """

    name = "cluster"
    #: besides AssertionError: a configuration the proxies never took, istioctl analyze's findings
    failures: tuple[type[Exception], ...] = (ConvergenceError, AnalyzeError)

    def __init__(
        self,
        run: E2ERun,
        *,
        namespace_labels: Mapping[str, str] | None = None,
        namespace_prefix: str | None = None,
        wait: Wait | None = None,
        lock: ScenarioLock | None = None,
        keep_on_failure: bool | None = None,
        collect_diagnostics: bool = True,
        chain_deadline_s: float = CHAIN_READY_TIMEOUT_S,
        converge_s: float = CONVERGE_TIMEOUT_S,
    ) -> None:
        self.run = run
        self.namespace_labels = dict(namespace_labels if namespace_labels is not None else INJECTION_LABELS)
        self.prefix = namespace_prefix or f"e{run.run_id}"
        self.wait = wait if wait is not None else scenario_wait(self.flush_interval_s)
        self.lock = lock if lock is not None else run.scenario_lock()
        self.keep_on_failure = run.options.keep_on_failure if keep_on_failure is None else keep_on_failure
        self.collect_diagnostics = collect_diagnostics
        self.chain_deadline_s = chain_deadline_s
        self.converge_s = converge_s
        #: scenario namespaces being deleted, awaited on the tier's exit
        self._deleting: list[str] = []
        self._deleting_lock = threading.Lock()

    @property
    def istio_version(self) -> str:
        return self.run.options.istio_version

    @property
    def flush_interval_s(self) -> float:
        """How often the mesh's proxies flush their access logs: 100 ms where this harness installed an
        Istio that has ``fileFlushInterval`` (``harness.cluster.istio``), else Envoy's 1 s."""
        run = self.run
        installed = (
            run.state.istio_installed
            if run.state is not None
            else bool(run.istio is not None and run.istio.installed_by_us)
        )
        return flush_interval_s(self.istio_version) if installed else 1.0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.wait_deletions()

    def wait_deletions(self) -> None:
        """Until the scenario namespaces whose deletion the stages started are gone (a stage does not
        wait for its namespace's pods to terminate: nothing of another scenario depends on them)."""
        with self._deleting_lock:
            pending, self._deleting = self._deleting, []
        problems = []
        for ns in pending:
            try:
                self.run._kube().wait_namespace_gone(ns, deadline_s=NAMESPACE_DELETE_S)
            except Exception as exc:
                problems.append(f"namespace {ns}: {type(exc).__name__}: {exc}")
        if problems:
            raise E2EError("scenario namespaces were not deleted: " + "; ".join(problems))

    def delete_later(self, namespace: str) -> None:
        """Start deleting ``namespace``; :meth:`wait_deletions` (the tier's exit) waits until it is gone."""
        self.run._kube().delete_namespace(namespace, wait=False)
        with self._deleting_lock:
            self._deleting.append(namespace)

    def versions(self) -> TierVersions:
        """The run's Istio, and the Kubernetes of a kind cluster's node image (None for a cluster
        that is only visited: its version is not read)."""
        cluster = self.run.cluster
        kubernetes = None
        if isinstance(cluster, KindCluster):
            tag = re.search(r":(v?\d+\.\d+\.\d+[^@]*)", cluster.image)
            kubernetes = tag.group(1) if tag else None
        return TierVersions(istio=self.istio_version, kubernetes=kubernetes)

    def namespace_for(self, scenario: Scenario) -> str:
        """The namespace ``scenario`` runs in: ``<prefix>-<scenario>``, a DNS label."""
        return scenario_namespace_name(self.prefix, scenario.name)

    def view(self, scenario: Scenario) -> E2ERun:
        """The run seen from ``scenario``'s namespace, with the scenario's own external host names."""
        hosts = scenario_hosts(scenario.name)
        return self.run.scoped(
            self.namespace_for(scenario),
            external_host=hosts.external,
            unregistered_host=hosts.unregistered,
            mtls_host=hosts.mtls,
        )

    def skip_reason(self, scenario: Scenario) -> str | None:
        """The run's reasons (``RunNamespace.skip_reason``), then the recorders': the catalog needs a
        recorder (and for ``mtls`` the one requiring client certificates) answering to the scenario's
        own host names."""
        reason = self.run.skip_reason(scenario)
        if reason:
            return reason
        recorder = self.run.recorder
        if recorder is None:
            return (
                "the catalog runs against the recorder's per-scenario host names; this run has no recorder "
                "(--external internet)"
            )
        hosts = scenario_hosts(scenario.name)
        mutual = external_requirement(scenario) == "mtls"
        wanted = [
            ("recorder", recorder, h) for h in ([] if mutual else [hosts.external]) + [hosts.unregistered]
        ]
        if mutual:
            if self.run.mtls_recorder is None:
                return "needs the recorder that requires client certificates; this run has none"
            wanted.append(("mTLS recorder", self.run.mtls_recorder, hosts.mtls))
        for what, holder, host in wanted:
            if host not in set(holder.aliases):
                return (
                    f"the {what} does not answer to {host}: the catalog changed after the run's recorders "
                    "started (`egress-harness e2e down`, then `up` again)"
                )
        if any(r.scheme == "tcp" for r in scenario.requests) and getattr(recorder, "tcp_port", None) is None:
            return (
                "sends plain TCP to the external host's echo port, and this run's recorder serves none (a run "
                "brought up before it had one: `egress-harness e2e down`, then `up` again)"
            )
        return None

    def stage(self, scenario: Scenario) -> ClusterStage:
        """The scenario's stage. Its ``apply`` takes the run's scenario lock once the namespace's relays
        answer (alone when the scenario's objects reach beyond its namespace:
        ``harness.cluster.lock.exclusive_reason``), so that scenarios waiting for an exclusive one have
        their relays ready meanwhile."""
        view = self.view(scenario)
        documents = [d.body for d in render_scenario(scenario, view.render_context()).documents]
        alone = exclusive_reason(documents, view.namespace)
        if alone:
            progress(f"scenario {scenario.name} needs the cluster alone: {alone}")
        return ClusterStage(self, scenario, view, exclusive=alone is not None)


def scenario_upstreams(scenario: Scenario, context: RenderContext, namespace: str) -> list[str]:
    """What the relays of ``scenario``'s namespace may fetch besides the chain (``host:port``): the
    hosts and ports of its requests, and its egress gateway's service on the canaries' port."""
    requests = [render_request(r, context, source=scenario.file) for r in scenario.requests]
    gateway = scenario_gateway([d.body for d in render_scenario(scenario, context).documents], namespace)
    return [*(f"{r.host}:{r.port}" for r in requests), f"{gateway.service}:{CANARY_PORT}"]


class ClusterStage:
    """One scenario on the cluster tier: its namespace, relays and objects while it is applied."""

    def __init__(
        self, tier: ClusterTier, scenario: Scenario, view: E2ERun, *, exclusive: bool = False
    ) -> None:
        self.tier = tier
        self.exclusive = exclusive
        self.scenario = scenario
        self.view = view
        self.kube = view._kube()
        self.context: RenderContext = view.render_context(scenario)
        self.wait: Wait | None = tier.wait
        self.absence_window = absence_window(tier.flush_interval_s)
        #: the gateway the scenario's egress traffic leaves through (known once it is applied)
        self.gateway: ScenarioGateway = DEFAULT_GATEWAY
        #: what ``apply`` took (the lock), released by ``remove`` whatever happened
        self.locks = contextlib.ExitStack()
        #: what ``apply`` made, undone by ``remove`` in reverse (the objects, then the namespace)
        self.made = contextlib.ExitStack()

    @property
    def namespace(self) -> str:
        return self.view.namespace

    def apply(self) -> float:
        """The namespace with its relays, the chain answering through the ingress, the scenario applied
        and converged; the seconds the proxies took to have it."""
        view, ns = self.view, self.namespace
        self.kube.create_namespace(
            ns,
            {
                **self.tier.namespace_labels,
                RUN_LABEL: view.run_id,
                SCENARIO_LABEL: dns_label(self.scenario.name),
            },
        )
        # only a namespace made here is deleted (one that was there is not this scenario's); the
        # tier waits for it to be gone (its exit), not the scenario
        self.made.callback(self.tier.delete_later, ns)
        relays = NamespaceRelays(
            self.kube,
            ns,
            gateway=view.ingress_gateway,
            image=view.relay_image,
            ca_pem=view.ca_pem,
            token=view.root.ingress_token or None,
            upstreams=scenario_upstreams(self.scenario, self.context, ns),
            labels={RUN_LABEL: view.run_id, SCENARIO_LABEL: dns_label(self.scenario.name)},
            callers=True,
            caller=self.caller_pod(),
            # on the harness's own cluster the relays run on the control-plane node, apart from the
            # egress gateway on the worker: under kind's source NAT the external host tells the
            # gateway from a workload that went direct only by their nodes' addresses
            pin_to_control_plane=view.own_cluster,
        )
        relays.deploy()
        view.relay_manifest = relays.save(view.run_dir / "manifests" / ns)
        view.wait_chain_ready(deadline_s=self.tier.chain_deadline_s)
        # the lock from here: what the scenario applies is what others must not meet
        self.locks.enter_context(
            self.tier.lock.hold(exclusive=self.exclusive, what=f"scenario {self.scenario.name}")
        )
        self.made.callback(self._remove_applied)
        applied = view.apply_scenario(self.scenario, wait_s=self.tier.converge_s)
        self.gateway = applied.gateway
        if any(needs_canary(r.expect) for r in self.scenario.requests):
            # the canaries that prove the gateway's log live need a listener there (canary())
            text = yaml.safe_dump(liveness_gateway(ns, self.gateway.labels), sort_keys=False)
            self.made.callback(self.kube.delete_objects, self.kube.apply(text, namespace=ns))
        return applied.converged_s

    def caller_pod(self) -> CallerPod:
        """How the calling relay's pod is made for the scenario's ``caller.sidecar``; a sidecar that
        leaves the external host out of its capture needs the address the recorder listens on."""
        sidecar = self.scenario.caller.sidecar
        if sidecar != "excludes-external":
            return caller_pod(sidecar)
        recorder = self.view.recorder_for(self.scenario)
        if recorder is None:
            raise E2EError(
                f"scenario {self.scenario.name}: caller.sidecar excludes-external needs the external host's "
                "address, and this run has no recorder (--external internet)"
            )
        try:
            address = recorder.address
        except (LookupError, NotImplementedError) as exc:
            raise E2EError(f"scenario {self.scenario.name}: caller.sidecar excludes-external: {exc}") from exc
        return caller_pod(sidecar, address)

    def send(self, request: ResolvedRequest) -> Sent:
        """``client -> ingress -> proxy -> target -> request's URL`` through the namespace's ingress path."""
        if tuple(request.chain) != CHAIN:
            raise E2EError(
                f"request {request.name}: only the full chain ingress -> proxy -> target runs here"
            )
        result = self.view.send_chain(request.host, request.port, request.target_path, scheme=request.scheme)
        answer = result.response
        return Sent(
            result.request_id,
            answer.status,
            result.sent_at,
            answer.failed_hop,
            answer.error,
            path_token=result.path_token,
            answered_at=result.answered_at or datetime.now(UTC),
        )

    def hop_logs(self, sent: Sent) -> HopLogs:
        """The target sidecar's and the scenario's gateway's pod logs, from a little before the sending
        (the clocks of the pods and the client differ)."""
        since = sent.sent_at - timedelta(seconds=LOG_SLACK_S)
        if not self.scenario.caller.has_sidecar:
            # no sidecar, no log of one: that the pod has none is checked again (its deployment did)
            self._check_caller_bare()
            return HopLogs(
                None, self.view.gateway_log(since=since, gateway=self.gateway), self.gateway.service
            )
        return HopLogs(
            self.view.sidecar_log(TARGET_APP, since=since),
            self.view.gateway_log(since=since, gateway=self.gateway),
            self.gateway.service,
        )

    def _check_caller_bare(self) -> None:
        pods = self.kube.list_pods(self.namespace, f"app={TARGET_APP}")
        injected = [p["metadata"]["name"] for p in pods if has_sidecar(p)]
        if not pods or injected:
            raise E2EError(
                f"scenario {self.scenario.name}: the caller {TARGET_APP!r} must run without a sidecar; "
                + (f"these pods have one: {', '.join(injected)}" if injected else "it has no pod")
            )

    def witness(self, request: ResolvedRequest, sent: Sent) -> str | None:
        """The recorder's record of the request: its caller is a gateway address (for a direct request,
        ``external_caller: not-gateway``: not a gateway address) and, when its last leg is TLS
        (``expects_external_tls``), it came with the host as SNI and, for mutual TLS, with the run's
        client certificate; with ``external_attempts``, that many records of it, all from such
        callers. None when the run has no recorder for the scenario."""
        view = self.view
        recorder = self._external_records(request)
        if recorder is None:
            return None
        tls = expects_external_tls(request, self.context.external_tls_port)
        tcp = request.scheme == "tcp"
        try:
            expect = (
                view.expect_external_from_gateway
                if request.expect.via_gateway
                else view.expect_external_from_workload
                if request.expect.external_caller == "workload"
                else view.expect_external_direct
            )
            record = expect(
                sent.request_id, gateway=self.gateway, recorder=recorder, path_token=sent.path_token
            )
        except ExternalEvidenceError as exc:
            if tls:
                exc.args = (f"{exc}{handshake_hint(recorder, request.host)}",)
            raise
        seen = f"external host (called from {record.get('client_ip')})"
        if request.expect.external_caller == "workload":
            seen = (
                f"external host (called from {record.get('client_ip')}: {TARGET_APP} itself, not the gateway)"
            )
        if tcp:
            seen += f" over TCP, {check_tcp_record(record, request.expect.tcp_bytes)}"
        if tls:
            mutual = external_requirement(self.scenario) == "mtls"
            subject = view.pki.client.subject if mutual and view.pki is not None else None
            tls_seen = check_tls_record(record, host=request.host, client_subject=subject)
            seen += f" over {tls_seen.get('version') or 'TLS'}, SNI {tls_seen.get('sni')}"
            if subject is not None:
                seen += f", client certificate {subject}"
        attempts = request.expect.external_attempts
        if attempts is not None:
            token = sent.path_token
            gateway = view.gateway_callers(self.gateway)
            expect_external_attempts(
                (lambda: recorder.records(path_contains=token))
                if token
                else (lambda: recorder.records(sent.request_id)),
                sent.request_id,
                attempts,
                from_ips=gateway if request.expect.via_gateway else None,
                not_from_ips=None if request.expect.via_gateway else gateway,
                path_token=token,
            )
            seen += f", {attempts} attempt(s)"
        return seen

    def _external_records(self, request: ResolvedRequest) -> RecorderClient | None:
        """The scenario's recorder, read where ``request`` leaves its record: its connections for a
        tcp request (``TcpConnections``), else its requests; None when the run has none."""
        recorder = self.view.recorder_for(self.scenario)
        if recorder is not None and request.scheme == "tcp":
            return TcpConnections(recorder)
        return recorder

    def witness_absence(self, request: ResolvedRequest, sent: Sent) -> str | None:
        """The recorder has no record of the refused request (by its path token); None when the run
        has no recorder for the scenario."""
        recorder = self._external_records(request)
        if recorder is None:
            return None
        token = sent.path_token
        expect_no_external_record(
            (lambda: recorder.records(path_contains=token))
            if token
            else (lambda: recorder.records(sent.request_id)),
            sent.request_id,
            path_token=token,
        )
        return "external host (no record)"

    def canary(self) -> RequestRef:
        """A canary down the scenario's chain to its gateway service itself,
        ``http://<gateway service>:80/egh-live-<uuid>?egh-token=<uuid>``: the gateway logs it (404
        ``NR`` on the listener of ``liveness_gateway``) with the ``egh-live-`` token in its path.
        Sent again while the target's sidecar answers 503 (no listener there yet), up to
        ``chain.CANARY_DEADLINE_S``."""
        service = self.gateway.service
        token, _ = send_canary(lambda path: self.view.send_chain(service, CANARY_PORT, path))
        return RequestRef(path_token=token, host=service)

    def proxy_versions(self) -> list[str]:
        """The Istio versions of the target's sidecar and the scenario's gateway."""
        return self.view.proxy_versions(self.gateway)

    def diagnose(self, exc: BaseException, *, label: str) -> Path | None:
        """With ``collect_diagnostics``: the run's diagnostics of the namespace and the gateway."""
        if not self.tier.collect_diagnostics:
            return None
        path: Path = self.view.diagnostics(self.gateway).collect(label)
        return path

    def remove(self, *, failed: bool) -> bool:
        """The scenario's objects (awaited until the proxies dropped them), then the namespace; a failed
        scenario is kept instead with keep-on-failure (True). The lock is released either way."""
        try:
            if failed and self.tier.keep_on_failure:
                self.made.pop_all()
                self._say_kept()
                return True
            self.made.close()
            return False
        finally:
            self.locks.close()

    def _say_kept(self) -> None:
        ns, name = self.namespace, self.scenario.name
        progress(
            f"keeping namespace {ns} of the failed scenario {name} (keep-on-failure); "
            f"remove it with `kubectl delete namespace {ns}`"
        )
        for ref in (r for a in self.view.applied for r in a.secret_refs):
            progress(
                f"keeping its Secret {ref.namespace}/{ref.name} too; remove it with "
                f"`kubectl delete secret -n {ref.namespace} {ref.name}`"
            )

    def _remove_applied(self) -> None:
        view, problems = self.view, []
        for applied in reversed(view.applied):
            try:
                view.delete_scenario(applied, wait_s=self.tier.converge_s)
            except Exception as exc:
                problems.append(f"{applied.scenario.name}: {exc}")
        if problems:
            raise E2EError("; ".join(problems))
