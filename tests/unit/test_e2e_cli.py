"""``egress-harness e2e up|down`` and the run state between them, against the stand-in Part.events of a run
(tests/unit/test_e2e_run.py's ``parts``) and fake ``docker``/``kind``/``istioctl``: up writes a state
an attached run reads back, a failed up leaves nothing (and no state), down removes what up made and
is idempotent, a failed down keeps the state for another try."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import (
    RUN_STATE_FILE,
    E2EError,
    E2EOptions,
    E2ERun,
    RecorderState,
    RunState,
    RunStateError,
    pki_server_names,
    recorder_aliases,
)
from harness.cluster import cli as e2e_cli
from harness.cluster import namespace as cluster_namespace
from harness.cluster import run as cluster_run
from harness.cluster.kube import ObjectRef
from harness.cluster.providers.kind import KindCluster
from harness.common import tools
from harness.common.certs import generate_pki, openssl_unavailable_reason
from tests.unit.test_e2e_run import Part, parts  # noqa: F401  (the fixture of the run's stand-in parts)

NAME = "egress-harness"


def make_run(options: E2EOptions, run_dir: Path) -> E2ERun:
    return E2ERun(options, run_dir, run_id="abc123")


# --- up --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("parts")
def test_up_writes_the_state_and_leaves_everything_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    options = E2EOptions(istio_version="1.30.3", recorder_aliases=("a.egress-harness.test",))
    state = e2e_cli.bring_up(options, run_dir, make_run=make_run)
    assert state.path == (run_dir / RUN_STATE_FILE).resolve()
    assert RunState.load(run_dir / RUN_STATE_FILE) == state
    assert (state.run_id, state.namespace, state.ingress_url) == (
        "abc123",
        "egress-abc123",
        "http://127.0.0.1:18080",
    )
    assert (state.cluster, state.cluster_name, state.cluster_created, state.context) == (
        "kind",
        NAME,
        True,
        f"kind-{NAME}",
    )
    assert state.ingress_gateway == "egress-abc123/relay-gateway"
    assert state.recorder is not None and state.recorder.name == "egress-harness-recorder-1"
    assert (state.recorder.serves, state.recorder.tls_port, state.recorder.tcp_port) == (
        ("http", "tls"),
        443,
        9000,
    )
    assert state.mtls_recorder is not None and state.mtls_recorder.name == "egress-harness-mtls-recorder-1"
    assert state.mtls_recorder.serves == ("http", "mtls")
    assert state.pki_dir == (run_dir / "pki").resolve() and (run_dir / "pki" / "client.key").is_file()
    assert state.pod_source_nat and not state.gateway_api
    # connections closed, everything else kept: no namespace deletion, the recorders never exited
    assert "delete egress-abc123" not in Part.events
    assert not any(p.startswith(("exit recorder", "exit mtls recorder")) for p in Part.events)
    assert {
        "exit relays (kept)",
        "exit istio (kept)",
        "exit cluster (kept)",
        "exit kube",
        "exit traffic",
    } <= set(Part.events)


@pytest.mark.usefixtures("parts")
def test_up_refuses_a_run_dir_with_a_run_in_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    e2e_cli.bring_up(E2EOptions(istio_version="1.30.3"), run_dir, make_run=make_run)
    before = list(Part.events)
    with pytest.raises(E2EError, match=r"run-state.json exists: a run is up in .* e2e down --run-dir"):
        e2e_cli.bring_up(E2EOptions(istio_version="1.30.3"), run_dir, make_run=make_run)
    assert Part.events == before


@pytest.mark.usefixtures("parts")
def test_a_failed_up_removes_what_it_made_and_writes_no_state(tmp_path: Path) -> None:
    Part.fail_on_enter = {"relays"}
    with pytest.raises(RuntimeError, match="relays failed"):
        e2e_cli.bring_up(E2EOptions(istio_version="1.30.3"), tmp_path / "run", make_run=make_run)
    assert not (tmp_path / "run" / RUN_STATE_FILE).exists()
    assert Part.events[-6:] == [
        "delete egress-abc123",
        "exit mtls recorder",
        "exit recorder",
        "exit istio",
        "exit kube",
        "exit cluster",
    ]
    assert not (tmp_path / "run" / "pki").exists()


@pytest.mark.usefixtures("parts")
def test_an_up_that_cannot_write_its_state_tears_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: RunState, path: Path | None = None) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunState, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        e2e_cli.bring_up(E2EOptions(istio_version="1.30.3"), tmp_path / "run", make_run=make_run)
    assert not (tmp_path / "run" / RUN_STATE_FILE).exists()
    assert Part.events[-3:] == ["exit istio", "exit kube", "exit cluster"]
    assert "delete egress-abc123" in Part.events and "exit recorder" in Part.events


def test_the_up_command_builds_its_options_and_prints_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[E2EOptions, Path]] = []

    def fake_up(options: E2EOptions, run_dir: Path) -> RunState:
        seen.append((options, run_dir))
        return state_of(tmp_path)

    monkeypatch.setattr(e2e_cli, "bring_up", fake_up)
    code = e2e_cli.main(
        [
            "up",
            "--istio-version", "1.29.6",
            "--access-log-encoding", "JSON",
            "--outbound-traffic-policy", "registry_only",
            "--gateway-api",
            "--run-dir", str(tmp_path / "r"),
        ]
    )  # fmt: skip
    assert code == 0
    ((options, run_dir),) = seen
    assert run_dir == tmp_path / "r"
    assert (options.istio_version, options.access_log_encoding, options.outbound_traffic_policy) == (
        "1.29.6",
        "JSON",
        "REGISTRY_ONLY",
    )
    assert options.gateway_api and not options.keep_on_failure
    names = e2e_cli.load_catalog_names()
    assert list(options.recorder_aliases) == recorder_aliases(names)
    # the mTLS recorder answers for the catalog's mTLS scenarios, and only for them
    assert options.external_tls
    assert list(options.mtls_aliases) == [
        "mtls.egress-harness.test",
        "mtls-mtls-origination-at-egress-gateway.egress-harness.test",
    ]
    assert json.loads(capsys.readouterr().out)["run_id"] == "abc123"
    assert e2e_cli.main(["up", "--no-external-tls", "--run-dir", str(tmp_path / "r")]) == 0
    assert not seen[-1][0].external_tls


def test_the_up_command_reports_a_failure_as_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(options: E2EOptions, run_dir: Path) -> RunState:
        raise E2EError("kind create cluster failed")

    monkeypatch.setattr(e2e_cli, "bring_up", failing)
    assert e2e_cli.main(["up", "--run-dir", str(tmp_path)]) == 1
    assert "egress-harness e2e up: kind create cluster failed" in capsys.readouterr().err


# --- the state ---------------------------------------------------------------------------------------


def state_of(tmp_path: Path, **changes: Any) -> RunState:
    state = RunState(
        run_id="abc123",
        run_dir=tmp_path,
        kubeconfig=tmp_path / "kubeconfig",
        context=f"kind-{NAME}",
        cluster="kind",
        cluster_name=NAME,
        cluster_created=True,
        istio_version="1.30.3",
        istio_installed=True,
        access_log_encoding="TEXT",
        outbound_traffic_policy="ALLOW_ANY",
        ingress_url="http://127.0.0.1:18080",
        namespace="egress-abc123",
        namespace_created=True,
        ingress_gateway="egress-abc123/relay-gateway",
        relay_image="istio-egress-harness/relay:dev",
        external="container",
        external_host="external.egress-harness.test",
        pod_source_nat=True,
        recorder=RecorderState(
            "egress-harness-recorder-1",
            "istio-egress-harness/recorder:dev",
            "kind",
            80,
            ("external.egress-harness.test",),
        ),
        created="2026-11-28T07:00:00.000Z",
        ingress_token="t0ken-of-the-run",
    )
    return dataclasses.replace(state, **changes)


def tls_state(tmp_path: Path, **changes: Any) -> RunState:
    """A state of a run with certificates: the PKI directory and both recorders serving TLS."""
    base = state_of(tmp_path)
    assert base.recorder is not None
    tls: dict[str, Any] = {
        "recorder": dataclasses.replace(base.recorder, serves=("http", "tls"), tls_port=443),
        "mtls_recorder": RecorderState(
            "egress-harness-mtls-recorder-1",
            "istio-egress-harness/recorder:dev",
            "kind",
            80,
            ("mtls.egress-harness.test", "mtls-mtls-origination-at-egress-gateway.egress-harness.test"),
            ("http", "mtls"),
            443,
        ),
        "pki_dir": tmp_path / "pki",
    }
    return dataclasses.replace(base, **{**tls, **changes})


def test_a_state_reads_back_as_written(tmp_path: Path) -> None:
    state = state_of(tmp_path)
    path = state.save()
    assert path == tmp_path / RUN_STATE_FILE
    assert RunState.load(path) == state
    text = json.loads(path.read_text())
    assert text["schema"] == "istio-egress-harness/run-state" and text["schema_version"] == 1
    assert (text["pki_dir"], text["mtls_recorder"]) == (None, None)


def test_a_state_with_certificates_and_the_mtls_recorder_reads_back(tmp_path: Path) -> None:
    state = tls_state(tmp_path)
    loaded = RunState.load(state.save())
    assert loaded == state
    assert loaded.pki_dir == tmp_path / "pki"
    assert loaded.mtls_recorder is not None and loaded.mtls_recorder.tls_port == 443
    assert loaded.mtls_recorder.serves == ("http", "mtls")
    handle = loaded.mtls_recorder.handle()
    assert (handle.name, handle.alias, handle.tls_port) == (
        "egress-harness-mtls-recorder-1",
        "mtls.egress-harness.test",
        443,
    )
    assert (
        handle.network_url("mtls.egress-harness.test", scheme="https") == "https://mtls.egress-harness.test"
    )
    # a state written before TLS existed reads as a run without it
    old = {k: v for k, v in state_of(tmp_path).to_dict().items() if k not in ("pki_dir", "mtls_recorder")}
    del old["recorder"]["tls_port"]
    legacy = RunState.from_dict(old)
    assert legacy.pki_dir is None and legacy.mtls_recorder is None
    assert legacy.recorder is not None and legacy.recorder.tls_port is None


def test_the_recorders_tcp_port_reads_back_and_an_older_state_has_none(tmp_path: Path) -> None:
    base = state_of(tmp_path)
    assert base.recorder is not None
    netns = dataclasses.replace(
        base.recorder, tcp_port=9000, control_url="http://127.0.0.1:4242", address="10.250.0.2"
    )
    state = dataclasses.replace(
        base, recorder=netns, mtls_recorder=dataclasses.replace(base.recorder, tcp_port=9001)
    )
    loaded = RunState.load(state.save())
    assert loaded == state
    assert loaded.recorder is not None and loaded.mtls_recorder is not None
    assert (loaded.recorder.tcp_port, loaded.mtls_recorder.tcp_port) == (9000, 9001)
    attached, container = loaded.recorder.handle(tmp_path), loaded.mtls_recorder.handle()
    assert (type(attached).__name__, attached.tcp_port) == ("AttachedRecorder", 9000)
    assert (type(container).__name__, container.tcp_port) == ("RecorderContainer", 9001)
    # a state written before the TCP echo existed reads as a recorder without one
    old = state.to_dict()
    del old["recorder"]["tcp_port"], old["mtls_recorder"]["tcp_port"]
    legacy = RunState.from_dict(old)
    assert legacy.recorder is not None and legacy.mtls_recorder is not None
    assert (legacy.recorder.tcp_port, legacy.mtls_recorder.tcp_port) == (None, None)
    assert (
        legacy.recorder.handle(tmp_path).tcp_port is None and legacy.mtls_recorder.handle().tcp_port is None
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": "other"}, r"field 'schema': expected 'istio-egress-harness/run-state'"),
        ({"schema_version": 2}, r"field 'schema_version': 2 is not supported"),
        ({"kubeconfig": ""}, r"field 'kubeconfig': expected a non-empty string"),
        ({"cluster_created": "yes"}, r"field 'cluster_created': expected true or false"),
        ({"access_log_encoding": "XML"}, r"field 'access_log_encoding': expected one of TEXT, JSON"),
        (
            {"recorder": {"name": "r", "image": "i", "network": "kind", "port": "80"}},
            r"recorder: field 'port'",
        ),
        (
            {"gateway_api_objects": [{"kind": "CustomResourceDefinition"}]},
            r"gateway_api_objects\[0\]: field 'api_version'",
        ),
        (
            {"mtls_recorder": {"name": "r", "image": "i", "network": "kind", "port": 80, "tls_port": "443"}},
            r"mtls_recorder: field 'tls_port': expected an integer",
        ),
        (
            {"recorder": {"name": "r", "image": "i", "network": "kind", "port": 80, "tcp_port": "9000"}},
            r"recorder: field 'tcp_port': expected an integer",
        ),
        ({"pki_dir": 7}, r"field 'pki_dir': expected a non-empty string"),
    ],
)
def test_a_bad_state_names_the_file_and_the_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = {**state_of(tmp_path).to_dict(), **change}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RunStateError, match=f"^{path}: .*{message}"):
        RunState.load(path)


def test_the_state_keeps_the_runs_token_readable_by_its_owner_only_and_shows_it_redacted(
    tmp_path: Path,
) -> None:
    state = state_of(tmp_path)
    path = state.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert RunState.load(path).ingress_token == "t0ken-of-the-run"
    shown = state.to_json(redact_token=True)
    assert "t0ken-of-the-run" not in shown
    assert json.loads(shown)["ingress_token"] == f"<redacted: in {path}>"
    # a state written before the harness had a token still loads (the run's routes need none)
    data = state.to_dict()
    del data["ingress_token"]
    assert RunState.from_dict(data).ingress_token == ""


def test_a_missing_or_broken_state_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunStateError, match=f"{tmp_path / 'none.json'}: cannot read the run state"):
        RunState.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RunStateError, match=r"bad\.json: not JSON"):
        RunState.load(tmp_path / "bad.json")


def test_an_attached_run_creates_nothing_and_closes_only_its_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = state_of(tmp_path, access_log_encoding="JSON", gateway_api=True)
    events: list[str] = []

    class Conn:
        def __init__(self, *a: Any, **kw: Any) -> None:
            events.append(f"open {type(self).__name__} {a[:2]}" + (f" {kw}" if kw else ""))

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            events.append(f"close {type(self).__name__}")

    class Kube(Conn):
        pass

    class Traffic(Conn):
        pass

    monkeypatch.setattr(cluster_run, "Kube", Kube)
    for module in (cluster_run, cluster_namespace):  # the attach, and a view's client made on demand
        monkeypatch.setattr(module, "Traffic", Traffic)
    monkeypatch.setattr(tools, "ensure_tool", lambda name, version: Path(f"/bin/{name}-{version}"))
    options = E2EOptions(istio_version="1.29.6", keep_on_failure=True)
    with E2ERun(options, tmp_path / "worker", state=state) as run:
        assert (run.run_id, run.namespace, run.ingress_url) == ("abc123", "egress-abc123", state.ingress_url)
        assert run.options.istio_version == "1.30.3" and run.options.access_log_encoding == "JSON"
        assert run.options.keep_on_failure  # the session's own wishes stay
        assert run.istioctl == "/bin/istioctl-1.30.3"
        assert isinstance(run.cluster, KindCluster) and not run.cluster.created
        assert run.cluster.kubeconfig == state.kubeconfig and run.source_nat
        assert run.recorder is not None and run.recorder.name == "egress-harness-recorder-1"
        assert run.gateway_api_present and run.scenario_lock().path == tmp_path / "scenario.lock"
        with pytest.raises(E2EError, match="only a run that made its parts"):
            run.detach()
    assert events == [
        f"open Kube {(state.kubeconfig, state.context)}",
        # the client sends the run's own ingress host (its ingress route matches that one only) and
        # the run's token from its state (without it the route answers 404)
        "open Traffic () {'headers': {'Host': 'egress-abc123.ingress.egress-harness.test', "
        "'x-egress-harness-token': 't0ken-of-the-run'}}",
        "close Traffic",
        "close Kube",
    ]


@pytest.mark.skipif(openssl_unavailable_reason() is not None, reason="needs the openssl tool")
def test_an_attached_run_reads_the_runs_certificates_and_both_recorders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = generate_pki(tmp_path / "pki", pki_server_names())
    state = tls_state(tmp_path)

    class Conn:
        def __init__(self, *a: Any, **kw: Any) -> None:
            pass

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(cluster_run, "Kube", Conn)
    for module in (cluster_run, cluster_namespace):
        monkeypatch.setattr(module, "Traffic", Conn)
    monkeypatch.setattr(tools, "ensure_tool", lambda name, version: Path(f"/bin/{name}"))
    with E2ERun(E2EOptions(), tmp_path / "worker", state=state) as run:
        assert run.pki == made  # the same files, subjects and names as `up` made them
        assert (
            run.pki is not None
            and run.pki.client.subject == "CN=egress-harness-client,O=istio-egress-harness"
        )
        assert "DNS:*.egress-harness.test" in run.pki.server.alt_names
        assert run.ca_pem == made.ca.cert_pem
        assert run.mtls_recorder is not None and run.mtls_recorder.name == "egress-harness-mtls-recorder-1"
        assert run.external_serves() == ("http", "tls", "mtls")
    (tmp_path / "pki" / "client.key").unlink()
    with pytest.raises(E2EError, match=r"the run's PKI in .*pki cannot be read"):
        E2ERun(E2EOptions(), tmp_path / "worker", state=state).__enter__()


# --- down --------------------------------------------------------------------------------------------


def kind_rules(listed: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "tool": "docker",
            "args": ["rm", "-f", "-v", "egress-harness-recorder-1"],
            "stdout": "egress-harness-recorder-1\n",
        },
        {"tool": "kind", "args": ["get", "clusters"], "stdout": f"{NAME}\n" if listed else "other\n"},
        {"tool": "kind", "args": ["delete", "cluster"]},
    ]


def test_down_removes_the_recorder_and_the_cluster_then_the_state(tmp_path: Path, fakebin: Any) -> None:
    state = state_of(tmp_path)
    state.save()
    state.kubeconfig.write_text("apiVersion: v1\n")
    fakebin.rules(kind_rules())
    removed: list[str] = []
    assert e2e_cli.bring_down(tmp_path, removed=removed) == []
    assert removed[:2] == [
        "recorder container egress-harness-recorder-1",
        f"kind cluster {NAME} (with everything in it)",
    ]
    assert fakebin.commands() == [
        "docker rm -f -v egress-harness-recorder-1",
        "kind get clusters",
        f"kind delete cluster --name {NAME} --kubeconfig {state.kubeconfig}",
    ]
    assert not state.path.exists() and not state.kubeconfig.exists()
    # again: nothing to do
    assert e2e_cli.bring_down(tmp_path) == []
    assert len(fakebin.commands()) == 3


def test_down_removes_both_recorders_and_the_runs_keys(tmp_path: Path, fakebin: Any) -> None:
    state = tls_state(tmp_path)
    state.save()
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.key").write_text("KEY")
    fakebin.rules(
        [
            {"tool": "docker", "args": ["rm"]},
            *kind_rules()[1:],
        ]
    )
    assert e2e_cli.bring_down(tmp_path) == []
    assert fakebin.commands()[:2] == [
        "docker rm -f -v egress-harness-recorder-1",
        "docker rm -f -v egress-harness-mtls-recorder-1",
    ]
    assert not (tmp_path / "pki").exists() and not state.path.exists()


def test_a_pki_outside_the_run_dir_is_never_removed(tmp_path: Path, fakebin: Any) -> None:
    elsewhere = tmp_path / "elsewhere" / "pki"
    elsewhere.mkdir(parents=True)
    run_dir = tmp_path / "run"
    tls_state(run_dir, pki_dir=elsewhere).save()
    fakebin.rules([{"tool": "docker", "args": ["rm"]}, *kind_rules()[1:]])
    assert e2e_cli.bring_down(run_dir) == []
    assert elsewhere.is_dir()


def test_down_of_what_is_gone_already_succeeds(tmp_path: Path, fakebin: Any) -> None:
    state_of(tmp_path).save()
    fakebin.rules(
        [
            {
                "tool": "docker",
                "args": ["rm"],
                "stderr": "Error response from daemon: No such container: egress-harness-recorder-1\n",
                "exit": 1,
            },
            *kind_rules(listed=False)[1:],
        ]
    )
    assert e2e_cli.bring_down(tmp_path) == []
    assert fakebin.commands() == ["docker rm -f -v egress-harness-recorder-1", "kind get clusters"]


def test_a_failed_down_keeps_the_state_for_another_try(tmp_path: Path, fakebin: Any) -> None:
    state = state_of(tmp_path)
    state.save()
    fakebin.rules(
        [
            {"tool": "docker", "args": ["rm"], "stderr": "permission denied\n", "exit": 1},
            {"tool": "kind", "args": ["get", "clusters"], "stderr": "cannot list\n", "exit": 1},
        ]
    )
    problems = e2e_cli.bring_down(tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith(
        "removing the recorder container egress-harness-recorder-1: `docker rm -f -v"
    )
    assert "permission denied" in problems[0]
    assert problems[1].startswith(f"deleting kind cluster {NAME}: ")
    assert state.path.exists()
    assert e2e_cli.main(["down", "--run-dir", str(tmp_path)]) == 1


class StandInClusterApi:
    """The cluster reads and writes of a down on a cluster up did not create."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.core = self
        self.api_client = self

    def list_namespace(self, label_selector: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("list namespaces", label_selector))
        return {"items": [{"metadata": {"name": "eabc123-http-via-egress-gateway"}}]}

    def sanitize_for_serialization(self, obj: Any) -> Any:
        return obj

    def delete_namespace(self, name: str, **kw: Any) -> None:
        self.calls.append(("delete namespace", name))

    def delete_objects(self, refs: list[ObjectRef]) -> None:
        self.calls.append(("delete", [r.name for r in refs]))

    def list_namespaced_secret(self, namespace: str, label_selector: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("list secrets", namespace, label_selector))
        return {"items": [{"metadata": {"name": "eh-client-x"}}, {"metadata": {"name": "eh-ca-y"}}]}

    def delete_namespaced_secret(self, name: str, namespace: str, **kw: Any) -> None:
        self.calls.append(("delete secret", namespace, name))
        if name == "eh-ca-y":
            raise NotFound("gone already")

    def close(self) -> None:
        self.calls.append(("close",))


