"""harness.cluster.istio with the fake ``istioctl``/``kind``, and whole-run command sequences.

The cluster reads the install needs (deployments, pods, namespace deletion) go to ``FakeApi``: its
rollout waits run the real decision (``rollout_status``) and deadline loop (``wait_until``) over
scripted Deployment states with a fake clock, and it writes its calls into the same log as the fake
executables, so a test sees one timeline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cluster.istio import IstioError, IstioInstall
from harness.cluster.kube import RolloutFailedError, WaitTimeoutError, rollout_status, wait_until
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.common.proc import CommandError

NAME = "egress-unit"
KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\n"


def _ready(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }


def _starting(name: str) -> dict[str, Any]:
    dep = _ready(name)
    dep["status"]["availableReplicas"] = 0
    return dep


class FakeApi:
    """Stands in for harness.cluster.kube.Kube in IstioInstall; logs its calls beside the fake tools."""

    def __init__(
        self, log: Path, *, istiod_exists: bool = False, egress_pods: list[str] | None = None
    ) -> None:
        self.log = log
        self.istiod_exists = istiod_exists
        self.egress_pods = ["istio-egressgateway-5d9c-abcde"] if egress_pods is None else egress_pods
        # deployment name -> the states successive fetches see (the last one repeats)
        self.states: dict[str, list[dict[str, Any] | None]] = {}
        self.now = 0.0

    def _record(self, *args: str) -> None:
        with self.log.open("a") as fh:
            fh.write(json.dumps({"tool": "api", "args": list(args), "rule": None}) + "\n")

    def deployment_exists(self, namespace: str, name: str) -> bool:
        self._record("deployment_exists", namespace, name)
        return self.istiod_exists

    def wait_rollout(self, namespace: str, name: str, *, deadline_s: float, interval_s: float = 2.0) -> Any:
        self._record("wait_rollout", namespace, name)
        script = self.states.get(name) or [_starting(name), _ready(name)]
        fetched: Iterator[int] = iter(range(1_000_000))

        def fetch() -> dict[str, Any] | None:
            return script[min(next(fetched), len(script) - 1)]

        def sleep(seconds: float) -> None:
            self.now += seconds

        return wait_until(
            fetch,
            lambda d: rollout_status(d, name),
            what=f"rollout of {namespace}/{name}",
            deadline_s=deadline_s,
            interval_s=interval_s,
            clock=lambda: self.now,
            sleep=sleep,
        )

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._record("list_pods", namespace, selector)
        return [{"metadata": {"name": p}, "status": {"phase": "Running"}} for p in self.egress_pods]

    def delete_namespace(self, name: str, *, deadline_s: float = 180.0, interval_s: float = 2.0) -> None:
        self._record("delete_namespace", name)


# --- scenario pieces ---------------------------------------------------------------------------------


def istioctl_version(version: str = "1.30.3") -> dict[str, Any]:
    out = {
        "clientVersion": {
            "version": version,
            "revision": "0123",
            "golang_version": "go1.25",
            "status": "Clean",
        }
    }
    return {
        "tool": "istioctl",
        "args": ["version", "--remote=false", "-o", "json"],
        "stdout": json.dumps(out),
    }


INSTALL_OK = {
    "tool": "istioctl",
    "args": ["install"],
    "stdout": "✔ Istio core installed ⛵️\n✔ Istiod installed 🧠\n✔ Egress gateways installed 🛫\n"
    "✔ Ingress gateways installed 🛬\n✔ Installation complete\n",
}
UNINSTALL_OK = {
    "tool": "istioctl",
    "args": ["uninstall", "--purge", "-y"],
    "stdout": "✔ Uninstall complete\n",
}
KIND_RULES: list[dict[str, Any]] = [
    {
        "tool": "kind",
        "args": ["get", "clusters"],
        "after": ["kind", "create", "cluster"],
        "not_after": ["kind", "delete", "cluster"],
        "stdout": f"{NAME}\n",
    },
    {"tool": "kind", "args": ["get", "clusters"], "stderr": "No kind clusters found.\n"},
    {"tool": "kind", "args": ["create", "cluster"], "write_after_flag": {"--kubeconfig": KUBECONFIG_TEXT}},
    {"tool": "kind", "args": ["delete", "cluster"]},
]


def install_cmd(run_dir: Path, readiness: str = "600s") -> str:
    return (
        f"istioctl install -y -f {run_dir / 'istio-overlay.yaml'} --kubeconfig {run_dir / 'kubeconfig'} "
        f"--readiness-timeout {readiness}"
    )


def uninstall_cmd(run_dir: Path) -> str:
    return f"istioctl uninstall --purge -y --kubeconfig {run_dir / 'kubeconfig'}"


def waits() -> list[str]:
    return [
        "api wait_rollout istio-system istiod",
        "api wait_rollout istio-system istio-ingressgateway",
        "api wait_rollout istio-system istio-egressgateway",
        "api list_pods istio-system istio=egressgateway",
    ]


def run_whole(run_dir: Path, api: FakeApi, **istio: Any) -> IstioInstall:
    with (
        KindCluster(NAME, run_dir) as cluster,
        IstioInstall(cluster.kubeconfig, run_dir, api=api, **istio) as install,
    ):
        assert install.installed_by_us
        assert install.egress_gateway_pods == api.egress_pods
        return install


# --- whole runs ----------------------------------------------------------------------------------------


def test_full_run_command_sequence(fakebin: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fakebin.rules([*KIND_RULES, istioctl_version(), INSTALL_OK, UNINSTALL_OK])
    api = FakeApi(fakebin.log)
    install = run_whole(run_dir, api, access_log_encoding="JSON", outbound_traffic_policy="REGISTRY_ONLY")
    assert fakebin.commands() == [
        "kind get clusters",
        f"kind create cluster --name {NAME} --image {KindCluster(NAME, run_dir).image} "
        f"--config {run_dir / 'kind-config.yaml'} --kubeconfig {run_dir / 'kubeconfig'} --wait 120s",
        "api deployment_exists istio-system istiod",
        "istioctl version --remote=false -o json",
        install_cmd(run_dir),
        *waits(),
        uninstall_cmd(run_dir),
        "api delete_namespace istio-system",
        f"kind delete cluster --name {NAME} --kubeconfig {run_dir / 'kubeconfig'}",
    ]
    overlay = yaml.safe_load(install.overlay_path.read_text())["spec"]
    assert overlay["meshConfig"]["accessLogEncoding"] == "JSON"
    assert overlay["meshConfig"]["outboundTrafficPolicy"]["mode"] == "REGISTRY_ONLY"
    assert not install.installed_by_us


def test_istioctl_failure_still_deletes_the_cluster(fakebin: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    failing = {
        "tool": "istioctl",
        "args": ["install"],
        "stderr": "✘ Istiod encountered an error: failed to wait for resource: resources not ready after 10m0s\n"
        "Error: failed to install manifests: errors occurred during operation\n",
        "exit": 1,
    }
    fakebin.rules([*KIND_RULES, istioctl_version(), failing, UNINSTALL_OK])
    with pytest.raises(CommandError) as err:
        run_whole(run_dir, FakeApi(fakebin.log))
    message = str(err.value)
    assert f"command `{install_cmd(run_dir)}` exited with code 1" in message
    assert "failed to install manifests" in message
    commands = fakebin.commands()
    # The partial install is removed, then the cluster.
    assert commands[-3:] == [
        uninstall_cmd(run_dir),
        "api delete_namespace istio-system",
        f"kind delete cluster --name {NAME} --kubeconfig {run_dir / 'kubeconfig'}",
    ]
    assert not any(c.startswith("api wait_rollout") for c in commands)


def test_ctrl_c_during_install_deletes_the_cluster(fakebin: Any, tmp_path: Path, main_thread: None) -> None:
    run_dir = tmp_path / "run"
    interrupted = {"tool": "istioctl", "args": ["install"], "interrupt_parent": True, "sleep": 30}
    fakebin.rules([*KIND_RULES, istioctl_version(), interrupted, UNINSTALL_OK])
    with pytest.raises(KeyboardInterrupt):
        run_whole(run_dir, FakeApi(fakebin.log))
    assert fakebin.commands()[-4:] == [
        install_cmd(run_dir),
        uninstall_cmd(run_dir),
        "api delete_namespace istio-system",
        f"kind delete cluster --name {NAME} --kubeconfig {run_dir / 'kubeconfig'}",
    ]


def test_rollout_timeout_removes_istio_and_the_cluster(fakebin: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fakebin.rules([*KIND_RULES, istioctl_version(), INSTALL_OK, UNINSTALL_OK])
    api = FakeApi(fakebin.log)
    api.states["istio-egressgateway"] = [None, _starting("istio-egressgateway")]
    with pytest.raises(WaitTimeoutError) as err:
        run_whole(run_dir, api, readiness_timeout_s=30)
    assert str(err.value) == (
        "rollout of istio-system/istio-egressgateway: not done after 30s; "
        "last state: 'istio-egressgateway': 0 of 1 updated replicas available"
    )
    commands = fakebin.commands()
    assert install_cmd(run_dir, "30s") in commands
    assert commands[-3:] == [
        uninstall_cmd(run_dir),
        "api delete_namespace istio-system",
        f"kind delete cluster --name {NAME} --kubeconfig {run_dir / 'kubeconfig'}",
    ]


def test_progress_deadline_exceeded_fails_without_waiting_out_the_timeout(
    fakebin: Any, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    fakebin.rules([*KIND_RULES, istioctl_version(), INSTALL_OK, UNINSTALL_OK])
    api = FakeApi(fakebin.log)
    stuck = _starting("istiod")
    stuck["status"]["conditions"] = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]
    api.states["istiod"] = [_starting("istiod"), stuck]
    with pytest.raises(RolloutFailedError, match="'istiod' exceeded its progress deadline"):
        run_whole(run_dir, api)
    assert api.now == 2.0  # one poll interval, not the 600 s readiness timeout
    assert fakebin.commands()[-1].startswith("kind delete cluster")


def test_missing_egress_gateway_pods_fail_the_install(fakebin: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fakebin.rules([*KIND_RULES, istioctl_version(), INSTALL_OK, UNINSTALL_OK])
    with pytest.raises(IstioError, match="no running egress gateway pod \\(label istio=egressgateway\\)"):
        run_whole(run_dir, FakeApi(fakebin.log, egress_pods=[]))
    assert fakebin.commands()[-1].startswith("kind delete cluster")


def test_wrong_istioctl_version_installs_nothing(fakebin: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fakebin.rules([*KIND_RULES, istioctl_version("1.29.6")])
    with pytest.raises(IstioError, match=re.escape("is Istio 1.29.6, but this run installs Istio 1.30.3")):
        run_whole(run_dir, FakeApi(fakebin.log))
    commands = fakebin.commands()
    assert not any(c.startswith(("istioctl install", "istioctl uninstall")) for c in commands)
    assert commands[-1].startswith("kind delete cluster")


# --- an existing cluster ------------------------------------------------------------------------------


def test_existing_cluster_run_makes_no_kind_call(fakebin: Any, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TEXT)
    run_dir = tmp_path / "run"
    fakebin.rules([istioctl_version("1.28.10"), INSTALL_OK, UNINSTALL_OK])
    api = FakeApi(fakebin.log)
    with (
        ExistingCluster(kubeconfig, context="staging") as cluster,
        IstioInstall(cluster.kubeconfig, run_dir, context=cluster.context, version="1.28.10", api=api),
    ):
        pass
    target = f"--kubeconfig {kubeconfig} --context staging"
    assert fakebin.commands() == [
        "api deployment_exists istio-system istiod",
        "istioctl version --remote=false -o json",
        f"istioctl install -y -f {run_dir / 'istio-overlay.yaml'} {target} --readiness-timeout 600s",
        *waits(),
        f"istioctl uninstall --purge -y {target}",
        "api delete_namespace istio-system",
    ]


def test_preinstalled_istio_is_refused_unless_used_as_is(fakebin: Any, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TEXT)
    fakebin.rules([])
    api = FakeApi(fakebin.log, istiod_exists=True)
    with (
        pytest.raises(IstioError, match="already installed"),
        IstioInstall(kubeconfig, tmp_path / "r", api=api),
    ):
        pytest.fail("must not get here")
    with IstioInstall(kubeconfig, tmp_path / "r", api=api, use_existing=True) as install:
        assert not install.installed_by_us
    commands = fakebin.commands()
    assert not any(c.startswith(("istioctl", "api delete_namespace")) for c in commands)
    assert commands.count("api list_pods istio-system istio=egressgateway") == 1


def test_keep_leaves_istio_installed(
    fakebin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TEXT)
    fakebin.rules([istioctl_version(), INSTALL_OK])
    with IstioInstall(kubeconfig, tmp_path / "r", api=FakeApi(fakebin.log), keep=True):
        pass
    assert not any("uninstall" in c for c in fakebin.commands())
    assert "keeping Istio installed" in capsys.readouterr().err


def test_istio_is_not_uninstalled_from_a_cluster_that_is_deleted_anyway(
    fakebin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TEXT)
    fakebin.rules([istioctl_version(), INSTALL_OK])
    with IstioInstall(kubeconfig, tmp_path / "r", api=FakeApi(fakebin.log), remove=lambda: False):
        pass
    commands = fakebin.commands()
    assert not any(c.startswith("istioctl uninstall") for c in commands)
    assert "api delete_namespace istio-system" not in commands  # no wait for istio-system to go
    assert "not uninstalling Istio: its cluster is deleted with it" in capsys.readouterr().err


def test_unsupported_istio_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not supported"):
        IstioInstall(tmp_path / "k", tmp_path, version="1.27.3")
