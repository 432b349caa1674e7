"""harness.cluster.kube without a cluster: templates, rollout decisions, the deadline loop, log windows, manifests.

The Kube client itself is built from a kubeconfig file made here (it connects to nothing until
asked); where it would talk to the API server, a small stand-in for CoreV1Api answers instead.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cluster import kube
from harness.cluster.istio import OVERLAY_TEMPLATE, flush_interval_s, render_overlay
from harness.cluster.kube import (
    RolloutCheck,
    RolloutFailedError,
    WaitTimeoutError,
    rollout_status,
    wait_until,
)
from harness.cluster.providers.kind import INGRESS_NODE_PORT, KIND_CONFIG_TEMPLATE

REPO = Path(__file__).resolve().parents[2]
RELAY = REPO / "manifests" / "apps" / "relay.yaml"


# --- templates ------------------------------------------------------------------------------------


def test_render_template_substitutes_every_placeholder() -> None:
    text = "a: {{ one }}\nb: {{two}}\nc: {{  one  }}\n"
    assert kube.render_template(text, {"one": 1, "two": "x"}) == "a: 1\nb: x\nc: 1\n"


def test_render_template_rejects_missing_and_unused_values() -> None:
    with pytest.raises(KeyError, match="needs values for: two"):
        kube.render_template("{{ one }} {{ two }}", {"one": 1})
    with pytest.raises(KeyError, match="no placeholder for: three"):
        kube.render_template("{{ one }}", {"one": 1, "three": 3})


# --- rollout decisions ----------------------------------------------------------------------------


def _deployment(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {"name": "istiod", "generation": 2},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "updatedReplicas": 2,
            "availableReplicas": 2,
            "readyReplicas": 2,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        },
    }
    base["status"].update(status)
    return base


def test_rollout_done() -> None:
    check = rollout_status(_deployment())
    assert check == RolloutCheck(True, "deployment 'istiod' successfully rolled out")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ({"observedGeneration": 1}, "waiting for the controller to observe generation 2 of 'istiod'"),
        ({"updatedReplicas": 1, "replicas": 2}, "'istiod': 1 of 2 new replicas updated"),
        ({"replicas": 3}, "'istiod': 1 old replicas pending termination"),
        ({"availableReplicas": 1}, "'istiod': 1 of 2 updated replicas available"),
        ({"availableReplicas": None}, "'istiod': 0 of 2 updated replicas available"),
    ],
)
def test_rollout_not_done_yet(status: dict[str, Any], message: str) -> None:
    assert rollout_status(_deployment(**status)) == RolloutCheck(False, message)


def test_rollout_of_a_missing_deployment_is_not_done() -> None:
    assert rollout_status(None, "istio-egressgateway") == RolloutCheck(
        False, "deployment 'istio-egressgateway' does not exist yet"
    )


def test_rollout_without_status_is_not_done() -> None:
    dep = {"metadata": {"name": "proxy", "generation": 1}, "spec": {"replicas": 1}}
    assert not rollout_status(dep).done


def test_progress_deadline_exceeded_fails_fast() -> None:
    dep = _deployment(availableReplicas=0)
    dep["status"]["conditions"][1] = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "istiod-abc" has timed out progressing.',
    }
    with pytest.raises(RolloutFailedError, match="exceeded its progress deadline: ReplicaSet"):
        rollout_status(dep)


def test_stale_generation_is_checked_before_the_deadline_condition() -> None:
    # kubectl only trusts the conditions once the controller has seen the latest spec.
    dep = _deployment(observedGeneration=1)
    dep["status"]["conditions"][1]["reason"] = "ProgressDeadlineExceeded"
    assert not rollout_status(dep).done


# --- the deadline loop ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_until_returns_once_done(capsys: pytest.CaptureFixture[str]) -> None:
    states = [None, _deployment(availableReplicas=0), _deployment(availableReplicas=1), _deployment()]
    clock = FakeClock()
    found = wait_until(
        iter(states).__next__,
        lambda d: rollout_status(d, "istiod"),
        what="rollout of istio-system/istiod",
        deadline_s=60,
        interval_s=2,
        clock=clock,
        sleep=clock.sleep,
    )
    assert found == states[-1]
    assert clock.sleeps == [2, 2, 2]
    err = capsys.readouterr().err
    assert err.count(">> rollout of istio-system/istiod:") == 3
    assert "does not exist yet" in err


def test_wait_until_times_out_with_the_last_state() -> None:
    clock = FakeClock()
    stuck = _deployment(availableReplicas=0)
    fetches: list[int] = []

    def fetch() -> dict[str, Any]:
        fetches.append(1)
        return copy.deepcopy(stuck)

    with pytest.raises(WaitTimeoutError) as err:
        wait_until(
            fetch,
            rollout_status,
            what="rollout of ns/proxy",
            deadline_s=10,
            interval_s=3,
            clock=clock,
            sleep=clock.sleep,
        )
    assert (
        str(err.value)
        == "rollout of ns/proxy: not done after 10s; last state: 'istiod': 0 of 2 updated replicas available"
    )
    assert clock.sleeps == [3, 3, 3, 1]  # never sleeps past the deadline
    assert len(fetches) == 5  # one last look at the deadline itself


def test_wait_until_fails_fast_when_the_decision_raises() -> None:
    clock = FakeClock()
    failed = _deployment(availableReplicas=0)
    failed["status"]["conditions"][1]["reason"] = "ProgressDeadlineExceeded"
    states = iter([_deployment(availableReplicas=0), failed])
    with pytest.raises(RolloutFailedError):
        wait_until(
            states.__next__,
            rollout_status,
            what="x",
            deadline_s=600,
            interval_s=5,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == 5


# --- logs -------------------------------------------------------------------------------------------


def test_parse_log_timestamp_keeps_nanosecond_lines() -> None:
    parsed = kube.parse_log_timestamp(
        '2026-11-03T10:00:01.123456789Z [2026-11-03T10:00:01.120Z] "GET /" 200\n'
    )
    assert parsed is not None
    stamp, rest = parsed
    assert stamp == datetime(2026, 11, 3, 10, 0, 1, 123456, tzinfo=UTC)
    assert rest == '[2026-11-03T10:00:01.120Z] "GET /" 200\n'
    assert kube.parse_log_timestamp("no stamp here") is None


def test_filter_log_since_drops_earlier_lines_and_stamps() -> None:
    text = (
        "2026-11-03T10:00:00.900000000Z before\n"
        "2026-11-03T10:00:01.000000000Z at\n"
        "2026-11-03T10:00:01.5Z after\n"
        "continuation without a stamp\n"
        "2026-11-03T10:00:02+00:00 last\n"
    )
    since = datetime(2026, 11, 3, 10, 0, 1, tzinfo=UTC)
    assert kube.filter_log_since(text, since) == "at\nafter\ncontinuation without a stamp\nlast\n"


def test_since_seconds_covers_the_whole_window() -> None:
    now = datetime(2026, 11, 3, 10, 0, 10, tzinfo=UTC)
    assert kube.since_seconds_for(now - timedelta(seconds=4.2), now) == 6
    assert kube.since_seconds_for(now, now) == 1
    assert kube.since_seconds_for(now + timedelta(seconds=3), now) == 1


# --- the client, with a stand-in API -----------------------------------------------------------------

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: kind-egress
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: kind-egress
  user: {token: not-a-secret}
contexts:
- name: kind-egress
  context: {cluster: kind-egress, user: kind-egress}
current-context: kind-egress
"""


