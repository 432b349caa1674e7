"""The fixed shape of a netns cluster: names, addresses and ports, derived from the run id.

Every run has its own node namespace, so the addresses inside it never meet another run's; only
names (namespaces, /etc/netns folders, /dev/shm folders) are global and carry the run id. The
ranges are kind's own (pods 10.244.0.0/16, Services 10.96.0.0/16), so what a scenario sees of
addresses matches kind.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
API_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
KUBELET_PORT = 10250
#: the ingress gateway's NodePort (manifests/istio/egress.yaml), as on kind
INGRESS_NODE_PORT = 30080
#: the link between the node and the external host's namespace
EXTERNAL_NODE_SIDE_IP = "10.250.0.1"
EXTERNAL_HOST_IP = "10.250.0.2"
#: a second address of the external host's namespace: the recorder that requires client certificates
EXTERNAL_MTLS_IP = "10.250.0.3"
CLUSTER_DOMAIN = "cluster.local"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: the folder of an e2e run that holds its netns cluster, and the cluster's state file in it
RUN_SUBDIR = "netns"
STATE_FILE = "netns-cluster.json"

#: tmpfs on every Linux machine; etcd's data lives there, one folder per run (named with the run id)
SHM = Path("/dev/shm")  # noqa: S108

_RUN_ID = re.compile(r"^[a-z0-9]{1,8}$")


def new_run_id() -> str:
    return secrets.token_hex(3)


@dataclass(frozen=True)
class NodeSpec:
    """One Node object and its slice of the pod range."""

    name: str
    ip: str
    pod_cidr: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)


@dataclass(frozen=True)
class Layout:
    """Names and addresses of one run."""

    run_id: str
    run_dir: Path

    def __post_init__(self) -> None:
        if not _RUN_ID.match(self.run_id):
            raise ValueError(f"run id {self.run_id!r}: 1-8 lower-case letters or digits")

    @property
    def prefix(self) -> str:
        """Every global name of the run starts with it."""
        return f"egh-{self.run_id}-"

    @property
    def pod_prefix(self) -> str:
        """The harness kubelet's pod namespaces start with it (and the kubelet removes only those)."""
        return f"{self.prefix}p-"

    @property
    def node_netns(self) -> str:
        return f"{self.prefix}node"

    @property
    def external_netns(self) -> str:
        return f"{self.prefix}ext"

    @property
    def shm_dir(self) -> Path:
        """etcd's data: tmpfs, gone with the run."""
        return SHM / f"{self.prefix}etcd"

    @property
    def nodes(self) -> tuple[NodeSpec, NodeSpec]:
        """kind's two nodes of the harness's config (manifests/kind/cluster.yaml): a tainted
        control plane for the relays and a worker labelled for the egress gateway."""
        return (
            NodeSpec(
                "egh-control-plane",
                "10.244.0.1",
                "10.244.0.0/24",
                {
                    "node-role.kubernetes.io/control-plane": "",
                    "node.kubernetes.io/exclude-from-external-load-balancers": "",
                },
                (("node-role.kubernetes.io/control-plane", "", "NoSchedule"),),
            ),
            NodeSpec(
                "egh-worker", "10.244.1.1", "10.244.1.0/24", {"egress-harness.io/egress-gateway": "true"}
            ),
        )

    @property
    def api_ip(self) -> str:
        return self.nodes[0].ip

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def admin_kubeconfig(self) -> Path:
        """For the harness, kubectl and istioctl in the root namespace (through the forwarder)."""
        return self.run_dir / "kubeconfig"

    @property
    def internal_kubeconfig(self) -> Path:
        """For the components inside the node namespace (the API server's own address)."""
        return self.run_dir / "internal.kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE
