"""The catalog on one cluster without a cluster: per-scenario names, hosts, ingress routes and relays,
what a scenario needs (skip reasons), which scenarios need the cluster alone and the lock that
enforces it, convergence markers of policies and Gateway API routes, the per-scenario runner against
stand-in pods (passed, failed with the hop, error, Ctrl-C, keep-on-failure), and the upgrade's
catalog adapter."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from harness.cluster import (
    DEFAULT_GATEWAY,
    GATEWAY_API_CRDS_URL,
    GATEWAY_API_URL_ENV,
    ConfigMarker,
    E2EError,
    E2EOptions,
    E2ERun,
    GatewayApiCrds,
    LockTimeoutError,
    NamespaceRelays,
    RecorderState,
    RunState,
    ScenarioGateway,
    ScenarioLock,
    ScenarioReport,
    ScenarioRunner,
    UpgradeCatalog,
    catalog_results,
    chain_for,
    convergence_markers,
    credential_names,
    dns_label,
    exclusive_reason,
    external_requirement,
    fetch_gateway_api_crds,
    gateway_api_url,
    ingress_route,
    missing_markers,
    mtls_recorder_aliases,
    recorder_aliases,
    recorder_serves,
    scenario_gateway,
    scenario_hosts,
    scenario_namespace_name,
    upgrade_problems,
)
from harness.cluster import runner as cluster_runner
from harness.cluster.apps import RelayApps
from harness.cluster.kube import ObjectRef, split_documents
from harness.cluster.providers.kind import ExistingCluster
from harness.cluster.tier import scenario_upstreams
from harness.common.traffic import ChainResponse, unwrap_chain
from harness.evidence import Wait
from harness.report.results import ProberStats, RunResult, ScenarioResult, StepResult
from harness.scenarios import RenderContext, load_catalog, render_request, render_scenario
from harness.upgrade import UpgradePlan
from tests.unit.accesslog_samples import (
    CANARY_GATEWAY,
    CANARY_SIDECAR,
    GATEWAY_TO_EXTERNAL,
    INBOUND_PATH,
    RBAC_GATEWAY_DENIED,
    SIDECAR_INBOUND_CHAIN,
    SIDECAR_PASSTHROUGH,
    SIDECAR_TO_GATEWAY,
    TLS_GATEWAY_TO_EXTERNAL,
    TLS_SIDECAR_BLACKHOLE,
    TLS_SIDECAR_TO_GATEWAY,
    at,
    on_path,
)
from tests.unit.proxystatus import synced_rule
from tests.unit.test_e2e_run import CLIENT_SUBJECT, StandInKube, fake_pki, pod, response, sds_dump

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "scenarios")
MISSION = "http-via-egress-gateway"
RUN_NS = "egress-abc123"


def docs_of(name: str, namespace: str = "ns-1", **hosts: str) -> list[dict[str, Any]]:
    ctx = RenderContext(istio_version="1.30.3", namespace=namespace, **hosts)
    return [dict(d.body) for d in render_scenario(CATALOG.get(name), ctx).documents]


# --- names and routes -------------------------------------------------------------------------------


def test_each_scenario_gets_hosts_of_its_own_in_the_test_domain() -> None:
    hosts = scenario_hosts(MISSION)
    assert hosts.external == "http-via-egress-gateway.egress-harness.test"
    assert hosts.unregistered == "unregistered-http-via-egress-gateway.egress-harness.test"
    long = "x" * 63
    assert all(len(label) <= 63 for label in scenario_hosts(long).unregistered.split("."))
    assert scenario_hosts(long).unregistered != scenario_hosts("x" * 62).unregistered


def test_recorder_aliases_cover_the_defaults_and_every_scenario_once() -> None:
    aliases = recorder_aliases([*CATALOG.names(), MISSION])
    assert aliases[:2] == ["external.egress-harness.test", "unregistered.egress-harness.test"]
    assert len(aliases) == len(set(aliases)) == 2 + 2 * len(CATALOG)
    for name in CATALOG.names():
        hosts = scenario_hosts(name)
        assert {hosts.external, hosts.unregistered} <= set(aliases)
        # every alias is a name a scenario can render with
        RenderContext(
            istio_version="1.30.3", external_host=hosts.external, unregistered_host=hosts.unregistered
        )


def test_scenario_namespaces_are_dns_labels() -> None:
    assert scenario_namespace_name("eabc123", MISSION) == "eabc123-http-via-egress-gateway"
    long = scenario_namespace_name("eabc123", "a-" * 40)
    assert len(long) <= 63 and long[-1].isalnum() and long == dns_label(f"eabc123-{'a-' * 40}")
    assert long != scenario_namespace_name("eabc123", "a-" * 39 + "b")


def test_the_ingress_route_of_a_namespace_rewrites_its_prefix_to_proxy() -> None:
    vs = ingress_route("ns-1", f"{RUN_NS}/relay-gateway")
    assert vs["metadata"] == {"name": "relay-ingress", "namespace": "ns-1"}
    assert vs["spec"]["hosts"] == [f"{RUN_NS}.ingress.egress-harness.test"]  # its run's host, not '*'
    assert vs["spec"]["gateways"] == [f"{RUN_NS}/relay-gateway"]
    (route,) = vs["spec"]["http"]
    assert route["match"] == [{"uri": {"prefix": "/ns-1/proxy"}}]
    assert route["rewrite"] == {"uri": "/proxy"}
    assert route["route"][0]["destination"] == {
        "host": "proxy.ns-1.svc.cluster.local",
        "port": {"number": 8080},
    }
    url = chain_for("http://127.0.0.1:18080", "ns-1", "http://h:80/get", ingress_path="/ns-1/proxy")
    assert unwrap_chain(url, levels=2) == [
        "http://127.0.0.1:18080/ns-1/proxy",
        "http://target.ns-1.svc.cluster.local:8080/proxy",
        "http://h:80/get",
    ]


def test_namespace_relays_bind_to_the_shared_ingress_gateway_instead_of_their_own() -> None:
    relays = NamespaceRelays(object(), "ns-1", gateway=f"{RUN_NS}/relay-gateway", image="reg/relay:1")
    docs = split_documents(relays.render())
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Deployment", "proxy"),
        ("Service", "proxy"),
        ("Deployment", "target"),
        ("Service", "target"),
        ("VirtualService", "relay-ingress"),
    ]
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"reg/relay:1"}
    assert docs[-1]["spec"]["gateways"] == [f"{RUN_NS}/relay-gateway"]


def test_a_namespaces_relays_fetch_its_hosts_only_and_its_route_requires_the_runs_token() -> None:
    """Issue 14: the relays are no open proxy and the ingress route answers only the run's client."""
    relays = NamespaceRelays(
        object(),
        "ns-1",
        gateway=f"{RUN_NS}/relay-gateway",
        token="s3cret-token",
        upstreams=["h.egress-harness.test:80"],
        labels={"io.egress-harness.run": "abc123"},
    )
    docs = split_documents(relays.render())
    for doc in docs:
        assert doc["metadata"]["labels"]["io.egress-harness.run"] == "abc123", doc["metadata"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["ALLOWED_UPSTREAMS"] == "target.ns-1.svc.cluster.local:8080,h.egress-harness.test:80"
        assert "ALLOWED_ADDRESSES" not in env  # loopback and link-local stay refused
        # the pods' labels stay the manifest's own (the Services select them by app)
        assert "io.egress-harness.run" not in deployment["spec"]["template"]["metadata"]["labels"]
    (route,) = docs[-1]["spec"]["http"]
    assert route["match"] == [
        {"uri": {"prefix": "/ns-1/proxy"}, "headers": {"x-egress-harness-token": {"exact": "s3cret-token"}}}
    ]
    assert "s3cret-token" in relays.text


def test_with_callers_the_relays_answer_the_ingress_gateway_and_their_namespace_only() -> None:
    kube = CatalogKube()
    ingress = pod("istio-ingressgateway-1", "10.244.0.3", "172.18.0.2", app="istio-ingressgateway")
    ingress["spec"]["serviceAccountName"] = "istio-ingressgateway-service-account"
    kube.pods[("istio-system", "istio=ingressgateway")] = [ingress]
    relays = NamespaceRelays(kube, "ns-1", gateway=f"{RUN_NS}/relay-gateway", callers=True)
    relays.deploy()
    principal = "*/ns/istio-system/sa/istio-ingressgateway-service-account"
    assert relays.ingress_principals == [principal]
    docs = split_documents(relays.text)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AuthorizationPolicy"}
    proxy, target = policies["relay-proxy-callers"], policies["relay-target-callers"]
    assert proxy["spec"] == {
        "selector": {"matchLabels": {"app": "proxy"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": [principal]}}]}],
    }
    assert target["spec"]["selector"] == {"matchLabels": {"app": "target"}}
    assert target["spec"]["rules"] == [{"from": [{"source": {"namespaces": ["ns-1"]}}]}]
    # without ingress gateway pods there is nobody to name: no policy (and a progress line says so)
    bare = NamespaceRelays(CatalogKube(), "ns-2", gateway=f"{RUN_NS}/relay-gateway", callers=True)
    bare.deploy()
    assert not [d for d in split_documents(bare.text) if d["kind"] == "AuthorizationPolicy"]


def test_the_run_namespaces_route_requires_the_token_and_its_saved_manifest_hides_it(tmp_path: Path) -> None:
    relays = RelayApps(object(), RUN_NS, token="s3cret-token", upstreams=["x.test:80"])  # type: ignore[arg-type]
    docs = split_documents(relays.render())
    (vs,) = [d for d in docs if d["kind"] == "VirtualService"]
    for route in vs["spec"]["http"]:
        assert route["match"], route
        for match in route["match"]:
            assert match["headers"] == {"x-egress-harness-token": {"exact": "s3cret-token"}}
    saved = relays.save(tmp_path).read_text()
    assert "s3cret-token" not in saved
    assert "REDACTED-the-run-token-is-in-its-run-state.json" in saved
    assert split_documents(saved)[0]["kind"] == "Deployment"


def test_a_scenarios_relays_may_fetch_its_requests_hosts_and_its_gateway_for_canaries() -> None:
    scenario = CATALOG.get("registry-only-blocked")
    context = RenderContext(
        istio_version="1.30.3",
        namespace="ns-1",
        external_host="r.egress-harness.test",
        unregistered_host="unregistered-r.egress-harness.test",
    )
    upstreams = scenario_upstreams(scenario, context, "ns-1")
    assert upstreams[-1] == f"{DEFAULT_GATEWAY.service}:80"
    assert set(upstreams[:-1]) == {f"{r.host}:{r.port}" for r in resolve_requests(scenario, context)}
    assert all(h.endswith((".egress-harness.test:80", ".egress-harness.test:443")) for h in upstreams[:-1])


# --- what a scenario needs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OldRequires:  # the model before requires.external existed
    outbound_traffic_policy: str | None = None
    gateway_api: bool = False
    access_log_encoding: tuple[str, ...] = ("TEXT", "JSON")


@dataclass(frozen=True)
class NewRequires(OldRequires):
    external: str = "http"


@dataclass(frozen=True)
class Req:
    scheme: str = "http"


@dataclass(frozen=True)
class FakeScenario:
    requires: Any
    tags: tuple[str, ...] = ()
    requests: tuple[Req, ...] = (Req(),)


def test_external_requirement_is_declared_or_inferred() -> None:
    assert external_requirement(FakeScenario(NewRequires(external="mtls"))) == "mtls"
    # declared wins over tags, so a scenario can say it needs plain HTTP only
    assert external_requirement(FakeScenario(NewRequires(), tags=("tls",))) == "http"
    assert external_requirement(FakeScenario(OldRequires(), tags=("tls",))) == "tls"
    assert external_requirement(FakeScenario(OldRequires(), tags=("tls", "mtls"))) == "mtls"
    assert external_requirement(FakeScenario(OldRequires(), requests=(Req("https"),))) == "tls"
    assert external_requirement(FakeScenario(OldRequires())) == "http"
    assert external_requirement(CATALOG.get("https-passthrough-via-egress-gateway")) == "tls"
    assert external_requirement(CATALOG.get(MISSION)) == "http"


@dataclass
class FakeTLS:
    mutual: bool


@dataclass
class FakeRecorderTLS:
    tls: Any = None


def test_what_a_recorder_serves_follows_its_tls_settings() -> None:
    assert recorder_serves(FakeRecorderTLS()) == ("http",)
    assert recorder_serves(FakeRecorderTLS(FakeTLS(False))) == ("http", "tls")
    assert recorder_serves(FakeRecorderTLS(FakeTLS(True))) == ("http", "mtls")


def test_two_runs_on_one_cluster_claim_different_ingress_hosts() -> None:
    """Both runs' ingress Gateways select the one ingress gateway on port 80: with hosts '*' each
    (as before) istioctl analyze reported IST0145 on a netns cluster and the second run's routes
    conflicted with the first's; each now matches its own host, which its client sends."""

    def ingress(namespace: str) -> tuple[list[str], list[str]]:
        docs = RelayApps(object(), namespace).relay_documents()
        (gateway,) = [d for d in docs if d["kind"] == "Gateway"]
        (route,) = [d for d in docs if d["kind"] == "VirtualService"]
        return [h for s in gateway["spec"]["servers"] for h in s["hosts"]], route["spec"]["hosts"]

    first, second = ingress("egress-aaa111"), ingress("egress-bbb222")
    assert first == (["egress-aaa111.ingress.egress-harness.test"],) * 2
    assert second == (["egress-bbb222.ingress.egress-harness.test"],) * 2


def test_a_run_and_its_scenario_namespaces_send_the_runs_ingress_host(tmp_path: Path) -> None:
    run = started_run(tmp_path)
    view = run.scoped(
        "abc-ns2", external_host="a.egress-harness.test", unregistered_host="u.egress-harness.test"
    )
    assert run.ingress_headers == {
        "Host": f"{run.namespace}.ingress.egress-harness.test",
        "x-egress-harness-token": run.ingress_token,
    }
    assert len(run.ingress_token) >= 40  # 256 random bits
    assert view.ingress_headers == run.ingress_headers
    assert started_run(tmp_path).ingress_token != run.ingress_token  # one per run
    assert ingress_route(view.namespace, f"{run.namespace}/relay-gateway")["spec"]["hosts"] == [
        run.ingress_headers["Host"]
    ]


def started_run(tmp_path: Path, **options: Any) -> E2ERun:
    run = E2ERun(E2EOptions(istio_version="1.30.3", **options), tmp_path / "run", run_id="abc123")
    run.cluster = ExistingCluster(tmp_path / "kubeconfig", "kind-egress")
    return run


def test_skip_reasons_name_what_the_run_lacks(tmp_path: Path) -> None:
    run = started_run(tmp_path)
    assert run.skip_reason(CATALOG.get(MISSION)) is None
    assert run.skip_reason(CATALOG.get("registry-only-blocked")) is None  # a namespace Sidecar sets it
    gateway_api = run.skip_reason(CATALOG.get("gateway-api-http-via-egress-gateway")) or ""
    assert "Gateway API CRDs" in gateway_api and "--gateway-api" in gateway_api
    run.gateway_api_present = True
    assert run.skip_reason(CATALOG.get("gateway-api-http-via-egress-gateway")) is None
    tls = run.skip_reason(CATALOG.get("https-passthrough-via-egress-gateway")) or ""
    assert "serves TLS" in tls and "HTTP only" in tls
    # the 1.30-only Gateway API TLS scenario on 1.29: the Istio range comes first
    older = started_run(tmp_path, gateway_api=True)
    older.options = dataclasses.replace(older.options, istio_version="1.29.6")
    assert "older than the scenario's minimum 1.30" in (
        older.skip_reason(CATALOG.get("gateway-api-tls-passthrough-via-egress-gateway")) or ""
    )


def test_a_scenario_needing_a_credential_secret_is_skipped(tmp_path: Path) -> None:
    run = started_run(tmp_path)

    @dataclass(frozen=True)
    class Creds(NewRequires):
        client_credential: bool = True

    scenario = dataclasses.replace(CATALOG.get(MISSION), requires=Creds())
    assert "requires.client_credential" in (run.skip_reason(scenario) or "")


# --- isolation ---------------------------------------------------------------------------------------


def test_scenarios_that_reach_beyond_their_namespace_need_the_cluster_alone() -> None:
    assert exclusive_reason(docs_of(MISSION), "ns-1") is None
    hosts = scenario_hosts("wildcard-host-via-egress-gateway")
    wildcard = docs_of(
        "wildcard-host-via-egress-gateway",
        external_host=hosts.external,
        unregistered_host=hosts.unregistered,
    )
    assert "wildcard host *.egress-harness.test" in (exclusive_reason(wildcard, "ns-1") or "")
    authz = docs_of("authz-policy-on-egress-gateway")
    assert "AuthorizationPolicy/egress-allow-only-allowed-path is in namespace istio-system" in (
        exclusive_reason(authz, "ns-1") or ""
    )
    private = [dict(d) for d in wildcard if d["kind"] != "Gateway"]
    for doc in private:
        doc["spec"] = {**doc["spec"], "exportTo": ["."]}
    assert exclusive_reason(private, "ns-1") is None


def test_the_gateway_of_a_gateway_api_scenario_is_its_own() -> None:
    assert scenario_gateway(docs_of(MISSION), "ns-1") == DEFAULT_GATEWAY
    gw = scenario_gateway(docs_of("gateway-api-http-via-egress-gateway"), "ns-1")
    assert gw == ScenarioGateway(
        namespace="ns-1",
        selector="gateway.networking.k8s.io/gateway-name=egress-gw",
        service="egress-gw-istio.ns-1.svc.cluster.local",
        deployment="egress-gw-istio",
    )
    assert gw.labels == {"gateway.networking.k8s.io/gateway-name": "egress-gw"}


def test_markers_of_a_gateway_policy_and_of_gateway_api_routes() -> None:
    authz = [
        m
        for m in convergence_markers(docs_of("authz-policy-on-egress-gateway"), "ns-1")
        if m.proxy == "gateway"
    ]
    assert ("gateway", "-policy[egress-allow-only-allowed-path]-rule[") in {
        (m.proxy, m.needle) for m in authz
    }
    markers = convergence_markers(docs_of("gateway-api-http-via-egress-gateway"), "ns-1")
    assert [(m.proxy, m.needle, m.what) for m in markers if "HTTPRoute" in m.what] == [
        ("sidecar", "/namespaces/ns-1/virtual-service/", "HTTPRoute ns-1/external-to-egress-gw (mesh)"),
        ("gateway", "/namespaces/ns-1/virtual-service/", "HTTPRoute ns-1/egress-gw-to-external (gateway)"),
    ]


def test_a_marker_with_no_proxy_left_to_hold_it_is_dropped() -> None:
    m = [ConfigMarker("gateway", "B", "b")]
    assert missing_markers(m, {"gateway": []}, present=False) == []
    assert missing_markers(m, {"gateway": []}, present=True) == m


# --- the lock ----------------------------------------------------------------------------------------


def test_shared_holders_share_and_an_exclusive_one_waits_for_them(tmp_path: Path) -> None:
    lock = ScenarioLock(tmp_path, timeout_s=0.3, interval_s=0.02)
    with (
        lock.hold(exclusive=False),
        lock.hold(exclusive=False),
        pytest.raises(
            LockTimeoutError, match=r"scenario wildcard: the scenario lock .* not free within 0.3s"
        ),
        lock.hold(exclusive=True, what="scenario wildcard"),
    ):
        pass
    with lock.hold(exclusive=True), pytest.raises(LockTimeoutError), lock.hold(exclusive=False):
        pass


def test_a_waiting_exclusive_holder_is_not_starved_by_new_shared_ones(tmp_path: Path) -> None:
    lock = ScenarioLock(tmp_path, timeout_s=5.0, interval_s=0.02)
    events: list[str] = []
    first = contextlib.ExitStack()
    first.enter_context(lock.hold(exclusive=False))

    def writer() -> None:
        with lock.hold(exclusive=True):
            events.append("writer")

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 5
    while not lock.turnstile.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the writer holds the turnstile while it waits for the lock
    late = ScenarioLock(tmp_path, timeout_s=0.2, interval_s=0.02)
    with pytest.raises(LockTimeoutError), late.hold(exclusive=False):
        pass
    first.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and events == ["writer"]


# --- the runner against stand-ins --------------------------------------------------------------------


class CatalogKube(StandInKube):
    """Stand-in pods in every namespace (one per app), namespaces, rollouts; logs shared by pod name."""

    def __init__(self) -> None:
        super().__init__()
        for listed in self.pods.values():
            for p in listed:
                p["spec"]["containers"][0]["image"] = "docker.io/istio/proxyv2:1.30.3"
        self.fail_create = False
        #: the namespaces the tier waited for, with how many calls had been made by then
        self.awaited: list[tuple[str, int]] = []
        #: the node the relays' pods run on; the target's pod has no sidecar (a bypass's caller)
        self.app_host_ip = "172.18.0.2"
        self.bare_target = False
        #: the text of every apply, in order
        self.texts: list[str] = []

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        if selector.startswith("app=") and namespace != "istio-system":
            app = selector[4:]
            listed = pod(f"{app}-1", "10.244.0.12", self.app_host_ip, app=app)
            listed["spec"]["containers"][0]["image"] = "docker.io/istio/proxyv2:1.30.3"
            if app == "target" and self.bare_target:
                listed["spec"]["containers"] = [{"name": "relay", "image": "istio-egress-harness/relay:dev"}]
            return [listed]
        return super().list_pods(namespace, selector)

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]:
        self.texts.append(text)
        return super().apply(text, namespace)

    def create_namespace(self, name: str, labels: Any = None) -> None:
        self.calls.append(("create namespace", name, dict(labels or {})))
        if self.fail_create:
            raise RuntimeError(f"namespaces {name!r} is forbidden")

    def delete_namespace(self, name: str, **kw: Any) -> None:
        self.calls.append(("delete namespace", name))

    def wait_namespace_gone(self, name: str, **kw: Any) -> None:
        # the tier waits for its scenario namespaces at its exit, after every scenario's removal
        self.awaited.append((name, len(self.calls)))

    def wait_rollout(self, namespace: str, name: str, **kw: Any) -> None:
        self.calls.append(("rollout", namespace, name))


@dataclass
class StandInRecorder:
    aliases: list[str]
    seen: dict[str, str] = field(default_factory=dict)  # request id -> caller
    paths: dict[str, str] = field(default_factory=dict)  # request id -> path and query
    #: what it serves (recorder_serves), where it serves TLS, and the TLS it saw per request id
    serves: tuple[str, ...] = ()
    tls_port: int | None = None
    tls: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: where the cluster's pods reach it (for a sidecar that leaves it out of its capture)
    address: str = "172.18.0.9"

    def records(
        self, request_id: str | None = None, *, path_contains: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            {
                "client_ip": ip,
                "headers": {"x-request-id": rid},
                "path": self.paths.get(rid, ""),
                "tls": self.tls.get(rid),
            }
            for rid, ip in self.seen.items()
            if request_id in (None, rid)
            and (path_contains is None or path_contains in self.paths.get(rid, ""))
        ]

    def logs(self) -> str:
        return ""

    def handshake_failures(self) -> list[dict[str, Any]]:
        return self.failures


class Cluster:
    """A run over stand-ins; ``answer`` decides what each request through the chain leaves behind."""

    def __init__(self, tmp_path: Path, fakebin: Any) -> None:
        (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
        self.kube = CatalogKube()
        self.run = E2ERun(
            E2EOptions(istio_version="1.30.3", pod_source_nat=True), tmp_path / "run", run_id="abc123"
        )
        self.run.kube = self.kube  # type: ignore[assignment]
        self.run.istioctl = "istioctl"
        self.run.cluster = ExistingCluster(tmp_path / "kubeconfig", "kind-egress")
        self.run.ingress_url = "http://127.0.0.1:18080"
        self.run.converge_interval_s = 0.01
        self.recorder = StandInRecorder(recorder_aliases(CATALOG.names()))
        self.run.recorder = self.recorder  # type: ignore[assignment]
        self.sent: list[str] = []
        self.mode = "via-gateway"
        #: the egress gateway subset the sidecar's entry names, and the host the gateway forwards to
        self.subset = "external"
        self.upstream: str | None = None
        #: the port the sidecar sends to the gateway on, and the one the gateway sends on to
        self.sidecar_port = 80
        self.gateway_port = 80
        #: the gateway logs the host as the downstream SNI (requested_server_name)
        self.gateway_sni = False
        #: what the external host's record says of TLS: None (plain HTTP) or a callable of the host
        self.tls: Any = None
        self.mtls_recorder: StandInRecorder | None = None
        #: the address the external host sees the request from (an egress gateway node's)
        self.caller = "172.18.0.2"
        #: request paths the gateway's AuthorizationPolicy refuses (403, RBAC)
        self.denied: set[str] = set()
        #: the gateway's pods print no access log at all (a log source that shows nothing)
        self.gateway_logs_lost = False
        #: canaries refused before the gateway listens on their port (503 from the sidecar)
        self.canaries_refused = 0
        self.fakebin = fakebin
        self.run._send = self.send  # type: ignore[method-assign]

    def gateway_prints(self, line: str) -> None:
        if not self.gateway_logs_lost:
            self.kube.logs["gw-1"].append(line)

    def canary(self, url: str, rid: str) -> ChainResponse:
        """A request to the gateway service's own name: the gateway has no route for it (404 NR)."""
        if self.canaries_refused:
            self.canaries_refused -= 1
            return response(503, rid=rid)
        self.kube.logs["target-1"].append(on_path(CANARY_SIDECAR, url).replace('"rid-5"', f'"{rid}"'))
        self.gateway_prints(on_path(CANARY_GATEWAY, url).replace('"rid-5"', f'"{rid}"'))
        return response(404, rid=rid)

    def tls_request(self, url: str, host: str, rid: str) -> ChainResponse:
        """HTTPS the target relay encrypts itself: its inbound HTTP entry (the chain URL, the token in
        it), then TCP entries with the SNI, written as the connection closes; the recorder's record."""
        now = datetime.now(UTC)
        _, target, destination = unwrap_chain(url, levels=2)
        target_path = urlsplit(target).path + "?url=" + quote(destination, safe="")
        sidecar = self.kube.logs["target-1"]
        sidecar.append(
            SIDECAR_INBOUND_CHAIN.replace(INBOUND_PATH, target_path).replace('"rid-1"', f'"{rid}"')
        )
        port = urlsplit(destination).port or 443
        if host.startswith("unregistered") and self.run.options.outbound_traffic_policy == "REGISTRY_ONLY":
            sidecar.append(at(TLS_SIDECAR_BLACKHOLE, now).replace("unregistered.egress-harness.test", host))
            return response(502, rid=rid)
        tcp = at(TLS_SIDECAR_TO_GATEWAY, now).replace("external.egress-harness.test", host)
        if self.mode == "direct":
            gateway_cluster = f"outbound|443|external-tls|{DEFAULT_GATEWAY.service}"
            sidecar.append(tcp.replace(gateway_cluster, f"outbound|{port}||{host}"))
            return response(200, rid=rid)
        sidecar.append(tcp)
        gateway = at(TLS_GATEWAY_TO_EXTERNAL, now).replace("external.egress-harness.test", host)
        self.gateway_prints(gateway.replace(f"outbound|8443||{host}", f"outbound|{port}||{host}"))
        self.recorder.seen[rid] = self.caller
        self.recorder.paths[rid] = urlsplit(destination).path + "?" + urlsplit(destination).query
        self.recorder.tls[rid] = {"sni": host, "version": "TLSv1.3", "client_cert_subject": None}
        return response(200, rid=rid)

    def send(self, url: str) -> ChainResponse:
        self.sent.append(url)
        rid = f"rid-{len(self.sent)}"
        destination = unwrap_chain(url, levels=2)[-1]
        if self.mode == "no-chain":
            return response(404, services=(), rid=rid)
        if destination.endswith("/healthz"):
            return response(200, rid=rid)
        if self.mode == "interrupt":
            raise KeyboardInterrupt
        host = destination.split("/")[2].split(":")[0]
        if host == DEFAULT_GATEWAY.service:
            return self.canary(url, rid)
        if destination.startswith("https://"):
            return self.tls_request(url, host, rid)

        def mine(line: str) -> str:
            line = on_path(line, url)
            for sample in ('"rid-1"', '"rid-2"', '"rid-x"'):
                line = line.replace(sample, f'"{rid}"')
            line = line.replace(
                "outbound|80||external.egress-harness.test",
                f"outbound|{self.gateway_port}||{self.upstream or host}",
            )
            return line.replace("external.egress-harness.test", host)

        if urlsplit(destination).path in self.denied:
            relayed = SIDECAR_TO_GATEWAY.replace(" 200 - via_upstream ", " 403 - via_upstream ")
            relayed = relayed.replace("outbound|80|external|", f"outbound|{self.sidecar_port}|{self.subset}|")
            self.kube.logs["target-1"].append(mine(relayed))
            self.gateway_prints(mine(RBAC_GATEWAY_DENIED))
            return response(403, rid=rid)
        if self.mode == "bypass":  # the workload went around its sidecar: no proxy logged it
            self.recorder.seen[rid] = self.kube.app_host_ip  # its node's address (source NAT)
            self.recorder.paths[rid] = urlsplit(destination).path + "?" + urlsplit(destination).query
            return response(200, rid=rid)
        if self.mode == "passthrough":
            self.kube.logs["target-1"].append(mine(SIDECAR_PASSTHROUGH))
        elif self.mode == "direct":  # a ServiceEntry host without egress routing: its own cluster
            line = SIDECAR_PASSTHROUGH.replace("PassthroughCluster", f"outbound|{self.gateway_port}||{host}")
            self.kube.logs["target-1"].append(mine(line))
        else:
            sidecar = SIDECAR_TO_GATEWAY.replace(
                "outbound|80|external|", f"outbound|{self.sidecar_port}|{self.subset}|"
            )
            self.kube.logs["target-1"].append(mine(sidecar))
            gateway = mine(GATEWAY_TO_EXTERNAL)
            if self.gateway_sni:
                gateway = gateway.removesuffix(" - -") + f" {host} -"
            self.gateway_prints(gateway)
            recorder = self.mtls_recorder if host.startswith("mtls") and self.mtls_recorder else self.recorder
            recorder.seen[rid] = self.caller
            recorder.paths[rid] = urlsplit(destination).path + "?" + urlsplit(destination).query
            if self.tls is not None:
                recorder.tls[rid] = self.tls(host)
        return response(200, rid=rid)

    def proxy_config(self, namespace: str, name: str = MISSION, *, secrets: Any = None) -> None:
        """analyze is clean; the proxies hold the scenario on the first poll, then let it go; the
        gateway's SDS secrets are ``secrets`` (``istioctl proxy-config secret -o json`` output)."""
        hosts = scenario_hosts(name)
        external = hosts.mtls if external_requirement(CATALOG.get(name)) == "mtls" else hosts.external
        needles = convergence_markers(
            docs_of(name, namespace, external_host=external, unregistered_host=hosts.unregistered),
            namespace,
        )
        full = " ".join(m.needle for m in needles)
        pc = ["proxy-config", "all"]
        self.fakebin.log.unlink(missing_ok=True)  # the rules' use counts start again
        self.fakebin.rules(
            [
                {"tool": "istioctl", "args": ["analyze"], "stdout": "✔ No validation issues found.\n"},
                synced_rule(f"target-1.{namespace}", "gw-1.istio-system"),
                {"tool": "istioctl", "args": pc, "times": 2, "stdout": full},
                {"tool": "istioctl", "args": pc, "stdout": "{}"},
                {"tool": "istioctl", "args": ["proxy-config", "secret"], "stdout": secrets or "{}"},
            ]
        )

    def runner(self, **kw: Any) -> ScenarioRunner:
        kw.setdefault("wait", Wait(timeout=0.5, interval=0.02, settle=0.05))
        kw.setdefault("collect_diagnostics", False)
        kw.setdefault("lock", ScenarioLock(self.run.run_dir, timeout_s=1))
        kw.setdefault("converge_s", 10.0)  # the stand-ins converge on the first poll, or never
        return ScenarioRunner(self.run, **kw)


@pytest.fixture
def cluster(tmp_path: Path, fakebin: Any) -> Cluster:
    return Cluster(tmp_path, fakebin)


NS1 = "eabc123-http-via-egress-gateway"


def test_a_scenario_runs_in_its_own_namespace_and_leaves_nothing_behind(cluster: Cluster) -> None:
    cluster.proxy_config(NS1)
    report = cluster.runner().run_scenario(CATALOG.get(MISSION))
    result = report.result
    assert result.outcome == "passed", result.message
    assert (result.scenario, result.phase, result.istio_version, result.hop) == (
        MISSION,
        "single",
        "1.30.3",
        None,
    )
    assert result.proxy_versions == ["1.30.3"]
    assert result.convergence_s is not None and result.duration_s > 0
    assert (
        "via-gateway: HTTP 200, target sidecar -> egress gateway -> external host (called from 172.18.0.2)"
        in (result.message)
    )
    assert report.namespace == NS1 and not report.kept
    calls = cluster.kube.calls
    assert calls[0] == (
        "create namespace",
        NS1,
        {
            "istio-injection": "enabled",
            "io.egress-harness.run": "abc123",
            "io.egress-harness.scenario": MISSION,
        },
    )
    assert calls[1] == ("apply", NS1, ["Deployment", "Service", "Deployment", "Service", "VirtualService"])
    assert calls[2:4] == [("rollout", NS1, "proxy"), ("rollout", NS1, "target")]
    assert calls[4] == ("apply", NS1, ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"])
    assert calls[-2:] == [
        ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"]),
        ("delete namespace", NS1),
    ]
    # through the namespace's own ingress path, to the scenario's own host
    assert unwrap_chain(cluster.sent[0], levels=2)[0] == f"http://127.0.0.1:18080/{NS1}/proxy"
    # the request carries its path token to the external host (real gateways replace x-request-id)
    destination, token = unwrap_chain(cluster.sent[-1], levels=2)[-1].split("?egh-token=")
    assert destination == "http://http-via-egress-gateway.egress-harness.test:80/get" and token
    manifest = cluster.run.run_dir / "scenarios" / MISSION / "manifests.yaml"
    assert f"namespace: {NS1}" in manifest.read_text()
    saved = (cluster.run.run_dir / "manifests" / NS1 / "relay.yaml").read_text()
    assert cluster.run.ingress_token and cluster.run.ingress_token not in saved  # issue 14
    assert "ALLOWED_UPSTREAMS" in saved and "http-via-egress-gateway.egress-harness.test:80" in saved
    assert cluster.run.applied == []  # the view kept its own list


def test_a_failed_scenario_names_the_hop_and_is_still_removed(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.proxy_config(NS1)
    cluster.mode = "passthrough"
    collected: list[tuple[str, str]] = []

    class Diag:
        def __init__(self, view: E2ERun, gateway: ScenarioGateway) -> None:
            self.view = view

        def collect(self, test_id: str) -> Path:
            collected.append((test_id, self.view.namespace))
            return Path("artifacts") / "x"

    monkeypatch.setattr(E2ERun, "diagnostics", lambda self, gateway=None: Diag(self, gateway))
    report = cluster.runner(collect_diagnostics=True).run_scenario(
        CATALOG.get(MISSION), test_id="tests/x::t[a]"
    )
    result = report.result
    assert (result.outcome, result.hop) == ("failed", "target sidecar")
    assert "PassthroughCluster" in result.message and result.message.endswith("diagnostics: artifacts/x")
    assert collected == [("tests/x::t[a]", NS1)] and report.diagnostics == Path("artifacts/x")
    assert cluster.kube.calls[-1] == ("delete namespace", NS1)
    assert ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"]) in cluster.kube.calls


def test_keep_on_failure_keeps_the_failed_scenario(cluster: Cluster) -> None:
    cluster.proxy_config(NS1)
    cluster.mode = "passthrough"
    report = cluster.runner(keep_on_failure=True).run_scenario(CATALOG.get(MISSION))
    assert report.result.outcome == "failed" and report.kept
    assert not any(c[0] in ("delete", "delete namespace") for c in cluster.kube.calls)


def test_a_setup_problem_is_an_error_and_what_was_made_is_removed(cluster: Cluster) -> None:
    cluster.kube.fail_create = True
    result = cluster.runner().run_scenario(CATALOG.get(MISSION)).result
    assert result.outcome == "error"
    assert result.message.startswith(
        "RuntimeError: namespaces 'eabc123-http-via-egress-gateway' is forbidden"
    )
    # the namespace was not made here, so it is not deleted either
    assert [c[0] for c in cluster.kube.calls] == ["create namespace"]
    # relays that never answer through the ingress: an error, and the namespace goes again
    cluster.kube.fail_create = False
    cluster.kube.calls.clear()
    cluster.mode = "no-chain"
    result = cluster.runner(chain_deadline_s=0.05).run_scenario(CATALOG.get(MISSION)).result
    assert result.outcome == "error" and result.message.startswith("ChainNotReadyError: ")
    assert [c[0] for c in cluster.kube.calls] == [
        "create namespace",
        "apply",
        "rollout",
        "rollout",
        "delete namespace",
    ]


def test_ctrl_c_cleans_up_and_goes_on(cluster: Cluster) -> None:
    cluster.proxy_config(NS1)
    cluster.mode = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        cluster.runner().run_scenario(CATALOG.get(MISSION))
    assert cluster.kube.calls[-1] == ("delete namespace", NS1)
    assert ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"]) in cluster.kube.calls


def test_skipped_scenarios_touch_nothing(cluster: Cluster) -> None:
    runner = cluster.runner()
    no_crds = runner.run_scenario(CATALOG.get("gateway-api-http-via-egress-gateway")).result
    assert no_crds.outcome == "skipped" and "Gateway API CRDs" in no_crds.message
    cluster.recorder.aliases.remove(scenario_hosts(MISSION).external)
    stale = runner.run_scenario(CATALOG.get(MISSION)).result
    assert stale.outcome == "skipped"
    assert "does not answer to http-via-egress-gateway.egress-harness.test" in stale.message
    cluster.run.recorder = None
    no_recorder = runner.run_scenario(CATALOG.get(MISSION)).result
    assert "no recorder" in no_recorder.message
    assert cluster.kube.calls == [] and cluster.sent == []


class SpyLock:
    def __init__(self) -> None:
        self.held: list[tuple[bool, str]] = []

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool, what: str = "") -> Iterator[float]:
        self.held.append((exclusive, what))
        yield 0.0


def test_the_wildcard_scenario_holds_the_lock_alone(cluster: Cluster) -> None:
    spy = SpyLock()
    ns = "eabc123-wildcard-host-via-egress-gateway"
    cluster.proxy_config(ns, "wildcard-host-via-egress-gateway")
    runner = cluster.runner(lock=spy, converge_s=2.0)
    cluster.subset, cluster.upstream = "wildcard", scenario_hosts("wildcard-host-via-egress-gateway").external
    wildcard = runner.run_scenario(CATALOG.get("wildcard-host-via-egress-gateway")).result
    assert wildcard.outcome == "passed", wildcard.message
    cluster.proxy_config(NS1)
    cluster.subset, cluster.upstream = "external", None
    mission = runner.run_scenario(CATALOG.get(MISSION)).result
    assert mission.outcome == "passed", mission.message
    assert spy.held == [
        (True, "scenario wildcard-host-via-egress-gateway"),
        (False, f"scenario {MISSION}"),
    ]


class CallsAtLock:
    """A lock that notes what the cluster had been asked when it was taken and released."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.taken: list[list[Any]] = []
        self.released: list[list[Any]] = []

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool, what: str = "") -> Iterator[float]:
        self.taken.append(list(self.kube.calls))
        yield 0.0
        self.released.append(list(self.kube.calls))


def test_the_lock_is_held_from_the_relays_answering_to_the_objects_removal_and_the_namespace_goes_after(
    cluster: Cluster,
) -> None:
    """Relays are made outside the lock (scenarios waiting for an exclusive one get theirs ready
    meanwhile); the namespace's deletion is started on removal and awaited on the tier's exit."""
    lock = CallsAtLock(cluster.kube)
    cluster.proxy_config(NS1)
    result = cluster.runner(lock=lock).run_scenario(CATALOG.get(MISSION)).result
    assert result.outcome == "passed", result.message
    (taken,), (released,) = lock.taken, lock.released
    assert taken[-2:] == [("rollout", NS1, "proxy"), ("rollout", NS1, "target")]  # nothing applied yet
    assert released[-2:] == [
        ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"]),
        ("delete namespace", NS1),  # started, not awaited
    ]
    assert cluster.kube.awaited == [(NS1, len(cluster.kube.calls))]  # after everything, once


# --- TLS and mutual TLS scenarios through the runner ------------------------------------------------

TLS_ORIGINATION = "tls-origination-at-egress-gateway"
MTLS_ORIGINATION = "mtls-origination-at-egress-gateway"
TLS_NS = f"eabc123-{TLS_ORIGINATION}"
MTLS_NS = f"eabc123-{MTLS_ORIGINATION}"


@pytest.fixture
def tls_cluster(cluster: Cluster, tmp_path: Path) -> Cluster:
    """The stand-in run with the run's PKI and both TLS recorders."""
    cluster.run.pki = fake_pki(tmp_path / "pki")
    cluster.recorder.serves, cluster.recorder.tls_port = ("http", "tls"), 443
    mtls = StandInRecorder(mtls_recorder_aliases(CATALOG.scenarios), serves=("http", "mtls"), tls_port=443)
    cluster.run.mtls_recorder = mtls  # type: ignore[assignment]
    cluster.mtls_recorder = mtls
    return cluster


def originating(
    cluster: Cluster, scenario: str, *, subject: str | None = None, sni: str | None = None
) -> None:
    """The proxies' entries and the external host's record of TLS originated at the egress gateway."""
    cluster.subset = (
        "external-mtls-origination" if scenario == MTLS_ORIGINATION else "external-tls-origination"
    )
    cluster.sidecar_port, cluster.gateway_port, cluster.gateway_sni = 443, 443, True
    cluster.tls = lambda host: {
        "sni": sni or host,
        "version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "client_cert_subject": subject,
    }


def active(namespace: str, scenario: str) -> str:
    """The gateway's SDS secrets once it holds the scenario's credential (see credential_secrets)."""
    names = credential_names(namespace, scenario)
    if scenario == MTLS_ORIGINATION:
        name = names["client_credential_name"]
        return sds_dump([f"kubernetes://{name}", f"kubernetes://{name}-cacert"])
    return sds_dump([f"kubernetes://{names['ca_credential_name']}-cacert"])


def test_tls_origination_runs_with_its_ca_secret_and_is_judged_at_the_external_host(
    tls_cluster: Cluster,
) -> None:
    cluster = tls_cluster
    cluster.proxy_config(TLS_NS, TLS_ORIGINATION, secrets=active(TLS_NS, TLS_ORIGINATION))
    originating(cluster, TLS_ORIGINATION)
    result = cluster.runner().run_scenario(CATALOG.get(TLS_ORIGINATION)).result
    assert result.outcome == "passed", result.message
    host = scenario_hosts(TLS_ORIGINATION).external
    assert result.message.endswith(f"-> external host (called from 172.18.0.2) over TLSv1.3, SNI {host}")
    calls = cluster.kube.calls
    # the relays trust the run's CA: its ConfigMap comes first in their namespace
    assert calls[1] == (
        "apply",
        TLS_NS,
        ["ConfigMap", "Deployment", "Service", "Deployment", "Service", "VirtualService"],
    )
    # the Secret right before the scenario, and deleted after the scenario's objects, before the namespace
    assert calls[4] == ("apply", "istio-system", ["Secret"])
    assert calls[5] == (
        "apply",
        TLS_NS,
        ["ServiceEntry", "Gateway", "DestinationRule", "DestinationRule", "VirtualService"],
    )
    assert calls[-3:] == [
        ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "DestinationRule", "VirtualService"]),
        ("delete", ["Secret"]),
        ("delete namespace", TLS_NS),
    ]
    secret_reads = [c for c in cluster.fakebin.commands() if " proxy-config secret " in c]
    assert secret_reads and secret_reads[0].startswith(
        "istioctl proxy-config secret gw-1.istio-system -o json"
    )


def test_mtls_origination_is_judged_at_the_mtls_recorder_by_its_client_certificate(
    tls_cluster: Cluster,
) -> None:
    cluster = tls_cluster
    cluster.proxy_config(MTLS_NS, MTLS_ORIGINATION, secrets=active(MTLS_NS, MTLS_ORIGINATION))
    originating(cluster, MTLS_ORIGINATION, subject=CLIENT_SUBJECT)
    result = cluster.runner().run_scenario(CATALOG.get(MTLS_ORIGINATION)).result
    assert result.outcome == "passed", result.message
    host = scenario_hosts(MTLS_ORIGINATION).mtls
    assert result.message.endswith(f"over TLSv1.3, SNI {host}, client certificate {CLIENT_SUBJECT}")
    # to the mTLS recorder's name for the scenario, judged from its records, not the other recorder's
    assert unwrap_chain(cluster.sent[-1], levels=2)[-1].split("?egh-token=")[0] == f"http://{host}:80/get"
    assert cluster.mtls_recorder is not None and len(cluster.mtls_recorder.seen) == 1
    assert cluster.recorder.seen == {}
    applied = [c for c in cluster.kube.calls if c[0] == "apply"]
    assert applied[1] == ("apply", "istio-system", ["Secret"])
    assert cluster.kube.calls[-3:-1] == [
        ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "DestinationRule", "VirtualService"]),
        ("delete", ["Secret"]),
    ]
    rendered = (cluster.run.run_dir / "scenarios" / MTLS_ORIGINATION / "manifests.yaml").read_text()
    name = credential_names(MTLS_NS, MTLS_ORIGINATION)["client_credential_name"]
    assert f"credentialName: {name}" in rendered and f"host: {host}" in rendered


