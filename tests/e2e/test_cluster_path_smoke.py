"""Smoke test of the cluster path: a kind cluster, Istio with its egress gateway, the relay apps.

Needs a running Docker engine and the pinned kind and istioctl (``make tools``); without them every
test here is skipped with the list of what is missing and how to get it. The cluster is deleted at
the end, also on failure; EGRESS_HARNESS_KEEP_CLUSTER=1 keeps a failed run's cluster for debugging.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cluster.istio import ISTIO_NAMESPACE, IstioInstall
from harness.cluster.providers.kind import INGRESS_NODE_PORT, KindCluster
from harness.common import tools, versions
from harness.common.proc import run
from harness.pytest_plugin import run_state_path

REPO = Path(__file__).resolve().parents[2]
RELAY_IMAGE = "istio-egress-harness/relay:dev"
RELAY_MANIFEST = REPO / "manifests" / "apps" / "relay.yaml"
#: beside the 18080 of a cluster of `e2e up` and the 18081 of the upgrade test's cluster
SMOKE_INGRESS_PORT = 18082

#: each test's timeout (the configured 300 s) covers its own body: the ``mesh`` fixture, which creates
#: the cluster and installs Istio, is bounded by its own steps' deadlines (kind's create
#: ``CREATE_TIMEOUT_S`` and ``--wait``, istioctl's ``INSTALL_TIMEOUT_S`` and ``READINESS_TIMEOUT_S``)
pytestmark = pytest.mark.timeout(func_only=True)


def _missing_reason() -> str | None:
    missing = tools.missing_prerequisites(tools=True)
    if not missing:
        return None
    return "the cluster tier cannot run here; missing: " + " | ".join(missing)


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[tuple[KindCluster, IstioInstall]]:
    reason = _missing_reason()
    if reason:
        pytest.skip(reason)
    if run_state_path(pytestconfig) is not None:
        # a second cluster beside the one of `e2e up` would double the load for what up itself checked
        pytest.skip(
            "attached to a run of `egress-harness e2e up`, which set up the same path; run it without --run-state"
        )
    istio = versions.istio_version()
    kind = tools.ensure_tool("kind", versions.KIND_VERSION)
    istioctl = tools.ensure_tool("istioctl", istio)
    run_dir = tmp_path_factory.mktemp("cluster-smoke")
    keep = os.environ.get("EGRESS_HARNESS_KEEP_CLUSTER") == "1"
    cluster = KindCluster(
        f"egress-smoke-{os.getpid()}",
        run_dir,
        kind=kind,
        keep_on_failure=keep,
        ingress_host_port=SMOKE_INGRESS_PORT,
    )
    with (
        cluster,
        IstioInstall(
            cluster.kubeconfig, run_dir, context=cluster.context, istioctl=istioctl, version=istio
        ) as install,
    ):
        yield cluster, install


def test_istio_runs_the_egress_gateway_and_exposes_ingress(mesh: tuple[KindCluster, IstioInstall]) -> None:
    from harness.cluster.kube import Kube

    cluster, install = mesh
    assert install.installed_by_us
    assert install.egress_gateway_pods, "no egress gateway pod"
    with Kube(cluster.kubeconfig, cluster.context) as kube:
        service: Any = kube.core.read_namespaced_service("istio-ingressgateway", ISTIO_NAMESPACE)
        node_ports = {p.port: p.node_port for p in service.spec.ports}
    assert service.spec.type == "NodePort"
    assert node_ports[80] == INGRESS_NODE_PORT


def test_relay_apps_roll_out_with_sidecars(mesh: tuple[KindCluster, IstioInstall]) -> None:
    from harness.cluster.kube import Kube

    cluster, _ = mesh
    if run(["docker", "image", "inspect", RELAY_IMAGE], timeout=30, check=False).returncode != 0:
        run(["docker", "build", "-t", RELAY_IMAGE, str(REPO / "apps" / "relay")], timeout=900, heartbeat_s=30)
    cluster.load_image(RELAY_IMAGE)
    with (
        Kube(cluster.kubeconfig, cluster.context) as kube,
        kube.temporary_namespace(f"smoke-{os.getpid()}") as ns,
    ):
        refs = kube.apply(RELAY_MANIFEST.read_text(), namespace=ns)
        assert {r.kind for r in refs} == {"Deployment", "Service", "Gateway", "VirtualService"}
        for app in ("proxy", "target"):
            kube.wait_rollout(ns, app, deadline_s=300)
            (pod,) = kube.list_pods(ns, f"app={app}")
            containers = {c["name"] for c in pod["spec"]["containers"]}
            init = {c["name"] for c in pod["spec"].get("initContainers") or []}
            assert "istio-proxy" in containers | init, f"{app} has no sidecar: {containers | init}"