class Raw:
    def __init__(self, text: str) -> None:
        self.data = text.encode()


class FakeCore:
    def __init__(self, pods: list[str], logs: dict[str, str]) -> None:
        self.pods, self.logs = pods, logs
        self.log_calls: list[dict[str, Any]] = []

    def list_namespaced_pod(self, *, namespace: str, label_selector: str, **kw: Any) -> dict[str, Any]:
        return {"items": [{"metadata": {"name": p, "namespace": namespace}} for p in self.pods]}

    def read_namespaced_pod_log(self, **kw: Any) -> Raw:
        self.log_calls.append(kw)
        return Raw(self.logs[kw["name"]])

    def list_namespaced_event(self, *, namespace: str, **kw: Any) -> dict[str, Any]:
        return {
            "items": [
                {"reason": "Started", "lastTimestamp": "2026-11-03T10:00:05Z"},
                {"reason": "Pulled", "lastTimestamp": "2026-11-03T10:00:01Z"},
                {"reason": "Scheduled", "eventTime": "2026-11-03T10:00:00.000000Z"},
            ]
        }


@pytest.fixture
def client(tmp_path: Path) -> Any:
    from kubernetes import client as k8s_client

    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    default_host = k8s_client.Configuration.get_default_copy().host
    k = kube.Kube(path, context="kind-egress")
    assert k.api_client.configuration.host == "https://127.0.0.1:6443"
    # The library's global default configuration is untouched.
    assert k8s_client.Configuration.get_default_copy().host == default_host
    yield k
    k.close()