@pytest.mark.parametrize(
    ("scenario", "subject", "sni", "expected"),
    [
        (
            TLS_ORIGINATION,
            None,
            "wrong.egress-harness.test",
            r"with SNI 'wrong\.egress-harness\.test', expected",
        ),
        (MTLS_ORIGINATION, None, None, "with no client certificate, expected the run's client certificate"),
        (MTLS_ORIGINATION, "CN=intruder,O=x", None, "with client certificate 'CN=intruder,O=x'"),
    ],
)
def test_tls_evidence_that_does_not_hold_fails_at_the_external_host_and_cleans_up(
    tls_cluster: Cluster, scenario: str, subject: str | None, sni: str | None, expected: str
) -> None:
    cluster = tls_cluster
    ns = scenario_namespace_name("eabc123", scenario)
    cluster.proxy_config(ns, scenario, secrets=active(ns, scenario))
    originating(cluster, scenario, subject=subject, sni=sni)
    result = cluster.runner().run_scenario(CATALOG.get(scenario)).result
    assert (result.outcome, result.hop) == ("failed", "external host")
    assert result.message.startswith("hop 'external host': the request x-request-id=rid-")
    assert re.search(expected, result.message), result.message
    assert cluster.kube.calls[-2:] == [("delete", ["Secret"]), ("delete namespace", ns)]


