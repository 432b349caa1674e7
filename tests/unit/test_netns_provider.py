"""The netns provider's pure parts: binary sets, layout, control-plane flags, kubeconfig, image map."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.cluster.providers.netns import binaries, controlplane, images, network
from harness.cluster.providers.netns.binaries import BinariesError, BinarySet
from harness.cluster.providers.netns.forward import ForwardError, parse_target
from harness.cluster.providers.netns.layout import Layout
from harness.common import versions

REPO = Path(__file__).resolve().parents[2]


def _fake_binary(path: Path, version_line: str) -> None:
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _fake_istio_set(directory: Path, label: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in binaries.ISTIO_BINARIES:
        _fake_binary(directory / name, label)


def test_an_env_dir_is_used_when_its_binaries_report_the_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_istio_set(tmp_path / "bin", "1.31-dev")
    monkeypatch.setenv(binaries.ISTIO_BIN_ENV, str(tmp_path / "bin"))
    found = binaries.istio_binaries("1.31-dev")
    assert found == BinarySet("istio", "1.31-dev", tmp_path / "bin")


def test_an_env_dir_with_another_version_is_refused_not_substituted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_istio_set(tmp_path / "bin", "1.30-dev")
    monkeypatch.setenv(binaries.ISTIO_BIN_ENV, str(tmp_path / "bin"))
    with pytest.raises(BinariesError, match=r"pilot-discovery reports '1.30-dev', expected '1.31-dev'"):
        binaries.istio_binaries("1.31-dev")


def test_an_env_dir_that_lacks_a_binary_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_istio_set(tmp_path / "bin", "1.31-dev")
    (tmp_path / "bin" / "istioctl").unlink()
    monkeypatch.setenv(binaries.ISTIO_BIN_ENV, str(tmp_path / "bin"))
    with pytest.raises(BinariesError, match=r"lacks istioctl"):
        binaries.istio_binaries("1.31-dev")


def test_the_cache_is_used_before_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(binaries.ISTIO_BIN_ENV, raising=False)
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path))
    _fake_istio_set(tmp_path / "istio" / "1.31-dev" / "bin", "1.31-dev")
    monkeypatch.setattr(binaries, "_go", lambda: pytest.fail("built although the cache had the set"))
    assert binaries.istio_binaries("1.31-dev").directory == tmp_path / "istio" / "1.31-dev" / "bin"


def test_a_release_label_without_a_wrapper_names_the_labels_that_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(binaries.ISTIO_BIN_ENV, raising=False)
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path))
    with pytest.raises(BinariesError) as caught:
        binaries.istio_binaries("1.30.3")
    text = str(caught.value)
    assert (
        "refused" in text and "1.31-dev" in text and "1.30-dev" in text and "Nothing is substituted" in text
    )


def test_an_unknown_label_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BinariesError, match=r"'9.9-dev' is not a version"):
        binaries.istio_binaries("9.9-dev")


def test_a_failed_build_leaves_nothing_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(binaries.ISTIO_BIN_ENV, raising=False)
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path))

    def half_build(self: object, out: Path) -> None:
        _fake_binary(out / "pilot-discovery", "1.31-dev")  # the others are missing

    monkeypatch.setattr(binaries._Build, "__call__", half_build)
    with pytest.raises(BinariesError, match="without pilot-agent, istioctl"):
        binaries.istio_binaries("1.31-dev")
    assert not (tmp_path / "istio" / "1.31-dev" / "bin").exists()
    assert list((tmp_path / "istio" / "1.31-dev").iterdir()) == []


def test_the_wrapper_modules_pin_what_versions_pins() -> None:
    kube = (REPO / "go" / "kube" / "go.mod").read_text()
    assert f"k8s.io/kubernetes {versions.NETNS_KUBERNETES_VERSION}" in kube
    assert f"go.etcd.io/etcd/server/v3 v{versions.NETNS_ETCD_VERSION}" in kube
    for label in versions.ISTIO_BUILDABLE_LABELS:
        text = (REPO / "go" / "istio" / label / "go.mod").read_text()
        assert f"istio.io/istio {versions.ISTIO_MODULE_VERSIONS[label]}" in text, label


def test_kubelet_source_hash_follows_the_sources(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "main.go").write_text("package main\n")
    first = binaries.kubelet_source_hash(tmp_path)
    (tmp_path / "main_test.go").write_text("package main\n")
    assert binaries.kubelet_source_hash(tmp_path) == first  # tests do not change the binary
    (tmp_path / "main.go").write_text("package main\n// changed\n")
    assert binaries.kubelet_source_hash(tmp_path) != first


def test_layout_names_carry_the_run_id(tmp_path: Path) -> None:
    lay = Layout("a1b2c3", tmp_path)
    assert lay.node_netns == "egh-a1b2c3-node" and lay.external_netns == "egh-a1b2c3-ext"
    assert lay.shm_dir.name.startswith(lay.prefix)
    with pytest.raises(ValueError, match="run id"):
        Layout("Bad_Id", tmp_path)
    cp_node, worker = lay.nodes
    assert ("node-role.kubernetes.io/control-plane", "", "NoSchedule") in cp_node.taints
    assert worker.labels == {"egress-harness.io/egress-gateway": "true"}


def test_the_kind_config_labels_the_worker_as_the_layout_does() -> None:
    kind = (REPO / "manifests" / "kind" / "cluster.yaml").read_text()
    assert 'egress-harness.io/egress-gateway: "true"' in kind
    worker = Layout("x", Path("/tmp")).nodes[1]
    assert worker.labels["egress-harness.io/egress-gateway"] == "true"


def test_controller_manager_runs_only_the_listed_controllers(tmp_path: Path) -> None:
    lay = Layout("a1", tmp_path)
    bins = BinarySet("kube", "v1.36.3", tmp_path)
    pki = _pki(tmp_path)
    argv = controlplane.controller_manager_argv(bins, lay, pki)
    flag = next(a for a in argv if a.startswith("--controllers="))
    listed = set(flag.split("=", 1)[1].split(","))
    assert {
        "deployment",
        "replicaset",
        "endpointslice",
        "namespace",
        "serviceaccount",
        "garbagecollector",
    } <= listed
    assert "root-ca-cert-publisher" in listed
    # these would evict the pods of nodes whose heartbeat is not a real kubelet's
    assert not listed & {"nodelifecycle", "taint-eviction-controller", "podgc"}
    assert "--leader-elect=false" in argv


def test_kube_proxy_never_writes_conntrack_sysctls(tmp_path: Path) -> None:
    argv = controlplane.kube_proxy_argv(BinarySet("kube", "v", tmp_path), Layout("a1", tmp_path))
    for flag in ("--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0"):
        assert flag in argv
    assert "--hostname-override=egh-control-plane" in argv


def _pki(tmp_path: Path) -> controlplane.ControlPlanePki:
    from harness.common.certs import Issued

    def issued(name: str) -> Issued:
        return Issued(
            tmp_path / f"{name}.crt",
            tmp_path / f"{name}.key",
            f"{name}-cert".encode(),
            f"{name}-key".encode(),
            "",
        )

    return controlplane.ControlPlanePki(
        issued("ca"),
        issued("api"),
        issued("admin"),
        issued("kubelet"),
        tmp_path / "sa.key",
        tmp_path / "sa.pub",
    )


def test_kubeconfig_carries_the_ca_and_the_admin_certificate(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    config = yaml.safe_load(controlplane.kubeconfig("https://127.0.0.1:1234", pki))
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:1234"
    import base64

    assert base64.b64decode(cluster["certificate-authority-data"]) == b"ca-cert"
    assert base64.b64decode(config["users"][0]["user"]["client-key-data"]) == b"admin-key"
    assert config["current-context"] == config["contexts"][0]["name"]


def test_image_map_names_each_istio_version_apart(tmp_path: Path) -> None:
    mapped = images.image_map([("1.30-dev", tmp_path / "a"), ("1.31-dev", tmp_path / "b")])
    matches = [i["match"] for i in mapped["images"]]
    assert (
        f"{images.ISTIO_HUB}/proxyv2:1.30-dev" in matches
        and f"{images.ISTIO_HUB}/proxyv2:1.31-dev" in matches
    )
    old = next(i for i in mapped["images"] if i["match"].endswith("proxyv2:1.30-dev"))
    assert old["binds"]["/usr/local/bin"] == str(tmp_path / "a" / "usr" / "local" / "bin")
    relay = next(i for i in mapped["images"] if "relay" in i["match"])
    assert Path(relay["binds"]["/app"], "relay.py").is_file()
    assert all(Path(b).is_absolute() for b in mapped["rootBinds"])
    json.dumps(mapped)  # the kubelet reads it as JSON


def test_hosts_text_refuses_what_is_not_an_address() -> None:
    text = network.hosts_text([("10.96.0.10", ["a.b.svc", "a.b"])])
    assert text.splitlines()[0] == "127.0.0.1 localhost" and "10.96.0.10 a.b.svc a.b" in text
    with pytest.raises(network.NetworkError, match="not an IPv4 address"):
        network.hosts_text([("a.b.c", ["x"])])


@pytest.mark.parametrize("bad", ["api", "api=1.2.3.4", "api=1.2.3.4:x", "=1.2.3.4:5"])
def test_forward_map_syntax(bad: str) -> None:
    assert parse_target("api=10.244.0.1:6443") == ("api", ("10.244.0.1", 6443))
    with pytest.raises(ForwardError, match="NAME=ADDRESS:PORT"):
        parse_target(bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_forwarder_reaches_a_server_inside_a_namespace_and_stops(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from harness.cluster.providers.netns.forward import Forwarder

    ns = f"egh-t{os.getpid() % 100000}-fwd"
    network.add_netns(ns)
    server = None
    try:
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "18999", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with Forwarder(ns, {"web": ("127.0.0.1", 18999)}, tmp_path) as fwd:
            url = f"http://127.0.0.1:{fwd.ports['web']}/"
            for _ in range(100):
                try:
                    answer = httpx.get(url, timeout=2)
                    break
                except httpx.TransportError:
                    import time

                    time.sleep(0.05)
            assert answer.status_code == 200
            process = fwd.process
        assert process is not None and process.poll() is not None
        # the root namespace has nothing on that port: the server is only inside the namespace
        with pytest.raises(httpx.TransportError):
            httpx.get("http://127.0.0.1:18999/", timeout=2)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        network.delete_netns(ns)
    assert not network.netns_exists(ns)


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_netns_recorder_records_the_callers_own_address(tmp_path: Path) -> None:
    import subprocess

    from harness.cluster.providers.netns.external import NetnsRecorder
    from harness.cluster.state import recorder_state

    ns = f"egh-t{os.getpid() % 100000}-rec"
    network.add_netns(ns)
    try:
        network.anchor_link(ns, "egh0", ["10.250.0.2", "10.250.0.9"])
        with NetnsRecorder(ns, "10.250.0.2", tmp_path, aliases=["a.egress-harness.test"]) as rec:
            assert rec.records() == []
            # a caller inside the namespace, from another of its addresses
            subprocess.run(
                ["ip", "netns", "exec", ns, "curl", "-sS", "--interface", "10.250.0.9", "-H", "x-request-id: r-1",
                 "-H", "Host: a.egress-harness.test", "http://10.250.0.2/hello"],
                check=True, capture_output=True, timeout=20,
            )  # fmt: skip
            (record,) = rec.wait_for_records("r-1")
            assert record["client_ip"] == "10.250.0.9"
            assert rec.network_url("a.egress-harness.test") == "http://a.egress-harness.test"
            # its TCP echo (always on): a caller from another address, its first line in the record
            echo = (
                "import socket; s = socket.create_connection(('10.250.0.2', 9000), timeout=5, "
                "source_address=('10.250.0.9', 0)); s.sendall(b'/tcp?egh-token=t-1\\n'); "
                "print(s.recv(100).decode(), end=''); s.close()"
            )
            echoed = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", echo],
                check=True, capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            assert echoed.stdout == "/tcp?egh-token=t-1\n"
            deadline = time.monotonic() + 10
            while not (found := rec.connections(path_contains="egh-token=t-1")) or found[0]["closed"] is None:
                assert time.monotonic() < deadline, found
                time.sleep(0.05)
            assert (found[0]["client_ip"], found[0]["bytes_sent"]) == ("10.250.0.9", 19)
            assert recorder_state(rec).tcp_port == rec.tcp_port == 9000
            daemon = rec.daemon
        assert daemon is not None and daemon.process is not None and daemon.process.poll() is not None
    finally:
        network.delete_netns(ns)


def test_down_without_a_run_state_removes_the_netns_cluster_an_up_left(tmp_path: Path) -> None:
    """An `e2e up` that died before writing run-state.json: `e2e down` still finds its netns cluster."""
    from harness.cluster.cli import bring_down

    folder = tmp_path / "netns"
    folder.mkdir()
    (folder / "netns-cluster.json").write_text(
        json.dumps({"run_id": "zz9zz9", "run_dir": str(folder), "daemons": [], "forwarder_pid": None})
    )
    (folder / "kubeconfig").write_text("stale")
    assert bring_down(tmp_path) == []
    assert not folder.exists()


def test_down_with_nothing_there_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cluster.cli import bring_down

    assert bring_down(tmp_path) == []
    assert "nothing to tear down" in capsys.readouterr().err
