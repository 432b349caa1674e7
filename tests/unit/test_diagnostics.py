"""harness.cluster.diagnostics with the fake ``istioctl``/``kind`` and a stand-in Kube; the pytest hook that
collects them for a failed e2e test (run in a pytester session against a stand-in run)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.cluster.diagnostics import Diagnostics, artifact_dir_name, run_bounded

pytest_plugins = ["pytester"]

NS = "egress-abc123"
SINCE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def pod(name: str, *containers: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": c} for c in containers]}}


class StandInKube:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_events = False
        self.hang_logs_s = 0.0
        #: the target runs without a sidecar (a bypass scenario's caller)
        self.bare_target = False

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("pods", namespace, selector))
        if namespace == "istio-system":
            return [pod("gw-1", "istio-proxy"), pod("gw-2", "istio-proxy")]
        target = pod("target-1", "relay") if self.bare_target else pod("target-1", "relay", "istio-proxy")
        if selector == "app=target":
            return [target]
        return [pod("proxy-1", "relay", "istio-proxy"), target]

    def pod_logs(
        self,
        namespace: str,
        selector: str,
        *,
        container: str = "istio-proxy",
        since_seconds: int | None = None,
        since_time: datetime | None = None,
    ) -> dict[str, str]:
        self.calls.append(("logs", namespace, selector, container, since_time))
        if self.hang_logs_s and namespace == "istio-system":
            time.sleep(self.hang_logs_s)
        # as Kube.pod_logs: the pods that have the container
        pods = self.list_pods(namespace, selector)
        names = [
            p["metadata"]["name"] for p in pods if container in {c["name"] for c in p["spec"]["containers"]}
        ]
        return {n: f"{container} log of {n}\n" for n in names}

    def events(self, namespace: str) -> list[dict[str, Any]]:
        if self.fail_events:
            raise ConnectionError("API server went away")
        return [
            {
                "lastTimestamp": "2026-03-01T12:00:01Z",
                "type": "Warning",
                "reason": "BackOff",
                "involvedObject": {"kind": "Pod", "name": "target-1"},
                "message": "Back-off restarting failed container\n",
                "count": 3,
            }
        ]


class StandInRecorder:
    def records(self, request_id: str | None = None) -> list[dict[str, Any]]:
        return [{"client_ip": "172.18.0.2", "headers": {"x-request-id": "rid-1"}}]

    def logs(self) -> str:
        return "listening on 0.0.0.0:80\n"


class StandInKind:
    def __init__(self) -> None:
        self.exported: list[Path] = []

    def export_logs(self, directory: Path) -> Path:
        self.exported.append(directory)
        return directory


def diagnostics(tmp_path: Path, kube: StandInKube, **kw: Any) -> Diagnostics:
    manifest = tmp_path / "run" / "scenarios" / "http-via-egress-gateway" / "manifests.yaml"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("kind: ServiceEntry\n")
    return Diagnostics(
        tmp_path / "artifacts",
        kube=kube,
        istioctl="istioctl",
        kubeconfig=tmp_path / "kubeconfig",
        context="kind-egress",
        namespace=NS,
        since=SINCE,
        manifests=[manifest],
        recorder=StandInRecorder(),
        **kw,
    )


ISTIOCTL_OK = [
    {"tool": "istioctl", "args": ["proxy-config"], "stdout": "NAME  DOMAINS  MATCH  VIRTUAL SERVICE\n"},
    {"tool": "istioctl", "args": ["analyze"], "stderr": "Info [IST0102] (Namespace x) not injected\n"},
]


def test_artifact_dir_names_are_safe_and_readable() -> None:
    assert (
        artifact_dir_name("tests/e2e/test_mission.py::test_x[a-b]") == "tests_e2e_test_mission.py_test_x_a-b"
    )
    assert artifact_dir_name("::") == "test"
    assert len(artifact_dir_name("x" * 500)) == 160


def test_collect_writes_every_piece(tmp_path: Path, fakebin: Any) -> None:
    fakebin.rules(ISTIOCTL_OK)
    kube = StandInKube()
    directory = diagnostics(tmp_path, kube).collect("tests/e2e/test_mission.py::test_x")
    assert directory == tmp_path / "artifacts" / "tests_e2e_test_mission.py_test_x"
    files = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    assert files == {
        "gateway-gw-1.log",
        "gateway-gw-2.log",
        "proxy-1.istio-proxy.log",
        "proxy-1.relay.log",
        "target-1.istio-proxy.log",
        "target-1.relay.log",
        *(
            f"proxy-config/{w}-{p}.txt"
            for w in ("routes", "clusters", "listeners")
            for p in ("target-1", "gw-1", "gw-2")
        ),
        "analyze.txt",
        f"events-{NS}.txt",
        "events-istio-system.txt",
        "manifests/00-http-via-egress-gateway-manifests.yaml",
        "recorder-records.json",
        "recorder.log",
        "summary.txt",
    }
    # the logs of the run only, never a tail
    assert ("logs", "istio-system", "istio=egressgateway", "istio-proxy", SINCE) in kube.calls
    assert "FAILED" not in (directory / "summary.txt").read_text()
    assert (directory / "events-istio-system.txt").read_text() == (
        "2026-03-01T12:00:01Z Warning BackOff Pod/target-1 (x3): Back-off restarting failed container\n"
    )
    assert json.loads((directory / "recorder-records.json").read_text())[0]["client_ip"] == "172.18.0.2"
    assert "(exit 0)" in (directory / "analyze.txt").read_text()
    cmds = fakebin.commands()
    k = f"--kubeconfig {tmp_path / 'kubeconfig'} --context kind-egress"
    assert f"istioctl proxy-config routes target-1.{NS} {k}" in cmds
    assert f"istioctl proxy-config listeners gw-2.istio-system {k}" in cmds
    assert f"istioctl analyze -n {NS} {k}" in cmds
    assert len(cmds) == 10


def test_a_target_without_a_sidecar_has_its_relay_log_and_no_proxy_config(
    tmp_path: Path, fakebin: Any
) -> None:
    fakebin.rules(ISTIOCTL_OK)
    kube = StandInKube()
    kube.bare_target = True
    directory = diagnostics(tmp_path, kube).collect("bypass")
    files = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    assert {"target-1.relay.log", "proxy-1.istio-proxy.log"} <= files
    assert not {
        f for f in files if f.startswith(("target-1.istio-proxy", "proxy-config/")) and "target-1" in f
    }
    assert "FAILED" not in (directory / "summary.txt").read_text()
    assert not [c for c in fakebin.commands() if "target-1." in c]


def test_each_step_is_independent(tmp_path: Path, fakebin: Any) -> None:
    fakebin.rules(
        [
            {
                "tool": "istioctl",
                "args": ["proxy-config", "clusters", "gw-1.istio-system"],
                "exit": 1,
                "stderr": "no pod",
            },
            *ISTIOCTL_OK,
        ]
    )
    kube = StandInKube()
    kube.fail_events = True
    directory = diagnostics(tmp_path, kube).collect("t::x")
    summary = (directory / "summary.txt").read_text()
    assert "FAILED events" in summary and "API server went away" in summary
    assert "FAILED istioctl proxy-config" in summary and "clusters gw-1.istio-system: exit 1" in summary
    # the other steps still ran and wrote their files
    assert (directory / "proxy-config" / "routes-gw-2.txt").exists()
    assert (directory / "analyze.txt").exists()
    assert (directory / "recorder-records.json").exists()
    assert "ok     applied manifests" in summary


def test_a_hanging_step_is_left_behind_after_its_timeout(tmp_path: Path, fakebin: Any) -> None:
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "sleep": 30}, *ISTIOCTL_OK])
    kube = StandInKube()
    kube.hang_logs_s = 3.0
    threads_before = set(threading.enumerate())
    started = time.monotonic()
    directory = diagnostics(tmp_path, kube, step_timeout_s=0.5, command_timeout_s=1.0).collect("t::hang")
    assert time.monotonic() - started < 6.0
    summary = (directory / "summary.txt").read_text()
    assert "FAILED egress gateway logs" in summary and "did not finish within 0.5s" in summary
    assert "FAILED istioctl analyze" in summary
    assert (directory / "recorder-records.json").exists()
    # the steps left behind finish on their own; wait for them, or their late istioctl calls land in
    # the next test's fake-CLI log (PATH is the whole process's): seen once in a CI-like run
    deadline = time.monotonic() + 20.0
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - threads_before, "a diagnostics step never finished"


def test_without_a_cluster_connection_every_step_says_why(tmp_path: Path) -> None:
    d = Diagnostics(tmp_path / "a", kube=None, istioctl=None, kubeconfig=None, context=None, namespace=NS)
    summary = (d.collect("t::early") / "summary.txt").read_text()
    assert summary.count("FAILED") == 5  # logs x2, proxy-config, analyze, events
    assert "no cluster connection" in summary
    assert d.export_kind_logs() is None


def test_kind_logs_are_exported_with_kind(tmp_path: Path, fakebin: Any) -> None:
    from harness.cluster.providers.kind import KindCluster

    fakebin.rules([{"tool": "kind", "args": ["export", "logs"], "stdout": "Exported logs\n"}])
    kind = KindCluster("egress-harness", tmp_path / "run")
    d = Diagnostics(
        tmp_path / "artifacts",
        kube=None,
        istioctl=None,
        kubeconfig=None,
        context=None,
        namespace=NS,
        kind_cluster=kind,
    )
    assert d.export_kind_logs() == tmp_path / "artifacts" / "kind-logs"
    assert fakebin.commands() == [
        f"kind export logs {tmp_path / 'artifacts' / 'kind-logs'} --name egress-harness"
    ]


def test_run_bounded_reports_errors_and_results() -> None:
    ok = run_bounded("fine", lambda: [Path("a")], 1.0)
    assert ok.ok and ok.files == [Path("a")]

    def broken() -> list[Path]:
        raise LookupError("no such pod")

    bad = run_bounded("broken", broken, 1.0)
    assert not bad.ok and bad.error == "LookupError: no such pod"


# --- the pytest hook ------------------------------------------------------------------------------

CONFTEST = """
import pytest
from pathlib import Path
from harness.cluster.diagnostics import artifact_dir_name
from harness.pytest_plugin import RUN_KEY, mark_diagnosed