def test_a_tls_request_from_elsewhere_says_what_handshakes_failed(tls_cluster: Cluster) -> None:
    cluster = tls_cluster
    cluster.proxy_config(MTLS_NS, MTLS_ORIGINATION, secrets=active(MTLS_NS, MTLS_ORIGINATION))
    originating(cluster, MTLS_ORIGINATION, subject=CLIENT_SUBJECT)
    cluster.caller = "172.18.0.9"  # not the gateway's node
    host = scenario_hosts(MTLS_ORIGINATION).mtls
    assert cluster.mtls_recorder is not None
    cluster.mtls_recorder.failures = [
        {
            "client_ip": "172.18.0.3",
            "client_port": 40000,
            "sni": host,
            "error": "peer did not return a certificate",
        }
    ]
    result = cluster.runner().run_scenario(CATALOG.get(MTLS_ORIGINATION)).result
    assert (result.outcome, result.hop) == ("failed", "external host")
    assert "not from the egress gateway (172.18.0.2)" in result.message
    assert f"1 failed TLS handshake(s) for {host}" in result.message
    assert "peer did not return a certificate" in result.message


def test_a_credential_the_gateway_never_loads_fails_naming_the_secret(tls_cluster: Cluster) -> None:
    cluster = tls_cluster
    name = credential_names(TLS_NS, TLS_ORIGINATION)["ca_credential_name"]
    cluster.proxy_config(TLS_NS, TLS_ORIGINATION, secrets=sds_dump([], [f"kubernetes://{name}-cacert"]))
    originating(cluster, TLS_ORIGINATION)
    result = cluster.runner(converge_s=1.0).run_scenario(CATALOG.get(TLS_ORIGINATION)).result
    assert result.outcome == "failed"
    assert f"Secret istio-system/{name} (requires.server_ca_credential)" in result.message
    assert f"kubernetes://{name}-cacert warming" in result.message
    assert cluster.kube.calls[-2:] == [("delete", ["Secret"]), ("delete namespace", TLS_NS)]
    assert cluster.sent and all(
        u.endswith("%2Fhealthz") or "healthz" in u for u in cluster.sent
    )  # no request sent