def test_pod_logs_reads_every_pod_whole(client: Any) -> None:
    client.core = FakeCore(["egress-a", "egress-b"], {"egress-a": "line a\n", "egress-b": "line b\n"})
    logs = client.pod_logs("istio-system", "istio=egressgateway", since_seconds=120)
    assert logs == {"egress-a": "line a\n", "egress-b": "line b\n"}
    for call in client.core.log_calls:
        assert call["container"] == "istio-proxy"
        assert call["since_seconds"] == 120
        assert call.get("tail_lines") is None
        assert call["timestamps"] is False
        assert call["_preload_content"] is False


class SpecCore(FakeCore):
    """Pods with their containers: ``bare`` has no sidecar, ``native`` has it as an init container."""

    def list_namespaced_pod(self, *, namespace: str, label_selector: str, **kw: Any) -> dict[str, Any]:
        specs = {
            "proxy-1": {"containers": [{"name": "relay"}, {"name": "istio-proxy"}]},
            "bare": {"containers": [{"name": "relay"}]},
            "native": {"containers": [{"name": "relay"}], "initContainers": [{"name": "istio-proxy"}]},
        }
        return {
            "items": [{"metadata": {"name": p, "namespace": namespace}, "spec": specs[p]} for p in self.pods]
        }


def test_pod_logs_leave_out_a_pod_without_the_container(client: Any) -> None:
    logs = {"proxy-1": "a\n", "bare": "relay only\n", "native": "n\n"}
    client.core = SpecCore(["proxy-1", "bare", "native"], logs)
    assert client.pod_logs("ns", "app") == {"proxy-1": "a\n", "native": "n\n"}
    assert [c["name"] for c in client.core.log_calls] == ["proxy-1", "native"]
    assert client.pod_logs("ns", "app", container="relay") == {
        "proxy-1": "a\n",
        "bare": "relay only\n",
        "native": "n\n",
    }


