"""The netns cluster for real: control plane, Nodes, controllers, kube-proxy, the harness kubelet."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.cluster.providers.netns.cluster import NetnsCluster

DEADLINE_S = 60.0


def kubectl(cluster: NetnsCluster, *args: str, input: str | None = None) -> str:
    assert cluster.kube is not None
    done = subprocess.run(
        [str(cluster.kube.path("kubectl")), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=input,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def get(cluster: NetnsCluster, *args: str) -> dict[str, Any]:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json"))  # type: ignore[no-any-return]


def eventually(check: Any, what: str, deadline_s: float = DEADLINE_S) -> Any:
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"{what} did not happen within {deadline_s:g} s (last: {last!r})")


def test_the_api_server_reports_the_pinned_version(netns_cluster: NetnsCluster) -> None:
    version = json.loads(kubectl(netns_cluster, "version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"


def test_two_nodes_as_kind_makes_them(netns_cluster: NetnsCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get(netns_cluster, "nodes")["items"]}
    assert set(nodes) == {"egh-control-plane", "egh-worker"}
    cp = nodes["egh-control-plane"]
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}.items() <= cp["spec"][
        "taints"
    ][0].items()
    assert nodes["egh-worker"]["metadata"]["labels"]["egress-harness.io/egress-gateway"] == "true"
    for node in nodes.values():
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_a_namespace_gets_its_service_account_and_root_ca_and_is_deleted(netns_cluster: NetnsCluster) -> None:
    kubectl(netns_cluster, "create", "namespace", "t-basic")
    eventually(
        lambda: get(netns_cluster, "serviceaccounts", "-n", "t-basic")["items"], "the default ServiceAccount"
    )
    eventually(
        lambda: get(netns_cluster, "configmaps", "-n", "t-basic")["items"], "the kube-root-ca.crt ConfigMap"
    )
    kubectl(netns_cluster, "delete", "namespace", "t-basic", "--wait=true", "--timeout=60s")
    assert "t-basic" not in kubectl(netns_cluster, "get", "namespaces", "-o", "name")


def test_a_second_run_at_once_does_not_collide(netns_cluster: NetnsCluster, tmp_path: Path) -> None:
    from harness.cluster.providers.netns.cluster import leftovers

    with NetnsCluster(tmp_path / "second", istio_versions=()) as other:
        assert other.layout.prefix != netns_cluster.layout.prefix
        assert other.kubeconfig != netns_cluster.kubeconfig
        for cluster in (netns_cluster, other):
            names = {n["metadata"]["name"] for n in get(cluster, "nodes")["items"]}
            assert names == {"egh-control-plane", "egh-worker"}
        kubectl(other, "create", "namespace", "only-in-the-second")
        assert "only-in-the-second" not in kubectl(netns_cluster, "get", "namespaces", "-o", "name")
    assert leftovers(other.layout.prefix) == []
    # the first run is untouched by the second's teardown
    assert (
        json.loads(kubectl(netns_cluster, "version", "-o", "json"))["serverVersion"]["gitVersion"]
        == "v1.36.3"
    )


def test_ctrl_c_during_up_leaves_nothing(netns_ready: None, tmp_path: Path) -> None:
    import signal
    import sys

    from harness.cluster.providers.netns.cluster import leftovers

    run_dir = tmp_path / "interrupted"
    script = (
        "import sys; from pathlib import Path; "
        "from harness.cluster.providers.netns.cluster import NetnsCluster; "
        "NetnsCluster(Path(sys.argv[1]), istio_versions=()).__enter__()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(run_dir)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stderr is not None
    seen = []
    for line in child.stderr:  # interrupt once the API server is up and the kubelet is starting
        seen.append(line)
        if "controller-manager, scheduler, kubelet" in line:
            break
    child.send_signal(signal.SIGINT)
    try:
        _, rest = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    assert child.returncode != 0, "".join(seen) + rest
    state = json.loads((run_dir / "netns-cluster.json").read_text())
    left = leftovers(f"egh-{state['run_id']}-")
    assert left == [], f"left behind after Ctrl-C: {left}\n{''.join(seen)}{rest}"
    for daemon in state["daemons"]:
        assert not Path(f"/proc/{daemon['pid']}").exists() or daemon["binary"] not in Path(
            f"/proc/{daemon['pid']}/cmdline"
        ).read_bytes().decode(errors="replace"), f"{daemon['name']} still runs"
