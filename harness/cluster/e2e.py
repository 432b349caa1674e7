"""One run of the cluster tier: cluster, Istio, external host, relay apps, scenarios, evidence.

``E2ERun(options, run_dir)`` is a context manager composed of smaller ones, entered in this order and
left in reverse (also on failure or Ctrl-C; each part removes only what it made):

1. the cluster: a ``KindCluster`` (manifests/kind/cluster.yaml, own kubeconfig) or, with
   ``kubeconfig``, an ``ExistingCluster`` that is only visited;
2. Istio with its egress gateway (``IstioInstall``; an Istio already there is used as it is);
3. the external host: with ``external="container"`` the run's PKI (``harness.common.certs``: a CA, a server
   certificate for every recorder alias and ``*.<domain>``, a client certificate) in
   ``<run dir>/pki``, and the recorder (apps/recorder) as a container on kind's Docker network
   ``kind``, under the alias ``external.egress-harness.test`` (and ``unregistered.egress-harness.test``
   for the REGISTRY_ONLY scenarios), serving HTTP on 80 and HTTPS on 443; beside it a second recorder
   that requires client certificates of the run's CA (mutual TLS) under ``mtls.egress-harness.test``
   and ``mtls-<scenario>.egress-harness.test``. With ``"internet"`` a real host (``external_host``),
   no recorder and no PKI;
4. the run namespace ``egress-<run id>`` labelled ``istio-injection=enabled``;
5. the relay apps ``proxy`` and ``target`` and the ingress route ``/proxy`` (``harness.cluster.apps``), then a
   wait until the chain answers through the ingress.

Why pods reach the recorder by its alias: kind's node entrypoint points the node's resolver at
Docker's embedded DNS and applies that redirect to traffic from pods too, and CoreDNS forwards names
outside the cluster domain to the node's resolver; Docker's DNS answers for the container names and
aliases on the ``kind`` network. The run checks the alias from the node before going on.

What the external host sees as the caller: kindnet masquerades traffic from pods to addresses
outside the pod network, so the recorder sees the *node's* address on the ``kind`` network, not the
pod's. :meth:`E2ERun.callers` accounts for that. The harness's kind cluster has two nodes and puts
the egress gateway alone on the worker, so the address tells it apart; on an existing cluster where
the gateway shares a node with the workloads, :meth:`E2ERun.caller_witness_discriminates` says so.

Requests go ``client -> ingress -> proxy -> target -> external``: the client sends
``GET <ingress>/proxy?url=<target URL>`` where the target URL is
``http://target.<ns>.svc.cluster.local:8080/proxy?url=<external URL>`` (``harness.common.traffic.chain_url``).
:meth:`E2ERun.send_chain` retries, with a deadline, until both relays answer (the ingress route and
the apps are ready), and records how long that took.

A scenario is applied with :meth:`E2ERun.apply_scenario`: rendered for this run, written to the run
directory, checked by ``istioctl analyze`` (against the live cluster, or files only), applied with
server-side apply, and then awaited until the proxies have it: the target's sidecar and the egress
gateway are asked for their configuration (``istioctl proxy-config all <pod>.<ns> -o json``) until it
holds every object of the scenario that reaches them (a ServiceEntry's clusters, and the
DestinationRules and VirtualServices, which Istio names in the metadata of the clusters and routes it
builds from them). Removal waits until they are gone again, so one scenario cannot leak into the next.

The whole catalog (:class:`ScenarioRunner`): each scenario runs in a namespace of its own
(``e<run id>-<scenario>``, labelled with the run id) with its own ``proxy`` and ``target`` and its
own external host names (``<scenario>.egress-harness.test``, ``unregistered-<scenario>.egress-harness.test``;
the recorder answers to all of them, :func:`recorder_aliases`), so that scenarios running at the
same time never give the shared egress gateway two servers for one host. The namespace is reached
through the shared ingress Gateway of the run namespace: a VirtualService per namespace matches
``/<ns>/proxy`` and rewrites it to ``/proxy`` (:func:`ingress_route`), so the chain URL is
``<ingress>/<ns>/proxy?url=...``. A scenario whose objects reach beyond its namespace (a wildcard
host exported everywhere, a policy in the gateway's namespace) holds the run's scenario lock alone
(:class:`ScenarioLock`, across pytest-xdist workers), the others share it. Each scenario ends as a
``harness.report.results.ScenarioResult``; its namespace is removed whatever happened, unless
keep-on-failure is on and it failed.

TLS and mutual TLS (``requires.external``, ``requires.client_credential``,
``requires.server_ca_credential``): a scenario whose external host must require client
certificates renders with the mTLS recorder's name for it and is judged from that recorder's
records. The relays trust the run's CA (ConfigMap ``egress-harness-ca`` in their namespace,
``SSL_CERT_FILE``; ``harness.cluster.apps``). A scenario that names a credential gets it as a Secret in the
gateway's namespace (``istio-system``; the egress gateway reads credentials from its own namespace),
named after the scenario and its namespace so parallel scenarios never share one, created just
before the scenario is applied and deleted after its objects are gone (also when it failed). The
run then waits until the egress gateway's Envoy holds the credential as an active SDS secret
(``istioctl proxy-config secret``; :func:`credential_secrets` says which). A request whose last leg
is TLS must reach the recorder over TLS with the host as SNI, and for mutual TLS with the run's
client certificate (:func:`check_tls_record`). The recorders' failed handshakes go into the
diagnostics.

A run made by ``egress-harness e2e up`` is described by a :class:`RunState` file; ``E2ERun(...,
state=RunState.load(path))`` attaches to it (nothing is created or deleted but scenario namespaces),
which is how every pytest-xdist worker shares one cluster.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import httpx
import yaml

from harness.cluster.apps import (
    RECORDER_IMAGE,
    RELAY_IMAGE,
    BuildMode,
    RelayApps,
    build_app_image,
    prepare_relay_image,
)
from harness.cluster.diagnostics import Diagnostics
from harness.cluster.external import DEFAULT_ALIAS, DEFAULT_TLS_PORT, RecorderContainer, RecorderTLS
from harness.cluster.istio import EGRESS_GATEWAY_SELECTOR, ISTIO_NAMESPACE, IstioInstall, kube_target_args
from harness.cluster.kube import INJECTION_LABELS, Kube, ObjectRef, RolloutCheck, WaitTimeoutError, wait_until
from harness.cluster.podlogs import PodLogSource
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.common import tools, versions
from harness.common.certs import Issued, PkiError, TestPKI, generate_pki, secret_manifest
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, progress, run
from harness.common.traffic import ChainResponse, Traffic, TrafficError, chain_url
from harness.evidence import EGRESS_GATEWAY_SERVICE, EntryLog, RequestRef, Wait
from harness.evidence.external import ExternalEvidenceError, Record, expect_external_record
from harness.report.results import Phase, RunResult, ScenarioResult, utc_now

KIND_NETWORK = "kind"
EXTERNAL_ALIAS = DEFAULT_ALIAS
UNREGISTERED_ALIAS = "unregistered.egress-harness.test"
#: the mutual-TLS recorder's own name (it also answers to ``mtls-<scenario>.<domain>``)
MTLS_ALIAS = "mtls.egress-harness.test"
#: where the recorders serve HTTPS (RenderContext.external_tls_port's default)
EXTERNAL_TLS_PORT = DEFAULT_TLS_PORT
#: the run's PKI, under the run directory
PKI_DIR = "pki"
#: the harness's own test domain: every recorder alias is a name in it
TEST_DOMAIN = "egress-harness.test"
DEFAULT_INTERNET_HOST = "httpbin.org"
TARGET_APP = "target"
RELAY_PORT = 8080
#: the path prefix the run namespace's ingress route sends to its ``proxy``
INGRESS_PATH = "/proxy"
#: the ingress Gateway of manifests/apps/relay.yaml; every scenario namespace's route binds to it
INGRESS_GATEWAY_NAME = "relay-gateway"
#: labels on every namespace a run creates (``e2e down`` finds leftovers by the first)
RUN_LABEL = "io.egress-harness.run"
SCENARIO_LABEL = "io.egress-harness.scenario"

#: The Gateway API CRDs ``--gateway-api`` installs are pinned in harness/versions.py.
GATEWAY_API_VERSION: Final = versions.GATEWAY_API_VERSION
GATEWAY_API_CRDS_URL: Final = versions.GATEWAY_API_CRDS_URL
GATEWAY_API_URL_ENV: Final = "EGRESS_HARNESS_GATEWAY_API_URL"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_PROBE_CRD = "httproutes.gateway.networking.k8s.io"
GATEWAY_API_DOWNLOAD_TIMEOUT_S = 120.0
CRD_ESTABLISHED_TIMEOUT_S = 120.0

#: What an external host can serve, as scenarios ask for it (``requires.external``).
EXTERNAL_KINDS: tuple[str, ...] = ("http", "tls", "mtls")
#: What the recorder container serves unless it says otherwise (``RecorderContainer.serves``).
RECORDER_SERVES_DEFAULT: tuple[str, ...] = ("http",)
#: What a real internet host is used for: plain HTTP only. Its certificates are not the run's, so
#: neither the relays (they trust the run's CA) nor a credential Secret (the run's CA) verify it.
INTERNET_SERVES: tuple[str, ...] = ("http",)

CHAIN_READY_TIMEOUT_S = 180.0
CHAIN_INTERVAL_S = 1.0
CONVERGE_TIMEOUT_S = 120.0
CONVERGE_INTERVAL_S = 2.0
ISTIOCTL_TIMEOUT_S = 60.0
DNS_CHECK_TIMEOUT_S = 20.0
LOG_SLACK_S = 5.0
#: how long a scenario waits for the run's scenario lock (an exclusive scenario waits for the others)
LOCK_TIMEOUT_S = 1800.0
LOCK_INTERVAL_S = 0.2
DOCKER_RM_TIMEOUT_S = 60.0
#: how the catalog's requests are judged: Envoy flushes access logs every second in Istio
SCENARIO_WAIT = Wait(timeout=20.0, interval=0.25, settle=2.0)

ExternalMode = Literal["container", "internet"]
AnalyzeMode = Literal["cluster", "files", "off"]
EXTERNAL_MODES: tuple[str, ...] = ("container", "internet")
ANALYZE_MODES: tuple[str, ...] = ("cluster", "files", "off")


class E2EError(RuntimeError):
    """The run could not be set up, or a step of it failed."""


class ScenarioNotApplicable(E2EError):
    """The scenario needs another Istio version or mesh setting than this run has."""


class AnalyzeError(E2EError):
    def __init__(self, findings: Sequence[AnalyzeFinding], output: str, files: Sequence[Path]) -> None:
        self.findings = list(findings)
        self.output = output
        shown = "\n".join(f"  {f}" for f in findings) or output.strip()
        super().__init__(f"istioctl analyze found errors in {', '.join(str(p) for p in files)}:\n{shown}")


class ChainNotReadyError(E2EError):
    pass


class ConvergenceError(E2EError):
    pass


# --- options --------------------------------------------------------------------------------------


def new_run_id() -> str:
    """Six hex digits: short enough for names, random enough for concurrent runs."""
    return secrets.token_hex(3)


@dataclass(frozen=True)
class E2EOptions:
    """How a run is set up (the pytest options map onto these; see harness.pytest_plugin)."""

    istio_version: str = field(default_factory=versions.istio_version)
    cluster_name: str = "egress-harness"
    reuse_cluster: bool = False
    #: keep cluster, Istio, namespace and apps (always)
    keep_cluster: bool = False
    #: keep them when a test failed (EGRESS_HARNESS_KEEP_CLUSTER=1)
    keep_on_failure: bool = False
    #: an existing cluster instead of a kind cluster
    kubeconfig: Path | None = None
    context: str | None = None
    access_log_encoding: str = "TEXT"
    outbound_traffic_policy: str = "ALLOW_ANY"
    external: ExternalMode = "container"
    external_host: str | None = None
    external_port: int = 80
    #: where the client reaches the ingress gateway (default: kind's port mapping on 127.0.0.1)
    ingress_url: str | None = None
    #: a relay image the cluster can pull; needed for an existing cluster, default: built and loaded
    relay_image: str | None = None
    image_build_mode: BuildMode = "auto"
    analyze: AnalyzeMode = "cluster"
    #: whether pod traffic to the external host is source-NATed to the node (None: yes on kind)
    pod_source_nat: bool | None = None
    artifacts_dir: Path = REPO_ROOT / "artifacts"
    #: install the Gateway API CRDs (GATEWAY_API_VERSION) when the cluster has none
    gateway_api: bool = False
    #: more network aliases of the recorder: the catalog's hosts (:func:`recorder_aliases`)
    recorder_aliases: tuple[str, ...] = ()
    #: with ``external="container"``: make the run's PKI, serve HTTPS and run the mTLS recorder
    external_tls: bool = True
    #: more network aliases of the mutual-TLS recorder (:func:`mtls_recorder_aliases`)
    mtls_aliases: tuple[str, ...] = ()
    #: on an existing cluster: let the run create (and delete) credential Secrets in istio-system,
    #: which is beyond "only the run's namespaces" (``--allow-gateway-secrets``)
    allow_gateway_secrets: bool = False

    @property
    def existing_cluster(self) -> bool:
        return self.kubeconfig is not None

    @property
    def host(self) -> str:
        if self.external_host:
            return self.external_host
        return EXTERNAL_ALIAS if self.external == "container" else DEFAULT_INTERNET_HOST

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when they can run)."""
        out: list[str] = []
        if self.access_log_encoding not in ("TEXT", "JSON"):
            out.append(f"access log encoding must be TEXT or JSON, not {self.access_log_encoding!r}")
        if self.external not in EXTERNAL_MODES:
            out.append(f"external must be one of {EXTERNAL_MODES}, not {self.external!r}")
        if self.analyze not in ANALYZE_MODES:
            out.append(f"analyze must be one of {ANALYZE_MODES}, not {self.analyze!r}")
        if self.istio_version not in versions.SUPPORTED_ISTIO_VERSIONS and not self.existing_cluster:
            out.append(
                f"Istio {self.istio_version} is not one of the supported {', '.join(versions.SUPPORTED_ISTIO_VERSIONS)}"
            )
        if self.existing_cluster:
            if self.external == "container":
                out.append(
                    "--external container needs the harness's kind cluster (the recorder joins kind's Docker "
                    "network); with --kubeconfig use --external internet --external-host HOST"
                )
            if not self.relay_image:
                out.append(
                    "an existing cluster cannot be given a locally built image: push the relay image "
                    "(apps/relay) to a registry the cluster pulls from and set EGRESS_HARNESS_RELAY_IMAGE"
                )
            if not self.ingress_url:
                out.append(
                    "an existing cluster needs the ingress gateway's address: set EGRESS_HARNESS_INGRESS_URL "
                    "(e.g. http://127.0.0.1:8080 after `kubectl port-forward -n istio-system "
                    "svc/istio-ingressgateway 8080:80`)"
                )
        return out