def test_pod_logs_since_time_is_exact(client: Any) -> None:
    since = datetime.now(UTC) - timedelta(seconds=30)
    before = (since - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    after = (since + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.core = FakeCore(["egress-a"], {"egress-a": f"{before} old\n{after} new\n"})
    assert client.pod_logs("istio-system", "istio=egressgateway", since_time=since) == {"egress-a": "new\n"}
    (call,) = client.core.log_calls
    assert call["timestamps"] is True
    assert 31 <= call["since_seconds"] <= 40
    with pytest.raises(ValueError, match="not both"):
        client.pod_logs("ns", "app=x", since_seconds=1, since_time=since)


def test_events_are_sorted_oldest_first(client: Any) -> None:
    client.core = FakeCore([], {})
    assert [e["reason"] for e in client.events("ns")] == ["Scheduled", "Pulled", "Started"]


class NotFound(Exception):
    status = 404


class FakeResource:
    def __init__(self, kind: str, namespaced: bool, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.kind, self.namespaced, self.calls = kind, namespaced, calls

    def server_side_apply(self, **kw: Any) -> None:
        self.calls.append(("apply", kw))

    def delete(self, **kw: Any) -> None:
        self.calls.append(("delete", kw))
        if kw["name"] == "gone":
            raise NotFound


class FakeDynamic:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.resources = self

    def get(self, *, api_version: str, kind: str) -> FakeResource:
        return FakeResource(kind, kind != "Namespace", self.calls)


def test_apply_is_server_side_forced_and_namespaced(client: Any) -> None:
    client._dynamic = FakeDynamic()
    text = (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: proxy}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: pinned, namespace: other}\n"
    )
    refs = client.apply(text, namespace="run-1")
    assert [str(r) for r in refs] == ["Namespace/extra", "Service/proxy in run-1", "Service/pinned in other"]
    applied = [kw for op, kw in client._dynamic.calls if op == "apply"]
    assert [(kw["name"], kw["namespace"]) for kw in applied] == [
        ("extra", None),
        ("proxy", "run-1"),
        ("pinned", "other"),
    ]
    for kw in applied:
        assert kw["field_manager"] == "istio-egress-harness"
        assert kw["force_conflicts"] is True
    assert applied[1]["body"]["metadata"] == {"name": "proxy", "namespace": "run-1"}
    with pytest.raises(kube.KubeError, match="needs a namespace"):
        client.apply("apiVersion: v1\nkind: Service\nmetadata: {name: proxy}\n")


def test_delete_objects_goes_last_first_and_tolerates_gone_objects(client: Any) -> None:
    client._dynamic = FakeDynamic()
    refs = [
        kube.ObjectRef("apps/v1", "Deployment", "proxy", "ns"),
        kube.ObjectRef("v1", "Service", "gone", "ns"),
        kube.ObjectRef("v1", "Service", "proxy", "ns"),
    ]
    client.delete_objects(refs)
    assert [kw["name"] for _, kw in client._dynamic.calls] == ["proxy", "gone", "proxy"]
    assert [c[1]["namespace"] for c in client._dynamic.calls] == ["ns", "ns", "ns"]


class FakeNamespaces:
    """create/read/delete_namespace: a deleted namespace stays Terminating for one more read."""

    def __init__(self, terminating_reads: int = 0) -> None:
        self.created: list[dict[str, Any]] = []
        self.terminating_reads = terminating_reads
        self.reads_until_gone: int | None = None
        self.deleted: list[str] = []

    def create_namespace(self, *, body: dict[str, Any], **kw: Any) -> None:
        self.created.append(body)

    def delete_namespace(self, *, name: str, **kw: Any) -> None:
        self.deleted.append(name)
        self.reads_until_gone = self.terminating_reads

    def read_namespace(self, *, name: str, **kw: Any) -> dict[str, Any]:
        if self.reads_until_gone is not None:
            if self.reads_until_gone == 0:
                raise NotFound
            self.reads_until_gone -= 1
        return {"metadata": {"name": name}}


def test_temporary_namespace_has_injection_on_and_is_deleted(client: Any) -> None:
    client.core = FakeNamespaces()
    with client.temporary_namespace("run-7") as ns:
        assert ns == "run-7"
        assert client.core.created == [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "run-7", "labels": {"istio-injection": "enabled"}},
            }
        ]
        assert client.core.deleted == []
    assert client.core.deleted == ["run-7"]