pytest_plugins = ["harness.pytest_plugin"]
COLLECTED = []

class StandInDiagnostics:
    def collect(self, test_id):
        d = Path("artifacts") / artifact_dir_name(test_id)
        d.mkdir(parents=True, exist_ok=True)
        COLLECTED.append(test_id)
        return d.resolve()

    def export_kind_logs(self):
        d = Path("artifacts") / "kind-logs"
        d.mkdir(parents=True, exist_ok=True)
        COLLECTED.append("kind-logs")
        return d.resolve()

class StandInRun:
    failed = False
    def mark_failed(self):
        self.failed = True
    def diagnostics(self):
        return StandInDiagnostics()
    def write_timings(self):
        pass

@pytest.fixture(scope="session")
def e2e_run(request):
    run = StandInRun()
    request.config.stash[RUN_KEY] = run
    yield run
    request.config.stash[RUN_KEY] = None

@pytest.fixture
def own_diagnostics(request):
    # as tests/e2e/test_catalog.py: the test collects its diagnostics itself and says where
    d = Path("artifacts") / "scenario"
    d.mkdir(parents=True, exist_ok=True)
    mark_diagnosed(request.node, d.resolve())

def pytest_sessionfinish(session):
    Path("collected.txt").write_text("\\n".join(COLLECTED))
