"""The cluster tier's run without a cluster (harness.cluster: run, namespace, chain, convergence,
credentials, witness): the chain, readiness, callers, convergence markers, scenario
analyze/apply/converge/remove (fake ``istioctl``) and a judged request against stand-in pods, TLS
credentials and evidence, and the order in which a run sets up and tears down its parts (also when a
step fails)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from harness.cluster import (
    EXTERNAL_ALIAS,
    ChainNotReadyError,
    ConfigMarker,
    ConvergenceError,
    E2EError,
    E2EOptions,
    E2ERun,
    RecorderState,
    RunDiagnostics,
    RunState,
    caller_addresses,
    chain_for,
    check_tls_record,
    convergence_markers,
    credential_names,
    credential_secrets,
    expects_external_tls,
    gatewayapi,
    handshake_hint,
    load_pki,
    missing_markers,
    missing_sds_resources,
    mtls_recorder_aliases,
    pki_server_names,
    recorder_aliases,
    recorder_serves,
    recorder_state,
    scenario_hosts,
    sds_secret_states,
    send_until_answered,
)
from harness.cluster import namespace as cluster_namespace
from harness.cluster import run as cluster_run
from harness.cluster.convergence import OUTBOUND_POLICY_SIDECAR, outbound_policy_sidecar
from harness.cluster.external import TLS_CERT, TLS_CLIENT_CA, TLS_KEY, NameTakenError, RecorderTLS
from harness.cluster.kube import ObjectRef, split_documents
from harness.cluster.providers.kind import ExistingCluster
from harness.common import tools
from harness.common.certs import Issued, PkiError, TestPKI, b64, generate_pki, openssl_unavailable_reason
from harness.common.traffic import ChainResponse, Hop, TrafficError, unwrap_chain
from harness.evidence import EvidenceError, Wait
from harness.evidence.external import ExternalEvidenceError
from harness.scenarios import RenderContext, load_catalog, render_request, render_scenario
from harness.scenarios.preflight import AnalyzeError
from tests.unit.accesslog_samples import GATEWAY_TO_EXTERNAL, SIDECAR_PASSTHROUGH, SIDECAR_TO_GATEWAY, on_path
from tests.unit.proxystatus import synced_rule
from tests.unit.test_preflight import ANALYZE_ERRORS

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "scenarios")
NS = "egress-abc123"


def response(
    status: int = 200, services: tuple[str, ...] = ("proxy", "target"), rid: str = "rid-1"
) -> ChainResponse:
    hops = tuple(Hop(s, "http://x", status, 1.0) for s in services)
    return ChainResponse("http://x", rid, status, httpx.Headers(), "{}", {}, 0.01, hops)


CLIENT_SUBJECT = "CN=egress-harness-client,O=istio-egress-harness"


def fake_pki(directory: Path) -> TestPKI:
    """A stand-in for the run's PKI (no openssl): files in ``directory``, bytes that name what they are."""
    directory.mkdir(parents=True, exist_ok=True)

    def issued(stem: str, subject: str, alt: tuple[str, ...] = ()) -> Issued:
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(f"{stem.upper()} PEM".encode())
        key.write_bytes(f"{stem.upper()} KEY".encode())
        return Issued(cert, key, cert.read_bytes(), key.read_bytes(), subject, alt)

    return TestPKI(
        directory,
        issued("ca", "CN=egress-harness test CA,O=istio-egress-harness"),
        issued(
            "server", "CN=external.egress-harness.test,O=istio-egress-harness", ("DNS:*.egress-harness.test",)
        ),
        issued("client", CLIENT_SUBJECT),
    )


# --- options ------------------------------------------------------------------------------------


def test_options_defaults_and_hosts() -> None:
    o = E2EOptions(istio_version="1.30.3")
    assert o.problems() == []
    assert o.host == "external.egress-harness.test"
    assert E2EOptions(istio_version="1.30.3", external="internet").host == "httpbin.org"
    assert E2EOptions(istio_version="1.30.3", external_host="example.com").host == "example.com"


def test_options_name_what_an_existing_cluster_needs(tmp_path: Path) -> None:
    o = E2EOptions(istio_version="1.30.3", kubeconfig=tmp_path / "kc")
    text = " | ".join(o.problems())
    assert "--external internet" in text
    assert "EGRESS_HARNESS_RELAY_IMAGE" in text
    assert "EGRESS_HARNESS_INGRESS_URL" in text
    ok = E2EOptions(
        istio_version="1.27.0",  # an existing cluster may run another Istio
        kubeconfig=tmp_path / "kc",
        external="internet",
        relay_image="reg/relay:1",
        ingress_url="http://127.0.0.1:8080",
    )
    assert ok.problems() == []
    bad = E2EOptions(istio_version="1.0.0", access_log_encoding="XML")
    assert len(bad.problems()) == 2


# --- the chain ----------------------------------------------------------------------------------


def test_chain_goes_ingress_proxy_target_external() -> None:
    url = chain_for("http://127.0.0.1:18080/", NS, "http://external.egress-harness.test:80/get")
    assert unwrap_chain(url, levels=2) == [
        "http://127.0.0.1:18080/proxy",
        f"http://target.{NS}.svc.cluster.local:8080/proxy",
        "http://external.egress-harness.test:80/get",
    ]
    assert parse_qs(urlsplit(url).query)["url"][0].startswith(f"http://target.{NS}.svc")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_send_until_answered_retries_until_both_relays_answer() -> None:
    answers: list[Any] = [
        TrafficError("u", "r0", httpx.ConnectError("refused")),
        response(404, services=()),  # the ingress has no route yet
        response(503, services=("proxy",)),  # proxy up, target not yet
        response(200, rid="rid-final"),
    ]
    t = FakeTime()

    def send() -> ChainResponse:
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, ChainResponse)
        return item

    result = send_until_answered(send, deadline_s=30, interval_s=1, clock=t.clock, sleep=t.sleep)
    assert result.attempts == 4
    assert result.request_id == "rid-final"
    assert result.waited_s == 3.0
    assert t.sleeps == [1, 1, 1]


def test_a_failing_external_hop_still_counts_as_an_answer() -> None:
    # the chain is up; what the external hop did is the subject of the test, not a readiness problem
    result = send_until_answered(lambda: response(502), deadline_s=1)
    assert result.response.status == 502 and result.attempts == 1


def test_send_until_answered_gives_up_at_the_deadline_with_the_last_state() -> None:
    t = FakeTime()
    with pytest.raises(ChainNotReadyError, match=r"within 5s \(6 attempts\); last: HTTP 404"):
        send_until_answered(lambda: response(404, services=()), deadline_s=5, clock=t.clock, sleep=t.sleep)


# --- callers --------------------------------------------------------------------------------------


def pod(name: str, pod_ip: str, host_ip: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
        "spec": {"containers": [{"name": "istio-proxy"}]},
        "status": {
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "containerStatuses": [{"name": "istio-proxy", "restartCount": 0, "state": {"running": {}}}],
        },
    }


def test_callers_are_pod_addresses_or_node_addresses_under_source_nat() -> None:
    pods = [pod("gw-1", "10.244.0.7", "172.18.0.2"), pod("gw-2", "10.244.1.7", "172.18.0.3")]
    assert caller_addresses(pods, source_nat=False) == {"10.244.0.7", "10.244.1.7"}
    assert caller_addresses(pods, source_nat=True) == {"172.18.0.2", "172.18.0.3"}


# --- convergence markers --------------------------------------------------------------------------


def rendered_docs(name: str) -> list[dict[str, Any]]:
    ctx = RenderContext(istio_version="1.30.3", namespace=NS)
    return [dict(d.body) for d in render_scenario(CATALOG.get(name), ctx).documents]


def test_markers_of_the_mission_scenario() -> None:
    markers = convergence_markers(rendered_docs("http-via-egress-gateway"), NS)
    assert markers == [
        ConfigMarker(
            "sidecar",
            '"outbound|80||external.egress-harness.test"',
            "cluster outbound|80||external.egress-harness.test (ServiceEntry external-http)",
        ),
        ConfigMarker(
            "sidecar",
            f'/namespaces/{NS}/destination-rule/egress-gateway-external"',
            f"DestinationRule {NS}/egress-gateway-external",
        ),
        ConfigMarker(
            "sidecar",
            f'/namespaces/{NS}/virtual-service/external-via-egress-gateway"',
            f"VirtualService {NS}/external-via-egress-gateway (mesh)",
        ),
        ConfigMarker(
            "gateway",
            f'/namespaces/{NS}/virtual-service/external-via-egress-gateway"',
            f"VirtualService {NS}/external-via-egress-gateway (egress gateway)",
        ),
    ]


