"""``NetnsCluster``: a Kubernetes cluster whose nodes are network namespaces (the ``netns`` provider).

Beside kind's provider and behind the same :class:`~harness.cluster.providers.kind.Cluster`
interface: ``kubeconfig``, ``context``, ``load_image`` (nothing to load: the harness kubelet maps
images to local programs). ``with NetnsCluster(run_dir) as cluster:`` brings up

* a node namespace ``egh-<run>-node`` holding both Nodes' addresses (10.244.0.1, 10.244.1.1 on a
  dummy link), a route for the Service range, forwarding on;
* an external host namespace ``egh-<run>-ext`` (10.250.0.2), routed from the node, no NAT: the
  external host sees the caller pod's own address;
* etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and the harness
  kubelet (go/kubelet) in the node namespace, and two Nodes that it registers;
* a loopback forwarder for the API server and the ingress NodePort, so the harness, kubectl and
  istioctl in the root namespace reach them; ``kubeconfig`` points at it.

Everything is removed on exit (also after a failure or Ctrl-C) unless ``keep``; the run's state
(``netns-cluster.json`` in the run directory) lets :func:`down` remove a kept run later, and
:func:`leftovers` lists what a run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.cluster.providers.netns import controlplane as cp
from harness.cluster.providers.netns import layout as L
from harness.cluster.providers.netns import network as net
from harness.cluster.providers.netns.binaries import (
    BinarySet,
    istio_binaries,
    kube_binaries,
    kubelet_binaries,
)
from harness.cluster.providers.netns.daemons import Daemon, DaemonRecord, stop_pid
from harness.cluster.providers.netns.forward import MODULE as FORWARD_MODULE
from harness.cluster.providers.netns.forward import Forwarder
from harness.cluster.providers.netns.layout import Layout, new_run_id
from harness.common import versions
from harness.common.proc import interrupts_deferred, progress, run

API_READY_TIMEOUT_S = 60.0
ETCD_READY_TIMEOUT_S = 30.0
NODES_READY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 3.0
REQUIRED_COMMANDS = ("ip", "iptables", "unshare", "setpriv", "nsenter", "chroot", "openssl")


class NetnsClusterError(RuntimeError):
    """The netns cluster could not come up (or go); the message names the step and its log."""


def unavailable_reason() -> str | None:
    """Why this machine cannot run a netns cluster, or None."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        return "the netns provider needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the netns provider needs root (network namespaces, iptables, mounts): run as root"
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if missing:
        return (
            f"the netns provider needs {', '.join(missing)} on PATH "
            "(Debian: apt-get install -y iproute2 iptables util-linux coreutils openssl)"
        )
    return None