class NotFound(Exception):
    status = 404


def test_down_on_a_cluster_up_did_not_create_removes_the_runs_namespaces_crds_and_istio(
    tmp_path: Path, fakebin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = state_of(
        tmp_path,
        cluster_created=False,
        recorder=None,
        gateway_api=True,
        gateway_api_objects=(
            ObjectRef("apiextensions.k8s.io/v1", "CustomResourceDefinition", "gateways.x", None),
        ),
    )
    state.save()
    state.kubeconfig.write_text("apiVersion: v1\n")
    monkeypatch.setattr("harness.common.tools.ensure_tool", lambda name, version: Path("istioctl"))
    fakebin.rules([{"tool": "istioctl", "args": ["uninstall", "--purge", "-y"]}])
    api = StandInClusterApi()
    removed: list[str] = []
    assert e2e_cli.bring_down(tmp_path, kube_factory=lambda s: api, removed=removed) == []
    # e2e down lists what it removed (issue 14): everything of the run found by its label, and the state
    assert removed == [
        "namespace eabc123-http-via-egress-gateway",
        "namespace egress-abc123",
        "CustomResourceDefinition gateways.x",
        "Istio 1.30.3 (istioctl uninstall)",
        f"the run state {state.path} (with the run's token)",
    ]
    assert api.calls == [
        ("list namespaces", "io.egress-harness.run=abc123"),
        ("delete namespace", "eabc123-http-via-egress-gateway"),
        ("delete namespace", "egress-abc123"),
        ("delete", ["gateways.x"]),
        ("delete namespace", "istio-system"),
        ("close",),
    ]
    assert fakebin.commands() == [
        f"istioctl uninstall --purge -y --kubeconfig {state.kubeconfig} --context kind-{NAME}"
    ]
    assert not state.path.exists()
    assert state.kubeconfig.exists()  # not ours to remove


def test_down_on_a_cluster_up_did_not_create_removes_credential_secrets_left_in_istio_system(
    tmp_path: Path,
) -> None:
    state = tls_state(
        tmp_path, cluster_created=False, istio_installed=False, recorder=None, mtls_recorder=None
    )
    state.save()
    state.kubeconfig.write_text("apiVersion: v1\n")
    api = StandInClusterApi()
    removed: list[str] = []
    assert e2e_cli.bring_down(tmp_path, kube_factory=lambda s: api, removed=removed) == []
    assert "Secret istio-system/eh-client-x" in removed and "Secret istio-system/eh-ca-y" in removed
    assert api.calls[-4:] == [
        ("list secrets", "istio-system", "io.egress-harness.run=abc123"),
        ("delete secret", "istio-system", "eh-ca-y"),  # gone already: fine
        ("delete secret", "istio-system", "eh-client-x"),
        ("close",),
    ]
    # a run without certificates made no Secrets: istio-system's Secrets are not even listed
    state_of(tmp_path, cluster_created=False, istio_installed=False, recorder=None).save()
    api = StandInClusterApi()
    assert e2e_cli.bring_down(tmp_path, kube_factory=lambda s: api) == []
    assert not any(c[0] == "list secrets" for c in api.calls)


def test_down_without_a_state_has_nothing_to_do(tmp_path: Path, fakebin: Any) -> None:
    assert e2e_cli.main(["down", "--run-dir", str(tmp_path / "never-up")]) == 0
    assert fakebin.commands() == []


def test_down_of_an_unreadable_state_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / RUN_STATE_FILE).write_text("[]")
    assert e2e_cli.main(["down", "--run-dir", str(tmp_path)]) == 2
    assert f"{tmp_path / RUN_STATE_FILE}: a run state is one JSON object" in capsys.readouterr().err