def test_a_virtual_service_on_another_gateway_adds_no_gateway_marker() -> None:
    docs = split_documents((REPO / "manifests" / "apps" / "relay.yaml").read_text())
    assert (
        convergence_markers(docs, NS) == []
    )  # the ingress route: neither our sidecar nor the egress gateway


def test_missing_markers_in_both_directions() -> None:
    m = [ConfigMarker("sidecar", "A", "a"), ConfigMarker("gateway", "B", "b")]
    assert missing_markers(m, {"sidecar": ["xAx", "A"], "gateway": ["B"]}) == []
    assert missing_markers(m, {"sidecar": ["xAx", "-"], "gateway": ["B"]}) == [m[0]]  # every replica
    assert missing_markers(m, {"sidecar": [], "gateway": ["B"]}) == [m[0]]  # no pod: not converged
    assert missing_markers(m, {"sidecar": ["-"], "gateway": ["-"]}, present=False) == []
    assert missing_markers(m, {"sidecar": ["-"], "gateway": ["B"]}, present=False) == [m[1]]


# --- a run against stand-ins ----------------------------------------------------------------------


@dataclass
class Raw:
    data: bytes


class StandInKube:
    """Pods of the run namespace and istio-system, their istio-proxy logs, and what was applied."""

    def __init__(self) -> None:
        self.pods = {
            (NS, "app=target"): [pod("target-1", "10.244.0.12", "172.18.0.2", app="target")],
            ("istio-system", "istio=egressgateway"): [pod("gw-1", "10.244.0.7", "172.18.0.2")],
        }
        self.logs: dict[str, list[str]] = {"target-1": [], "gw-1": []}
        self.calls: list[tuple[Any, ...]] = []

    @property
    def core(self) -> StandInKube:
        return self

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.pods.get((namespace, selector), [])

    def read_namespaced_pod_log(self, **kw: Any) -> Raw:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return Raw("".join(f"{stamp} {line}\n" for line in self.logs[kw["name"]]).encode())

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]:
        docs = split_documents(text)
        self.calls.append(("apply", namespace, [d["kind"] for d in docs]))
        return [ObjectRef(d["apiVersion"], d["kind"], d["metadata"]["name"], namespace) for d in docs]

    def delete_objects(self, refs: list[ObjectRef]) -> None:
        self.calls.append(("delete", [r.kind for r in refs]))


@pytest.fixture
def standin_run(tmp_path: Path, fakebin: Any) -> tuple[E2ERun, StandInKube]:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    kube = StandInKube()
    run.kube = kube  # type: ignore[assignment]
    run.istioctl = "istioctl"
    run.cluster = ExistingCluster(tmp_path / "kubeconfig", "kind-egress")
    run.ingress_url = "http://127.0.0.1:18080"
    run.converge_interval_s = 0.01
    return run, kube


def converging_rules(full: str, empty_polls: int = 1) -> list[dict[str, Any]]:
    """analyze is clean; the proxies show nothing for ``empty_polls`` polls, then ``full``, then nothing."""
    pc = ["proxy-config", "all"]
    return [
        {"tool": "istioctl", "args": ["analyze"], "stdout": "✔ No validation issues found.\n"},
        synced_rule(f"target-1.{NS}", "gw-1.istio-system"),
        {"tool": "istioctl", "args": pc, "times": 2 * empty_polls, "stdout": "{}"},
        {"tool": "istioctl", "args": pc, "times": 2, "stdout": full},
        {"tool": "istioctl", "args": pc, "stdout": "{}"},
    ]


def full_dump() -> str:
    return " ".join(m.needle for m in convergence_markers(rendered_docs("http-via-egress-gateway"), NS))