def test_tls_scenarios_without_the_recorder_they_need_are_skipped(tls_cluster: Cluster) -> None:
    cluster = tls_cluster
    runner = cluster.runner()
    assert cluster.mtls_recorder is not None
    cluster.mtls_recorder.aliases.remove(scenario_hosts(MTLS_ORIGINATION).mtls)
    stale = runner.run_scenario(CATALOG.get(MTLS_ORIGINATION)).result
    assert stale.outcome == "skipped"
    assert f"the mTLS recorder does not answer to {scenario_hosts(MTLS_ORIGINATION).mtls}" in stale.message
    cluster.run.mtls_recorder = None
    none = runner.run_scenario(CATALOG.get(MTLS_ORIGINATION)).result
    assert none.outcome == "skipped"
    assert "needs an external host that serves MTLS" in none.message
    assert "no recorder that requires client certificates" in none.message
    assert cluster.kube.calls == [] and cluster.sent == []


def test_catalog_results_turn_a_crash_into_an_error_and_go_on() -> None:
    def run_one(scenario: Any) -> ScenarioResult:
        if scenario.name == "registry-only-blocked":
            raise ValueError("boom")
        return ScenarioResult(scenario.name, "after", "1.30.3", "passed")

    scenarios = [
        CATALOG.get(MISSION),
        CATALOG.get("registry-only-blocked"),
        CATALOG.get("sidecar-only-egress"),
    ]
    results = catalog_results(scenarios, run_one, phase="after", version="1.30.3")
    assert [(r.scenario, r.outcome, r.message) for r in results] == [
        (MISSION, "passed", ""),
        ("registry-only-blocked", "error", "ValueError: boom"),
        ("sidecar-only-egress", "passed", ""),
    ]