def test_up_and_down_join_the_clis_e2e_group(tmp_path: Path, fakebin: Any) -> None:
    """harness/cluster/cli.py's add_commands puts ``e2e up`` and ``e2e down`` beside the preflight and
    tools of harness/common/tools.py, which alone registers only those two (it knows no cluster)."""
    import argparse

    def e2e_steps(register: Any) -> tuple[argparse.ArgumentParser, set[str]]:
        parser = argparse.ArgumentParser(prog="egress-harness")
        sub = parser.add_subparsers(dest="command", required=True)
        register(sub)
        (group,) = [a for a in sub.choices["e2e"]._actions if isinstance(a, argparse._SubParsersAction)]
        return parser, set(group.choices)

    assert e2e_steps(tools.add_commands)[1] == {"preflight", "tools"}
    parser, steps = e2e_steps(e2e_cli.add_commands)
    assert {"preflight", "tools", "up", "down"} <= steps
    args = parser.parse_args(["e2e", "down", "--run-dir", str(tmp_path)])
    assert args.handler(args) == 0
    args = parser.parse_args(["e2e", "up", "--gateway-api", "--access-log-encoding", "json"])
    assert (args.gateway_api, args.access_log_encoding, args.handler) == (True, "json", e2e_cli._cmd_up)
    args = parser.parse_args(["e2e", "preflight"])
    assert args.handler is tools._cmd_preflight