def test_apply_scenario_renders_analyzes_applies_and_waits_for_the_proxies(
    standin_run: tuple[E2ERun, StandInKube], fakebin: Any
) -> None:
    run, kube = standin_run
    fakebin.rules(converging_rules(full_dump()))
    scenario = CATALOG.get("http-via-egress-gateway")
    with run.scenario(scenario) as applied:
        assert applied.manifest == run.run_dir / "scenarios" / "http-via-egress-gateway" / "manifests.yaml"
        assert f"namespace: {NS}" in applied.manifest.read_text()
        assert kube.calls == [("apply", NS, ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"])]
        assert f"converge:{scenario.name}" in run.timings
        assert len(applied.markers) == 4
    assert kube.calls[-1] == ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"])
    assert applied.removed
    cmds = fakebin.commands()
    assert cmds[0].startswith("istioctl analyze --kubeconfig")
    assert f" -n {NS} " in cmds[0] and cmds[0].endswith(f" {applied.manifest}")
    # two polls of both proxies to converge, one to see everything gone
    polled = [c.split()[3] for c in cmds[1:] if " proxy-config " in c]
    assert polled == [f"target-1.{NS}", "gw-1.istio-system"] * 3
    # then istiod's sync status: both proxies ACKed a push sent after the apply
    assert [c.split()[1:4] for c in cmds[1:] if " proxy-status " in c] == [["proxy-status", "-o", "json"]]
    assert all("--context kind-egress" in c for c in cmds)


def test_a_scenario_the_proxies_never_take_times_out_naming_what_is_missing(
    standin_run: tuple[E2ERun, StandInKube], fakebin: Any
) -> None:
    run, _ = standin_run
    fakebin.rules(converging_rules(full_dump(), empty_polls=10_000))
    with pytest.raises(ConvergenceError, match=r"VirtualService egress-abc123/external-via-egress-gateway"):
        run.apply_scenario(CATALOG.get("http-via-egress-gateway"), wait_s=0.3)


def test_analyze_errors_stop_the_scenario_before_it_is_applied(
    standin_run: tuple[E2ERun, StandInKube], fakebin: Any
) -> None:
    run, kube = standin_run
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stdout": ANALYZE_ERRORS, "exit": 79}])
    with pytest.raises(AnalyzeError):
        run.apply_scenario(CATALOG.get("http-via-egress-gateway"))
    assert kube.calls == []


def test_a_scenario_for_the_other_outbound_policy_gets_a_namespace_sidecar_with_it(
    standin_run: tuple[E2ERun, StandInKube], fakebin: Any
) -> None:
    """REGISTRY_ONLY scenarios on an ALLOW_ANY install (the default): before, they were skipped in
    every default run; now the scenario's namespace gets a Sidecar with that policy, applied and
    removed with the scenario's objects, and the run waits until the sidecar routes by it."""
    run, kube = standin_run
    scenario = CATALOG.get("registry-only-blocked")
    assert run.skip_reason(scenario) is None
    docs = [*rendered_docs("registry-only-blocked"), outbound_policy_sidecar(NS, "REGISTRY_ONLY")]
    fakebin.rules(converging_rules(" ".join(m.needle for m in convergence_markers(docs, NS))))
    with run.scenario(scenario) as applied:
        assert kube.calls == [("apply", NS, ["ServiceEntry", "Sidecar"])]
        sidecar = split_documents(applied.manifest.read_text())[-1]
        assert sidecar["metadata"]["name"] == OUTBOUND_POLICY_SIDECAR
        assert sidecar["spec"]["outboundTrafficPolicy"] == {"mode": "REGISTRY_ONLY"}
        assert any(m.needle == '"block_all"' for m in applied.markers)
    assert kube.calls[-1] == ("delete", ["ServiceEntry", "Sidecar"])
    # a scenario of the install's own policy gets none
    assert all(
        m.proxy != "sidecar" or "block_all" not in m.needle
        for m in convergence_markers(rendered_docs("http-via-egress-gateway"), NS)
    )


def mission_request(run: E2ERun) -> Any:
    scenario = CATALOG.get("http-via-egress-gateway")
    return render_request(scenario.requests[0], run.render_context(), source=scenario.file)


def test_run_request_judges_the_request_by_the_hop_logs(
    standin_run: tuple[E2ERun, StandInKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, kube = standin_run
    sent: list[str] = []

    def send(url: str) -> ChainResponse:
        sent.append(url)
        kube.logs["target-1"].append(on_path(SIDECAR_TO_GATEWAY, url))
        kube.logs["gw-1"].append(on_path(GATEWAY_TO_EXTERNAL, url))
        return response(200, rid="rid-1")

    monkeypatch.setattr(run, "_send", send)
    outcome = run.run_request(mission_request(run))
    assert [e.hop for e in outcome.evidence] == ["target sidecar", "egress gateway"]
    destination = unwrap_chain(sent[0], levels=2)[-1]
    assert destination.startswith("http://external.egress-harness.test:80/get?egh-token=")
    assert "chain:external.egress-harness.test:80" in run.timings


def test_run_request_names_the_hop_where_the_path_went_elsewhere(
    standin_run: tuple[E2ERun, StandInKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, kube = standin_run

    def send(url: str) -> ChainResponse:
        kube.logs["target-1"].append(on_path(SIDECAR_PASSTHROUGH, url).replace('"rid-2"', '"rid-9"'))
        return response(200, rid="rid-9")

    monkeypatch.setattr(run, "_send", send)
    with pytest.raises(EvidenceError) as err:
        run.run_request(mission_request(run), wait=Wait(timeout=0.5, interval=0.05, settle=0.1))
    assert err.value.hop == "target sidecar"
    assert "PassthroughCluster" in str(err.value)


def test_the_caller_witness_knows_when_it_cannot_tell_gateway_and_workload_apart(
    standin_run: tuple[E2ERun, StandInKube],
) -> None:
    run, kube = standin_run
    run.options = E2EOptions(istio_version="1.30.3", pod_source_nat=True)
    assert run.gateway_callers() == {"172.18.0.2"}
    assert not run.caller_witness_discriminates()  # one node: both leave from 172.18.0.2
    kube.pods[("istio-system", "istio=egressgateway")] = [pod("gw-1", "10.244.1.7", "172.18.0.3")]
    assert run.caller_witness_discriminates()  # the gateway on its own node


# --- setting up and tearing down a run ------------------------------------------------------------


class Part:
    """A stand-in for one part of the run that logs its enter and exit."""

    events: list[str]
    fail_on_enter: set[str]

    def __init__(self, name: str) -> None:
        self.part = name
        self.keep = False
        self.installed_by_us = True  # as an IstioInstall that installed Istio

    def __enter__(self) -> Any:
        Part.events.append(f"enter {self.part}")
        if self.part in Part.fail_on_enter:
            raise RuntimeError(f"{self.part} failed")
        return self

    def __exit__(self, *exc: object) -> None:
        Part.events.append(f"exit {self.part}" + (" (kept)" if self.keep else ""))


@pytest.fixture
def parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fakebin: Any) -> list[str]:
    Part.events = []
    Part.fail_on_enter = set()
    kubeconfig = tmp_path / "kubeconfig"

    class FakeKind(Part):
        def __init__(self, name: str, run_dir: Path, **kw: Any) -> None:
            super().__init__("cluster")
            self.name = name
            self.kubeconfig = kubeconfig
            self.context = f"kind-{name}"
            self.ingress_host_port = 18080
            self.created = True

        def __enter__(self) -> Any:
            Part.events.append("enter cluster")
            return self

        def __exit__(self, *exc: object) -> None:
            Part.events.append("exit cluster" + (" (kept)" if self.keep else ""))

    class FakeKube(Part):
        def __init__(self, *a: Any) -> None:
            super().__init__("kube")

        def create_namespace(self, name: str, labels: Any) -> None:
            Part.events.append(f"create {name} {dict(labels)}")
            if "namespace" in Part.fail_on_enter:
                raise RuntimeError("namespace failed")

        def delete_namespace(self, name: str) -> None:
            Part.events.append(f"delete {name}")

    class FakeRecorder(Part):
        def __init__(self, part: str = "recorder", mutual: bool = False) -> None:
            super().__init__(part)
            self.alias = "mtls.egress-harness.test" if mutual else "external.egress-harness.test"
            self.name = f"egress-harness-{part.replace(' ', '-')}-1"
            self.image = "istio-egress-harness/recorder:dev"
            self.network_name = "kind"
            self.port = 80
            self.tls_port = 443
            self.tcp_port = 9000
            self.tls = RecorderTLS(b"cert", b"key", b"ca" if mutual else None)
            self.aliases = [self.alias] if mutual else [self.alias, "unregistered.egress-harness.test"]

    def make_pki(self: E2ERun) -> TestPKI:
        Part.events.append("pki")
        if "pki" in Part.fail_on_enter:
            raise RuntimeError("pki failed")
        return fake_pki(self.run_dir / "pki")

    class FakeTraffic(Part):
        def __init__(self, headers: dict[str, str] | None = None) -> None:
            super().__init__("traffic")
            assert headers is not None
            assert headers["Host"] == "egress-abc123.ingress.egress-harness.test", headers
            assert len(headers["x-egress-harness-token"]) >= 40, headers  # the run's token, sent every time

        def send(self, url: str) -> ChainResponse:
            Part.events.append("send")
            return response()

    monkeypatch.setattr(tools, "ensure_tool", lambda name, version: Path(f"/bin/{name}"))
    # every module of the run that names them: the run sets up its parts, its namespace side reads
    # the cluster's kind (source NAT, diagnostics) and opens a client of its own when it has none
    for module in (cluster_run, cluster_namespace):
        monkeypatch.setattr(module, "KindCluster", FakeKind)
        monkeypatch.setattr(module, "Traffic", FakeTraffic)
    monkeypatch.setattr(cluster_run, "IstioInstall", lambda *a, **kw: Part("istio"))
    monkeypatch.setattr(cluster_run, "Kube", FakeKube)

    def names_free(names: list[str], *, run_id: str) -> None:
        Part.events.append(f"names free? {' '.join(names)}")
        if "names" in Part.fail_on_enter:
            raise NameTakenError(
                f"the recorders of run {run_id}", "kind", {names[0]: ["egress-harness-recorder-0ther"]}, "..."
            )

    monkeypatch.setattr(cluster_run, "check_run_names_free", names_free)
    monkeypatch.setattr(E2ERun, "make_pki", make_pki)
    monkeypatch.setattr(E2ERun, "make_recorder", lambda self: FakeRecorder())
    monkeypatch.setattr(E2ERun, "make_mtls_recorder", lambda self: FakeRecorder("mtls recorder", mutual=True))
    monkeypatch.setattr(
        cluster_run, "prepare_relay_image", lambda cluster, **kw: "istio-egress-harness/relay:dev"
    )
    monkeypatch.setattr(cluster_run, "RelayApps", lambda kube, ns, **kw: _Relays(kw.get("ca_pem")))
    # the run asks whether the CRDs are there; GatewayApiCrds asks before it installs them
    for module in (cluster_run, gatewayapi):
        monkeypatch.setattr(
            module, "crd_exists", lambda kube, name: Part.events.append(f"crd? {name}") or False
        )
    fakebin.rules(
        [
            {
                "tool": "docker",
                "args": ["exec", "egress-harness-control-plane", "getent", "ahostsv4"],
                "stdout": "172.18.0.9      STREAM external.egress-harness.test\n",
            }
        ]
    )
    return Part.events


class _Relays(Part):
    def __init__(self, ca_pem: bytes | None = None) -> None:
        super().__init__("relays")
        Part.events.append(f"relays trust {ca_pem.decode() if ca_pem else 'nothing'}")

    def save(self, directory: Path) -> Path:
        return directory / "relay.yaml"


SETUP = [
    "names free? external.egress-harness.test unregistered.egress-harness.test mtls.egress-harness.test",
    "enter cluster",
    "enter kube",
    "enter istio",
    "crd? httproutes.gateway.networking.k8s.io",
    "pki",
    "enter recorder",
    "enter mtls recorder",
    "create egress-abc123 {'istio-injection': 'enabled', 'io.egress-harness.run': 'abc123'}",
    "relays trust CA PEM",
    "enter relays",
    "enter traffic",
    "send",
]
TEARDOWN = [
    "exit traffic",
    "exit relays",
    "delete egress-abc123",
    "exit mtls recorder",
    "exit recorder",
    "exit istio",
    "exit kube",
    "exit cluster",
]


def test_a_run_sets_up_in_order_and_tears_down_in_reverse(
    parts: list[str], tmp_path: Path, fakebin: Any
) -> None:
    with E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123") as run:
        assert parts == SETUP
        assert run.ingress_url == "http://127.0.0.1:18080"
        assert {"cluster", "istio", "certificates", "external host", "relay apps", "chain ready"} <= set(
            run.timings
        )
        assert run.pki is not None and (tmp_path / "run" / "pki" / "ca.key").is_file()
        assert run.external_serves() == ("http", "tls", "mtls")
    assert parts == SETUP + TEARDOWN
    assert not (tmp_path / "run" / "pki").exists()  # the run's keys went with it
    assert fakebin.commands() == [
        "docker exec egress-harness-control-plane getent ahostsv4 external.egress-harness.test",
        "docker exec egress-harness-control-plane getent ahostsv4 mtls.egress-harness.test",
    ]


def test_istio_is_uninstalled_only_when_the_cluster_stays(
    parts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: dict[str, Any] = {}

    def istio(*args: Any, **kw: Any) -> Part:
        given.update(kw)
        return Part("istio")

    monkeypatch.setattr(cluster_run, "IstioInstall", istio)
    with E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123") as run:
        cluster = run.cluster
        assert cluster is not None
        # the run's own kind cluster is deleted on exit: no `istioctl uninstall`, no wait for istio-system
        assert given["remove"]() is False
        cluster.created = False  # a kind cluster the run reused stays, and so must lose its Istio
        assert given["remove"]() is True
        cluster.created = True


def test_a_run_without_tls_makes_no_certificates_and_one_recorder(parts: list[str], tmp_path: Path) -> None:
    with E2ERun(
        E2EOptions(istio_version="1.30.3", external_tls=False), tmp_path / "run", run_id="abc123"
    ) as run:
        assert run.pki is None and run.mtls_recorder is None
    assert "pki" not in parts and "enter mtls recorder" not in parts
    assert "relays trust nothing" in parts


@pytest.mark.parametrize("failing", ["relays", "namespace", "mtls recorder", "recorder", "pki", "istio"])
def test_a_failed_step_leaves_nothing_behind(parts: list[str], tmp_path: Path, failing: str) -> None:
    Part.fail_on_enter = {failing}
    with pytest.raises(RuntimeError, match=f"{failing} failed"):
        E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123").__enter__()
    entered = [e.split(" ", 1)[1] for e in parts if e.startswith("enter ")]
    exited = [e.split(" ", 1)[1] for e in parts if e.startswith("exit ")]
    # everything entered successfully was exited again, in reverse order
    assert exited == [p for p in reversed(entered) if p != failing]
    if failing == "relays":
        assert "delete egress-abc123" in parts
    assert not (tmp_path / "run" / "pki").exists()


def test_an_alias_that_does_not_resolve_on_the_node_stops_the_run(
    parts: list[str], tmp_path: Path, fakebin: Any
) -> None:
    fakebin.rules([{"tool": "docker", "args": ["exec"], "exit": 2}])
    with pytest.raises(E2EError, match=r"does not resolve on the kind node egress-harness-control-plane"):
        E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123").__enter__()
    assert parts[-3:] == ["exit istio", "exit kube", "exit cluster"]


def test_a_name_another_run_holds_on_kinds_network_stops_the_run_before_the_cluster(
    parts: list[str], tmp_path: Path
) -> None:
    Part.fail_on_enter = {"names"}
    options = E2EOptions(
        istio_version="1.30.3",
        recorder_aliases=("a.egress-harness.test",),
        mtls_aliases=("mtls-a.egress-harness.test",),
    )
    with pytest.raises(NameTakenError, match="egress-harness-recorder-0ther"):
        E2ERun(options, tmp_path / "run", run_id="abc123").__enter__()
    # every name of both recorders was asked for, and nothing was made
    assert parts == [
        "names free? external.egress-harness.test unregistered.egress-harness.test a.egress-harness.test "
        "mtls.egress-harness.test mtls-a.egress-harness.test"
    ]


def test_only_a_run_with_recorders_on_kinds_network_asks_for_their_names(
    parts: list[str], tmp_path: Path
) -> None:
    with E2ERun(E2EOptions(istio_version="1.30.3", external_tls=False), tmp_path / "run", run_id="abc123"):
        pass
    assert parts[0] == "names free? external.egress-harness.test unregistered.egress-harness.test"
    Part.events.clear()
    with E2ERun(
        E2EOptions(istio_version="1.30.3", external="internet", external_host="example.com"),
        tmp_path / "run2",
        run_id="abc123",
    ):
        pass
    assert not [e for e in parts if e.startswith("names free?")]


def test_only_the_harnesss_own_cluster_gets_the_pinned_egress_gateway_and_relays(
    parts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed cluster has neither the egress gateway's labelled node nor a schedulable control
    plane: pinned there, the gateway stays Pending (``istioctl install`` times out) and so do the relays."""
    given: dict[str, dict[str, Any]] = {}

    def istio(*args: Any, **kw: Any) -> Part:
        given["istio"] = kw
        return Part("istio")

    def relays(kube: Any, ns: str, **kw: Any) -> _Relays:
        given["relays"] = kw
        return _Relays(kw.get("ca_pem"))

    monkeypatch.setattr(cluster_run, "IstioInstall", istio)
    monkeypatch.setattr(cluster_run, "RelayApps", relays)
    with E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123") as run:
        assert run.own_cluster
    assert given["istio"]["pin_egress_gateway"] is True
    assert given["relays"]["pin_to_control_plane"] is True

    given.clear()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    existing = E2EOptions(
        istio_version="1.30.3",
        kubeconfig=kubeconfig,
        external="internet",
        external_host="example.com",
        relay_image="registry.example/relay:1",
        ingress_url="http://127.0.0.1:8080",
    )
    with E2ERun(existing, tmp_path / "run2", run_id="abc123") as run:
        assert isinstance(run.cluster, ExistingCluster)
        assert not run.own_cluster
    assert given["istio"]["pin_egress_gateway"] is False
    assert given["relays"]["pin_to_control_plane"] is False


def test_keep_on_failure_keeps_everything_of_a_failed_run(parts: list[str], tmp_path: Path) -> None:
    options = E2EOptions(istio_version="1.30.3", keep_on_failure=True)
    with E2ERun(options, tmp_path / "run", run_id="abc123") as run:
        run.mark_failed()  # what the pytest plugin does when a test failed
    assert "delete egress-abc123" not in parts
    assert {"exit relays (kept)", "exit istio (kept)", "exit cluster (kept)"} <= set(parts)
    assert (tmp_path / "run" / "pki" / "ca.key").is_file()  # the kept cluster's Secrets came from it


def test_options_problems_stop_the_run_before_anything_starts(parts: list[str], tmp_path: Path) -> None:
    with pytest.raises(E2EError, match="access log encoding"):
        E2ERun(E2EOptions(istio_version="1.30.3", access_log_encoding="XML"), tmp_path / "run").__enter__()
    assert parts == []


def test_tls_only_routes_add_no_marker() -> None:
    docs = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "tls-passthrough"},
            "spec": {"hosts": ["external.egress-harness.test"], "tls": [{"match": [{"port": 443}]}]},
        }
    ]
    assert convergence_markers(docs, NS) == []


def test_destination_rules_elsewhere_add_no_marker() -> None:
    def dr(name: str, ns: str | None, **spec: Any) -> dict[str, Any]:
        meta = {"name": name, **({"namespace": ns} if ns else {})}
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": meta,
            "spec": spec,
        }

    docs = [
        dr("here", None, host="h"),
        dr("in-root", "istio-system", host="h"),
        dr("selected", NS, host="h", workloadSelector={"matchLabels": {"app": "x"}}),
    ]
    assert [m.what for m in convergence_markers(docs, NS)] == [f"DestinationRule {NS}/here"]


def test_objects_not_exported_to_the_run_namespace_add_no_marker() -> None:
    se = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "gw-only", "namespace": "istio-system"},
        "spec": {"hosts": ["h.example"], "ports": [{"number": 80}], "exportTo": ["."]},
    }
    assert convergence_markers([se], NS) == []
    se["spec"]["exportTo"] = ["*"]
    assert [m.needle for m in convergence_markers([se], NS)] == ['"outbound|80||h.example"']


# --- the pytest plugin's options ------------------------------------------------------------------


class FakeConfig:
    def __init__(self, root: Path, **given: Any) -> None:
        self.rootpath = root
        self.given = {f"--{k.replace('_', '-')}": v for k, v in given.items()}

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.given.get(name, default)


def test_plugin_options_come_from_the_command_line_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.pytest_plugin import options_from

    for var in ("EXTERNAL", "EXTERNAL_HOST", "KUBECONFIG", "ISTIO_VERSION", "KEEP_CLUSTER", "REUSE_CLUSTER"):
        monkeypatch.delenv(f"EGRESS_HARNESS_{var}", raising=False)
    o = options_from(FakeConfig(tmp_path))  # type: ignore[arg-type]
    assert (o.external, o.host, o.access_log_encoding, o.keep_cluster, o.keep_on_failure) == (
        "container",
        "external.egress-harness.test",
        "TEXT",
        False,
        False,
    )
    assert o.artifacts_dir == tmp_path / "artifacts"
    monkeypatch.setenv("EGRESS_HARNESS_EXTERNAL", "internet")
    monkeypatch.setenv("EGRESS_HARNESS_KEEP_CLUSTER", "1")
    monkeypatch.setenv("EGRESS_HARNESS_ISTIO_VERSION", "1.29.6")
    o = options_from(
        FakeConfig(tmp_path, access_log_encoding="json", external_host="example.org", reuse_cluster=True)
    )  # type: ignore[arg-type]
    assert (
        o.external,
        o.host,
        o.access_log_encoding,
        o.reuse_cluster,
        o.keep_on_failure,
        o.istio_version,
    ) == (
        "internet",
        "example.org",
        "JSON",
        True,
        True,
        "1.29.6",
    )
    o = options_from(FakeConfig(tmp_path, external="container", istio_version="1.28.10", keep_cluster=True))  # type: ignore[arg-type]
    assert (o.external, o.istio_version, o.keep_cluster) == ("container", "1.28.10", True)


def test_plugin_skip_reason_for_an_existing_cluster_names_what_is_missing(
    tmp_path: Path, fakebin: Any
) -> None:
    from harness.pytest_plugin import skip_reason

    o = E2EOptions(
        istio_version="1.30.3",
        kubeconfig=tmp_path / "missing-kubeconfig",
        external="internet",
        relay_image="reg/relay:1",
        ingress_url="http://127.0.0.1:8080",
    )
    reason = skip_reason(o) or ""
    assert reason.startswith("the cluster tier cannot run here; missing: ")
    assert "missing-kubeconfig does not exist" in reason
    assert "istioctl 1.30.3: run `make tools`" in reason


# --- TLS: certificates, recorders, credential Secrets, evidence -----------------------------------

TLS_ORIGINATION = "tls-origination-at-egress-gateway"
MTLS_ORIGINATION = "mtls-origination-at-egress-gateway"


def test_the_certificates_name_every_recorder_alias_of_the_catalog_and_the_domain() -> None:
    aliases = recorder_aliases(CATALOG.names())
    mtls = mtls_recorder_aliases(CATALOG.scenarios)
    names = pki_server_names(EXTERNAL_ALIAS, aliases, mtls)
    assert names[:2] == ["external.egress-harness.test", "unregistered.egress-harness.test"]
    assert names[-1] == "*.egress-harness.test"  # RenderContext's external_host_domain of the default host
    assert set(aliases) | set(mtls) <= set(names) and len(names) == len(set(names))
    # only the catalog's mTLS scenario has a name at the mTLS recorder
    assert mtls == ["mtls.egress-harness.test", "mtls-mtls-origination-at-egress-gateway.egress-harness.test"]
    for scenario in CATALOG.scenarios:
        hosts = scenario_hosts(scenario.name)
        ctx = RenderContext(istio_version="1.30.3", external_host=hosts.external)
        assert f"*.{ctx.external_host_domain}" in names
        assert hosts.external in names and hosts.unregistered in names
    # a host without a domain has no wildcard
    assert pki_server_names("localhost")[-1] == "mtls.egress-harness.test"


def test_make_pki_writes_the_runs_pki_with_those_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, list[str]]] = []
    monkeypatch.setattr(
        cluster_run, "generate_pki", lambda directory, names: calls.append((directory, names)) or "pki"
    )
    options = E2EOptions(
        istio_version="1.30.3",
        recorder_aliases=("a.egress-harness.test",),
        mtls_aliases=("mtls-b.egress-harness.test",),
    )
    run = E2ERun(options, tmp_path / "run", run_id="abc123")
    assert run.make_pki() == "pki"
    assert calls == [
        (
            tmp_path / "run" / "pki",
            [
                "external.egress-harness.test",
                "unregistered.egress-harness.test",
                "a.egress-harness.test",
                "mtls.egress-harness.test",
                "mtls-b.egress-harness.test",
                "*.egress-harness.test",
            ],
        )
    ]


@pytest.mark.skipif(openssl_unavailable_reason() is not None, reason="needs the openssl tool")
def test_openssl_takes_every_name_of_the_catalog_and_load_pki_reads_it_back(tmp_path: Path) -> None:
    names = pki_server_names(
        EXTERNAL_ALIAS,
        recorder_aliases(CATALOG.names()),
        mtls_recorder_aliases(CATALOG.scenarios),
    )
    made = generate_pki(tmp_path / "pki", names)
    assert made.server_names == tuple(names)
    assert load_pki(tmp_path / "pki") == made


def test_load_pki_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(E2EError, match=r"the run's PKI in .* cannot be read"):
        load_pki(tmp_path / "nothing")
    directory = tmp_path / "pki"
    fake_pki(directory)
    for stem in ("ca", "server", "client"):
        (directory / f"{stem}.cnf").write_text("[req]\nprompt = no\n")
    with pytest.raises(E2EError, match=r"ca\.cnf names no subject"):
        load_pki(directory)


def test_both_recorders_serve_tls_with_the_runs_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    monkeypatch.setattr(
        cluster_run, "build_app_image", lambda app, tag, mode="auto": built.append(app) or tag
    )
    options = E2EOptions(
        istio_version="1.30.3",
        recorder_aliases=("a.egress-harness.test",),
        mtls_aliases=("mtls.egress-harness.test", "mtls-b.egress-harness.test"),
    )
    run = E2ERun(options, tmp_path / "run", run_id="abc123")
    with pytest.raises(E2EError, match="needs the run's PKI"):
        run.make_mtls_recorder()
    plain = run.make_recorder()
    assert plain.tls is None and plain.tls_port is None and "--tls-port" not in (plain.command or [])
    run.pki = fake_pki(tmp_path / "pki")
    main, mutual = run.make_recorder(), run.make_mtls_recorder()
    assert built == ["recorder"]  # one image for both
    assert main.aliases == [
        "external.egress-harness.test",
        "unregistered.egress-harness.test",
        "a.egress-harness.test",
    ]
    assert mutual.aliases == ["mtls.egress-harness.test", "mtls-b.egress-harness.test"]
    assert main.name != mutual.name and mutual.name.startswith("egress-harness-mtls-recorder-")
    assert (main.network_name, mutual.network_name, main.port, main.tls_port, mutual.tls_port) == (
        "kind",
        "kind",
        80,
        443,
        443,
    )
    assert main.command is not None and mutual.command is not None
    assert main.command[-6:] == ["--tls-port", "443", "--cert", TLS_CERT, "--key", TLS_KEY]
    assert "--client-ca" not in main.command
    assert mutual.command[-2:] == ["--client-ca", TLS_CLIENT_CA]
    assert main.files == {TLS_CERT: b"SERVER PEM", TLS_KEY: b"SERVER KEY"}
    assert mutual.files == {TLS_CERT: b"SERVER PEM", TLS_KEY: b"SERVER KEY", TLS_CLIENT_CA: b"CA PEM"}
    assert (recorder_serves(main), recorder_serves(mutual)) == (("http", "tls"), ("http", "mtls"))
    assert main.labels["io.egress-harness.run"] == mutual.labels["io.egress-harness.run"] == "abc123"
    state = recorder_state(mutual)
    assert (state.tls_port, state.serves, state.aliases) == (443, ("http", "mtls"), tuple(mutual.aliases))


def test_credential_names_are_per_scenario_and_namespace_and_valid_for_istio() -> None:
    a = credential_names("eabc123-x", MTLS_ORIGINATION)
    b = credential_names("eabc123-y", MTLS_ORIGINATION)
    c = credential_names("eabc123-x", TLS_ORIGINATION)
    assert len({a["client_credential_name"], b["client_credential_name"], c["client_credential_name"]}) == 3
    assert a["client_credential_name"] != a["ca_credential_name"]
    long = credential_names("u" + "a" * 62, MTLS_ORIGINATION)
    for name in [*a.values(), *long.values()]:
        assert len(name) <= 63 and not name.startswith("istio") and not name.endswith("-cacert")
    # RenderContext takes them (it refuses names Istio reserves)
    RenderContext(istio_version="1.30.3", **long)


def test_credential_secrets_follow_the_scenarios_requirements(tmp_path: Path) -> None:
    pki = fake_pki(tmp_path / "pki")
    ctx = RenderContext(istio_version="1.30.3", namespace=NS, **credential_names(NS, MTLS_ORIGINATION))
    assert credential_secrets(CATALOG.get("http-via-egress-gateway"), ctx, pki) == []
    (client,) = credential_secrets(CATALOG.get(MTLS_ORIGINATION), ctx, pki)
    name = ctx.client_credential_name
    assert (client.name, client.namespace, client.requirement) == (name, "istio-system", "client_credential")
    assert client.sds_resources == (f"kubernetes://{name}", f"kubernetes://{name}-cacert")
    assert set(client.data) == {"tls.crt", "tls.key", "ca.crt"}
    manifest = client.manifest({"io.egress-harness.run": "abc123"})
    assert manifest["kind"] == "Secret" and manifest["metadata"]["namespace"] == "istio-system"
    assert manifest["metadata"]["labels"] == {"io.egress-harness.run": "abc123"}
    (ca,) = credential_secrets(CATALOG.get(TLS_ORIGINATION), ctx, pki)
    assert ca.sds_resources == (f"kubernetes://{ctx.ca_credential_name}-cacert",)  # SIMPLE: the CA only
    assert set(ca.data) == {"ca.crt"}
    assert str(ca) == f"Secret istio-system/{ctx.ca_credential_name} (requires.server_ca_credential)"


def test_the_untrusted_ca_secret_holds_the_ca_that_signed_nothing_or_says_the_pki_is_too_old(
    tmp_path: Path,
) -> None:
    refused = CATALOG.get("tls-origination-refused-untrusted-ca")
    ctx = RenderContext(istio_version="1.30.3", namespace=NS, **credential_names(NS, refused.name))
    old = fake_pki(tmp_path / "pki")  # a PKI made before there was an untrusted CA
    with pytest.raises(E2EError, match=r"requires\.untrusted_ca_credential.*has no untrusted CA.*e2e down"):
        credential_secrets(refused, ctx, old)
    untrusted_dir = tmp_path / "untrusted"
    untrusted_dir.mkdir()
    (untrusted_dir / "ca.crt").write_bytes(b"UNTRUSTED CA PEM")
    (untrusted_dir / "ca.key").write_bytes(b"UNTRUSTED CA KEY")
    untrusted = Issued(
        untrusted_dir / "ca.crt",
        untrusted_dir / "ca.key",
        b"UNTRUSTED CA PEM",
        b"UNTRUSTED CA KEY",
        "CN=u,O=o",
    )
    (secret,) = credential_secrets(refused, ctx, dataclasses.replace(old, untrusted_ca=untrusted))
    name = ctx.untrusted_ca_credential_name
    assert name == credential_names(NS, refused.name)["untrusted_ca_credential_name"]
    assert (secret.name, secret.requirement) == (name, "untrusted_ca_credential")
    assert secret.sds_resources == (f"kubernetes://{name}-cacert",)
    assert secret.data == {"ca.crt": b64(b"UNTRUSTED CA PEM")}


def sds_dump(active: Sequence[str], warming: Sequence[str] = ()) -> str:
    """``istioctl proxy-config secret -o json`` as istioctl prints Envoy's SecretsConfigDump."""
    return json.dumps(
        {
            "dynamicActiveSecrets": [
                {"name": n, "versionInfo": "2026-11-28T07:00:00Z", "secret": {"name": n}}
                for n in ["default", *active]
            ],
            "dynamicWarmingSecrets": [
                {"name": n, "versionInfo": "uninitialized", "secret": {"name": n}} for n in warming
            ],
        }
    )


def test_sds_states_read_istioctl_and_envoy_dumps() -> None:
    assert sds_secret_states(sds_dump(["kubernetes://a"], ["kubernetes://a-cacert"])) == {
        "default": "ACTIVE",
        "kubernetes://a": "ACTIVE",
        "kubernetes://a-cacert": "WARMING",
    }
    envoy = {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                "dynamic_active_secrets": [{"name": "ROOTCA"}],
                "dynamic_warming_secrets": [{"name": "kubernetes://b"}],
            }
        ]
    }
    assert sds_secret_states(json.dumps(envoy)) == {"ROOTCA": "ACTIVE", "kubernetes://b": "WARMING"}
    assert sds_secret_states("") == {}
    with pytest.raises(ValueError, match="Expecting value"):
        sds_secret_states("No active or warming secrets")
    missing = missing_sds_resources(
        ["kubernetes://a", "kubernetes://a-cacert"],
        {
            "gw-1.istio-system": {"kubernetes://a": "ACTIVE", "kubernetes://a-cacert": "WARMING"},
            "gw-2.istio-system": {},
        },
    )
    assert missing == [
        ("gw-1.istio-system", "kubernetes://a-cacert", "warming"),
        ("gw-2.istio-system", "kubernetes://a", "not requested"),
        ("gw-2.istio-system", "kubernetes://a-cacert", "not requested"),
    ]


def tls_run(standin_run: tuple[E2ERun, StandInKube], tmp_path: Path) -> tuple[E2ERun, StandInKube]:
    run, kube = standin_run
    run.pki = fake_pki(tmp_path / "pki")
    run.recorder = StandInTLSRecorder(("http", "tls"))  # type: ignore[assignment]
    run.mtls_recorder = StandInTLSRecorder(("http", "mtls"))  # type: ignore[assignment]
    return run, kube


@dataclass
class StandInTLSRecorder:
    serves: tuple[str, ...]
    aliases: list[str] = field(default_factory=list)
    tls_port: int = 443
    failures: list[dict[str, Any]] = field(default_factory=list)

    def records(self, request_id: str | None = None) -> list[dict[str, Any]]:
        return []

    def logs(self) -> str:
        return "recorder log\n"

    def handshake_failures(self) -> list[dict[str, Any]]:
        return self.failures


def test_the_gateway_secret_wait_polls_until_every_resource_is_active(
    standin_run: tuple[E2ERun, StandInKube], tmp_path: Path, fakebin: Any
) -> None:
    run, _ = tls_run(standin_run, tmp_path)
    ctx = run.render_context(CATALOG.get(MTLS_ORIGINATION))
    credentials = credential_secrets(CATALOG.get(MTLS_ORIGINATION), ctx, fake_pki(tmp_path / "p2"))
    name = ctx.client_credential_name
    secret = ["proxy-config", "secret"]
    fakebin.rules(
        [
            {"tool": "istioctl", "args": secret, "times": 1, "stdout": sds_dump([])},
            {"tool": "istioctl", "args": secret, "times": 1, "stdout": "not json"},
            {
                "tool": "istioctl",
                "args": secret,
                "times": 1,
                "stdout": sds_dump([f"kubernetes://{name}"], [f"kubernetes://{name}-cacert"]),
            },
            {
                "tool": "istioctl",
                "args": secret,
                "stdout": sds_dump([f"kubernetes://{name}", f"kubernetes://{name}-cacert"]),
            },
        ]
    )
    took = run.wait_gateway_secrets(credentials, deadline_s=10, interval_s=0.01)
    assert took >= 0
    cmds = fakebin.commands()
    assert len(cmds) == 4
    assert cmds[0] == (
        f"istioctl proxy-config secret gw-1.istio-system -o json --kubeconfig {tmp_path / 'kubeconfig'} "
        "--context kind-egress"
    )


def test_a_secret_the_gateway_never_takes_fails_naming_it(
    standin_run: tuple[E2ERun, StandInKube], tmp_path: Path, fakebin: Any
) -> None:
    run, _ = tls_run(standin_run, tmp_path)
    ctx = run.render_context(CATALOG.get(TLS_ORIGINATION))
    credentials = credential_secrets(CATALOG.get(TLS_ORIGINATION), ctx, run.pki)  # type: ignore[arg-type]
    name = ctx.ca_credential_name
    fakebin.rules(
        [
            {
                "tool": "istioctl",
                "args": ["proxy-config", "secret"],
                "stdout": sds_dump([], [f"kubernetes://{name}-cacert"]),
            }
        ]
    )
    with pytest.raises(ConvergenceError) as err:
        run.wait_gateway_secrets(credentials, deadline_s=0.2, interval_s=0.05)
    text = str(err.value)
    assert f"Secret istio-system/{name} (requires.server_ca_credential)" in text
    assert f"gw-1.istio-system: kubernetes://{name}-cacert warming" in text
    assert "not done after 0.2s" in text


class ApplyKube(StandInKube):
    """A StandInKube that names what it applies and deletes, and can fail to apply one kind."""

    def __init__(self, fail_kind: str | None = None) -> None:
        super().__init__()
        self.fail_kind = fail_kind

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]:
        docs = split_documents(text)
        if self.fail_kind in {d["kind"] for d in docs}:
            self.calls.append(("apply failed", namespace))
            raise RuntimeError(f"{self.fail_kind} refused")
        return super().apply(text, namespace)

    def delete_objects(self, refs: list[ObjectRef]) -> None:
        self.calls.append(("delete", [f"{r.kind}/{r.namespace}/{r.name}" for r in refs]))


def tls_rules(run: E2ERun, scenario: str, *, secrets_active: bool = True) -> list[dict[str, Any]]:
    ctx = run.render_context(CATALOG.get(scenario))
    docs = [dict(d.body) for d in render_scenario(CATALOG.get(scenario), ctx).documents]
    full = " ".join(m.needle for m in convergence_markers(docs, NS))
    resources = [r for c in credential_secrets(CATALOG.get(scenario), ctx, run.pki) for r in c.sds_resources]  # type: ignore[arg-type]
    pc = ["proxy-config", "all"]
    return [
        {"tool": "istioctl", "args": ["analyze"], "stdout": "✔ No validation issues found.\n"},
        synced_rule(f"target-1.{NS}", "gw-1.istio-system"),
        {"tool": "istioctl", "args": pc, "times": 2, "stdout": full},
        {"tool": "istioctl", "args": pc, "stdout": "{}"},
        {
            "tool": "istioctl",
            "args": ["proxy-config", "secret"],
            "stdout": sds_dump(resources if secrets_active else [], [] if secrets_active else resources),
        },
    ]


@pytest.mark.parametrize(("scenario", "key"), [(TLS_ORIGINATION, "ca"), (MTLS_ORIGINATION, "client")])
def test_credential_secrets_are_created_before_the_scenario_and_deleted_after_it(
    tmp_path: Path, fakebin: Any, scenario: str, key: str
) -> None:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    kube = ApplyKube()
    run.kube, run.istioctl = kube, "istioctl"  # type: ignore[assignment]
    run.cluster = ExistingCluster(tmp_path / "kubeconfig", "kind-egress")
    run.converge_interval_s = 0.01
    run, _ = tls_run((run, kube), tmp_path)
    fakebin.rules(tls_rules(run, scenario))
    name = run.render_context(CATALOG.get(scenario)).variables()[
        "client_credential_name" if key == "client" else "ca_credential_name"
    ]
    with run.scenario(CATALOG.get(scenario)) as applied:
        assert [s.name for s in applied.credentials] == [name]
        rendered = applied.manifest.read_text()
        assert f"credentialName: {name}" in rendered and "kind: Secret" not in rendered  # never on disk
    assert kube.calls[0] == ("apply", "istio-system", ["Secret"])
    assert kube.calls[1][:2] == ("apply", NS)
    objects, secret = kube.calls[-2:]
    assert objects[0] == "delete" and not any(o.startswith("Secret/") for o in objects[1])
    assert secret == ("delete", [f"Secret/istio-system/{name}"])
    assert applied.secret_refs == []
    assert any(c.startswith("istioctl proxy-config secret gw-1.istio-system") for c in fakebin.commands())


def test_secrets_go_again_when_the_scenario_cannot_be_applied(tmp_path: Path, fakebin: Any) -> None:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    kube = ApplyKube(fail_kind="ServiceEntry")
    run.kube, run.istioctl = kube, "istioctl"  # type: ignore[assignment]
    run.cluster = ExistingCluster(tmp_path / "kubeconfig", "kind-egress")
    run, _ = tls_run((run, kube), tmp_path)
    fakebin.rules(tls_rules(run, TLS_ORIGINATION))
    with pytest.raises(RuntimeError, match="ServiceEntry refused"):
        run.apply_scenario(CATALOG.get(TLS_ORIGINATION))
    name = run.render_context(CATALOG.get(TLS_ORIGINATION)).ca_credential_name
    assert kube.calls == [
        ("apply", "istio-system", ["Secret"]),
        ("apply failed", NS),
        ("delete", [f"Secret/istio-system/{name}"]),
    ]
    assert run.applied == []


def test_secrets_go_even_when_the_gateway_never_took_them(tmp_path: Path, fakebin: Any) -> None:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    kube = ApplyKube()
    run.kube, run.istioctl = kube, "istioctl"  # type: ignore[assignment]
    run.cluster = ExistingCluster(tmp_path / "kubeconfig", "kind-egress")
    run.converge_interval_s = 0.01
    run, _ = tls_run((run, kube), tmp_path)
    fakebin.rules(tls_rules(run, TLS_ORIGINATION, secrets_active=False))
    with pytest.raises(ConvergenceError, match=r"requires\.server_ca_credential"):
        run.apply_scenario(CATALOG.get(TLS_ORIGINATION), wait_s=1.0)
    (applied,) = run.applied  # the caller removes what was applied ...
    run.delete_scenario(applied, wait_s=1.0)
    assert kube.calls[-1] == (
        "delete",
        [f"Secret/istio-system/{applied.credentials[0].name}"],
    )  # ... Secret last


def test_an_mtls_scenario_renders_with_the_mtls_recorders_host_and_its_own_credential(
    standin_run: tuple[E2ERun, StandInKube], tmp_path: Path
) -> None:
    run, _ = tls_run(standin_run, tmp_path)
    ctx = run.render_context(CATALOG.get(MTLS_ORIGINATION))
    assert ctx.external_host == "mtls.egress-harness.test"
    assert ctx.client_credential_name == credential_names(NS, MTLS_ORIGINATION)["client_credential_name"]
    assert run.recorder_for(CATALOG.get(MTLS_ORIGINATION)) is run.mtls_recorder
    plain = run.render_context(CATALOG.get(TLS_ORIGINATION))
    assert plain.external_host == "external.egress-harness.test"
    assert run.recorder_for(CATALOG.get(TLS_ORIGINATION)) is run.recorder
    assert run.render_context().external_host == "external.egress-harness.test"
    view = run.scoped("ns-2", external_host="a.egress-harness.test", unregistered_host="u.egress-harness.test",
                      mtls_host="mtls-a.egress-harness.test")  # fmt: skip
    assert view.render_context(CATALOG.get(MTLS_ORIGINATION)).external_host == "mtls-a.egress-harness.test"
    assert view.pki is run.pki and view.mtls_recorder is run.mtls_recorder


def test_which_requests_reach_the_external_host_over_tls(standin_run: tuple[E2ERun, StandInKube]) -> None:
    run, _ = standin_run

    def requests(name: str) -> list[Any]:
        scenario = CATALOG.get(name)
        ctx = run.render_context(scenario)
        return [render_request(r, ctx, source=scenario.file) for r in scenario.requests]

    assert [expects_external_tls(r) for r in requests("https-passthrough-via-egress-gateway")] == [True]
    assert [expects_external_tls(r) for r in requests(TLS_ORIGINATION)] == [True]  # originated at the gateway
    assert [expects_external_tls(r) for r in requests(MTLS_ORIGINATION)] == [True]
    assert [expects_external_tls(r) for r in requests("http-via-egress-gateway")] == [False]


def tls_record(sni: str | None, subject: str | None = None, *, plain: bool = False) -> dict[str, Any]:
    tls = None if plain else {"sni": sni, "version": "TLSv1.3", "cipher": "X", "client_cert_subject": subject}
    return {"client_ip": "172.18.0.3", "headers": {"x-request-id": "rid-7"}, "tls": tls}


def test_tls_records_are_judged_by_sni_and_client_certificate() -> None:
    host = "tls-origination-at-egress-gateway.egress-harness.test"
    assert check_tls_record(tls_record(host), host=host)["version"] == "TLSv1.3"
    assert check_tls_record(tls_record(host, CLIENT_SUBJECT), host=host, client_subject=CLIENT_SUBJECT)
    with pytest.raises(ExternalEvidenceError) as err:
        check_tls_record(tls_record("other.egress-harness.test"), host=host)
    assert err.value.hop == "external host"
    assert str(err.value) == (
        f"hop 'external host': the request x-request-id=rid-7 reached {host} over TLS with SNI "
        f"'other.egress-harness.test', expected '{host}'"
    )
    with pytest.raises(
        ExternalEvidenceError, match=r"^hop 'external host': .* over plain HTTP, expected TLS"
    ):
        check_tls_record(tls_record(None, plain=True), host=host)
    with pytest.raises(ExternalEvidenceError, match=r"SNI None, expected"):
        check_tls_record(tls_record(None), host=host)
    with pytest.raises(
        ExternalEvidenceError,
        match=r"^hop 'external host': .* with no client certificate, expected the run's",
    ):
        check_tls_record(tls_record(host), host=host, client_subject=CLIENT_SUBJECT)
    with pytest.raises(ExternalEvidenceError, match=r"with client certificate 'CN=someone,O=else'"):
        check_tls_record(tls_record(host, "CN=someone,O=else"), host=host, client_subject=CLIENT_SUBJECT)


def test_the_handshake_hint_names_the_failures_for_the_host() -> None:
    recorder = StandInTLSRecorder(
        ("http", "mtls"),
        failures=[
            {
                "client_ip": "172.18.0.3",
                "client_port": 4,
                "sni": "h.test",
                "error": "peer did not return a certificate",
            },
            {"client_ip": "172.18.0.3", "client_port": 5, "sni": "other.test", "error": "x"},
        ],
    )
    hint = handshake_hint(recorder, "h.test")
    assert "1 failed TLS handshake(s) for h.test" in hint and "peer did not return a certificate" in hint
    assert handshake_hint(recorder, "nobody.test") == ""

    class Broken:
        def handshake_failures(self) -> list[Any]:
            raise OSError("recorder gone")

    assert handshake_hint(Broken(), "h.test") == ""


def test_diagnostics_add_the_recorders_handshake_failures(
    standin_run: tuple[E2ERun, StandInKube], tmp_path: Path
) -> None:
    run, _ = tls_run(standin_run, tmp_path)
    run.mtls_recorder.failures.append({"sni": "mtls.egress-harness.test", "error": "no certificate"})  # type: ignore[union-attr]
    diagnostics = run.diagnostics()
    assert isinstance(diagnostics, RunDiagnostics)
    assert ("recorder TLS handshakes", diagnostics.recorder_tls) in diagnostics.steps()
    files = diagnostics.recorder_tls(tmp_path)
    assert sorted(f.name for f in files) == [
        "mtls-recorder-handshake-failures.json",
        "mtls-recorder-records.json",
        "mtls-recorder.log",
        "recorder-handshake-failures.json",
    ]
    assert (
        json.loads((tmp_path / "mtls-recorder-handshake-failures.json").read_text())[0]["error"]
        == "no certificate"
    )
    run.recorder, run.mtls_recorder = None, None
    assert not any(name == "recorder TLS handshakes" for name, _ in run.diagnostics().steps())


# --- skip reasons of TLS scenarios ----------------------------------------------------------------


def test_tls_scenarios_are_skipped_against_an_internet_host(tmp_path: Path) -> None:
    run = E2ERun(E2EOptions(istio_version="1.30.3", external="internet"), tmp_path / "run", run_id="abc123")
    for name in ("https-passthrough-via-egress-gateway", TLS_ORIGINATION, MTLS_ORIGINATION):
        reason = run.skip_reason(CATALOG.get(name)) or ""
        assert "with --external internet the external host is httpbin.org" in reason, name
        assert "certificates are not the run's" in reason
    assert run.skip_reason(CATALOG.get("http-via-egress-gateway")) is None


def test_credential_scenarios_on_an_existing_cluster_need_allow_gateway_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = E2EOptions(
        istio_version="1.30.3",
        kubeconfig=tmp_path / "kc",
        external="internet",
        relay_image="reg/relay:1",
        ingress_url="http://127.0.0.1:8080",
    )
    run = E2ERun(options, tmp_path / "run", run_id="abc123")
    run.pki = fake_pki(tmp_path / "pki")
    # as if the external host served TLS: the credential is the question here
    monkeypatch.setattr(E2ERun, "external_serves", lambda self: ("http", "tls", "mtls"))
    reason = run.skip_reason(CATALOG.get(TLS_ORIGINATION)) or ""
    assert "in istio-system (requires.server_ca_credential)" in reason
    assert "on an existing cluster the run creates and deletes only its own namespaces" in reason
    assert "--allow-gateway-secrets" in reason
    assert "--allow-gateway-secrets" in (run.skip_reason(CATALOG.get(MTLS_ORIGINATION)) or "")
    assert run.skip_reason(CATALOG.get("https-passthrough-via-egress-gateway")) is None  # no Secret needed
    run.options = dataclasses.replace(options, allow_gateway_secrets=True)
    assert run.skip_reason(CATALOG.get(TLS_ORIGINATION)) is None
    # attached to a run on an existing cluster: the state says so
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    run.state = dataclasses.replace(attached_state(tmp_path), cluster="existing")
    run.pki = fake_pki(tmp_path / "pki")
    assert run.on_existing_cluster
    assert "--allow-gateway-secrets" in (run.skip_reason(CATALOG.get(TLS_ORIGINATION)) or "")


def test_without_certificates_tls_and_credential_scenarios_say_why(tmp_path: Path) -> None:
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    run.recorder = StandInTLSRecorder(("http",))  # type: ignore[assignment]
    reason = run.skip_reason(CATALOG.get("https-passthrough-via-egress-gateway")) or ""
    assert reason == (
        "needs an external host that serves TLS; this run's external host serves HTTP only (this run's "
        "recorder was started without TLS: no certificates were made for it)"
    )
    run.recorder = StandInTLSRecorder(("http", "tls"))  # type: ignore[assignment]
    assert run.skip_reason(CATALOG.get("https-passthrough-via-egress-gateway")) is None
    assert "no recorder that requires client certificates" in (
        run.skip_reason(CATALOG.get(MTLS_ORIGINATION)) or ""
    )
    assert "this run has no certificates" in (run.skip_reason(CATALOG.get(TLS_ORIGINATION)) or "")


def attached_state(tmp_path: Path) -> RunState:
    return RunState(
        run_id="abc123",
        run_dir=tmp_path,
        kubeconfig=tmp_path / "kubeconfig",
        context=None,
        cluster="kind",
        cluster_name="egress-harness",
        cluster_created=True,
        istio_version="1.30.3",
        istio_installed=True,
        access_log_encoding="TEXT",
        outbound_traffic_policy="ALLOW_ANY",
        ingress_url="http://127.0.0.1:18080",
        namespace=NS,
        namespace_created=True,
        ingress_gateway=f"{NS}/relay-gateway",
        relay_image="istio-egress-harness/relay:dev",
        external="internet",
        external_host="httpbin.org",
        pod_source_nat=True,
        recorder=RecorderState(
            "r", "i", "kind", 80, ("external.egress-harness.test",), ("http", "tls", "mtls")
        ),
    )


@pytest.mark.skipif(openssl_unavailable_reason() is not None, reason="needs the openssl tool")
def test_the_real_recorders_records_pass_the_tls_checks_for_the_catalogs_names(tmp_path: Path) -> None:
    """The contract end to end without a cluster: the run's certificate covers a scenario's mTLS name,
    the recorder (apps/recorder, in this process) requires the run's client certificate, and its
    record of the request passes :func:`check_tls_record` with the PKI's own client subject."""
    import socket
    import ssl

    from recorder import Recorder

    mtls = mtls_recorder_aliases(CATALOG.scenarios)
    pki = generate_pki(tmp_path / "pki", pki_server_names(EXTERNAL_ALIAS, (), mtls))
    host = scenario_hosts(MTLS_ORIGINATION).mtls
    assert host in mtls
    with Recorder(
        port=0, tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path, client_ca=pki.ca.cert_path
    ) as rec:
        assert rec.tls_port is not None
        context = ssl.create_default_context(cafile=str(pki.ca.cert_path))  # verifies the name too
        context.load_cert_chain(pki.client.cert_path, pki.client.key_path)
        with (
            socket.create_connection(("127.0.0.1", rec.tls_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.sendall(
                f"GET /get HTTP/1.1\r\nHost: {host}\r\nx-request-id: rid-tls\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        (record,) = rec.records(request_id="rid-tls")
        seen = check_tls_record(dict(record), host=host, client_subject=pki.client.subject)
        assert seen["sni"] == host
        with pytest.raises(ExternalEvidenceError, match="expected the run's client certificate"):
            check_tls_record(dict(record), host=host, client_subject="CN=other,O=x")


def test_certificates_that_cannot_be_made_stop_the_run_saying_how_to_go_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(directory: Path, names: list[str]) -> TestPKI:
        raise PkiError("the ca key: `openssl` is not installed")

    monkeypatch.setattr(cluster_run, "generate_pki", broken)
    run = E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123")
    with pytest.raises(E2EError, match=r"certificates could not be made: the ca key: .*--no-external-tls"):
        run.make_pki()


@pytest.mark.parametrize(("cluster", "own"), [("kind", True), ("netns", True), ("existing", False)])
def test_a_run_attached_to_an_up_run_knows_whose_cluster_it_is(
    tmp_path: Path, cluster: str, own: bool
) -> None:
    """Workers of ``e2e up`` (and the upgrade's relays, ``harness.cluster.runner``) place pods as the
    run that made the cluster did: by the state's cluster kind."""
    state = dataclasses.replace(attached_state(tmp_path), cluster=cluster)
    run = E2ERun(E2EOptions(), tmp_path / "worker", state=state)
    assert run.own_cluster is own
    assert (
        run.scoped("egress-abc123-x", external_host="x.test", unregistered_host="u.test").own_cluster is own
    )