# --- the upgrade's catalog adapter -------------------------------------------------------------------


def base_state(tmp_path: Path) -> RunState:
    return RunState(
        run_id="abc123",
        run_dir=tmp_path,
        kubeconfig=tmp_path / "kubeconfig",
        context="kind-egress-upgrade-abc123",
        cluster="kind",
        cluster_name="egress-upgrade-abc123",
        cluster_created=False,
        istio_version="1.29.6",
        istio_installed=False,
        access_log_encoding="TEXT",
        outbound_traffic_policy="ALLOW_ANY",
        ingress_url="http://127.0.0.1:18081",
        namespace="egress-harness-upgrade",
        namespace_created=False,
        ingress_gateway="egress-harness-upgrade/relay-gateway",
        relay_image="istio-egress-harness/relay:dev",
        external="container",
        external_host="external.egress-harness.test",
        pod_source_nat=True,
        recorder=RecorderState("rec", "img", "kind", 80, tuple(recorder_aliases(CATALOG.names()))),
    )


def test_the_upgrade_adapter_runs_each_phase_on_that_phases_istio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = UpgradePlan("1.29.6", "1.30.3", "canary")
    states: list[RunState] = []
    runners: list[dict[str, Any]] = []
    prepared: list[str] = []

    @contextlib.contextmanager
    def run_factory(options: E2EOptions, run_dir: Path, state: RunState) -> Iterator[Any]:
        states.append(state)
        yield f"run on {state.istio_version}"

    class FakeRunner:
        def __init__(self, run: Any, **kw: Any) -> None:
            runners.append({"run": run, **kw})
            self.phase = kw["phase"]

        def run_scenario(self, scenario: Any, *, test_id: str | None = None) -> ScenarioReport:
            version = "1.29.6" if self.phase == "before" else "1.30.3"
            return ScenarioReport(
                ScenarioResult(scenario.name, self.phase, version, "passed", test_id or ""), "ns"
            )

    def prepare(self: UpgradeCatalog, run: Any) -> str:
        prepared.append(run)
        self.probe_url = "http://probe"
        return self.probe_url

    monkeypatch.setattr(UpgradeCatalog, "prepare", prepare)
    scenarios = [CATALOG.get(MISSION), CATALOG.get("sidecar-only-egress")]
    adapter = UpgradeCatalog(
        scenarios,
        plan,
        base=base_state(tmp_path),
        options=E2EOptions(istio_version="1.29.6"),
        run_dir=tmp_path / "catalog",
        run_factory=run_factory,
        runner_factory=FakeRunner,
    )
    before = adapter("before", "1.29.6")
    after = adapter("after", "1.30.3")
    assert [(r.scenario, r.phase, r.istio_version) for r in before + after] == [
        (MISSION, "before", "1.29.6"),
        ("sidecar-only-egress", "before", "1.29.6"),
        (MISSION, "after", "1.30.3"),
        ("sidecar-only-egress", "after", "1.30.3"),
    ]
    assert before[0].message == f"upgrade-before-1.29.6-{MISSION}"
    assert [s.istio_version for s in states] == ["1.29.6", "1.30.3"]
    assert {s.namespace for s in states} == {"egress-harness-upgrade"}
    assert prepared == ["run on 1.29.6"]  # the prober's chain is set up once
    assert [(r["phase"], r["namespace_labels"], r["namespace_prefix"]) for r in runners] == [
        ("before", {"istio.io/rev": "1-29-6"}, "uabc123-before"),
        ("after", {"istio.io/rev": "1-30-3"}, "uabc123-after"),
    ]
    assert adapter.phases == [("before", "1.29.6"), ("after", "1.30.3")]