def test_the_clis_e2e_group_comes_from_the_cluster_tier() -> None:
    from harness.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["e2e", "up"])
    assert args.handler is e2e_cli._cmd_up
    assert parser.parse_args(["e2e", "tools"]).handler is tools._cmd_tools


def test_up_options_for_a_netns_run_and_for_an_existing_cluster(tmp_path: Path) -> None:
    from harness.cli import build_parser

    parser = build_parser()
    netns = e2e_cli.options_for_up(parser.parse_args(["e2e", "up", "--provider", "netns"]), ["x"])
    assert (netns.provider, netns.istio_version, netns.kubeconfig) == ("netns", "1.31-dev", None)
    assert netns.problems() == []
    existing = e2e_cli.options_for_up(
        parser.parse_args(
            ["e2e", "up", "--kubeconfig", str(tmp_path / "kc"), "--istio-version", "1.31-dev",
             "--ingress-url", "http://127.0.0.1:1", "--relay-image", "r:1", "--external", "internet",
             "--external-host", "www.baidu.com"]
        ),
        ["x"],
    )  # fmt: skip
    assert existing.existing_cluster and existing.kubeconfig == tmp_path / "kc"
    assert (existing.istio_version, existing.external, existing.host) == (
        "1.31-dev",
        "internet",
        "www.baidu.com",
    )
    assert existing.problems() == []
    # a netns cluster is made by the run itself: it does not go with --kubeconfig
    both = e2e_cli.options_for_up(
        parser.parse_args(["e2e", "up", "--provider", "netns", "--kubeconfig", str(tmp_path / "kc")]), ["x"]
    )
    assert any("does not go with --kubeconfig" in p for p in both.problems())


def test_a_netns_runs_recorder_attached_by_state_shows_its_log_for_diagnostics(tmp_path: Path) -> None:
    """An attached netns recorder had no log at all: the diagnostics' recorder steps failed with
    AttributeError on a netns catalog run (its log is <run dir>/<name>/<name>.log)."""
    from harness.cluster.state import RecorderState

    recorder = RecorderState(
        "egh-rec", "-", "netns", 80, ("external.egress-harness.test",), control_url="http://127.0.0.1:1"
    )
    handle = recorder.handle(tmp_path)
    assert "could not be read" in handle.logs()
    (tmp_path / "egh-rec").mkdir()
    (tmp_path / "egh-rec" / "egh-rec.log").write_text("GET /records 200\n")
    assert handle.logs() == "GET /records 200\n"
    assert "with the process that started it" in recorder.handle().logs()