# --- the chain ------------------------------------------------------------------------------------


def target_url(namespace: str) -> str:
    """The ``target`` relay's /proxy endpoint as ``proxy`` calls it (in-mesh, by service name)."""
    return f"http://{TARGET_APP}.{namespace}.svc.cluster.local:{RELAY_PORT}/proxy"


def chain_for(ingress_url: str, namespace: str, destination: str, *, ingress_path: str = INGRESS_PATH) -> str:
    """``client -> ingress -> proxy -> target -> destination`` as one nested URL.

    ``ingress_path`` is where the ingress routes to the namespace's ``proxy``: ``/proxy`` for the run
    namespace, ``/<ns>/proxy`` for a scenario namespace (:func:`ingress_prefix`).
    """
    return chain_url([f"{ingress_url.rstrip('/')}{ingress_path}", target_url(namespace)], destination)


def chain_answered(response: ChainResponse) -> bool:
    """Both relays took part: the ingress route, ``proxy`` and ``target`` are up (whatever came after)."""
    return {"proxy", TARGET_APP} <= set(response.services)


@dataclass(frozen=True)
class ChainResult:
    """The answer to one request down the chain, after the chain itself was ready."""

    response: ChainResponse
    #: requests sent until both relays answered (1: ready at once)
    attempts: int
    #: seconds from the first attempt to the answer that counted
    waited_s: float
    #: when the request that counted was sent (UTC)
    sent_at: datetime

    @property
    def request_id(self) -> str:
        return self.response.request_id


def send_until_answered(
    send: Callable[[], ChainResponse],
    *,
    deadline_s: float = CHAIN_READY_TIMEOUT_S,
    interval_s: float = CHAIN_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChainResult:
    """Call ``send`` (a fresh x-request-id each time) until both relays answer, or the deadline passes."""
    start = clock()
    attempts = 0
    last = "nothing sent yet"
    while True:
        attempts += 1
        sent_at = now()
        try:
            response = send()
        except TrafficError as exc:
            last = str(exc)
        else:
            if chain_answered(response):
                return ChainResult(response, attempts, clock() - start, sent_at)
            last = f"HTTP {response.status} without both relays ({response.text[:160]!r})"
        remaining = start + deadline_s - clock()
        if remaining <= 0:
            raise ChainNotReadyError(
                f"the chain client -> ingress -> proxy -> target did not answer within {deadline_s:g}s "
                f"({attempts} attempts); last: {last}"
            )
        if attempts == 1 or attempts % 10 == 0:
            progress(f"waiting for the chain to answer (attempt {attempts}): {last}")
        sleep(min(interval_s, remaining))


# --- the catalog on one cluster: names, routes, what a scenario needs -----------------------------

_LABEL_MAX = 63


def dns_label(text: str) -> str:
    """``text`` as a DNS label: at most 63 characters, a long one cut and ended with a hash of it."""
    if len(text) <= _LABEL_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{text[: _LABEL_MAX - 7].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class ScenarioHosts:
    """The external host names of one scenario: its own, so parallel scenarios never share a host."""

    external: str
    unregistered: str
    #: the name the mutual-TLS recorder answers to for this scenario (``requires.external: mtls``)
    mtls: str = ""


def scenario_hosts(scenario: str, *, domain: str = TEST_DOMAIN) -> ScenarioHosts:
    """``<scenario>.<domain>``, ``unregistered-<scenario>.<domain>`` and ``mtls-<scenario>.<domain>``
    (each label at most 63)."""
    return ScenarioHosts(
        external=f"{dns_label(scenario)}.{domain}",
        unregistered=f"{dns_label(f'unregistered-{scenario}')}.{domain}",
        mtls=f"{dns_label(f'mtls-{scenario}')}.{domain}",
    )


def recorder_aliases(scenarios: Iterable[str], *, domain: str = TEST_DOMAIN) -> list[str]:
    """Every name the recorder must answer to: the default hosts, then each scenario's two hosts.

    Docker sets a container's network aliases when it joins the network, so the list is computed
    from the catalog before the recorder starts. Order kept, duplicates dropped.
    """
    names = [EXTERNAL_ALIAS, UNREGISTERED_ALIAS]
    for scenario in scenarios:
        hosts = scenario_hosts(scenario, domain=domain)
        names += [hosts.external, hosts.unregistered]
    return list(dict.fromkeys(names))


def mtls_recorder_aliases(scenarios: Iterable[Any], *, domain: str = TEST_DOMAIN) -> list[str]:
    """The names the mutual-TLS recorder answers to: :data:`MTLS_ALIAS`, then ``mtls-<scenario>``
    of each scenario whose external host must require client certificates (``requires.external:
    mtls``). Order kept, duplicates dropped."""
    names = [MTLS_ALIAS]
    for scenario in scenarios:
        if external_requirement(scenario) == "mtls":
            names.append(scenario_hosts(scenario.name, domain=domain).mtls)
    return list(dict.fromkeys(names))


def scenario_namespace_name(prefix: str, scenario: str) -> str:
    """The namespace a scenario runs in: ``<prefix>-<scenario>`` as a DNS label."""
    return dns_label(f"{prefix}-{scenario}")


def ingress_prefix(namespace: str) -> str:
    """The ingress path of a scenario namespace's ``proxy``: ``/<ns>/proxy``."""
    return f"/{namespace}{INGRESS_PATH}"


def ingress_route(namespace: str, gateway: str) -> dict[str, Any]:
    """The VirtualService that reaches ``namespace``'s ``proxy`` through the shared ingress ``gateway``.

    ``gateway`` is ``<ns>/<name>`` of the run's ingress Gateway. Istio merges the routes of several
    VirtualServices bound to one ingress gateway for one host, so every namespace adds its own
    prefix ``/<ns>/proxy``, rewritten to ``/proxy`` (the query string stays) before ``proxy`` gets it.
    """
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "relay-ingress", "namespace": namespace},
        "spec": {
            "hosts": ["*"],
            "gateways": [gateway],
            "http": [
                {
                    "name": "to-proxy",
                    "match": [{"uri": {"prefix": ingress_prefix(namespace)}}],
                    "rewrite": {"uri": INGRESS_PATH},
                    "route": [
                        {
                            "destination": {
                                "host": f"proxy.{namespace}.svc.cluster.local",
                                "port": {"number": RELAY_PORT},
                            }
                        }
                    ],
                }
            ],
        },
    }


class NamespaceRelays(RelayApps):
    """``proxy`` and ``target`` of manifests/apps/relay.yaml in a scenario namespace, reached through
    the run's shared ingress Gateway by :func:`ingress_route` instead of a Gateway of their own."""

    def __init__(
        self, kube: Any, namespace: str, *, gateway: str, image: str = RELAY_IMAGE, **kw: Any
    ) -> None:
        super().__init__(kube, namespace, image=image, **kw)
        self.gateway = gateway

    def documents(self) -> list[dict[str, Any]]:
        docs = [d for d in self.relay_documents() if d["kind"] not in ("Gateway", "VirtualService")]
        return [*docs, ingress_route(self.namespace, self.gateway)]

    def render(self) -> str:
        self.text = yaml.safe_dump_all(self.documents(), sort_keys=False)
        return self.text


def _requirement_fields(requires: Any) -> set[str]:
    if dataclasses.is_dataclass(requires):
        return {f.name for f in dataclasses.fields(requires)}
    return set(vars(requires)) if hasattr(requires, "__dict__") else set()


def external_requirement(scenario: Any) -> str:
    """What the scenario's external host must serve: ``http``, ``tls`` or ``mtls``.

    ``requires.external`` when the scenario model has it; before it had, the scenario's tags and
    request schemes tell (``mtls`` tag: mtls; ``tls`` tag or an https request: tls).
    """
    requires = scenario.requires
    if "external" in _requirement_fields(requires):
        return str(getattr(requires, "external", "http") or "http")
    tags = set(scenario.tags)
    if "mtls" in tags:
        return "mtls"
    if "tls" in tags or any(r.scheme == "https" for r in scenario.requests):
        return "tls"
    return "http"


def recorder_serves(recorder: Any) -> tuple[str, ...]:
    """What a recorder container serves: its ``serves`` if it says, else from its TLS settings
    (``tls`` None: HTTP only; ``tls.mutual``: HTTP and mutual TLS; else HTTP and TLS)."""
    explicit = getattr(recorder, "serves", None)
    if explicit:
        return tuple(str(s) for s in explicit)
    tls = getattr(recorder, "tls", None)
    if tls is None:
        return RECORDER_SERVES_DEFAULT
    return ("http", "mtls") if getattr(tls, "mutual", False) else ("http", "tls")


#: ``requires`` keys asking the run for a Secret in the gateway's namespace, and what it holds
CREDENTIAL_REQUIREMENTS: Mapping[str, str] = {
    "client_credential": "a client certificate, key and CA for mutual TLS origination",
    "server_ca_credential": "the CA that verifies the external host",
}


# --- TLS: the run's certificates, the credential Secrets, the evidence of a TLS request -----------


def pki_server_names(
    host: str = EXTERNAL_ALIAS, aliases: Iterable[str] = (), mtls_aliases: Iterable[str] = ()
) -> list[str]:
    """The names the recorders' server certificate must carry: ``host``, the unregistered alias,
    the recorder's other aliases (:func:`recorder_aliases`), the mTLS recorder's
    (:func:`mtls_recorder_aliases`), and ``*.<domain>`` of ``host`` (the domain as
    ``RenderContext.external_host_domain`` derives it; the wildcard scenario's hosts). Order kept,
    duplicates dropped."""
    names = [host, UNREGISTERED_ALIAS, *aliases, MTLS_ALIAS, *mtls_aliases]
    domain = host.partition(".")[2]
    if domain:
        names.append(f"*.{domain}")
    return list(dict.fromkeys(names))