class NetnsCluster:
    """A netns cluster (see the module docstring); ``keep`` leaves it running after the ``with``."""

    def __init__(
        self,
        run_dir: Path,
        *,
        run_id: str | None = None,
        keep: bool = False,
        keep_on_failure: bool = False,
        istio_versions: Sequence[str] = (versions.DEFAULT_NETNS_ISTIO_VERSION,),
    ) -> None:
        self.layout = Layout(run_id or new_run_id(), run_dir.resolve())
        self.keep = keep
        #: keep it when the ``with`` body (or ``up``) failed, not on Ctrl-C
        self.keep_on_failure = keep_on_failure
        #: the Istio labels whose images the kubelet maps (both versions of an upgrade)
        self.istio_versions = tuple(istio_versions)
        self.istio: dict[str, BinarySet] = {}
        self.daemons: list[Daemon] = []
        self.forwarder: Forwarder | None = None
        self.kube: BinarySet | None = None
        self.kubelet: BinarySet | None = None

    # --- the Cluster interface ---------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.layout.admin_kubeconfig

    @property
    def context(self) -> str | None:
        return None

    def load_image(self, image: str) -> NetnsCluster:
        """Nothing to load: the harness kubelet runs local programs chosen by image (its image map)."""
        return self

    @property
    def ingress_url(self) -> str:
        """The ingress gateway's NodePort, through the loopback forwarder."""
        if self.forwarder is None:
            raise NetnsClusterError("the cluster is not up")
        return f"http://127.0.0.1:{self.forwarder.ports['ingress']}"

    # --- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        try:
            self.up()
        except BaseException as exc:
            if self.keep_on_failure and not isinstance(exc, KeyboardInterrupt):
                progress(
                    f"keeping the failed netns cluster {self.layout.run_id} (keep on failure): {self.down_hint}"
                )
                raise
            self.down()
            raise
        return self

    @property
    def down_hint(self) -> str:
        return f"remove it with `egress-harness e2e down --run-dir {self.layout.run_dir.parent}`"

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        failed = et is not None and not issubclass(et, KeyboardInterrupt)
        if self.keep or (failed and self.keep_on_failure):
            progress(f"keeping netns cluster {self.layout.run_id}: KUBECONFIG={self.kubeconfig}")
            return
        self.down()

    @contextlib.contextmanager
    def _step(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        progress(f"netns cluster {self.layout.run_id}: {what}")
        yield
        took = time.monotonic() - started
        progress(f"netns cluster {self.layout.run_id}: {what}: done in {took:.1f} s")

    def up(self) -> NetnsCluster:
        reason = unavailable_reason()
        if reason:
            raise NetnsClusterError(reason)
        lay = self.layout
        lay.run_dir.mkdir(parents=True, exist_ok=True)
        self._save_state()
        with self._step("binaries (found or built)"):
            self.kube = kube_binaries()
            self.kubelet = kubelet_binaries()
            self.istio = {label: istio_binaries(label) for label in self.istio_versions}
        with self._step("certificates"):
            pki = cp.make_pki(lay)
        with self._step("node and external host namespaces"):
            self._network()
        with self._step("etcd and kube-apiserver"):
            self._start("etcd", cp.etcd_argv(self.kube, lay))
            self.daemons[-1].wait_ready(
                self._etcd_healthy, timeout_s=ETCD_READY_TIMEOUT_S, what="etcd healthy"
            )
            self.forwarder = Forwarder(
                lay.node_netns,
                {"api": (lay.api_ip, L.API_PORT), "ingress": (lay.api_ip, L.INGRESS_NODE_PORT)},
                lay.run_dir,
            ).start()
            self._save_state()
            lay.admin_kubeconfig.write_text(
                cp.kubeconfig(f"https://127.0.0.1:{self.forwarder.ports['api']}", pki), encoding="utf-8"
            )
            lay.internal_kubeconfig.write_text(
                cp.kubeconfig(f"https://{lay.api_ip}:{L.API_PORT}", pki), encoding="utf-8"
            )
            os.chmod(lay.admin_kubeconfig, 0o600)
            os.chmod(lay.internal_kubeconfig, 0o600)
            self._start("kube-apiserver", cp.apiserver_argv(self.kube, lay, pki))
            self.daemons[-1].wait_ready(
                self._api_ready(pki), timeout_s=API_READY_TIMEOUT_S, what="the API server answered /readyz"
            )
        with self._step("controller-manager, scheduler, kubelet, kube-proxy"):
            self._start("kube-controller-manager", cp.controller_manager_argv(self.kube, lay, pki))
            self._start("kube-scheduler", cp.scheduler_argv(self.kube, lay))
            config = self._kubelet_config(pki)
            # nsenter, not `ip netns exec`: the latter gives the process a mount namespace of its own,
            # where the pods' `ip netns add` mounts would stay invisible to the root namespace
            self._start(
                "egh-kubelet", [str(self.kubelet.path("egh-kubelet")), f"--config={config}"], nsenter=True
            )
            self.daemons[-1].wait_ready(
                self._nodes_ready, timeout_s=NODES_READY_TIMEOUT_S, what="both Nodes registered and Ready"
            )
            self._start("kube-proxy", cp.kube_proxy_argv(self.kube, lay))
        return self

    def _start(self, name: str, argv: list[str], *, nsenter: bool = False) -> None:
        daemon = Daemon(
            name, argv, netns=self.layout.node_netns, log_dir=self.layout.log_dir, nsenter=nsenter
        ).start()
        self.daemons.append(daemon)
        self._save_state()

    def _network(self) -> None:
        lay = self.layout
        node = lay.node_netns
        for ns in (node, lay.external_netns):
            if net.netns_exists(ns):
                raise NetnsClusterError(f"network namespace {ns} exists already: another run has this run id")
        net.add_netns(node)
        net.anchor_link(node, "egh0", [spec.ip for spec in lay.nodes])
        # clients in the node namespace (the API server calling webhooks) reach ClusterIPs: the
        # route lets connect() start, kube-proxy's nat OUTPUT rules then rewrite the destination
        net.ip("route", "add", L.SERVICE_CIDR, "dev", "egh0", netns=node)
        net.sysctl(node, "net.ipv4.ip_forward", "1")
        net.add_netns(lay.external_netns)
        net.Veth(
            node, "egh-ext", L.EXTERNAL_NODE_SIDE_IP, lay.external_netns, "eth0", L.EXTERNAL_HOST_IP
        ).create()
        net.ip(
            "route", "add", "default", "via", L.EXTERNAL_NODE_SIDE_IP, "dev", "eth0", netns=lay.external_netns
        )
        net.ip("addr", "add", f"{L.EXTERNAL_MTLS_IP}/32", "dev", "eth0", netns=lay.external_netns)
        net.ip("route", "add", f"{L.EXTERNAL_MTLS_IP}/32", "dev", "egh-ext", netns=node)

    def _etcd_healthy(self) -> bool:
        return b'"health":"true"' in _in_netns_get(
            self.layout.node_netns, f"http://127.0.0.1:{L.ETCD_CLIENT_PORT}/health"
        ).replace(b" ", b"")

    def _api_ready(self, pki: cp.ControlPlanePki) -> Callable[[], bool]:
        assert self.forwarder is not None
        context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        context.load_cert_chain(str(pki.admin.cert_path), str(pki.admin.key_path))
        url = f"https://127.0.0.1:{self.forwarder.ports['api']}/readyz"
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

        def ready() -> bool:
            try:
                with opener.open(url, timeout=PROBE_TIMEOUT_S) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        return ready

    def _nodes_ready(self) -> bool:
        nodes = self._kubectl_json("get", "nodes")
        ready = {
            n["metadata"]["name"]
            for n in nodes.get("items", [])
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }
        return all(spec.name in ready for spec in self.layout.nodes)

    def _kubectl_json(self, *args: str) -> dict[str, Any]:
        assert self.kube is not None
        out = run(
            [str(self.kube.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args, "-o", "json"],
            timeout=30.0,
            check=False,
        )
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}

    def _kubelet_config(self, pki: cp.ControlPlanePki) -> Path:
        from harness.cluster.providers.netns.images import image_map, istio_image_root
        from harness.localmesh.envoy import envoy_binary

        lay = self.layout
        envoy = envoy_binary()
        roots = [(label, istio_image_root(label, bins, envoy)) for label, bins in self.istio.items()]
        hosts = lay.run_dir / "extra-hosts"
        if not hosts.exists():
            hosts.write_text("", encoding="utf-8")
        config = {
            "kubeconfig": str(lay.internal_kubeconfig),
            "runDir": str(lay.run_dir / "kubelet"),
            "netnsPrefix": lay.pod_prefix,
            "kubeletVersion": versions.NETNS_KUBELET_VERSION,
            "tlsCert": str(pki.kubelet.cert_path),
            "tlsKey": str(pki.kubelet.key_path),
            "nodes": [
                {
                    "name": n.name,
                    "ip": n.ip,
                    "podCIDR": n.pod_cidr,
                    "labels": n.labels,
                    "taints": [{"key": k, "value": v, "effect": e} for k, v, e in n.taints],
                }
                for n in lay.nodes
            ],
            "hostsFile": str(hosts),
            **image_map(roots),
        }
        path = lay.run_dir / "kubelet.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    # --- the external host's names --------------------------------------------------------------

    @property
    def external_netns(self) -> str:
        return self.layout.external_netns

    def set_external_hosts(self, hosts: Mapping[str, Sequence[str]]) -> None:
        """Make every pod resolve ``names`` to ``address`` (``{address: names}``): the kubelet's hosts
        file, re-read by the kubelet on SIGHUP (it rewrites the running pods' /etc/hosts)."""
        text = "".join(f"{address} {' '.join(names)}\n" for address, names in hosts.items() if names)
        path = self.layout.run_dir / "extra-hosts"
        path.write_text(text, encoding="utf-8")
        kubelet = next((d for d in self.daemons if d.name == "egh-kubelet" and d.process is not None), None)
        if kubelet is not None and kubelet.process is not None and kubelet.process.poll() is None:
            os.kill(kubelet.process.pid, signal.SIGHUP)

    # --- state and teardown ------------------------------------------------------------------------

    def _save_state(self) -> None:
        lay = self.layout
        state = {
            "run_id": lay.run_id,
            "run_dir": str(lay.run_dir),
            "daemons": [vars(d.record) for d in self.daemons if d.process is not None],
            "forwarder_pid": self.forwarder.process.pid
            if self.forwarder and self.forwarder.process
            else None,
            "forward_ports": self.forwarder.ports if self.forwarder else {},
            "kubeconfig": str(lay.admin_kubeconfig),
        }
        tmp = lay.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(lay.state_file)

    def down(self) -> list[str]:
        """Stop everything of the run and remove its namespaces and files; what was removed."""
        with interrupts_deferred(f"removing netns cluster {self.layout.run_id}"):
            return teardown(
                self.layout, [d.record for d in self.daemons if d.process is not None], self.forwarder
            )


def teardown(layout: Layout, daemons: list[DaemonRecord], forwarder: Forwarder | None = None) -> list[str]:
    """Stop ``daemons`` in reverse start order (the kubelet removes its pods' namespaces when it
    stops), then remove whatever of the run is left: pod and node namespaces, /etc/netns folders,
    the etcd tmpfs folder. Returns one line per thing removed."""
    removed: list[str] = []
    for record in reversed(daemons):
        if stop_pid(record):
            removed.append(f"process {record.name} (pid {record.pid})")
    if forwarder is not None:
        forwarder.stop()
        removed.append("the loopback forwarder")
    for ns in net.list_netns(layout.prefix):
        net.delete_netns(ns)
        removed.append(f"network namespace {ns}")
    for etc in sorted(net.NETNS_ETC.glob(f"{layout.prefix}*")) if net.NETNS_ETC.is_dir() else []:
        shutil.rmtree(etc, ignore_errors=True)
        removed.append(str(etc))
    if layout.shm_dir.exists():
        shutil.rmtree(layout.shm_dir, ignore_errors=True)
        removed.append(str(layout.shm_dir))
    return removed


def down(run_dir: Path) -> list[str]:
    """Remove the netns cluster whose state is in ``run_dir`` (a kept run, or one a crash left)."""
    state_file = Layout("x", run_dir).state_file
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NetnsClusterError(f"no netns cluster state in {run_dir} ({state_file}): {exc}") from exc
    layout = Layout(state["run_id"], Path(state["run_dir"]))
    records = [DaemonRecord(**d) for d in state.get("daemons", [])]
    removed = teardown(layout, records)
    pid = state.get("forwarder_pid")
    if pid and stop_pid(DaemonRecord("forwarder", int(pid), FORWARD_MODULE, "")):
        removed.append(f"the loopback forwarder (pid {pid})")
    return removed


def leftovers(prefix: str = "egh-") -> list[str]:
    """Network namespaces, /etc/netns folders and etcd tmpfs folders whose name starts with ``prefix``."""
    found = [f"network namespace {ns}" for ns in net.list_netns(prefix)]
    if net.NETNS_ETC.is_dir():
        found += [str(p) for p in sorted(net.NETNS_ETC.glob(f"{prefix}*"))]
    found += [str(p) for p in sorted(L.SHM.glob(f"{prefix}*"))]
    return found


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _in_netns_get(netns: str, url: str) -> bytes:
    """GET ``url`` from inside ``netns`` (a thread that enters it); b"" when it does not answer."""
    import threading

    from harness.cluster.providers.netns.forward import enter_netns

    result: list[bytes] = [b""]

    def fetch() -> None:
        enter_netns(netns)
        with contextlib.suppress(OSError), _OPENER.open(url, timeout=PROBE_TIMEOUT_S) as answer:
            result[0] = answer.read()

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1)
    return result[0]