def test_the_probe_needs_the_chain_first_then_sends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []

    class FakeTraffic:
        def __init__(self, **kw: Any) -> None:
            self.closed = False

        def send(self, url: str) -> ChainResponse:
            sent.append(url)
            return response(200)

        def close(self) -> None:
            sent.append("closed")

    monkeypatch.setattr(cluster_runner, "Traffic", FakeTraffic)
    adapter = UpgradeCatalog(
        [], UpgradePlan("1.29.6", "1.30.3"), base=base_state(tmp_path), options=E2EOptions(), run_dir=tmp_path
    )
    with pytest.raises(E2EError, match="before the catalog's first phase"):
        adapter.probe()
    adapter.probe_url = "http://127.0.0.1:18081/proxy?url=x"
    assert adapter.probe().status == 200
    adapter.close()
    assert sent == ["http://127.0.0.1:18081/proxy?url=x", "closed"]


def test_prepare_puts_the_relays_and_the_mission_into_the_upgrade_namespace(
    cluster: Cluster, tmp_path: Path
) -> None:
    ns = "egress-harness-upgrade"
    cluster.run.namespace = ns
    cluster.proxy_config(ns)
    needles = convergence_markers(docs_of(MISSION, ns), ns)
    cluster.fakebin.rules(
        [
            {"tool": "istioctl", "args": ["analyze"], "stdout": "ok\n"},
            synced_rule(f"target-1.{ns}", "gw-1.istio-system"),
            {
                "tool": "istioctl",
                "args": ["proxy-config", "all"],
                "stdout": " ".join(m.needle for m in needles),
            },
        ]
    )
    adapter = UpgradeCatalog(
        [],
        UpgradePlan("1.29.6", "1.30.3"),
        base=base_state(tmp_path),
        options=E2EOptions(),
        run_dir=tmp_path,
        mission=CATALOG.get(MISSION),
    )
    url = adapter.prepare(cluster.run)
    kinds = [c for c in cluster.kube.calls if c[0] == "apply"]
    assert kinds[0][1:] == (
        ns,
        ["Deployment", "Service", "Deployment", "Service", "Gateway", "VirtualService"],
    )
    assert kinds[1][1:] == (ns, ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"])
    assert unwrap_chain(url, levels=2) == [
        "http://127.0.0.1:18080/proxy",
        f"http://target.{ns}.svc.cluster.local:8080/proxy",
        "http://external.egress-harness.test:80/get",
    ]
    # issue 14: the prober sends the run's token (the route requires it), and the relays may fetch the
    # mission's host, which the saved manifest lists while it hides the token
    assert adapter.probe_headers["x-egress-harness-token"] == cluster.run.ingress_token
    saved = (cluster.run.run_dir / "manifests" / "relay.yaml").read_text()
    assert "external.egress-harness.test:80" in saved and cluster.run.ingress_token not in saved


# --- the upgrade's verdict ---------------------------------------------------------------------------


def prober(successes: int, total: int = 100) -> ProberStats:
    return ProberStats("chain", total, successes, 0.95, 0.2, "2026-01-01T00:00:00.000Z", 60.0)


def upgrade_result(**kw: Any) -> RunResult:
    scenarios = kw.pop(
        "scenarios",
        [
            ScenarioResult(MISSION, "before", "1.29.6", "passed", proxy_versions=["1.29.6"]),
            ScenarioResult(MISSION, "after", "1.30.3", "passed", proxy_versions=["1.30.3"]),
        ],
    )
    return RunResult(
        "u1", "2026-01-01T00:00:00.000Z", ["1.29.6", "1.30.3"], "canary", scenarios=scenarios, **kw
    )


def test_upgrade_problems_name_regressions_the_prober_stale_proxies_and_failed_steps() -> None:
    assert upgrade_problems(upgrade_result(prober=prober(99)), "1.30.3") == []
    assert upgrade_problems(upgrade_result(), "1.30.3") == ["no traffic was probed during the upgrade"]
    assert upgrade_problems(upgrade_result(prober=prober(90)), "1.30.3") == [
        "prober: FAILED: 90/100 succeeded (90.0%; threshold 95%), longest outage 0.0s"
    ]
    regressed = upgrade_result(
        prober=prober(100),
        scenarios=[
            ScenarioResult(MISSION, "before", "1.29.6", "passed"),
            ScenarioResult(
                MISSION,
                "after",
                "1.30.3",
                "failed",
                "hop 'egress gateway': no entry",
                hop="egress gateway",
                proxy_versions=["1.29.6", "1.30.3"],
            ),
        ],
    )
    assert upgrade_problems(regressed, "1.30.3") == [
        f"{MISSION} regressed: passed on 1.29.6, failed on 1.30.3 at hop 'egress gateway': hop 'egress gateway': no entry",
        f"{MISSION}: proxies report 1.29.6 after the upgrade, not 1.30.3",
    ]
    failed = upgrade_result(
        prober=prober(100),
        steps=[StepResult("upgrade", "verify gateway and proxies", "failed", "pod x runs 1.29.6")],
        scenarios=[ScenarioResult(MISSION, "after", "1.30.3", "skipped", "not run")],
    )
    assert upgrade_problems(failed, "1.30.3") == [
        "phase upgrade, step verify gateway and proxies failed: pod x runs 1.29.6"
    ]
    nothing = upgrade_result(
        prober=prober(100), scenarios=[ScenarioResult(MISSION, "after", "1.30.3", "skipped")]
    )
    assert upgrade_problems(nothing, "1.30.3") == ["no scenario ran after the upgrade"]


def test_object_refs_of_installed_crds_survive_the_state(tmp_path: Path) -> None:
    state = dataclasses.replace(
        base_state(tmp_path),
        gateway_api=True,
        gateway_api_objects=(
            ObjectRef("apiextensions.k8s.io/v1", "CustomResourceDefinition", "gateways.x", None),
        ),
    )
    assert RunState.from_dict(state.to_dict()) == state


# --- the Gateway API CRDs ----------------------------------------------------------------------------

GATEWAY_API_YAML = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: httproutes.gateway.networking.k8s.io}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gateways.gateway.networking.k8s.io}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: safe-upgrades.gateway.networking.k8s.io}
"""


class NotFound(Exception):
    status = 404


class CrdKube:
    """CRDs on a stand-in API server: ``get`` by name, established after ``polls`` reads."""

    def __init__(self, present: set[str] | None = None, polls: int = 0) -> None:
        self.present = set(present or ())
        self.polls = polls
        self.calls: list[tuple[Any, ...]] = []
        self.dynamic = self
        self.resources = self

    def get(self, **kw: Any) -> Any:
        if "kind" in kw:  # resources.get(api_version=..., kind=...)
            return self
        name = kw["name"]
        if name not in self.present:
            raise NotFound(name)
        self.polls -= 1
        established = "True" if self.polls < 0 else "False"
        return {"status": {"conditions": [{"type": "Established", "status": established}]}}

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]:
        docs = split_documents(text)
        self.calls.append(("apply", [d["metadata"]["name"] for d in docs]))
        self.present |= {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
        return [ObjectRef(d["apiVersion"], d["kind"], d["metadata"]["name"], None) for d in docs]

    def delete_objects(self, refs: list[ObjectRef]) -> None:
        self.calls.append(("delete", [r.name for r in refs]))


def test_gateway_api_crds_are_installed_awaited_and_removed_only_when_asked(tmp_path: Path) -> None:
    cache = tmp_path / "standard-install.yaml"
    cache.write_text(GATEWAY_API_YAML)
    kube = CrdKube(polls=2)
    crds = GatewayApiCrds(kube, cache=cache, remove=lambda: False)
    with crds:
        assert crds.installed and kube.calls == [
            (
                "apply",
                [
                    "httproutes.gateway.networking.k8s.io",
                    "gateways.gateway.networking.k8s.io",
                    "safe-upgrades.gateway.networking.k8s.io",
                ],
            )
        ]
    assert kube.calls[-1][0] == "apply"  # the cluster goes anyway: nothing removed one by one
    kube = CrdKube()
    with GatewayApiCrds(kube, cache=cache, remove=lambda: True):
        pass
    assert kube.calls[-1] == (
        "delete",
        [
            "httproutes.gateway.networking.k8s.io",
            "gateways.gateway.networking.k8s.io",
            "safe-upgrades.gateway.networking.k8s.io",
        ],
    )


def test_gateway_api_crds_already_there_are_used_and_never_removed(tmp_path: Path) -> None:
    kube = CrdKube(present={"httproutes.gateway.networking.k8s.io"})
    with GatewayApiCrds(kube, cache=tmp_path / "absent.yaml", remove=lambda: True) as crds:
        assert not crds.installed
    assert kube.calls == []  # nothing downloaded, applied or deleted


def test_crds_that_never_get_established_are_removed_again(tmp_path: Path) -> None:
    cache = tmp_path / "standard-install.yaml"
    cache.write_text(GATEWAY_API_YAML)
    kube = CrdKube(polls=10_000)
    with pytest.raises(
        E2EError, match=r"Gateway API CRDs: not done after 0\.05s; last state: not established"
    ):
        GatewayApiCrds(kube, cache=cache, timeout_s=0.05).install()
    assert kube.calls[-1][0] == "delete"


def test_the_gateway_api_manifest_is_downloaded_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    fetched: list[str] = []

    def get(url: str, **kw: Any) -> httpx.Response:
        fetched.append(url)
        body = GATEWAY_API_YAML if "standard" in url else "<html>not found</html>"
        return httpx.Response(200, text=body, request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", get)
    cache = tmp_path / "cache" / "standard-install.yaml"
    url = GATEWAY_API_CRDS_URL
    assert url.endswith("/v1.5.1/standard-install.yaml")
    assert fetch_gateway_api_crds(url, cache) == GATEWAY_API_YAML
    assert fetch_gateway_api_crds(url, cache) == GATEWAY_API_YAML
    assert fetched == [url] and cache.read_text() == GATEWAY_API_YAML
    with pytest.raises(E2EError, match="holds no CustomResourceDefinition"):
        fetch_gateway_api_crds("https://mirror.example/other.yaml", tmp_path / "other.yaml")
    monkeypatch.setenv(GATEWAY_API_URL_ENV, "https://mirror.example/standard-install.yaml")
    assert gateway_api_url() == "https://mirror.example/standard-install.yaml"


def test_evidence_waits_follow_the_flush_interval_of_the_install(tmp_path: Path) -> None:
    """Where the harness installed Istio 1.29+ (fileFlushInterval 100 ms) a request's settle time and
    absence window are half a second; elsewhere (1.28, or an Istio the harness did not install)
    they stay at two seconds for Envoy's one-second flush."""
    from harness.cluster.tier import SCENARIO_WAIT, ClusterTier
    from tests.unit.test_e2e_cli import state_of

    def tier(version: str, installed: bool) -> ClusterTier:
        run = started_run(tmp_path)
        run.state = dataclasses.replace(state_of(tmp_path), istio_version=version, istio_installed=installed)
        run.options = dataclasses.replace(run.options, istio_version=version)
        return ClusterTier(run, lock=SpyLock())  # type: ignore[arg-type]

    fast = tier("1.31-dev", installed=True)
    assert fast.flush_interval_s == 0.1 and fast.wait.settle == 0.5 and fast.wait.interval == 0.1
    assert tier("1.28.10", installed=True).wait == SCENARIO_WAIT
    assert tier("1.31-dev", installed=False).wait == SCENARIO_WAIT


def resolve_requests(scenario: Any, context: RenderContext) -> list[Any]:
    return [render_request(r, context, source=scenario.file) for r in scenario.requests]
