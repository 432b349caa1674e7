"""One run of the cluster tier: cluster, Istio, external host, relay apps, scenarios, evidence.

``E2ERun(options, run_dir)`` is a context manager composed of smaller ones, entered in this order and
left in reverse (also on failure or Ctrl-C; each part removes only what it made):

1. the cluster: a ``KindCluster`` (manifests/kind/cluster.yaml, own kubeconfig) or, with
   ``kubeconfig``, an ``ExistingCluster`` that is only visited;
2. Istio with its egress gateway (``IstioInstall``; an Istio already there is used as it is);
3. the external host: with ``external="container"`` the recorder (apps/recorder) as a container on
   kind's Docker network ``kind``, under the alias ``external.egress-harness.test`` (and
   ``unregistered.egress-harness.test`` for the REGISTRY_ONLY scenarios); with ``"internet"`` a
   real host (``external_host``) and no recorder;
4. the run namespace ``egress-<run id>`` labelled ``istio-injection=enabled``;
5. the relay apps ``proxy`` and ``target`` and the ingress route ``/proxy`` (``harness.apps``), then a
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
``http://target.<ns>.svc.cluster.local:8080/proxy?url=<external URL>`` (``harness.traffic.chain_url``).
:meth:`E2ERun.send_chain` retries, with a deadline, until both relays answer (the ingress route and
the apps are ready), and records how long that took.

A scenario is applied with :meth:`E2ERun.apply_scenario`: rendered for this run, written to the run
directory, checked by ``istioctl analyze`` (against the live cluster, or files only), applied with
server-side apply, and then awaited until the proxies have it: the target's sidecar and the egress
gateway are asked for their configuration (``istioctl proxy-config all <pod>.<ns> -o json``) until it
holds every object of the scenario that reaches them (a ServiceEntry's clusters, and the
DestinationRules and VirtualServices, which Istio names in the metadata of the clusters and routes it
builds from them). Removal waits until they are gone again, so one scenario cannot leak into the next.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from harness import tools, versions
from harness.apps import (
    RECORDER_IMAGE,
    RELAY_IMAGE,
    BuildMode,
    RelayApps,
    build_app_image,
    prepare_relay_image,
)
from harness.cluster import ExistingCluster, KindCluster
from harness.evidence import EntryLog, RequestRef, Wait
from harness.evidence.external import Record, expect_external_record
from harness.external import DEFAULT_ALIAS, RecorderContainer
from harness.istio import EGRESS_GATEWAY_SELECTOR, ISTIO_NAMESPACE, IstioInstall
from harness.kube import INJECTION_LABELS, Kube, ObjectRef, RolloutCheck, WaitTimeoutError, wait_until
from harness.podlogs import PodLogSource
from harness.proc import CommandError, progress, run
from harness.traffic import ChainResponse, Traffic, TrafficError, chain_url

REPO_ROOT = Path(__file__).resolve().parent.parent
KIND_NETWORK = "kind"
EXTERNAL_ALIAS = DEFAULT_ALIAS
UNREGISTERED_ALIAS = "unregistered.egress-harness.test"
DEFAULT_INTERNET_HOST = "httpbin.org"
TARGET_APP = "target"
RELAY_PORT = 8080

CHAIN_READY_TIMEOUT_S = 180.0
CHAIN_INTERVAL_S = 1.0
CONVERGE_TIMEOUT_S = 120.0
CONVERGE_INTERVAL_S = 2.0
ISTIOCTL_TIMEOUT_S = 60.0
DNS_CHECK_TIMEOUT_S = 20.0
LOG_SLACK_S = 5.0

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


def chain_for(ingress_url: str, namespace: str, destination: str) -> str:
    """``client -> ingress -> proxy -> target -> destination`` as one nested URL."""
    return chain_url([f"{ingress_url.rstrip('/')}/proxy", target_url(namespace)], destination)


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

    Other kinds (Gateway API routes, Sidecar, policies) add no marker.
    """
    egress_gateways = _egress_gateway_names(
        documents, namespace, gateway_labels or {"istio": "egressgateway"}
    )
    markers: list[ConfigMarker] = []
    for doc in documents:
        meta = doc.get("metadata") or {}
        ns = meta.get("namespace") or namespace
        spec = doc.get("spec") or {}
        if not str(doc.get("apiVersion", "")).startswith("networking.istio.io/"):
            continue
        if _exported_to(ns, spec.get("exportTo"), namespace):
            markers += _markers_of(
                str(doc.get("kind")),
                str(meta.get("name")),
                ns,
                spec,
                namespace=namespace,
                egress_gateways=egress_gateways,
            )
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
    argv = [istioctl, "analyze", "--kubeconfig", str(kubeconfig)]
    if context:
        argv += ["--context", context]
    argv += ["-n", namespace]
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