def test_delete_namespace_waits_while_it_terminates(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    client.core = FakeNamespaces(terminating_reads=2)
    client.delete_namespace("istio-system", interval_s=0.01)
    assert client.core.reads_until_gone == 0  # read until the namespace was really gone
    assert "namespace istio-system deletion: terminating" in capsys.readouterr().err


def test_temporary_namespace_is_deleted_when_the_body_fails(client: Any) -> None:
    client.core = FakeNamespaces()
    with pytest.raises(RuntimeError, match="boom"), client.temporary_namespace("run-8"):
        raise RuntimeError("boom")
    assert client.core.deleted == ["run-8"]


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(kube.KubeError, match="does not exist"):
        kube.Kube(tmp_path / "nope")


# --- manifests ---------------------------------------------------------------------------------------


def test_split_documents_skips_empty_and_checks_objects() -> None:
    docs = kube.split_documents("---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n---\n")
    assert [d["metadata"]["name"] for d in docs] == ["a"]
    with pytest.raises(kube.KubeError, match="no apiVersion/kind"):
        kube.split_documents("foo: bar\n")
    with pytest.raises(kube.KubeError, match=r"without metadata\.name"):
        kube.split_documents("apiVersion: v1\nkind: Service\nmetadata: {}\n")


def test_relay_manifest_shape() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in kube.split_documents(RELAY.read_text())}
    assert set(docs) == {
        ("Deployment", "proxy"),
        ("Deployment", "target"),
        ("Service", "proxy"),
        ("Service", "target"),
        ("Gateway", "relay-gateway"),
        ("VirtualService", "relay"),
    }
    for app in ("proxy", "target"):
        (container,) = docs[("Deployment", app)]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "istio-egress-harness/relay:dev"
        assert container["ports"][0]["containerPort"] == 8080
        assert {"name": "SERVICE_NAME", "value": app} in container["env"]
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
        assert docs[("Service", app)]["spec"]["ports"][0]["port"] == 8080
        assert all("namespace" not in d["metadata"] for d in docs.values())
    timeouts = {
        app: next(
            float(e["value"])
            for e in docs[("Deployment", app)]["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "UPSTREAM_TIMEOUT"
        )
        for app in ("proxy", "target")
    }
    assert timeouts["proxy"] > timeouts["target"]  # the outer hop outwaits the inner one
    gateway = docs[("Gateway", "relay-gateway")]["spec"]
    assert gateway["selector"] == {"istio": "ingressgateway"}
    assert gateway["servers"][0]["port"]["number"] == 80
    (route,) = docs[("VirtualService", "relay")]["spec"]["http"]
    assert route["match"] == [{"uri": {"prefix": "/proxy"}}]
    assert route["route"][0]["destination"]["host"] == "proxy"
    assert docs[("VirtualService", "relay")]["spec"]["gateways"] == ["relay-gateway"]


def test_kind_config_renders_the_port_mapping_and_image(tmp_path: Path) -> None:
    out = kube.render_file(
        KIND_CONFIG_TEMPLATE,
        {
            "cluster_name": "egress",
            "node_image": "img@sha256:x",
            "ingress_node_port": 30080,
            "ingress_host_port": 18080,
        },
        tmp_path / "kind.yaml",
    )
    config = yaml.safe_load(out.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == "egress"
    control, worker = config["nodes"]
    assert (control["role"], worker["role"]) == ("control-plane", "worker")
    assert control["image"] == worker["image"] == "img@sha256:x"
    assert control["extraPortMappings"] == [
        {"containerPort": 30080, "hostPort": 18080, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    ]
    # The egress gateway's own node (manifests/istio/egress.yaml selects this label).
    assert worker["labels"] == {"egress-harness.io/egress-gateway": "true"}


#: the egress gateway chart's own ports (charts/gateways/istio-egress/values.yaml of the Istio module
#: built here), which a list in the overlay replaces, and the TCP port the harness adds
EGRESS_GATEWAY_PORTS = [
    {"name": "http2", "port": 80, "targetPort": 8080, "protocol": "TCP"},
    {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
    {"name": "tcp", "port": 7777, "targetPort": 7777, "protocol": "TCP"},
]


@pytest.mark.parametrize(("encoding", "policy"), [("TEXT", "ALLOW_ANY"), ("JSON", "REGISTRY_ONLY")])
def test_istio_overlay_renders(tmp_path: Path, encoding: str, policy: str) -> None:
    out = render_overlay(tmp_path / "o.yaml", access_log_encoding=encoding, outbound_traffic_policy=policy)
    spec = yaml.safe_load(out.read_text())["spec"]
    assert spec["meshConfig"]["accessLogFile"] == "/dev/stdout"
    assert spec["meshConfig"]["accessLogEncoding"] == encoding
    assert spec["meshConfig"]["outboundTrafficPolicy"] == {"mode": policy}
    assert spec["components"]["egressGateways"] == [
        {
            "name": "istio-egressgateway",
            "enabled": True,
            "k8s": {
                "nodeSelector": {"egress-harness.io/egress-gateway": "true"},
                "service": {"ports": EGRESS_GATEWAY_PORTS},
            },
        }
    ]
    (ingress,) = spec["components"]["ingressGateways"]
    service = ingress["k8s"]["service"]
    assert service["type"] == "NodePort"
    http = next(p for p in service["ports"] if p["port"] == 80)
    assert http["nodePort"] == INGRESS_NODE_PORT
    assert http["targetPort"] == 8080
    assert OVERLAY_TEMPLATE.is_file()


def test_istio_overlay_pins_the_egress_gateway_only_to_the_harnesss_own_node(tmp_path: Path) -> None:
    """On a cluster the harness does not own no node carries the label: a pinned gateway stays Pending
    and ``istioctl install`` times out. There the overlay selects no node."""
    out = render_overlay(tmp_path / "o.yaml", pin_egress_gateway=False)
    (egress,) = yaml.safe_load(out.read_text())["spec"]["components"]["egressGateways"]
    assert egress == {
        "name": "istio-egressgateway",
        "enabled": True,
        "k8s": {"nodeSelector": {}, "service": {"ports": EGRESS_GATEWAY_PORTS}},
    }
    pinned = render_overlay(tmp_path / "p.yaml", pin_egress_gateway=True)
    (egress,) = yaml.safe_load(pinned.read_text())["spec"]["components"]["egressGateways"]
    assert egress["k8s"]["nodeSelector"] == {"egress-harness.io/egress-gateway": "true"}


@pytest.mark.parametrize(
    ("versions", "flush"),
    [
        (("1.31-dev",), "100ms"),
        (("1.29.6",), "100ms"),
        (("1.28.10",), None),
        (("1.28.10", "1.29.6"), None),
        ((), None),
    ],
)
def test_istio_overlay_flushes_access_logs_every_100ms_where_istio_has_the_field(
    tmp_path: Path, versions: tuple[str, ...], flush: str | None
) -> None:
    out = render_overlay(tmp_path / "o.yaml", istio_versions=versions)
    mesh = yaml.safe_load(out.read_text())["spec"]["meshConfig"]
    if flush is None:  # Istio 1.28's istioctl rejects the field; an upgrade from it too
        assert "defaultConfig" not in mesh and "defaultConfig" not in out.read_text()
        assert flush_interval_s(*versions) == 1.0
    else:
        assert mesh["defaultConfig"] == {"fileFlushInterval": flush}
        assert flush_interval_s(*versions) == 0.1


def test_istio_overlay_rejects_unknown_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="access_log_encoding"):
        render_overlay(tmp_path / "o.yaml", access_log_encoding="XML")
    with pytest.raises(ValueError, match="outbound_traffic_policy"):
        render_overlay(tmp_path / "o.yaml", outbound_traffic_policy="DENY")
