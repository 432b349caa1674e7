"""The control plane of a netns cluster: its certificates, kubeconfigs and the processes' flags.

etcd (data on tmpfs), kube-apiserver (RBAC and Node authorization, service-account token signing),
kube-controller-manager with only the controllers the harness's objects need, kube-scheduler and
kube-proxy (iptables), all inside the run's node namespace. The flags and the controller list are
those of ``../shared/design/netns-cluster.md`` (sections 0-2), checked against the 1.36.3 binaries.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.cluster.providers.netns import layout as L
from harness.cluster.providers.netns.binaries import BinarySet
from harness.cluster.providers.netns.layout import Layout
from harness.common.certs import CertificateAuthority, Issued

#: Deployments -> ReplicaSets -> Pods; EndpointSlices (istiod and kube-proxy read them); namespace
#: deletion; the default ServiceAccount; owner-reference garbage collection (a Gateway's Deployment);
#: the kube-root-ca.crt ConfigMap; legacy Endpoints (webhook routing); RBAC aggregation. Left out on
#: purpose: nodelifecycle and taint-eviction (they would evict pods of nodes with no real kubelet
#: heartbeat), podgc, node-ipam, hpa, the CSR signers, jobs, daemonsets, statefulsets.
CONTROLLERS = (
    "deployment",
    "replicaset",
    "endpointslice",
    "endpoint",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "garbagecollector",
    "root-ca-cert-publisher",
    "clusterrole-aggregation",
    "disruption",
)


@dataclass(frozen=True)
class ControlPlanePki:
    ca: Issued
    apiserver: Issued
    admin: Issued
    kubelet: Issued
    sa_key: Path
    sa_pub: Path


def make_pki(layout: Layout) -> ControlPlanePki:
    """A CA and every certificate the control plane needs (EC P-256, openssl)."""
    authority = CertificateAuthority.create(layout.pki_dir, name=f"egress-harness netns {layout.run_id}")
    apiserver = authority.issue(
        "apiserver",
        "kube-apiserver",
        server_names=(
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{L.CLUSTER_DOMAIN}",
            "localhost",
            "127.0.0.1",
            L.KUBERNETES_SERVICE_IP,
            layout.api_ip,
        ),
    )
    admin = authority.issue("admin", "egress-harness-admin", organization="system:masters", client=True)
    kubelet = authority.issue(
        "kubelet",
        "egh-kubelet",
        server_names=tuple(n.ip for n in layout.nodes) + tuple(n.name for n in layout.nodes),
    )
    sa_key, sa_pub = authority.key_pair("service-account")
    return ControlPlanePki(authority.ca, apiserver, admin, kubelet, sa_key, sa_pub)


def kubeconfig(server: str, pki: ControlPlanePki, *, name: str = "egress-harness-netns") -> str:
    """A kubeconfig with the CA and the admin client certificate inline (it can be copied alone)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(pki.ca.cert_pem)}}
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(pki.admin.cert_pem),
                    "client-key-data": b64(pki.admin.key_pem),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "admin"}}],
        "current-context": name,
    }
    return yaml.safe_dump(config, sort_keys=False)


def etcd_argv(bins: BinarySet, layout: Layout) -> list[str]:
    client = f"http://127.0.0.1:{L.ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{L.ETCD_PEER_PORT}"
    return [
        str(bins.path("etcd")),
        "--name=egh",
        f"--data-dir={layout.shm_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=egh={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_argv(bins: BinarySet, layout: Layout, pki: ControlPlanePki) -> list[str]:
    return [
        str(bins.path("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{L.ETCD_CLIENT_PORT}",
        f"--advertise-address={layout.api_ip}",
        "--bind-address=0.0.0.0",
        f"--secure-port={L.API_PORT}",
        f"--tls-cert-file={pki.apiserver.cert_path}",
        f"--tls-private-key-file={pki.apiserver.key_path}",
        f"--client-ca-file={pki.ca.cert_path}",
        f"--kubelet-client-certificate={pki.admin.cert_path}",
        f"--kubelet-client-key={pki.admin.key_path}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-issuer={L.SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={L.SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def controller_manager_argv(bins: BinarySet, layout: Layout, pki: ControlPlanePki) -> list[str]:
    return [
        str(bins.path("kube-controller-manager")),
        f"--kubeconfig={layout.internal_kubeconfig}",
        f"--controllers={','.join(CONTROLLERS)}",
        "--leader-elect=false",
        "--secure-port=0",
        f"--root-ca-file={pki.ca.cert_path}",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--cluster-cidr={L.POD_CIDR}",
        f"--service-cluster-ip-range={L.SERVICE_CIDR}",
        "--use-service-account-credentials=false",
    ]


def scheduler_argv(bins: BinarySet, layout: Layout) -> list[str]:
    return [
        str(bins.path("kube-scheduler")),
        f"--kubeconfig={layout.internal_kubeconfig}",
        f"--authentication-kubeconfig={layout.internal_kubeconfig}",
        f"--authorization-kubeconfig={layout.internal_kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
    ]


def kube_proxy_argv(bins: BinarySet, layout: Layout) -> list[str]:
    """kube-proxy for the node namespace (both Nodes share it, so one instance programs it).

    The conntrack flags keep it from writing /proc/sys/net/netfilter/nf_conntrack_max, which a
    network namespace may not (it died on that without them, design note section 0)."""
    return [
        str(bins.path("kube-proxy")),
        f"--kubeconfig={layout.internal_kubeconfig}",
        f"--hostname-override={layout.nodes[0].name}",
        "--proxy-mode=iptables",
        f"--cluster-cidr={L.POD_CIDR}",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--metrics-bind-address=127.0.0.1:10249",
        "--healthz-bind-address=127.0.0.1:10256",
    ]


def daemon_names() -> Sequence[str]:
    """Start order; they stop in the reverse order."""
    return (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "egh-kubelet",
        "kube-proxy",
    )