"""

TESTS = """
def test_passes(e2e_run):
    pass

def test_fails(e2e_run):
    assert False, "the gateway saw nothing"

def test_fails_too(e2e_run):
    assert 1 == 2

def test_not_e2e():
    assert False
"""


def test_failed_e2e_tests_get_diagnostics_in_their_report(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_chain=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "diagnostics: artifacts/test_chain.py_test_fails/" in out
    assert "diagnostics: artifacts/test_chain.py_test_fails_too/" in out
    assert out.count("kind logs: artifacts/kind-logs/") == 1  # once per session
    collected = (pytester.path / "collected.txt").read_text().splitlines()
    # only the e2e tests that failed; the kind logs once, with the first failure
    assert collected == ["test_chain.py::test_fails", "kind-logs", "test_chain.py::test_fails_too"]


def test_a_failed_scenario_with_its_own_diagnostics_still_exports_the_kind_logs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_scenarios="""
def test_scenario_fails(e2e_run, own_diagnostics):
    assert False, "the gateway saw nothing"

def test_another_fails(e2e_run, own_diagnostics):
    assert False
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert out.count("diagnostics: artifacts/scenario/") == 2
    assert out.count("kind logs: artifacts/kind-logs/") == 1  # once per session, catalog failures too
    # the tests collected their own diagnostics: the hook collected none, only the kind logs
    assert (pytester.path / "collected.txt").read_text().splitlines() == ["kind-logs"]


# --- whose deadline a cluster's setup counts against ------------------------------------------------

SLOW_CLUSTER_CONFTEST = """
import time
import pytest

pytest_plugins = ["harness.pytest_plugin"]

@pytest.fixture(scope="session")
def e2e_run():
    time.sleep(3)  # creating the cluster and installing Istio
    yield object()
"""

SLOW_CLUSTER_TESTS = """
import time
import pytest

@pytest.mark.timeout(2)
def test_own_timeout(e2e_run):
    pass

def test_configured_timeout(e2e_run):
    pass

@pytest.mark.timeout(2)
def test_slow_body(e2e_run):
    time.sleep(4)
"""


def test_a_tests_timeout_does_not_include_the_cluster_fixtures_setup(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SLOW_CLUSTER_CONFTEST)
    pytester.makepyfile(test_slow=SLOW_CLUSTER_TESTS)
    # a subprocess: pytest-timeout's signal needs the main thread, and its thread method ends the process
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "timeout=2", "-p", "no:xdist")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "test_slow.py::test_slow_body" in out and "Timeout" in out  # the body is still timed


def test_the_smoke_tests_time_their_body_only() -> None:
    from tests.e2e import test_cluster_path_smoke as smoke

    marks = smoke.pytestmark if isinstance(smoke.pytestmark, list) else [smoke.pytestmark]
    (timeout,) = [m for m in marks if m.name == "timeout"]
    assert timeout.kwargs.get("func_only") is True