def _cnf_values(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith(("#", "[")):
            values.setdefault(key.strip(), value.strip())
    return values


def load_pki(directory: Path) -> TestPKI:
    """The PKI :func:`harness.common.certs.generate_pki` wrote into ``directory`` (another process's run),
    read back from its fixed files: PEM bytes from the ``.crt``/``.key`` files, subjects and
    subjectAltNames from the ``.cnf`` files it was made with. Raises E2EError naming what is missing."""

    def issued(stem: str) -> Issued:
        try:
            values = _cnf_values(directory / f"{stem}.cnf")
            cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
            cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
        except OSError as exc:
            raise E2EError(f"the run's PKI in {directory} cannot be read: {exc.strerror or exc}") from exc
        if "CN" not in values or "O" not in values:
            raise E2EError(
                f"{directory / f'{stem}.cnf'} names no subject (CN and O): not a PKI of harness.common.certs"
            )
        alt = tuple(a.strip() for a in values.get("subjectAltName", "").split(",") if a.strip())
        return Issued(cert, key, cert_pem, key_pem, f"CN={values['CN']},O={values['O']}", alt)

    return TestPKI(directory, issued("ca"), issued("server"), issued("client"))


#: how Istio names the SDS resource of a ``credentialName`` (pilot/pkg/model/credentials:
#: ``kubernetes://<name>``), and the suffix of its CA part (``SdsCaSuffix``, ``-cacert``)
SDS_PREFIX = "kubernetes://"
SDS_CA_SUFFIX = "-cacert"


def credential_names(namespace: str, scenario: str) -> dict[str, str]:
    """The credential Secret names of ``scenario`` in ``namespace`` (RenderContext's
    ``client_credential_name`` and ``ca_credential_name``): one pair per scenario and namespace, so
    scenarios running at the same time never share a Secret. DNS labels, never starting with
    ``istio`` or ending in ``-cacert`` (Istio reserves those)."""
    return {
        "client_credential_name": dns_label(f"eh-client-{namespace}-{scenario}"),
        "ca_credential_name": dns_label(f"eh-ca-{namespace}-{scenario}"),
    }


@dataclass(frozen=True)
class CredentialSecret:
    """A Secret a scenario asks the run for, in the gateway's namespace.

    ``sds_resources`` are the SDS resources the egress gateway's Envoy asks istiod for once a
    DestinationRule names the Secret, as Istio's cluster builder names them: MUTUAL origination
    takes the certificate and key (``kubernetes://<name>``) and the CA that verifies the server
    (``kubernetes://<name>-cacert``, which istiod serves from ``<name>-cacert`` or else from the
    ``ca.crt`` of ``<name>``); SIMPLE origination takes only ``kubernetes://<name>-cacert``.
    """

    requirement: str
    name: str
    namespace: str
    data: Mapping[str, str]
    sds_resources: tuple[str, ...]

    def manifest(self, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        return dict(secret_manifest(self.name, self.namespace, self.data, labels=labels))

    def __str__(self) -> str:
        return f"Secret {self.namespace}/{self.name} (requires.{self.requirement})"


def credential_secrets(scenario: Any, ctx: Any, pki: TestPKI) -> list[CredentialSecret]:
    """The Secrets ``scenario`` needs, named and placed as ``ctx`` renders it."""
    needs = scenario.requires
    out: list[CredentialSecret] = []
    if getattr(needs, "client_credential", False):
        name = str(ctx.client_credential_name)
        out.append(
            CredentialSecret(
                "client_credential",
                name,
                str(ctx.gateway_namespace),
                pki.client_credential_data(),
                (f"{SDS_PREFIX}{name}", f"{SDS_PREFIX}{name}{SDS_CA_SUFFIX}"),
            )
        )
    if getattr(needs, "server_ca_credential", False):
        name = str(ctx.ca_credential_name)
        out.append(
            CredentialSecret(
                "server_ca_credential",
                name,
                str(ctx.gateway_namespace),
                pki.server_ca_credential_data(),
                (f"{SDS_PREFIX}{name}{SDS_CA_SUFFIX}",),
            )
        )
    return out


SdsState = Literal["ACTIVE", "WARMING"]


def sds_secret_states(text: str) -> dict[str, SdsState]:
    """The SDS secrets of ``istioctl proxy-config secret <pod> -o json`` (Envoy's SecretsConfigDump,
    camelCase as istioctl prints it or snake_case as Envoy's admin API does; also inside a whole
    config dump's ``configs``): name -> ACTIVE (Envoy holds it) or WARMING (asked for, not served).
    Raises ValueError when the text is not such JSON."""
    if not text.strip():
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    dumps = [data]
    for config in data.get("configs") or []:
        if isinstance(config, dict):
            dumps.append(config)
    states: dict[str, SdsState] = {}
    for dump in dumps:
        for state, keys in (
            ("WARMING", ("dynamicWarmingSecrets", "dynamic_warming_secrets")),
            ("ACTIVE", ("dynamicActiveSecrets", "dynamic_active_secrets")),
        ):
            for key in keys:
                for item in dump.get(key) or []:
                    name = (item or {}).get("name")
                    if name and (state == "ACTIVE" or name not in states):
                        states[str(name)] = "ACTIVE" if state == "ACTIVE" else "WARMING"
    return states


def missing_sds_resources(
    wanted: Sequence[str], states_by_pod: Mapping[str, Mapping[str, str] | str]
) -> list[tuple[str, str, str]]:
    """``(pod, resource, why)`` for each wanted resource a gateway pod does not hold as ACTIVE; a pod
    whose output could not be read maps to the reason (a string)."""
    out: list[tuple[str, str, str]] = []
    for pod, states in sorted(states_by_pod.items()):
        for resource in wanted:
            if isinstance(states, str):
                out.append((pod, resource, states))
            elif states.get(resource) != "ACTIVE":
                out.append((pod, resource, "warming" if resource in states else "not requested"))
    return out


EXTERNAL_HOP = "external host"


def expects_external_tls(request: Any, tls_port: int = EXTERNAL_TLS_PORT) -> bool:
    """Whether the external host sees ``request`` over TLS: the workload calls it over HTTPS, or the
    egress gateway is expected to send it on to the host's TLS port (TLS origination)."""
    if str(request.scheme) == "https":
        return True
    upstream = (request.expect.gateway or {}).get("upstream_cluster")
    return isinstance(upstream, str) and upstream.startswith(f"outbound|{tls_port}|")


def check_tls_record(
    record: Record, *, host: str, client_subject: str | None = None, hop: str = EXTERNAL_HOP
) -> Mapping[str, Any]:
    """The record's ``tls`` when the request reached the external host over TLS with ``host`` as SNI
    and, with ``client_subject``, with that client certificate; else ExternalEvidenceError naming
    the external host hop and what it saw."""
    rid = (record.get("headers") or {}).get("x-request-id", "?")
    tls = record.get("tls")
    where = f"hop {hop!r}: the request x-request-id={rid} reached {host}"
    if not isinstance(tls, Mapping):
        raise ExternalEvidenceError(
            f"{where} over plain HTTP, expected TLS with SNI {host!r}", hop=hop, records=[record]
        )
    if tls.get("sni") != host:
        raise ExternalEvidenceError(
            f"{where} over TLS with SNI {tls.get('sni')!r}, expected {host!r}", hop=hop, records=[record]
        )
    if client_subject is not None and tls.get("client_cert_subject") != client_subject:
        seen = tls.get("client_cert_subject")
        got = f"client certificate {seen!r}" if seen else "no client certificate"
        raise ExternalEvidenceError(
            f"{where} over TLS with {got}, expected the run's client certificate {client_subject!r}",
            hop=hop,
            records=[record],
        )
    return tls


def handshake_hint(recorder: Any, host: str, *, limit: int = 3) -> str:
    """The recorder's last failed TLS handshakes for ``host`` (SNI) as text to append to a failure,
    or '' (none, or they cannot be read)."""
    try:
        failures = [f for f in recorder.handshake_failures() if f.get("sni") in (host, None)]
    except Exception:
        return ""
    if not failures:
        return ""
    shown = "; ".join(
        f"{f.get('client_ip')}:{f.get('client_port')} (SNI {f.get('sni') or '-'}): {f.get('error')}"
        for f in failures[-limit:]
    )
    return f"\nthe external host saw {len(failures)} failed TLS handshake(s) for {host}, the last: {shown}"


def _hosts_of(doc: Mapping[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    hosts = [str(h) for h in spec.get("hosts") or []]
    for server in spec.get("servers") or []:
        hosts += [str(h).split("/", 1)[-1] for h in (server or {}).get("hosts") or []]
    return hosts


def exclusive_reason(documents: Sequence[Mapping[str, Any]], namespace: str) -> str | None:
    """Why a scenario cannot share the cluster with others while it runs, or None.

    Objects in another namespace (a policy or rule in the gateway's namespace applies to everything
    through the gateway), and wildcard hosts exported beyond the scenario's namespace (they take
    over the hosts of other scenarios in the same domain).
    """
    for doc in documents:
        meta = doc.get("metadata") or {}
        kind, name = doc.get("kind", "?"), meta.get("name", "?")
        ns = meta.get("namespace") or namespace
        if ns != namespace:
            return f"{kind}/{name} is in namespace {ns}, outside the scenario's own"
        if not str(doc.get("apiVersion", "")).startswith("networking.istio.io/"):
            continue
        export_to = (doc.get("spec") or {}).get("exportTo")
        if export_to and set(export_to) <= {".", namespace}:
            continue
        wild = [h for h in _hosts_of(doc) if h.startswith("*")]
        if wild:
            return f"{kind}/{name} has the wildcard host {wild[0]} and is visible to every namespace"
    return None


@dataclass(frozen=True)
class ScenarioGateway:
    """The gateway a scenario's egress traffic leaves through: Istio's egress gateway, or the
    gateway Istio deploys for a Gateway API ``Gateway`` in the scenario's namespace."""

    namespace: str = ISTIO_NAMESPACE
    selector: str = EGRESS_GATEWAY_SELECTOR
    service: str = EGRESS_GATEWAY_SERVICE
    #: the Deployment Istio makes for a Gateway API Gateway (awaited after apply); None for Istio's
    deployment: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.selector.split(",") if "=" in item)


DEFAULT_GATEWAY = ScenarioGateway()


def scenario_gateway(documents: Sequence[Mapping[str, Any]], namespace: str) -> ScenarioGateway:
    """The gateway of a scenario: a Gateway API ``Gateway`` of class ``istio`` among ``documents``
    (Istio names its Deployment and Service ``<name>-istio`` and labels the pods
    ``gateway.networking.k8s.io/gateway-name=<name>``), else Istio's egress gateway."""
    for doc in documents:
        if doc.get("kind") != "Gateway" or not str(doc.get("apiVersion", "")).startswith(
            f"{GATEWAY_API_GROUP}/"
        ):
            continue
        if (doc.get("spec") or {}).get("gatewayClassName") != "istio":
            continue
        meta = doc.get("metadata") or {}
        name, ns = str(meta.get("name")), str(meta.get("namespace") or namespace)
        return ScenarioGateway(
            namespace=ns,
            selector=f"{GATEWAY_API_GROUP}/gateway-name={name}",
            service=f"{name}-istio.{ns}.svc.cluster.local",
            deployment=f"{name}-istio",
        )
    return DEFAULT_GATEWAY


# --- the scenario lock: shared by most scenarios, held alone by those that reach beyond their namespace


class LockTimeoutError(E2EError):
    pass


class ScenarioLock:
    """A readers-writer lock over a file, across processes (pytest-xdist workers) on one machine.

    ``hold(exclusive=False)`` is shared; ``hold(exclusive=True)`` waits until nobody holds it. A
    writer first takes the turnstile file, which new readers must pass, so a steady stream of
    readers cannot starve it. Waits poll with a deadline (``flock`` itself has none).
    """

    def __init__(
        self, directory: Path, *, timeout_s: float = LOCK_TIMEOUT_S, interval_s: float = LOCK_INTERVAL_S
    ) -> None:
        self.path = directory / "scenario.lock"
        self.turnstile = directory / "scenario.turnstile"
        self.timeout_s = timeout_s
        self.interval_s = interval_s

    def _acquire(self, fd: int, operation: int, what: str, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeoutError(
                    f"{what}: the scenario lock {self.path} was not free within {self.timeout_s:g}s "
                    "(a scenario that needs the cluster alone, or a stuck process, holds it)"
                )
            time.sleep(min(self.interval_s, remaining))

    def _open(self, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool, what: str = "scenario") -> Iterator[float]:
        """Hold the lock; yields how many seconds the wait took."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        gate = self._open(self.turnstile)
        fd = -1
        try:
            self._acquire(gate, fcntl.LOCK_EX, what, deadline)
            try:
                fd = self._open(self.path)
                self._acquire(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, what, deadline)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            waited = round(time.monotonic() - started, 3)
            if exclusive:
                progress(f"{what}: holding the cluster alone (waited {waited:.1f}s)")
            yield waited
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            os.close(gate)


# --- who calls the external host ------------------------------------------------------------------


def caller_addresses(pods: Sequence[Mapping[str, Any]], *, source_nat: bool) -> set[str]:
    """The addresses the external host sees for these pods: their own, or their nodes' under SNAT."""
    out: set[str] = set()
    for pod in pods:
        status = pod.get("status") or {}
        if source_nat:
            out.update(str(a["ip"]) for a in status.get("hostIPs") or [] if a.get("ip"))
            if status.get("hostIP"):
                out.add(str(status["hostIP"]))
        else:
            out.update(str(a["ip"]) for a in status.get("podIPs") or [] if a.get("ip"))
            if status.get("podIP"):
                out.add(str(status["podIP"]))
    return out


# --- configuration convergence --------------------------------------------------------------------

ProxyKind = Literal["sidecar", "gateway"]


@dataclass(frozen=True)
class ConfigMarker:
    """A piece of text a proxy's configuration holds once it has one applied object."""

    proxy: ProxyKind
    needle: str
    what: str


def _kebab(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", kind).lower()


def _config_path(namespace: str, kind: str, name: str) -> str:
    # Istio puts "/apis/<group>/<version>/namespaces/<ns>/<kind>/<name>" into the istio.config metadata
    # of what it builds from an object; the version part varies, so match from the namespace on.
    return f'/namespaces/{namespace}/{_kebab(kind)}/{name}"'


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == str(v) for k, v in selector.items())


def _exported_to(doc_namespace: str, export_to: Sequence[str] | None, namespace: str) -> bool:
    """Whether an object of ``doc_namespace`` with ``exportTo`` is visible in ``namespace``."""
    if not export_to:
        return True
    return "*" in export_to or namespace in export_to or ("." in export_to and doc_namespace == namespace)


def convergence_markers(
    documents: Sequence[Mapping[str, Any]],
    namespace: str,
    *,
    gateway_labels: Mapping[str, str] | None = None,
) -> list[ConfigMarker]:
    """What the target's sidecar and the egress gateway must hold once ``documents`` reached them.

    * ServiceEntry: the sidecar has a cluster ``outbound|<port>||<host>`` per host and port;
    * DestinationRule of the run namespace (without workloadSelector): the sidecar has a cluster
      built with it;
    * VirtualService with ``http`` routes: a route built from it in the sidecar (gateways ``mesh`` or
      none) and in the egress gateway (a Gateway of ``documents`` whose selector matches
      ``gateway_labels``). ``tls``/``tcp`` routes carry no such name, so they add no marker.
    * AuthorizationPolicy in the gateway's namespace selecting the egress gateway: the gateway's RBAC
      filter holds a policy ``ns[<ns>]-policy[<name>]-rule[<i>]`` (Istio's name for each rule);
    * HTTPRoute (Gateway API) of the namespace: a route Istio built from it, named after a
      VirtualService of the namespace, in the sidecar (a ServiceEntry or Service parent) or in the
      gateway (a Gateway parent).

    Other kinds (TLSRoute, Sidecar, other policies) add no marker.
    """
    labels = gateway_labels or {"istio": "egressgateway"}
    egress_gateways = _egress_gateway_names(documents, namespace, labels)
    markers: list[ConfigMarker] = []
    for doc in documents:
        meta = doc.get("metadata") or {}
        ns = meta.get("namespace") or namespace
        spec = doc.get("spec") or {}
        api_version = str(doc.get("apiVersion", ""))
        kind, name = str(doc.get("kind")), str(meta.get("name"))
        if api_version.startswith("security.istio.io/") and kind == "AuthorizationPolicy":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if ns == ISTIO_NAMESPACE and _selects(selector, labels):
                markers.append(
                    ConfigMarker(
                        "gateway",
                        f"-policy[{name}]-rule[",
                        f"AuthorizationPolicy {ns}/{name} (egress gateway)",
                    )
                )
            continue
        if api_version.startswith(f"{GATEWAY_API_GROUP}/") and kind == "HTTPRoute" and ns == namespace:
            markers += _gateway_api_markers(name, ns, spec)
            continue
        if not api_version.startswith("networking.istio.io/"):
            continue
        if _exported_to(ns, spec.get("exportTo"), namespace):
            markers += _markers_of(kind, name, ns, spec, namespace=namespace, egress_gateways=egress_gateways)
    return markers


def _gateway_api_markers(name: str, ns: str, spec: Mapping[str, Any]) -> list[ConfigMarker]:
    # Istio turns an HTTPRoute into VirtualServices of the same namespace with generated names (the
    # scheme changed between releases), so the marker is the namespace's VirtualService path prefix.
    needle = f"/namespaces/{ns}/virtual-service/"
    kinds = {str((ref or {}).get("kind") or "Gateway") for ref in spec.get("parentRefs") or []}
    markers = []
    if kinds & {"ServiceEntry", "Service"}:
        markers.append(ConfigMarker("sidecar", needle, f"HTTPRoute {ns}/{name} (mesh)"))
    if "Gateway" in kinds:
        markers.append(ConfigMarker("gateway", needle, f"HTTPRoute {ns}/{name} (gateway)"))
    return markers


def _egress_gateway_names(
    documents: Sequence[Mapping[str, Any]], namespace: str, labels: Mapping[str, str]
) -> set[str]:
    """``ns/name`` (and ``name`` in the run namespace) of the Istio Gateways that select the egress gateway."""
    names: set[str] = set()
    for doc in documents:
        if doc.get("kind") == "Gateway" and str(doc.get("apiVersion", "")).startswith("networking.istio.io/"):
            meta = doc.get("metadata") or {}
            if _selects((doc.get("spec") or {}).get("selector") or {}, labels):
                ns = meta.get("namespace") or namespace
                names.update({f"{ns}/{meta['name']}", *([meta["name"]] if ns == namespace else [])})
    return names


def _markers_of(
    kind: str, name: str, ns: str, spec: Mapping[str, Any], *, namespace: str, egress_gateways: set[str]
) -> list[ConfigMarker]:
    markers: list[ConfigMarker] = []
    if kind == "ServiceEntry" and not spec.get("workloadSelector"):
        for host in spec.get("hosts") or []:
            for port in spec.get("ports") or []:
                cluster = f"outbound|{port.get('number')}||{host}"
                markers.append(
                    ConfigMarker("sidecar", f'"{cluster}"', f"cluster {cluster} (ServiceEntry {name})")
                )
    elif kind == "DestinationRule" and ns == namespace and not spec.get("workloadSelector"):
        # which proxies take a rule from another namespace (root namespace, exportTo, selectors)
        # depends on rules this does not model: only the run namespace's own rules are awaited
        markers.append(ConfigMarker("sidecar", _config_path(ns, kind, name), f"DestinationRule {ns}/{name}"))
    elif kind == "VirtualService" and spec.get("http"):
        # only HTTP routes carry the object's name in their metadata; tls/tcp routes add no marker
        gateways = list(spec.get("gateways") or ["mesh"])
        needle = _config_path(ns, kind, name)
        if "mesh" in gateways:
            markers.append(ConfigMarker("sidecar", needle, f"VirtualService {ns}/{name} (mesh)"))
        if any(g in egress_gateways or f"{ns}/{g}" in egress_gateways for g in gateways if g != "mesh"):
            markers.append(ConfigMarker("gateway", needle, f"VirtualService {ns}/{name} (egress gateway)"))
    return markers


def missing_markers(
    markers: Sequence[ConfigMarker], dumps: Mapping[ProxyKind, Sequence[str]], *, present: bool = True
) -> list[ConfigMarker]:
    """The markers not yet (``present``) or still (not ``present``) in every dump of their proxy kind."""
    out: list[ConfigMarker] = []
    for marker in markers:
        texts = dumps.get(marker.proxy) or []
        if not texts:
            # no proxy to hold it: not there yet, and nothing left to drop it
            if present:
                out.append(marker)
            continue
        if (present and not all(marker.needle in t for t in texts)) or (
            not present and any(marker.needle in t for t in texts)
        ):
            out.append(marker)
    return out


# --- istioctl analyze -----------------------------------------------------------------------------

_ANALYZE_LINE = re.compile(r"^(Error|Warning|Warn|Info)\s*\[(IST\d{4})\]\s*(?:\((.*?)\))?\s*(.*)$")
#: Without the cluster, references to what lives there (the gateway pods, istio-system services) are
#: unresolved by design (the docs: a file-only analysis expects a self-contained set of files).
FILE_ONLY_TOLERATED: frozenset[str] = frozenset({"IST0101"})


@dataclass(frozen=True)
class AnalyzeFinding:
    level: str
    code: str
    origin: str
    message: str

    def __str__(self) -> str:
        return f"{self.level} [{self.code}] ({self.origin}) {self.message}"


def parse_analyze(output: str) -> list[AnalyzeFinding]:
    """The messages of ``istioctl analyze`` (its default ``log`` output)."""
    found: list[AnalyzeFinding] = []
    for line in output.splitlines():
        m = _ANALYZE_LINE.match(line.strip())
        if m:
            level = "Warning" if m.group(1) == "Warn" else m.group(1)
            found.append(AnalyzeFinding(level, m.group(2), m.group(3) or "", m.group(4)))
    return found


def analyze(
    istioctl: str,
    files: Sequence[Path],
    *,
    kubeconfig: Path,
    context: str | None,
    namespace: str,
    mode: AnalyzeMode = "cluster",
    timeout_s: float = ISTIOCTL_TIMEOUT_S,
) -> list[AnalyzeFinding]:
    """Run ``istioctl analyze`` on ``files``: with the live cluster (``cluster``) or on the files alone.

    Raises AnalyzeError for Error-level findings (file-only: except unresolved references); returns
    every finding otherwise.
    """
    argv = [istioctl, "analyze", *kube_target_args(kubeconfig, context), "-n", namespace]
    if mode == "files":
        argv.append("--use-kube=false")
    argv += [str(f) for f in files]
    done = run(argv, timeout=timeout_s, check=False)
    output = f"{done.stdout}\n{done.stderr}"
    findings = parse_analyze(output)
    tolerated = FILE_ONLY_TOLERATED if mode == "files" else frozenset()
    errors = [f for f in findings if f.level == "Error" and f.code not in tolerated]
    if errors or (done.returncode != 0 and not findings):
        raise AnalyzeError(errors, output, files)
    return findings


# --- a scenario on the cluster --------------------------------------------------------------------


@dataclass
class AppliedScenario:
    scenario: Any
    rendered: Any
    manifest: Path
    refs: list[ObjectRef]
    markers: list[ConfigMarker]
    findings: list[AnalyzeFinding] = field(default_factory=list)
    converged_s: float = 0.0
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


# --- the Gateway API CRDs -------------------------------------------------------------------------

CRD_API_VERSION = "apiextensions.k8s.io/v1"


def _crd_resource(kube: Any) -> Any:
    return kube.dynamic.resources.get(api_version=CRD_API_VERSION, kind="CustomResourceDefinition")


def crd_exists(kube: Any, name: str) -> bool:
    """Whether the CustomResourceDefinition ``name`` is installed."""
    from harness.cluster.kube import REQUEST_TIMEOUT_S

    try:
        _crd_resource(kube).get(name=name, _request_timeout=REQUEST_TIMEOUT_S)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return False
        raise
    return True


def crd_established(crd: Mapping[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def gateway_api_url() -> str:
    return os.environ.get(GATEWAY_API_URL_ENV) or GATEWAY_API_CRDS_URL


def fetch_gateway_api_crds(
    url: str, cache: Path | None = None, *, timeout_s: float = GATEWAY_API_DOWNLOAD_TIMEOUT_S
) -> str:
    """The Gateway API install manifest at ``url`` (cached in ``cache`` once fetched)."""
    if cache is not None and cache.is_file():
        return cache.read_text(encoding="utf-8")
    progress(f"downloading the Gateway API CRDs {url}")
    try:
        response = httpx.get(url, follow_redirects=True, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise E2EError(
            f"could not download the Gateway API CRDs from {url}: {exc} (set {GATEWAY_API_URL_ENV} to a mirror)"
        ) from exc
    text = response.text
    if "kind: CustomResourceDefinition" not in text:
        raise E2EError(f"{url} holds no CustomResourceDefinition: is it a Gateway API install manifest?")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", dir=cache.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, cache)
    return text


def gateway_api_cache(url: str) -> Path:
    return tools.default_cache_dir().parent / "gateway-api" / GATEWAY_API_VERSION / Path(url).name


class GatewayApiCrds:
    """The Gateway API CRDs on the cluster: installed (server-side apply) when missing, awaited until
    established, and removed again on exit only when installed here and ``remove()`` still says so
    (not for a cluster that is deleted anyway, nor when anything is kept)."""

    def __init__(
        self,
        kube: Any,
        *,
        url: str | None = None,
        cache: Path | None = None,
        keep: bool = False,
        remove: Callable[[], bool] = lambda: True,
        timeout_s: float = CRD_ESTABLISHED_TIMEOUT_S,
    ) -> None:
        self.kube = kube
        self.url = url or gateway_api_url()
        self.cache = cache
        self.keep = keep
        self.remove = remove
        self.timeout_s = timeout_s
        self.refs: list[ObjectRef] = []

    @property
    def installed(self) -> bool:
        return bool(self.refs)

    def install(self) -> GatewayApiCrds:
        if crd_exists(self.kube, GATEWAY_API_PROBE_CRD):
            progress("the Gateway API CRDs are installed already; used as they are (never removed)")
            return self
        text = fetch_gateway_api_crds(self.url, self.cache)
        progress(f"installing the Gateway API CRDs {GATEWAY_API_VERSION} (server-side apply)")
        try:
            self.refs = self.kube.apply(text)
            self.wait_established([r.name for r in self.refs if r.kind == "CustomResourceDefinition"])
        except BaseException:
            self.uninstall()
            raise
        return self

    def wait_established(self, names: Sequence[str]) -> None:
        from harness.cluster.kube import REQUEST_TIMEOUT_S

        resource = _crd_resource(self.kube)

        def pending() -> list[str]:
            out = []
            for name in names:
                found = resource.get(name=name, _request_timeout=REQUEST_TIMEOUT_S)
                body = found.to_dict() if hasattr(found, "to_dict") else dict(found)
                if not crd_established(body):
                    out.append(name)
            return out

        try:
            wait_until(
                pending,
                lambda left: RolloutCheck(not left, "not established yet: " + ", ".join(left)),
                what="Gateway API CRDs",
                deadline_s=self.timeout_s,
                interval_s=1.0,
            )
        except WaitTimeoutError as exc:
            raise E2EError(str(exc)) from exc

    def uninstall(self) -> None:
        if self.refs:
            progress("removing the Gateway API CRDs installed by this run")
            self.kube.delete_objects(self.refs)
            self.refs = []

    def __enter__(self) -> GatewayApiCrds:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        if not self.installed:
            return
        if self.keep or not self.remove():
            progress("leaving the Gateway API CRDs in place")
            return
        self.uninstall()


# --- the state of a run made by `egress-harness e2e up` --------------------------------------------

RUN_STATE_SCHEMA: Final = "istio-egress-harness/run-state"
RUN_STATE_VERSION: Final = 1
RUN_STATE_FILE: Final = "run-state.json"
RUN_STATE_ENV: Final = "EGRESS_HARNESS_RUN_STATE"


class RunStateError(E2EError):
    """A run state file cannot be read; the message names the file and the field."""


class _StateReader:
    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def _fail(self, name: str, what: str) -> RunStateError:
        return RunStateError(f"{self.where}: field {name!r}: {what}")

    def text(self, name: str, *, optional: bool = False) -> str:
        value = self.data.get(name)
        if optional and value in (None, ""):
            return ""
        if not isinstance(value, str) or not value:
            raise self._fail(name, f"expected a non-empty string, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            raise self._fail(name, f"expected true or false, got {value!r}")
        return value

    def integer(self, name: str) -> int:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(name, f"expected an integer, got {value!r}")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.integer(name)

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def choice(self, name: str, choices: Sequence[str]) -> str:
        value = self.text(name)
        if value not in choices:
            raise self._fail(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def mapping(self, name: str) -> Mapping[str, Any] | None:
        value = self.data.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise self._fail(name, f"expected an object or null, got {value!r}")
        return value


@dataclass(frozen=True)
class RecorderState:
    """The recorder container of a run: enough to read its records from another process."""

    name: str
    image: str
    network: str
    port: int
    aliases: tuple[str, ...]
    serves: tuple[str, ...] = RECORDER_SERVES_DEFAULT
    #: where it serves HTTPS (None: plain HTTP only)
    tls_port: int | None = None

    def handle(self) -> RecorderContainer:
        """A handle on the running container (nothing is started; do not enter it)."""
        recorder = RecorderContainer(
            self.image, network=self.network, alias=self.aliases[0] if self.aliases else EXTERNAL_ALIAS,
            port=self.port, name=self.name,
        )  # fmt: skip
        recorder.aliases = list(self.aliases)
        recorder.tls_port = self.tls_port
        return recorder

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "network": self.network,
            "port": self.port,
            "aliases": list(self.aliases),
            "serves": list(self.serves),
            "tls_port": self.tls_port,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str, what: str = "recorder") -> RecorderState:
        r = _StateReader(data, f"{where}: {what}")
        return cls(
            name=r.text("name"),
            image=r.text("image"),
            network=r.text("network"),
            port=r.integer("port"),
            aliases=r.texts("aliases"),
            serves=r.texts("serves") or RECORDER_SERVES_DEFAULT,
            tls_port=r.optional_integer("tls_port"),
        )


def recorder_container(
    image: str,
    *,
    run_id: str,
    host: str = EXTERNAL_ALIAS,
    port: int = 80,
    aliases: Iterable[str] = (),
    pki: TestPKI | None = None,
) -> RecorderContainer:
    """The recorder as the run's external host on kind's network: HTTP on ``port``, with ``pki`` also
    HTTPS on :data:`EXTERNAL_TLS_PORT` with the run's server certificate (no client certificates
    asked). Docker takes a container's aliases when it joins the network: all of them, up front."""
    return RecorderContainer(
        image,
        network=KIND_NETWORK,
        alias=host,
        port=port,
        aliases=list(aliases),
        tls=RecorderTLS.from_pki(pki) if pki is not None else None,
        tls_port=EXTERNAL_TLS_PORT,
        owner=f"e2e-{run_id}",
        labels={RUN_LABEL: run_id},
    )


def mtls_recorder_container(
    image: str, pki: TestPKI, *, run_id: str, port: int = 80, aliases: Iterable[str] = ()
) -> RecorderContainer:
    """The recorder that requires client certificates of the run's CA on :data:`EXTERNAL_TLS_PORT`
    (HTTP on ``port`` for its control API), under :data:`MTLS_ALIAS` and ``aliases``
    (:func:`mtls_recorder_aliases`)."""
    return RecorderContainer(
        image,
        network=KIND_NETWORK,
        alias=MTLS_ALIAS,
        port=port,
        aliases=list(aliases),
        tls=RecorderTLS.from_pki(pki, mutual=True),
        tls_port=EXTERNAL_TLS_PORT,
        name=f"egress-harness-mtls-recorder-{secrets.token_hex(4)}",
        owner=f"e2e-{run_id}",
        labels={RUN_LABEL: run_id},
    )


def recorder_state(recorder: RecorderContainer) -> RecorderState:
    """What another process needs to read ``recorder``'s records (and what it serves)."""
    return RecorderState(
        name=recorder.name,
        image=recorder.image,
        network=recorder.network_name,
        port=recorder.port,
        aliases=tuple(recorder.aliases),
        serves=recorder_serves(recorder),
        tls_port=recorder.tls_port,
    )


@dataclass(frozen=True)
class RunState:
    """What ``e2e up`` made and how to reach it; ``e2e down`` removes what it says was created."""

    run_id: str
    run_dir: Path
    kubeconfig: Path
    context: str | None
    #: ``kind``: the harness's kind cluster (``cluster_name``); ``existing``: a cluster only visited
    cluster: Literal["kind", "existing"]
    cluster_name: str | None
    cluster_created: bool
    istio_version: str
    istio_installed: bool
    access_log_encoding: str
    outbound_traffic_policy: str
    ingress_url: str
    #: the run namespace: the relays behind ``/proxy`` and the shared ingress Gateway
    namespace: str
    namespace_created: bool
    ingress_gateway: str
    relay_image: str
    external: str
    external_host: str
    pod_source_nat: bool
    #: the Gateway API CRDs are on the cluster; ``gateway_api_objects`` were installed by ``up``
    gateway_api: bool = False
    gateway_api_objects: tuple[ObjectRef, ...] = ()
    recorder: RecorderState | None = None
    created: str = ""
    #: the run's PKI (harness.common.certs files), which attached workers read for Secrets and evidence
    pki_dir: Path | None = None
    #: the recorder that requires client certificates (``requires.external: mtls``)
    mtls_recorder: RecorderState | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / RUN_STATE_FILE

    def options(self, base: E2EOptions | None = None) -> E2EOptions:
        """``base`` (default options) with what this run was made with."""
        return dataclasses.replace(
            base or E2EOptions(istio_version=self.istio_version),
            istio_version=self.istio_version,
            access_log_encoding=self.access_log_encoding,
            outbound_traffic_policy=self.outbound_traffic_policy,
            external="internet" if self.external == "internet" else "container",
            external_host=self.external_host,
            pod_source_nat=self.pod_source_nat,
            relay_image=self.relay_image,
            ingress_url=self.ingress_url,
            gateway_api=False,
        )

    def cluster_handle(self) -> KindCluster | ExistingCluster:
        """The cluster as an object that does not own it (never created or deleted through it)."""
        if self.cluster == "kind" and self.cluster_name and self.kubeconfig.name == "kubeconfig":
            cached = tools.cached_path("kind", versions.KIND_VERSION)
            kind = str(cached) if cached.is_file() else "kind"
            return KindCluster(self.cluster_name, self.kubeconfig.parent, kind=kind)
        return ExistingCluster(self.kubeconfig, self.context)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RUN_STATE_SCHEMA,
            "schema_version": RUN_STATE_VERSION,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "kubeconfig": str(self.kubeconfig),
            "context": self.context,
            "cluster": self.cluster,
            "cluster_name": self.cluster_name,
            "cluster_created": self.cluster_created,
            "istio_version": self.istio_version,
            "istio_installed": self.istio_installed,
            "access_log_encoding": self.access_log_encoding,
            "outbound_traffic_policy": self.outbound_traffic_policy,
            "ingress_url": self.ingress_url,
            "namespace": self.namespace,
            "namespace_created": self.namespace_created,
            "ingress_gateway": self.ingress_gateway,
            "relay_image": self.relay_image,
            "external": self.external,
            "external_host": self.external_host,
            "pod_source_nat": self.pod_source_nat,
            "gateway_api": self.gateway_api,
            "gateway_api_objects": [
                {"api_version": r.api_version, "kind": r.kind, "name": r.name}
                for r in self.gateway_api_objects
            ],
            "recorder": self.recorder.to_dict() if self.recorder is not None else None,
            "mtls_recorder": self.mtls_recorder.to_dict() if self.mtls_recorder is not None else None,
            "pki_dir": str(self.pki_dir) if self.pki_dir is not None else None,
            "created": self.created,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "run state") -> RunState:
        if not isinstance(data, Mapping):
            raise RunStateError(f"{where}: a run state is one JSON object, not {type(data).__name__}")
        if data.get("schema") != RUN_STATE_SCHEMA:
            raise RunStateError(
                f"{where}: field 'schema': expected {RUN_STATE_SCHEMA!r}, got {data.get('schema')!r}"
            )
        if data.get("schema_version") != RUN_STATE_VERSION:
            raise RunStateError(
                f"{where}: field 'schema_version': {data.get('schema_version')!r} is not supported "
                f"(this harness reads version {RUN_STATE_VERSION})"
            )
        r = _StateReader(data, where)
        objects = []
        raw = data.get("gateway_api_objects", [])
        if not isinstance(raw, list):
            raise RunStateError(f"{where}: field 'gateway_api_objects': expected a list, got {raw!r}")
        for index, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise RunStateError(f"{where}: field 'gateway_api_objects[{index}]': expected an object")
            o = _StateReader(item, f"{where}: gateway_api_objects[{index}]")
            objects.append(ObjectRef(o.text("api_version"), o.text("kind"), o.text("name"), None))
        recorder = r.mapping("recorder")
        mtls_recorder = r.mapping("mtls_recorder")
        pki_dir = r.text("pki_dir", optional=True)
        cluster = r.choice("cluster", ("kind", "existing"))
        return cls(
            run_id=r.text("run_id"),
            run_dir=Path(r.text("run_dir")),
            kubeconfig=Path(r.text("kubeconfig")),
            context=r.text("context", optional=True) or None,
            cluster="kind" if cluster == "kind" else "existing",
            cluster_name=r.text("cluster_name", optional=True) or None,
            cluster_created=r.flag("cluster_created"),
            istio_version=r.text("istio_version"),
            istio_installed=r.flag("istio_installed"),
            access_log_encoding=r.choice("access_log_encoding", ("TEXT", "JSON")),
            outbound_traffic_policy=r.choice("outbound_traffic_policy", ("ALLOW_ANY", "REGISTRY_ONLY")),
            ingress_url=r.text("ingress_url"),
            namespace=r.text("namespace"),
            namespace_created=r.flag("namespace_created"),
            ingress_gateway=r.text("ingress_gateway"),
            relay_image=r.text("relay_image"),
            external=r.choice("external", EXTERNAL_MODES),
            external_host=r.text("external_host"),
            pod_source_nat=r.flag("pod_source_nat"),
            gateway_api=r.flag("gateway_api"),
            gateway_api_objects=tuple(objects),
            recorder=RecorderState.from_dict(recorder, where) if recorder is not None else None,
            created=r.text("created", optional=True),
            pki_dir=Path(pki_dir) if pki_dir else None,
            mtls_recorder=RecorderState.from_dict(mtls_recorder, where, "mtls_recorder")
            if mtls_recorder is not None
            else None,
        )

    @classmethod
    def load(cls, path: Path) -> RunState:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunStateError(f"{path}: cannot read the run state: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RunStateError(f"{path}: not JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    def save(self, path: Path | None = None) -> Path:
        """Write the state atomically (a reader never sees half a file)."""
        target = path or self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def _close_docker_client(recorder: Any) -> None:
    """Close a recorder handle's Docker client without touching the container."""
    client = getattr(recorder, "_client", None)
    if client is not None and getattr(recorder, "_own_client", False):
        client.close()
        recorder._client = None


# --- the run --------------------------------------------------------------------------------------


class E2ERun:
    """One run of the cluster tier (see the module docstring); use as a context manager.

    With ``state`` it attaches to a run made by ``egress-harness e2e up``: it connects to that
    cluster and recorder and creates or deletes nothing but what scenarios make.
    """

    def __init__(
        self, options: E2EOptions, run_dir: Path, *, run_id: str | None = None, state: RunState | None = None
    ) -> None:
        if state is not None:
            options = state.options(options)
            run_id = state.run_id
        self.options = options
        self.state = state
        self.run_dir = run_dir
        self.run_id = run_id or new_run_id()
        self.namespace = state.namespace if state is not None else f"egress-{self.run_id}"
        self.started_at = datetime.now(UTC)
        self.cluster: KindCluster | ExistingCluster | None = None
        self.istio: IstioInstall | None = None
        self.kube: Kube | None = None
        self.recorder: RecorderContainer | None = None
        #: the recorder that requires client certificates (with the PKI, container mode)
        self.mtls_recorder: RecorderContainer | None = None
        #: the run's certificates (container mode with external_tls; read back when attached)
        self.pki: TestPKI | None = None
        self.relays: RelayApps | None = None
        self.gateway_api_crds: GatewayApiCrds | None = None
        self.istioctl: str | None = None
        self.ingress_url = ""
        self.timings: dict[str, float] = {}
        self.applied: list[AppliedScenario] = []
        self.failed = False
        #: seconds between two reads of the proxies' configuration while waiting for a scenario
        self.converge_interval_s = CONVERGE_INTERVAL_S
        #: the hosts scenarios render with, and where the ingress reaches this namespace's proxy
        self.external_host = options.host
        self.unregistered_host = UNREGISTERED_ALIAS
        #: the external host of a scenario that needs mutual TLS (a name of the mTLS recorder)
        self.mtls_host = MTLS_ALIAS
        self.ingress_path = INGRESS_PATH
        self.ingress_gateway = (
            state.ingress_gateway if state is not None else f"{self.namespace}/{INGRESS_GATEWAY_NAME}"
        )
        self.relay_image = options.relay_image or RELAY_IMAGE
        self.relay_manifest: Path | None = None
        #: whether the cluster has the Gateway API CRDs (known once the run started)
        self.gateway_api_present = False
        #: the run this one is a view of (:meth:`scoped`), None for the run itself
        self.parent: E2ERun | None = None
        self._detached = False
        self._traffic: Traffic | None = None
        self._recorder_image: str | None = None
        self._stack = contextlib.ExitStack()

    # lifecycle

    def __enter__(self) -> E2ERun:
        if self.parent is not None:
            raise E2EError("a scoped view of a run is not a context manager; enter the run itself")
        try:
            self.start()
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.mark_failed()
        self._stack.__exit__(exc_type, exc, tb)

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[step] = round(time.monotonic() - started, 3)
        progress(f"{step}: {self.timings[step]:.1f}s")

    @property
    def attached(self) -> bool:
        return self.state is not None

    def start(self) -> E2ERun:
        if self.state is not None:
            return self._attach(self.state)
        o = self.options
        problems = o.problems()
        if problems:
            raise E2EError("cannot run the cluster tier with these options: " + "; ".join(problems))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        progress(
            f"e2e run {self.run_id}: Istio {o.istio_version}, namespace {self.namespace}, run dir {self.run_dir}"
        )
        self.istioctl = str(tools.ensure_tool("istioctl", o.istio_version))
        with self._timed("cluster"):
            cluster = self.make_cluster()
            self._stack.enter_context(cluster)
            self.cluster = cluster
        self.kube = self._stack.enter_context(Kube(cluster.kubeconfig, cluster.context))
        if o.gateway_api:
            # before Istio, so that istiod finds the Gateway API kinds when it starts
            with self._timed("gateway api"):
                self.gateway_api_crds = self._stack.enter_context(
                    GatewayApiCrds(
                        self.kube,
                        cache=gateway_api_cache(gateway_api_url()),
                        keep=o.keep_cluster,
                        remove=self._remove_cluster_objects,
                    )
                )
        with self._timed("istio"):
            self.istio = self._stack.enter_context(
                IstioInstall(
                    cluster.kubeconfig,
                    self.run_dir,
                    context=self.cluster.context,
                    istioctl=self.istioctl,
                    version=o.istio_version,
                    access_log_encoding="JSON" if o.access_log_encoding == "JSON" else "TEXT",
                    outbound_traffic_policy="REGISTRY_ONLY"
                    if o.outbound_traffic_policy == "REGISTRY_ONLY"
                    else "ALLOW_ANY",
                    use_existing=o.reuse_cluster or o.existing_cluster,
                    keep=o.keep_cluster,
                )
            )
        self.gateway_api_present = self.gateway_api_crds is not None or self._probe_gateway_api()
        if o.external == "container":
            if o.external_tls:
                with self._timed("certificates"):
                    self._stack.callback(self._remove_pki)
                    self.pki = self.make_pki()
            with self._timed("external host"):
                self.recorder = self._stack.enter_context(self._owned_recorder(self.make_recorder()))
                self.check_alias_resolves(self.recorder.alias)
                if self.pki is not None:
                    self.mtls_recorder = self._stack.enter_context(
                        self._owned_recorder(self.make_mtls_recorder())
                    )
                    self.check_alias_resolves(self.mtls_recorder.alias)
        self._stack.enter_context(self.run_namespace())
        with self._timed("relay apps"):
            self.relay_image = o.relay_image or prepare_relay_image(
                self.cluster if isinstance(self.cluster, KindCluster) else None,
                tag=RELAY_IMAGE,
                mode=o.image_build_mode,
            )
            self.relays = self._stack.enter_context(
                RelayApps(
                    self.kube, self.namespace, image=self.relay_image, keep=o.keep_cluster, ca_pem=self.ca_pem
                )
            )
            self.relay_manifest = self.relays.save(self.run_dir / "manifests")
        self._traffic = self._stack.enter_context(Traffic())
        self.ingress_url = (
            o.ingress_url or f"http://127.0.0.1:{getattr(self.cluster, 'ingress_host_port', 80)}"
        )
        with self._timed("chain ready"):
            ready = self.wait_chain_ready()
        progress(f"the chain answers through {self.ingress_url} (after {ready.attempts} attempts)")
        return self

    def _probe_gateway_api(self) -> bool:
        try:
            return crd_exists(self._kube(), GATEWAY_API_PROBE_CRD)
        except Exception as exc:  # e.g. no right to read CRDs on a shared cluster
            progress(
                f"could not tell whether the Gateway API CRDs are installed ({type(exc).__name__}: {exc}); "
                "the Gateway API scenarios will be skipped"
            )
            return False

    def _attach(self, state: RunState) -> E2ERun:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        progress(
            f"e2e run {self.run_id}: attaching to the run in {state.run_dir} (Istio {state.istio_version}, "
            f"namespace {self.namespace}, ingress {state.ingress_url}); nothing of it is created or deleted here"
        )
        self.istioctl = str(tools.ensure_tool("istioctl", state.istio_version))
        self.cluster = state.cluster_handle()
        self.kube = self._stack.enter_context(Kube(state.kubeconfig, state.context))
        if state.recorder is not None:
            self.recorder = state.recorder.handle()
            self._stack.callback(_close_docker_client, self.recorder)
        if state.mtls_recorder is not None:
            self.mtls_recorder = state.mtls_recorder.handle()
            self._stack.callback(_close_docker_client, self.mtls_recorder)
        if state.pki_dir is not None:
            self.pki = load_pki(state.pki_dir)
        self._traffic = self._stack.enter_context(Traffic())
        self.ingress_url = state.ingress_url
        self.gateway_api_present = state.gateway_api
        return self

    def make_cluster(self) -> KindCluster | ExistingCluster:
        o = self.options
        if o.kubeconfig is not None:
            return ExistingCluster(o.kubeconfig, o.context)
        kind = tools.ensure_tool("kind", versions.KIND_VERSION)
        return KindCluster(
            o.cluster_name,
            self.run_dir,
            kind=kind,
            reuse=o.reuse_cluster,
            keep=o.keep_cluster,
            keep_on_failure=o.keep_on_failure,
        )

    def make_pki(self) -> TestPKI:
        """The run's CA, server and client certificates in ``<run dir>/pki``: the server certificate
        names every alias of both recorders and ``*.<domain>`` (:func:`pki_server_names`)."""
        o = self.options
        names = pki_server_names(o.host, o.recorder_aliases, o.mtls_aliases)
        progress(f"making the run's certificates ({len(names)} server names) in {self.run_dir / PKI_DIR}")
        try:
            return generate_pki(self.run_dir / PKI_DIR, names)
        except PkiError as exc:
            raise E2EError(
                f"the run's certificates could not be made: {exc} (without them: `e2e up --no-external-tls`, "
                "and the TLS scenarios are skipped)"
            ) from exc

    def _remove_pki(self) -> None:
        """The run's keys go with the run, unless it is kept or left running (``e2e up``)."""
        if self._detached or self._keeping():
            return
        shutil.rmtree(self.run_dir / PKI_DIR, ignore_errors=True)

    @property
    def ca_pem(self) -> bytes | None:
        """The run's CA certificate, which the relays trust (None without a PKI)."""
        return self.pki.ca.cert_pem if self.pki is not None else None

    def _image(self) -> str:
        if self._recorder_image is None:
            self._recorder_image = build_app_image(
                "recorder", RECORDER_IMAGE, mode=self.options.image_build_mode
            )
        return self._recorder_image

    def make_recorder(self) -> RecorderContainer:
        """The external host (:func:`recorder_container`) under the host's alias, the unregistered
        alias and the catalog's; with the PKI it also serves HTTPS."""
        o = self.options
        return recorder_container(
            self._image(),
            run_id=self.run_id,
            host=o.host,
            port=o.external_port,
            aliases=[UNREGISTERED_ALIAS, *o.recorder_aliases],
            pki=self.pki,
        )

    def make_mtls_recorder(self) -> RecorderContainer:
        """The external host that requires client certificates (:func:`mtls_recorder_container`)."""
        if self.pki is None:
            raise E2EError("the mutual-TLS recorder needs the run's PKI")
        return mtls_recorder_container(
            self._image(),
            self.pki,
            run_id=self.run_id,
            port=self.options.external_port,
            aliases=self.options.mtls_aliases,
        )

    @contextlib.contextmanager
    def _owned_recorder(self, recorder: RecorderContainer) -> Iterator[RecorderContainer]:
        """The recorder, removed on exit unless the run was detached (``e2e up`` leaves it running)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(recorder)
            try:
                yield recorder
            finally:
                if self._detached:
                    stack.pop_all()
                    _close_docker_client(recorder)

    def check_alias_resolves(self, alias: str) -> None:
        """The alias resolves on the kind node (the resolver CoreDNS forwards to); else fail early."""
        if not isinstance(self.cluster, KindCluster):
            return
        node = f"{self.cluster.name}-control-plane"
        done = run(
            ["docker", "exec", node, "getent", "ahostsv4", alias], timeout=DNS_CHECK_TIMEOUT_S, check=False
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise E2EError(
                f"{alias} does not resolve on the kind node {node} (exit {done.returncode}): the recorder is not "
                f"reachable by name from the cluster; is it on the Docker network {KIND_NETWORK!r}?"
            )
        progress(f"{alias} resolves on {node}: {done.stdout.split()[0]}")

    @contextlib.contextmanager
    def run_namespace(self) -> Iterator[str]:
        kube = self._kube()
        kube.create_namespace(self.namespace, {**INJECTION_LABELS, RUN_LABEL: self.run_id})
        try:
            yield self.namespace
        finally:
            if self._keeping() or self._detached:
                progress(f"keeping namespace {self.namespace}")
            else:
                kube.delete_namespace(self.namespace)

    def _keeping(self) -> bool:
        return self.options.keep_cluster or (self.failed and self.options.keep_on_failure)

    def _remove_cluster_objects(self) -> bool:
        """Whether cluster-wide objects of the run must be removed one by one on exit: not when kept,
        and not when the run's own kind cluster is deleted anyway."""
        if self._keeping() or self._detached:
            return False
        return not (isinstance(self.cluster, KindCluster) and self.cluster.created and not self.cluster.keep)

    def mark_failed(self) -> None:
        """A test of this run failed: with keep-on-failure, keep everything for a look."""
        self.failed = True
        if self.options.keep_on_failure:
            if isinstance(self.cluster, KindCluster):
                self.cluster.keep = True
            for part in (self.istio, self.relays, self.gateway_api_crds):
                if part is not None:
                    part.keep = True

    def detach(self) -> None:
        """Leave everything of this run in place when it exits (``e2e up``); only connections close."""
        if self.attached or self.parent is not None:
            raise E2EError("only a run that made its parts can be detached from them")
        self._detached = True
        if isinstance(self.cluster, KindCluster):
            self.cluster.keep = True
        for part in (self.istio, self.relays, self.gateway_api_crds):
            if part is not None:
                part.keep = True

    def to_state(self) -> RunState:
        """What this (started) run made, for ``e2e up`` to hand over to other processes."""
        if self.cluster is None:
            raise E2EError("the run has not started")
        cluster = self.cluster
        recorder = recorder_state(self.recorder) if self.recorder is not None else None
        mtls = recorder_state(self.mtls_recorder) if self.mtls_recorder is not None else None
        return RunState(
            run_id=self.run_id,
            run_dir=self.run_dir.resolve(),
            kubeconfig=cluster.kubeconfig.resolve(),
            context=cluster.context,
            cluster="kind" if isinstance(cluster, KindCluster) else "existing",
            cluster_name=cluster.name if isinstance(cluster, KindCluster) else None,
            cluster_created=bool(getattr(cluster, "created", False)),
            istio_version=self.options.istio_version,
            istio_installed=bool(self.istio is not None and self.istio.installed_by_us),
            access_log_encoding=self.options.access_log_encoding,
            outbound_traffic_policy=self.options.outbound_traffic_policy,
            ingress_url=self.ingress_url,
            namespace=self.namespace,
            namespace_created=True,
            ingress_gateway=self.ingress_gateway,
            relay_image=self.relay_image,
            external=self.options.external,
            external_host=self.options.host,
            pod_source_nat=self.source_nat,
            gateway_api=self.gateway_api_present,
            gateway_api_objects=tuple(self.gateway_api_crds.refs) if self.gateway_api_crds else (),
            recorder=recorder,
            created=utc_now(),
            pki_dir=self.pki.directory.resolve() if self.pki is not None else None,
            mtls_recorder=mtls,
        )

    # views: one scenario namespace of the run

    @property
    def root(self) -> E2ERun:
        return self.parent if self.parent is not None else self

    def scoped(
        self,
        namespace: str,
        *,
        external_host: str,
        unregistered_host: str,
        mtls_host: str | None = None,
        ingress_path: str | None = None,
    ) -> E2ERun:
        """A view of this run for another namespace of it: same cluster, recorders, PKI and client,
        its own namespace, hosts and ingress path, and its own list of applied scenarios. It owns
        nothing."""
        view = copy.copy(self.root)
        view.parent = self.root
        view.namespace = namespace
        view.external_host = external_host
        view.unregistered_host = unregistered_host
        view.mtls_host = mtls_host or self.root.mtls_host
        view.ingress_path = ingress_path or ingress_prefix(namespace)
        view.applied = []
        view.relays = None
        view.relay_manifest = None
        view._stack = contextlib.ExitStack()
        return view

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
            self._traffic = self._stack.enter_context(Traffic())
        return self._traffic.send(url)

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
        destination = f"{scheme}://{host}:{port}{path}"
        url = chain_for(self.ingress_url, self.namespace, destination, ingress_path=self.ingress_path)
        result = send_until_answered(lambda: self._send(url), deadline_s=deadline_s)
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
        recorder: RecorderContainer | None = None,
    ) -> Record:
        """The record of ``request_id`` at the external host (``recorder``, default the run's
        recorder), whose caller is an egress gateway address."""
        recorder = recorder or self.recorder
        if recorder is None:
            raise E2EError("no recorder in this run (--external internet): the external host keeps no record")
        return expect_external_record(
            lambda: recorder.records(request_id),
            request_id,
            from_ips=self.gateway_callers(gateway),
            timeout=timeout,
        )

    def proxy_versions(self, gateway: ScenarioGateway | None = None) -> list[str]:
        """The Istio versions of the target's sidecar and the gateway (their istio-proxy image tags)."""
        from harness.upgrade import PROXY_CONTAINER, image_tag

        gw = gateway or DEFAULT_GATEWAY
        kube = self._kube()
        pods = kube.list_pods(self.namespace, f"app={TARGET_APP}") + kube.list_pods(gw.namespace, gw.selector)
        found: set[str] = set()
        for listed in pods:
            spec = listed.get("spec") or {}
            for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
                if container.get("name") == PROXY_CONTAINER:
                    found.add(image_tag(str(container.get("image") or "")) or "unknown")
        return sorted(found)

    # scenarios

    def render_context(self, scenario: Any | None = None) -> Any:
        """What templates render with in this namespace; for ``scenario``, its own credential names
        and, when its external host must require client certificates, the mTLS recorder's host."""
        from harness.scenarios import RenderContext

        mutual = scenario is not None and external_requirement(scenario) == "mtls"
        names = credential_names(self.namespace, scenario.name) if scenario is not None else {}
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

    def recorder_for(self, scenario: Any) -> RecorderContainer | None:
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
        if (
            needs.outbound_traffic_policy
            and needs.outbound_traffic_policy != self.options.outbound_traffic_policy
        ):
            return (
                f"needs outboundTrafficPolicy {needs.outbound_traffic_policy}; this run installed "
                f"{self.options.outbound_traffic_policy}"
            )
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
        """Render, preflight, apply, and wait until the proxies have the scenario's configuration."""
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
        findings: list[AnalyzeFinding] = []
        if self.options.analyze != "off" and self.istioctl:
            findings = analyze(
                self.istioctl,
                [manifest],
                kubeconfig=self.kubeconfig,
                context=self.context,
                namespace=self.namespace,
                mode=self.options.analyze,
            )
        progress(
            f"applying scenario {scenario.name} ({len(rendered.documents)} objects) into {self.namespace}"
        )
        kube = self._kube()
        credentials = credential_secrets(scenario, ctx, self.pki) if self.pki is not None else []
        secret_refs = self.create_credentials(credentials, scenario)
        try:
            refs = kube.apply(rendered.text, namespace=self.namespace)
        except BaseException:
            self.delete_credentials(secret_refs)
            raise
        documents = [d.body for d in rendered.documents]
        gateway = scenario_gateway(documents, self.namespace)
        markers = convergence_markers(documents, self.namespace, gateway_labels=gateway.labels)
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
        started = time.monotonic()
        if gateway.deployment:
            # a Gateway API Gateway: Istio deploys its proxy first
            kube.wait_rollout(gateway.namespace, gateway.deployment, deadline_s=wait_s)
        remaining = max(1.0, wait_s - (time.monotonic() - started))
        waited = self.wait_config(
            markers, present=True, deadline_s=remaining, what=scenario.name, gateway=gateway
        )
        if credentials:
            # the gateway asks for a credential once a cluster of the applied rules names it
            remaining = max(1.0, wait_s - (time.monotonic() - started))
            waited += self.wait_gateway_secrets(credentials, deadline_s=remaining, gateway=gateway)
        applied.converged_s = round(time.monotonic() - started, 3) if gateway.deployment else round(waited, 3)
        self.timings[f"converge:{self.namespace}:{scenario.name}"] = applied.converged_s
        if self.parent is None:
            self.timings[f"converge:{scenario.name}"] = applied.converged_s
        return applied

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
        kube = self._kube()
        labels = {RUN_LABEL: self.run_id, SCENARIO_LABEL: dns_label(scenario.name)}
        refs: list[ObjectRef] = []
        try:
            for credential in credentials:
                progress(f"creating {credential} for scenario {scenario.name}")
                refs += kube.apply(json.dumps(credential.manifest(labels)), namespace=credential.namespace)
        except BaseException:
            self.delete_credentials(refs)
            raise
        return refs

    def delete_credentials(self, refs: Sequence[ObjectRef]) -> None:
        if refs:
            progress("deleting " + ", ".join(f"Secret {r.namespace}/{r.name}" for r in refs))
            self._kube().delete_objects(list(refs))

    def secret_dump(self, pod: str, namespace: str) -> str:
        """``istioctl proxy-config secret <pod>.<ns> -o json``: the proxy's SDS secrets."""
        if not self.istioctl:
            raise E2EError("istioctl is needed to read a proxy's secrets")
        argv = [self.istioctl, "proxy-config", "secret", f"{pod}.{namespace}", "-o", "json"]
        argv += kube_target_args(self.kubeconfig, self.context)
        return run(argv, timeout=ISTIOCTL_TIMEOUT_S).stdout

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
        if not credentials:
            return 0.0
        gw = gateway or DEFAULT_GATEWAY
        wanted = [r for c in credentials for r in c.sds_resources]
        owner = {r: c for c in credentials for r in c.sds_resources}
        started = time.monotonic()

        def fetch() -> dict[str, dict[str, SdsState] | str]:
            out: dict[str, dict[str, SdsState] | str] = {}
            for listed in self._kube().list_pods(gw.namespace, gw.selector):
                pod = f"{listed['metadata']['name']}.{gw.namespace}"
                try:
                    out[pod] = sds_secret_states(self.secret_dump(listed["metadata"]["name"], gw.namespace))
                except ValueError as exc:
                    out[pod] = f"unreadable `istioctl proxy-config secret` output ({exc})"
            return out

        def decide(states: dict[str, dict[str, SdsState] | str]) -> RolloutCheck:
            if not states:
                return RolloutCheck(False, f"no gateway pod matches {gw.selector} in {gw.namespace}")
            missing = missing_sds_resources(wanted, states)
            if not missing:
                return RolloutCheck(True, "active")
            return RolloutCheck(
                False, "; ".join(f"{pod}: {res} {why} ({owner[res]})" for pod, res, why in missing)
            )

        names = ", ".join(str(c) for c in credentials)
        try:
            wait_until(
                fetch,
                decide,
                what=f"the gateway taking the credential {names}",
                deadline_s=deadline_s,
                interval_s=self.converge_interval_s if interval_s is None else interval_s,
            )
        except WaitTimeoutError as exc:
            raise ConvergenceError(
                f"{exc} (is the Secret complete, and in the namespace of the gateway's pods?)"
            ) from exc
        except CommandError as exc:
            raise ConvergenceError(f"could not read the gateway's secrets for {names}: {exc}") from exc
        took = round(time.monotonic() - started, 3)
        progress(f"the gateway holds {names} after {took:.1f}s")
        return took

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
        result = self.send_chain(request.host, request.port, request.path, scheme=request.scheme)
        since = result.sent_at - timedelta(seconds=LOG_SLACK_S)
        ref = RequestRef(request_id=result.request_id, host=request.host)
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
        gw = gateway or DEFAULT_GATEWAY
        kube = self._kube()
        sidecars = [
            (p["metadata"]["name"], self.namespace)
            for p in kube.list_pods(self.namespace, f"app={TARGET_APP}")
        ]
        gateways = [(p["metadata"]["name"], gw.namespace) for p in kube.list_pods(gw.namespace, gw.selector)]
        return {"sidecar": sidecars, "gateway": gateways}

    def config_dump(self, pod: str, namespace: str) -> str:
        """``istioctl proxy-config all <pod>.<ns> -o json``: the proxy's whole configuration."""
        if not self.istioctl:
            raise E2EError("istioctl is needed to read a proxy's configuration")
        argv = [
            self.istioctl,
            "proxy-config",
            "all",
            f"{pod}.{namespace}",
            "-o",
            "json",
            *kube_target_args(self.kubeconfig, self.context),
        ]
        return run(argv, timeout=ISTIOCTL_TIMEOUT_S).stdout

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
        if not markers:
            return 0.0
        started = time.monotonic()
        kinds = sorted({m.proxy for m in markers}, key=lambda k: (k != "sidecar", k))

        def fetch() -> list[ConfigMarker]:
            pods = self.proxy_pods(gateway)
            dumps: dict[ProxyKind, list[str]] = {}
            for kind in kinds:
                dumps[kind] = [self.config_dump(pod, ns) for pod, ns in pods[kind]]
            return missing_markers(markers, dumps, present=present)

        def decide(missing: list[ConfigMarker]) -> RolloutCheck:
            if not missing:
                return RolloutCheck(True, "converged")
            verb = "waiting for" if present else "still holding"
            return RolloutCheck(False, f"{verb} " + "; ".join(f"{m.what} in the {m.proxy}" for m in missing))

        try:
            wait_until(
                fetch,
                decide,
                what=f"proxies {'taking' if present else 'dropping'} {what}",
                deadline_s=deadline_s,
                interval_s=self.converge_interval_s if interval_s is None else interval_s,
            )
        except WaitTimeoutError as exc:
            raise ConvergenceError(str(exc)) from exc
        except CommandError as exc:
            raise ConvergenceError(f"could not read a proxy's configuration: {exc}") from exc
        took = round(time.monotonic() - started, 3)
        progress(f"proxies {'have' if present else 'dropped'} {what} after {took:.1f}s")
        return took

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

    def write_timings(self) -> Path:
        path = self.run_dir / "timings.json"
        path.write_text(json.dumps(self.timings, indent=1, sort_keys=True) + "\n")
        return path


class RunDiagnostics(Diagnostics):
    """``harness.cluster.diagnostics.Diagnostics`` and what the run's TLS recorders know: each one's failed
    TLS handshakes (``<label>-handshake-failures.json``: a client without a certificate, an unknown
    CA, a wrong name), and the mTLS recorder's records and log (``mtls-recorder-records.json``,
    ``mtls-recorder.log``; the run's recorder has its own step)."""

    def __init__(self, *args: Any, tls_recorders: Mapping[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tls_recorders = dict(tls_recorders or {})

    def recorder_tls(self, directory: Path) -> list[Path]:
        files: list[Path] = []
        problems: list[str] = []
        for label, recorder in self.tls_recorders.items():
            try:
                failures = recorder.handshake_failures()
            except Exception as exc:
                problems.append(f"{label} handshake failures: {type(exc).__name__}: {exc}")
            else:
                path = directory / f"{label}-handshake-failures.json"
                path.write_text(json.dumps(failures, indent=1) + "\n")
                files.append(path)
            if recorder is self.recorder:
                continue
            try:
                records = directory / f"{label}-records.json"
                records.write_text(json.dumps(recorder.records(), indent=1) + "\n")
                log = directory / f"{label}.log"
                log.write_text(recorder.logs())
                files += [records, log]
            except Exception as exc:
                problems.append(f"{label} records: {type(exc).__name__}: {exc}")
        if problems:
            raise RuntimeError("; ".join(problems))
        return files

    def steps(self) -> list[tuple[str, Callable[[Path], list[Path]]]]:
        steps = super().steps()
        if self.tls_recorders:
            steps.append(("recorder TLS handshakes", self.recorder_tls))
        return steps


# --- the catalog, one scenario namespace each -----------------------------------------------------

#: Exceptions that mean "the scenario's claim does not hold" (outcome ``failed``); anything else that
#: goes wrong while a scenario runs is an ``error`` (the harness or the cluster could not run it).
SCENARIO_FAILURES: tuple[type[BaseException], ...] = (AssertionError, ConvergenceError, AnalyzeError)


@dataclass(frozen=True)
class ScenarioReport:
    """How one scenario went: its result, the namespace it ran in, where its diagnostics are."""

    result: ScenarioResult
    namespace: str
    diagnostics: Path | None = None
    #: its namespace was kept (keep-on-failure)
    kept: bool = False


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class ScenarioRunner:
    """Runs catalog scenarios on a started :class:`E2ERun`, each in a namespace of its own.

    For each scenario: the skip reasons of the run (:meth:`E2ERun.skip_reason`) and of its hosts;
    then, under the run's scenario lock (shared, or alone for a scenario that reaches beyond its
    namespace): a namespace ``<prefix>-<scenario>`` with ``namespace_labels`` and the run labels,
    the relays and the ingress route, the scenario applied and converged, every request sent and
    judged (access logs of the target's sidecar and the gateway, and the recorder's record of the
    caller for a request that must leave through the gateway). Afterwards the scenario's objects are
    removed (awaited until the proxies dropped them) and the namespace deleted, whatever happened,
    unless it failed with keep-on-failure. :meth:`run` never raises but for Ctrl-C: the outcome,
    the message and the hop where the path diverged are in the :class:`ScenarioReport`.
    """

    def __init__(
        self,
        run: E2ERun,
        *,
        phase: Phase = "single",
        namespace_labels: Mapping[str, str] | None = None,
        namespace_prefix: str | None = None,
        wait: Wait = SCENARIO_WAIT,
        lock: ScenarioLock | None = None,
        keep_on_failure: bool | None = None,
        collect_diagnostics: bool = True,
        chain_deadline_s: float = CHAIN_READY_TIMEOUT_S,
        converge_s: float = CONVERGE_TIMEOUT_S,
    ) -> None:
        self.run = run
        self.phase = phase
        self.namespace_labels = dict(namespace_labels if namespace_labels is not None else INJECTION_LABELS)
        self.prefix = namespace_prefix or f"e{run.run_id}"
        self.wait = wait
        self.lock = lock if lock is not None else run.scenario_lock()
        self.keep_on_failure = run.options.keep_on_failure if keep_on_failure is None else keep_on_failure
        self.collect_diagnostics = collect_diagnostics
        self.chain_deadline_s = chain_deadline_s
        self.converge_s = converge_s

    def namespace_for(self, scenario: Any) -> str:
        return scenario_namespace_name(self.prefix, scenario.name)

    def view(self, scenario: Any) -> E2ERun:
        hosts = scenario_hosts(scenario.name)
        return self.run.scoped(
            self.namespace_for(scenario),
            external_host=hosts.external,
            unregistered_host=hosts.unregistered,
            mtls_host=hosts.mtls,
        )

    def skip_reason(self, scenario: Any) -> str | None:
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
        return None

    def run_all(self, scenarios: Iterable[Any]) -> list[ScenarioResult]:
        return [self.run_scenario(s).result for s in scenarios]

    def run_scenario(self, scenario: Any, *, test_id: str | None = None) -> ScenarioReport:
        """Run one scenario (see the class docstring); never raises but for Ctrl-C."""
        started = time.monotonic()
        namespace = self.namespace_for(scenario)

        def report(outcome: Any, message: str = "", **kw: Any) -> ScenarioReport:
            result = ScenarioResult(
                scenario=scenario.name,
                phase=self.phase,
                istio_version=self.run.options.istio_version,
                outcome=outcome,
                message=message,
                convergence_s=kw.get("convergence"),
                proxy_versions=list(kw.get("proxies") or []),
                duration_s=round(time.monotonic() - started, 3),
                hop=kw.get("hop"),
            )
            return ScenarioReport(result, namespace, kw.get("diagnostics"), bool(kw.get("kept")))

        reason = self.skip_reason(scenario)
        if reason:
            progress(f"scenario {scenario.name}: skipped: {reason}")
            return report("skipped", reason)
        try:
            view = self.view(scenario)
            from harness.scenarios import render_scenario

            documents = [d.body for d in render_scenario(scenario, view.render_context()).documents]
            alone = exclusive_reason(documents, namespace)
            if alone:
                progress(f"scenario {scenario.name} needs the cluster alone: {alone}")
            with self.lock.hold(exclusive=alone is not None, what=f"scenario {scenario.name}"):
                return self._run_in(view, scenario, report, test_id)
        except Exception as exc:
            return report("error", f"scenario {scenario.name} could not run: {type(exc).__name__}: {exc}")

    def _run_in(
        self, view: E2ERun, scenario: Any, report: Callable[..., ScenarioReport], test_id: str | None
    ) -> ScenarioReport:
        kube = view._kube()
        ns = view.namespace
        stack = contextlib.ExitStack()
        gateway = DEFAULT_GATEWAY
        convergence: float | None = None
        outcome: ScenarioReport | None = None
        failed = False
        kept = False
        cleanup_error: Exception | None = None
        try:
            try:
                kube.create_namespace(
                    ns,
                    {
                        **self.namespace_labels,
                        RUN_LABEL: view.run_id,
                        SCENARIO_LABEL: dns_label(scenario.name),
                    },
                )
                # only a namespace made here is deleted (one that was there is not this scenario's)
                stack.callback(kube.delete_namespace, ns)
                relays = NamespaceRelays(
                    kube, ns, gateway=view.ingress_gateway, image=view.relay_image, ca_pem=view.ca_pem
                )
                relays.deploy()
                view.relay_manifest = relays.save(view.run_dir / "manifests" / ns)
                view.wait_chain_ready(deadline_s=self.chain_deadline_s)
                stack.callback(self._remove_applied, view)
                applied = view.apply_scenario(scenario, wait_s=self.converge_s)
                gateway, convergence = applied.gateway, applied.converged_s
                summary = self._exercise(view, scenario, gateway)
                outcome = report(
                    "passed", summary, convergence=convergence, proxies=self._proxies(view, gateway)
                )
            except Exception as exc:
                failed = True
                kind = "failed" if isinstance(exc, SCENARIO_FAILURES) else "error"
                message = str(exc) if kind == "failed" else f"{type(exc).__name__}: {exc}"
                diagnostics = self._diagnose(view, gateway, scenario, test_id)
                if diagnostics is not None:
                    message += f"\ndiagnostics: {diagnostics}"
                outcome = report(
                    kind,
                    message,
                    hop=getattr(exc, "hop", None),
                    convergence=convergence,
                    proxies=self._proxies(view, gateway),
                    diagnostics=diagnostics,
                )
        finally:
            # also on Ctrl-C: nothing of the scenario is left behind unless asked
            if failed and self.keep_on_failure:
                stack.pop_all()
                kept = True
                progress(
                    f"keeping namespace {ns} of the failed scenario {scenario.name} (keep-on-failure); "
                    f"remove it with `kubectl delete namespace {ns}`"
                )
                for ref in (r for a in view.applied for r in a.secret_refs):
                    progress(
                        f"keeping its Secret {ref.namespace}/{ref.name} too; remove it with "
                        f"`kubectl delete secret -n {ref.namespace} {ref.name}`"
                    )
            else:
                try:
                    stack.close()
                except Exception as exc:
                    cleanup_error = exc
        assert outcome is not None
        result = outcome.result
        if cleanup_error is not None:
            text = f"removing the scenario's objects or namespace {ns} failed: {type(cleanup_error).__name__}: {cleanup_error}"
            if result.outcome == "passed":
                result = dataclasses.replace(result, outcome="error", message=f"{text}\n{result.message}")
            else:
                result = dataclasses.replace(result, message=f"{result.message}\n{text}")
        return dataclasses.replace(outcome, result=result, kept=kept)

    def _exercise(self, view: E2ERun, scenario: Any, gateway: ScenarioGateway) -> str:
        """Send and judge every request of the scenario; one line per request of what was seen.

        A request that must leave through the gateway is also judged by the external host's record:
        its caller is a gateway address and, when its last leg is TLS (:func:`expects_external_tls`),
        it came with the host as SNI and, for mutual TLS, with the run's client certificate.
        """
        from harness.scenarios import render_request

        ctx = view.render_context(scenario)
        recorder = view.recorder_for(scenario)
        mutual = external_requirement(scenario) == "mtls"
        lines = []
        for spec in scenario.requests:
            request = render_request(spec, ctx, source=scenario.file)
            done = view.run_request(request, wait=self.wait, gateway=gateway)
            line = f"{request.name}: HTTP {done.result.response.status}, " + " -> ".join(
                e.hop for e in done.evidence
            )
            if request.expect.via_gateway and not request.expect.blocked and recorder is not None:
                tls = expects_external_tls(request, ctx.external_tls_port)
                try:
                    record = view.expect_external_from_gateway(
                        done.result.request_id, gateway=gateway, recorder=recorder
                    )
                except ExternalEvidenceError as exc:
                    if tls:
                        exc.args = (f"{exc}{handshake_hint(recorder, request.host)}",)
                    raise
                line += f" -> external host (called from {record.get('client_ip')})"
                if tls:
                    subject = view.pki.client.subject if mutual and view.pki is not None else None
                    seen = check_tls_record(record, host=request.host, client_subject=subject)
                    line += f" over {seen.get('version') or 'TLS'}, SNI {seen.get('sni')}"
                    if subject is not None:
                        line += f", client certificate {subject}"
            lines.append(line)
        return "; ".join(lines)

    def _remove_applied(self, view: E2ERun) -> None:
        problems = []
        for applied in reversed(view.applied):
            try:
                view.delete_scenario(applied, wait_s=self.converge_s)
            except Exception as exc:
                problems.append(f"{applied.scenario.name}: {exc}")
        if problems:
            raise E2EError("; ".join(problems))

    def _proxies(self, view: E2ERun, gateway: ScenarioGateway) -> list[str]:
        try:
            return view.proxy_versions(gateway)
        except Exception as exc:
            progress(f"could not read the proxies' versions in {view.namespace}: {exc}")
            return []

    def _diagnose(
        self, view: E2ERun, gateway: ScenarioGateway, scenario: Any, test_id: str | None
    ) -> Path | None:
        if not self.collect_diagnostics:
            return None
        name = test_id or f"{self.phase}-{self.run.options.istio_version}-{scenario.name}"
        try:
            path: Path = view.diagnostics(gateway).collect(name)
        except Exception as exc:
            progress(f"diagnostics of {scenario.name} could not be collected: {type(exc).__name__}: {exc}")
            return None
        return path


def catalog_results(
    scenarios: Iterable[Any],
    run_one: Callable[[Any], ScenarioResult],
    *,
    phase: Phase,
    version: str,
) -> list[ScenarioResult]:
    """``run_one`` over ``scenarios``; one that raises is recorded as an ``error`` and the rest still run."""
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        try:
            result = run_one(scenario)
        except Exception as exc:
            result = ScenarioResult(scenario.name, phase, version, "error", f"{type(exc).__name__}: {exc}")
        results.append(result)
    return results


# --- the catalog under an Istio upgrade -----------------------------------------------------------

PROBE_TIMEOUT_S = 5.0
MISSION = "http-via-egress-gateway"


class UpgradeCatalog:
    """``run_catalog`` and ``probe`` for a ``harness.upgrade.runner.UpgradeRun`` on the harness's cluster.

    ``base`` describes the cluster and the recorder (a :class:`RunState` without Istio yet); each
    phase attaches an :class:`E2ERun` to it with that phase's Istio version, runs every scenario
    through a :class:`ScenarioRunner` (namespaces ``u<run id>-<phase>-<scenario>``, labelled for
    the phase's control plane, e.g. ``istio.io/rev`` in a canary) and returns their results. The
    first phase also puts the relays (with the shared ingress Gateway) into the upgrade's workload
    namespace and applies the mission scenario there: the prober's requests then go
    ``client -> ingress -> proxy -> target -> external host`` through the egress gateway all through
    the upgrade, and the upgrade restarts those relays onto the new sidecars. The upgrade's cleanup
    deletes that namespace.
    """

    def __init__(
        self,
        scenarios: Sequence[Any],
        plan: Any,
        *,
        base: RunState,
        options: E2EOptions,
        run_dir: Path,
        mission: Any | None = None,
        run_factory: Callable[[E2EOptions, Path, RunState], Any] | None = None,
        runner_factory: Callable[..., Any] = ScenarioRunner,
    ) -> None:
        self.scenarios = list(scenarios)
        self.plan = plan
        self.base = base
        self.options = options
        self.run_dir = run_dir
        self.mission = mission
        self.run_factory = run_factory or (lambda o, d, s: E2ERun(o, d, state=s))
        self.runner_factory = runner_factory
        self.probe_url: str | None = None
        self.phases: list[tuple[str, str]] = []
        self._traffic: Traffic | None = None

    @property
    def namespace(self) -> str:
        return str(self.plan.namespaces[0])

    def state_for(self, version: str) -> RunState:
        return dataclasses.replace(
            self.base,
            istio_version=version,
            namespace=self.namespace,
            ingress_gateway=f"{self.namespace}/{INGRESS_GATEWAY_NAME}",
        )

    def __call__(self, phase: Phase, version: str) -> list[ScenarioResult]:
        self.phases.append((phase, version))
        with self.run_factory(
            self.options, self.run_dir / f"{phase}-{version}", self.state_for(version)
        ) as run:
            if self.probe_url is None:
                self.prepare(run)
            labels, _ = self.plan.namespace_labels(version)
            runner = self.runner_factory(
                run, phase=phase, namespace_labels=labels, namespace_prefix=f"u{self.base.run_id}-{phase}"
            )
            return catalog_results(
                self.scenarios,
                lambda s: runner.run_scenario(s, test_id=f"upgrade-{phase}-{version}-{s.name}").result,
                phase=phase,
                version=version,
            )

    def prepare(self, run: E2ERun) -> str:
        """The relays, the shared ingress Gateway and the mission in the upgrade namespace; the probe URL."""
        from harness.scenarios import render_request

        relays = RelayApps(run._kube(), run.namespace, image=run.relay_image, keep=True, ca_pem=run.ca_pem)
        relays.deploy()
        run.relay_manifest = relays.save(run.run_dir / "manifests")
        run.wait_chain_ready()
        destination = f"http://{run.external_host}:{run.options.external_port}/get"
        if self.mission is not None:
            reason = run.skip_reason(self.mission)
            if reason:
                raise E2EError(f"the prober's scenario {self.mission.name} cannot run here: {reason}")
            run.apply_scenario(self.mission)
            request = render_request(self.mission.requests[0], run.render_context(), source=self.mission.file)
            destination = request.url
        self.probe_url = chain_for(run.ingress_url, run.namespace, destination)
        progress(f"the prober will send {self.probe_url}")
        return self.probe_url

    def probe(self) -> ChainResponse:
        """One request down the mission's chain (for ``harness.upgrade.prober.Prober``)."""
        if self.probe_url is None:
            raise E2EError("the prober started before the catalog's first phase set up its chain")
        if self._traffic is None:
            self._traffic = Traffic(timeout=PROBE_TIMEOUT_S)
        return self._traffic.send(self.probe_url)

    def close(self) -> None:
        if self._traffic is not None:
            self._traffic.close()
            self._traffic = None


def upgrade_problems(result: RunResult, to_version: str) -> list[str]:
    """What an upgrade run's result says went wrong: a failed step, regressions, the prober below its
    threshold (or absent), proxies not on ``to_version`` after the upgrade, no scenario run after it."""
    problems: list[str] = []
    step = result.failed_step
    if step is not None:
        problems.append(f"phase {step.phase}, step {step.step} failed: {_first_line(step.message)}")
    for before, regressed in result.regressions():
        problems.append(
            f"{regressed.scenario} regressed: {before.outcome} on {before.istio_version}, "
            f"{regressed.outcome} on {regressed.istio_version}"
            + (f" at hop {regressed.hop!r}" if regressed.hop else "")
            + f": {_first_line(regressed.message)}"
        )
    if result.prober is None:
        problems.append("no traffic was probed during the upgrade")
    elif not result.prober.passed:
        problems.append(f"prober: {result.prober.verdict()}")
    after = result.phase_results("after")
    for item in after:
        stale = [v for v in item.proxy_versions if v != to_version and not v.startswith(f"{to_version}-")]
        if stale:
            problems.append(
                f"{item.scenario}: proxies report {', '.join(stale)} after the upgrade, not {to_version}"
            )
    if step is None and not any(r.outcome != "skipped" for r in after):
        problems.append("no scenario ran after the upgrade")
    return problems