@dataclass(frozen=True)
class RequestOutcome:
    """A scenario request sent down the chain and judged by its hop logs."""

    request: Any
    result: ChainResult
    evidence: list[Any]
    ref: RequestRef


# --- the run --------------------------------------------------------------------------------------


class E2ERun:
    """One run of the cluster tier (see the module docstring); use as a context manager."""

    def __init__(self, options: E2EOptions, run_dir: Path, *, run_id: str | None = None) -> None:
        self.options = options
        self.run_dir = run_dir
        self.run_id = run_id or new_run_id()
        self.namespace = f"egress-{self.run_id}"
        self.started_at = datetime.now(UTC)
        self.cluster: KindCluster | ExistingCluster | None = None
        self.istio: IstioInstall | None = None
        self.kube: Kube | None = None
        self.recorder: RecorderContainer | None = None
        self.relays: RelayApps | None = None
        self.istioctl: str | None = None
        self.ingress_url = ""
        self.timings: dict[str, float] = {}
        self.applied: list[AppliedScenario] = []
        self.failed = False
        #: seconds between two reads of the proxies' configuration while waiting for a scenario
        self.converge_interval_s = CONVERGE_INTERVAL_S
        self._traffic: Traffic | None = None
        self._stack = contextlib.ExitStack()

    # lifecycle

    def __enter__(self) -> E2ERun:
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

    def start(self) -> E2ERun:
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
        self.kube = self._stack.enter_context(Kube(cluster.kubeconfig, cluster.context))
        if o.external == "container":
            with self._timed("external host"):
                self.recorder = self._stack.enter_context(self.make_recorder())
                self.check_alias_resolves(self.recorder.alias)
        self._stack.enter_context(self.run_namespace())
        with self._timed("relay apps"):
            image = o.relay_image or prepare_relay_image(
                self.cluster if isinstance(self.cluster, KindCluster) else None,
                tag=RELAY_IMAGE,
                mode=o.image_build_mode,
            )
            self.relays = self._stack.enter_context(
                RelayApps(self.kube, self.namespace, image=image, keep=o.keep_cluster)
            )
            self.relays.save(self.run_dir / "manifests")
        self._traffic = self._stack.enter_context(Traffic())
        self.ingress_url = (
            o.ingress_url or f"http://127.0.0.1:{getattr(self.cluster, 'ingress_host_port', 80)}"
        )
        with self._timed("chain ready"):
            ready = send_until_answered(
                lambda: self._send(chain_for(self.ingress_url, self.namespace, self._healthz_url()))
            )
        progress(f"the chain answers through {self.ingress_url} (after {ready.attempts} attempts)")
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

    def make_recorder(self) -> RecorderContainer:
        image = build_app_image("recorder", RECORDER_IMAGE, mode=self.options.image_build_mode)
        recorder = RecorderContainer(
            image,
            network=KIND_NETWORK,
            alias=self.options.host,
            port=self.options.external_port,
            owner=f"e2e-{self.run_id}",
            labels={"io.egress-harness.run": self.run_id},
        )
        recorder.aliases.append(UNREGISTERED_ALIAS)
        return recorder

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
        kube.create_namespace(self.namespace, INJECTION_LABELS)
        try:
            yield self.namespace
        finally:
            if self._keeping():
                progress(f"keeping namespace {self.namespace}")
            else:
                kube.delete_namespace(self.namespace)

    def _keeping(self) -> bool:
        return self.options.keep_cluster or (self.failed and self.options.keep_on_failure)

    def mark_failed(self) -> None:
        """A test of this run failed: with keep-on-failure, keep everything for a look."""
        self.failed = True
        if self.options.keep_on_failure:
            if isinstance(self.cluster, KindCluster):
                self.cluster.keep = True
            for part in (self.istio, self.relays):
                if part is not None:
                    part.keep = True

    # small accessors

    def _kube(self) -> Kube:
        if self.kube is None:
            raise E2EError("the run has not started")
        return self.kube

    def _healthz_url(self) -> str:
        return f"http://{TARGET_APP}.{self.namespace}.svc.cluster.local:{RELAY_PORT}/healthz"

    def _send(self, url: str) -> ChainResponse:
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
        url = chain_for(self.ingress_url, self.namespace, destination)
        result = send_until_answered(lambda: self._send(url), deadline_s=deadline_s)
        key = f"chain:{host}:{port}"
        self.timings[key] = round(result.waited_s, 3)
        return result

    # evidence

    def gateway_log(self, since: datetime | None = None) -> EntryLog:
        source = PodLogSource(
            self._kube(), ISTIO_NAMESPACE, EGRESS_GATEWAY_SELECTOR, since=since or self.started_at
        )
        return EntryLog(source, hop="egress gateway", encoding=self._encoding())

    def sidecar_log(self, app: str = TARGET_APP, since: datetime | None = None) -> EntryLog:
        source = PodLogSource(self._kube(), self.namespace, f"app={app}", since=since or self.started_at)
        return EntryLog(source, hop=f"{app} sidecar", encoding=self._encoding())

    def _encoding(self) -> Literal["text", "json"]:
        return "json" if self.options.access_log_encoding == "JSON" else "text"

    def callers(self, namespace: str, selector: str) -> set[str]:
        """The addresses the external host would see for the pods of ``selector``."""
        return caller_addresses(self._kube().list_pods(namespace, selector), source_nat=self.source_nat)

    def gateway_callers(self) -> set[str]:
        return self.callers(ISTIO_NAMESPACE, EGRESS_GATEWAY_SELECTOR)

    def workload_callers(self, app: str = TARGET_APP) -> set[str]:
        return self.callers(self.namespace, f"app={app}")

    def caller_witness_discriminates(self, app: str = TARGET_APP) -> bool:
        """Whether the external host can tell the egress gateway from ``app`` by the caller's address."""
        return self.gateway_callers().isdisjoint(self.workload_callers(app))

    def external_records(self, request_id: str | None = None) -> list[dict[str, Any]]:
        if self.recorder is None:
            return []
        return self.recorder.records(request_id)

    def expect_external_from_gateway(self, request_id: str, *, timeout: float = 5.0) -> Record:
        """The recorder's record of ``request_id``, whose caller is an egress gateway address."""
        if self.recorder is None:
            raise E2EError("no recorder in this run (--external internet): the external host keeps no record")
        recorder = self.recorder
        return expect_external_record(
            lambda: recorder.records(request_id),
            request_id,
            from_ips=self.gateway_callers(),
            timeout=timeout,
        )

    # scenarios

    def render_context(self) -> Any:
        from harness.scenarios import RenderContext

        return RenderContext(
            istio_version=self.options.istio_version,
            namespace=self.namespace,
            external_host=self.options.host,
            external_port=self.options.external_port,
            unregistered_host=UNREGISTERED_ALIAS,
            run_id=self.run_id,
        )

    def skip_reason(self, scenario: Any) -> str | None:
        """Why ``scenario`` cannot run in this run (Istio version, outbound policy, encoding), or None."""
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
        return None

    def apply_scenario(self, scenario: Any, *, wait_s: float = CONVERGE_TIMEOUT_S) -> AppliedScenario:
        """Render, preflight, apply, and wait until the proxies have the scenario's configuration."""
        from harness.scenarios import render_scenario

        reason = self.skip_reason(scenario)
        if reason:
            raise ScenarioNotApplicable(f"scenario {scenario.name}: {reason}")
        rendered = render_scenario(scenario, self.render_context())
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
        refs = self._kube().apply(rendered.text, namespace=self.namespace)
        markers = convergence_markers([d.body for d in rendered.documents], self.namespace)
        applied = AppliedScenario(scenario, rendered, manifest, refs, markers, findings)
        self.applied.append(applied)
        applied.converged_s = self.wait_config(markers, present=True, deadline_s=wait_s, what=scenario.name)
        self.timings[f"converge:{scenario.name}"] = applied.converged_s
        return applied

    def delete_scenario(self, applied: AppliedScenario, *, wait_s: float = CONVERGE_TIMEOUT_S) -> None:
        """Delete the scenario's objects and wait until the proxies dropped them."""
        if applied.removed:
            return
        self._kube().delete_objects(applied.refs)
        applied.removed = True
        name = applied.scenario.name
        self.timings[f"removed:{name}"] = self.wait_config(
            applied.markers, present=False, deadline_s=wait_s, what=f"{name} removal"
        )

    @contextlib.contextmanager
    def scenario(self, scenario: Any) -> Iterator[AppliedScenario]:
        applied = self.apply_scenario(scenario)
        try:
            yield applied
        finally:
            self.delete_scenario(applied)

    def run_request(
        self, request: Any, *, wait: Wait | None = None, absence_window: float = 2.0
    ) -> RequestOutcome:
        """Send a scenario request (a ResolvedRequest) down the chain and judge it by the hop logs."""
        from harness.scenarios.expect import judge

        if tuple(request.chain) != ("ingress", "proxy", "target"):
            raise E2EError(
                f"request {request.name}: only the full chain ingress -> proxy -> target runs here"
            )
        result = self.send_chain(request.host, request.port, request.path, scheme=request.scheme)
        since = result.sent_at - timedelta(seconds=LOG_SLACK_S)
        ref = RequestRef(request_id=result.request_id, host=request.host)
        evidence = judge(
            request,
            ref,
            sidecar=self.sidecar_log(TARGET_APP, since=since),
            gateway=self.gateway_log(since=since),
            wait=wait,
            absence_window=absence_window,
        )
        if result.response.status != request.expect.status:
            raise AssertionError(
                f"request {request.name}: the client got HTTP {result.response.status}, expected "
                f"{request.expect.status} (x-request-id {result.request_id}; failed hop "
                f"{result.response.failed_hop or '-'}: {result.response.error or '-'})"
            )
        return RequestOutcome(request, result, evidence, ref)

    # configuration in the proxies

    def proxy_pods(self) -> dict[ProxyKind, list[tuple[str, str]]]:
        kube = self._kube()
        sidecars = [
            (p["metadata"]["name"], self.namespace)
            for p in kube.list_pods(self.namespace, f"app={TARGET_APP}")
        ]
        gateways = [
            (p["metadata"]["name"], ISTIO_NAMESPACE)
            for p in kube.list_pods(ISTIO_NAMESPACE, EGRESS_GATEWAY_SELECTOR)
        ]
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
            "--kubeconfig",
            str(self.kubeconfig),
        ]
        if self.context:
            argv += ["--context", self.context]
        return run(argv, timeout=ISTIOCTL_TIMEOUT_S).stdout

    def wait_config(
        self,
        markers: Sequence[ConfigMarker],
        *,
        present: bool = True,
        deadline_s: float = CONVERGE_TIMEOUT_S,
        interval_s: float | None = None,
        what: str = "configuration",
    ) -> float:
        """Poll the proxies' configuration until every marker is there (or gone); the seconds it took."""
        if not markers:
            return 0.0
        started = time.monotonic()
        kinds = sorted({m.proxy for m in markers}, key=lambda k: (k != "sidecar", k))

        def fetch() -> list[ConfigMarker]:
            pods = self.proxy_pods()
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

    def diagnostics(self) -> Any:
        from harness.diagnostics import Diagnostics

        manifests = [a.manifest for a in self.applied]
        relay = self.run_dir / "manifests" / "relay.yaml"
        if relay.exists():
            manifests.insert(0, relay)
        return Diagnostics(
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
        )

    def write_timings(self) -> Path:
        path = self.run_dir / "timings.json"
        path.write_text(json.dumps(self.timings, indent=1, sort_keys=True) + "\n")
        return path
