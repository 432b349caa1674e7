"""harness.e2e without a cluster: the chain, readiness, callers, convergence markers, analyze (fake
``istioctl``), scenario apply/converge/remove and a judged request against stand-in pods, and the
order in which a run sets up and tears down its parts (also when a step fails)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from harness import e2e, tools
from harness.cluster import ExistingCluster
from harness.e2e import (
    AnalyzeError,
    ChainNotReadyError,
    ConfigMarker,
    E2EError,
    E2EOptions,
    E2ERun,
    ScenarioNotApplicable,
    analyze,
    caller_addresses,
    chain_for,
    convergence_markers,
    missing_markers,
    parse_analyze,
    send_until_answered,
)
from harness.evidence import EvidenceError, Wait
from harness.kube import ObjectRef, split_documents
from harness.scenarios import RenderContext, load_catalog, render_request, render_scenario
from harness.traffic import ChainResponse, Hop, TrafficError, unwrap_chain
from tests.unit.accesslog_samples import GATEWAY_TO_EXTERNAL, SIDECAR_PASSTHROUGH, SIDECAR_TO_GATEWAY

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "scenarios")
NS = "egress-abc123"


def response(
    status: int = 200, services: tuple[str, ...] = ("proxy", "target"), rid: str = "rid-1"
) -> ChainResponse:
    hops = tuple(Hop(s, "http://x", status, 1.0) for s in services)
    return ChainResponse("http://x", rid, status, httpx.Headers(), "{}", {}, 0.01, hops)


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


# --- istioctl analyze -----------------------------------------------------------------------------

ANALYZE_ERRORS = (
    "Error [IST0101] (Gateway egress-abc123/egress-gateway manifests.yaml:23) Referenced selector not "
    'found: "istio=egressgateway"\n'
    "Warning [IST0117] (Deployment egress-abc123/x) No service associated with this deployment.\n"
    "Error: Analyzers found issues when analyzing namespace: egress-abc123.\n"
)


def test_parse_analyze_reads_levels_codes_and_origins() -> None:
    found = parse_analyze(ANALYZE_ERRORS + "Info [IST0102] (Namespace default) not injected\n")
    assert [(f.level, f.code) for f in found] == [
        ("Error", "IST0101"),
        ("Warning", "IST0117"),
        ("Info", "IST0102"),
    ]
    assert found[0].origin == "Gateway egress-abc123/egress-gateway manifests.yaml:23"


def test_analyze_against_the_cluster_fails_on_errors(fakebin: Any, tmp_path: Path) -> None:
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stderr": ANALYZE_ERRORS, "exit": 79}])
    files = [tmp_path / "m.yaml"]
    with pytest.raises(AnalyzeError, match="IST0101") as err:
        analyze("istioctl", files, kubeconfig=tmp_path / "kc", context="kind-x", namespace=NS)
    assert [f.code for f in err.value.findings] == ["IST0101"]
    assert fakebin.commands() == [
        f"istioctl analyze --kubeconfig {tmp_path / 'kc'} --context kind-x -n {NS} {files[0]}"
    ]


def test_file_only_analysis_tolerates_references_to_the_cluster(fakebin: Any, tmp_path: Path) -> None:
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stderr": ANALYZE_ERRORS, "exit": 79}])
    found = analyze(
        "istioctl",
        [tmp_path / "m.yaml"],
        kubeconfig=tmp_path / "kc",
        context=None,
        namespace=NS,
        mode="files",
    )
    assert [f.code for f in found] == ["IST0101", "IST0117"]
    assert "--use-kube=false" in fakebin.calls()[0]["args"]


def test_analyze_that_fails_without_findings_is_an_error(fakebin: Any, tmp_path: Path) -> None:
    fakebin.rules(
        [{"tool": "istioctl", "args": ["analyze"], "stderr": "Error: failed to parse m.yaml\n", "exit": 1}]
    )
    with pytest.raises(AnalyzeError, match="failed to parse"):
        analyze("istioctl", [tmp_path / "m.yaml"], kubeconfig=tmp_path / "kc", context=None, namespace=NS)


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
    assert f"-n {NS} {applied.manifest}" in cmds[0]
    # two polls of both proxies to converge, one to see everything gone
    polled = [c.split()[3] for c in cmds[1:]]
    assert polled == [f"target-1.{NS}", "gw-1.istio-system"] * 3
    assert all("--context kind-egress" in c for c in cmds)


def test_a_scenario_the_proxies_never_take_times_out_naming_what_is_missing(
    standin_run: tuple[E2ERun, StandInKube], fakebin: Any
) -> None:
    run, _ = standin_run
    fakebin.rules(converging_rules(full_dump(), empty_polls=10_000))
    with pytest.raises(
        e2e.ConvergenceError, match=r"VirtualService egress-abc123/external-via-egress-gateway"
    ):
        run.apply_scenario(CATALOG.get("http-via-egress-gateway"), wait_s=0.3)


def test_analyze_errors_stop_the_scenario_before_it_is_applied(
    standin_run: tuple[E2ERun, StandInKube], fakebin: Any
) -> None:
    run, kube = standin_run
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stdout": ANALYZE_ERRORS, "exit": 79}])
    with pytest.raises(AnalyzeError):
        run.apply_scenario(CATALOG.get("http-via-egress-gateway"))
    assert kube.calls == []


def test_a_scenario_for_another_mesh_setting_is_not_applicable(
    standin_run: tuple[E2ERun, StandInKube],
) -> None:
    run, kube = standin_run
    scenario = CATALOG.get("registry-only-blocked")
    assert "REGISTRY_ONLY" in (run.skip_reason(scenario) or "")
    with pytest.raises(ScenarioNotApplicable):
        run.apply_scenario(scenario)
    assert kube.calls == []


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
        kube.logs["target-1"].append(SIDECAR_TO_GATEWAY)
        kube.logs["gw-1"].append(GATEWAY_TO_EXTERNAL)
        return response(200, rid="rid-1")

    monkeypatch.setattr(run, "_send", send)
    outcome = run.run_request(mission_request(run))
    assert [e.hop for e in outcome.evidence] == ["target sidecar", "egress gateway"]
    assert unwrap_chain(sent[0], levels=2)[-1] == "http://external.egress-harness.test:80/get"
    assert "chain:external.egress-harness.test:80" in run.timings


def test_run_request_names_the_hop_where_the_path_went_elsewhere(
    standin_run: tuple[E2ERun, StandInKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, kube = standin_run

    def send(url: str) -> ChainResponse:
        kube.logs["target-1"].append(SIDECAR_PASSTHROUGH.replace('"rid-2"', '"rid-9"'))
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
        alias = "external.egress-harness.test"

        def __init__(self) -> None:
            super().__init__("recorder")
            self.name = "egress-harness-recorder-1"
            self.image = "istio-egress-harness/recorder:dev"
            self.network_name = "kind"
            self.port = 80
            self.aliases = [self.alias, "unregistered.egress-harness.test"]

    class FakeTraffic(Part):
        def __init__(self) -> None:
            super().__init__("traffic")

        def send(self, url: str) -> ChainResponse:
            Part.events.append("send")
            return response()

    monkeypatch.setattr(tools, "ensure_tool", lambda name, version: Path(f"/bin/{name}"))
    monkeypatch.setattr(e2e, "KindCluster", FakeKind)
    monkeypatch.setattr(e2e, "IstioInstall", lambda *a, **kw: Part("istio"))
    monkeypatch.setattr(e2e, "Kube", FakeKube)
    monkeypatch.setattr(E2ERun, "make_recorder", lambda self: FakeRecorder())
    monkeypatch.setattr(e2e, "prepare_relay_image", lambda cluster, **kw: "istio-egress-harness/relay:dev")
    monkeypatch.setattr(e2e, "RelayApps", lambda kube, ns, **kw: _Relays())
    monkeypatch.setattr(e2e, "Traffic", FakeTraffic)
    monkeypatch.setattr(e2e, "crd_exists", lambda kube, name: Part.events.append(f"crd? {name}") or False)
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
    def __init__(self) -> None:
        super().__init__("relays")

    def save(self, directory: Path) -> Path:
        return directory / "relay.yaml"


SETUP = [
    "enter cluster",
    "enter kube",
    "enter istio",
    "crd? httproutes.gateway.networking.k8s.io",
    "enter recorder",
    "create egress-abc123 {'istio-injection': 'enabled', 'io.egress-harness.run': 'abc123'}",
    "enter relays",
    "enter traffic",
    "send",
]
TEARDOWN = [
    "exit traffic",
    "exit relays",
    "delete egress-abc123",
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
        assert {"cluster", "istio", "external host", "relay apps", "chain ready"} <= set(run.timings)
    assert parts == SETUP + TEARDOWN
    assert fakebin.commands() == [
        "docker exec egress-harness-control-plane getent ahostsv4 external.egress-harness.test"
    ]


@pytest.mark.parametrize("failing", ["relays", "namespace", "recorder", "istio"])
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


def test_an_alias_that_does_not_resolve_on_the_node_stops_the_run(
    parts: list[str], tmp_path: Path, fakebin: Any
) -> None:
    fakebin.rules([{"tool": "docker", "args": ["exec"], "exit": 2}])
    with pytest.raises(E2EError, match=r"does not resolve on the kind node egress-harness-control-plane"):
        E2ERun(E2EOptions(istio_version="1.30.3"), tmp_path / "run", run_id="abc123").__enter__()
    assert parts[-3:] == ["exit istio", "exit kube", "exit cluster"]


def test_keep_on_failure_keeps_everything_of_a_failed_run(parts: list[str], tmp_path: Path) -> None:
    options = E2EOptions(istio_version="1.30.3", keep_on_failure=True)
    with E2ERun(options, tmp_path / "run", run_id="abc123") as run:
        run.mark_failed()  # what the pytest plugin does when a test failed
    assert "delete egress-abc123" not in parts
    assert {"exit relays (kept)", "exit istio (kept)", "exit cluster (kept)"} <= set(parts)


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
