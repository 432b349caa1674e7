"""How a cluster run is set up: :class:`E2EOptions` (the pytest options and ``e2e up`` map onto
these; see harness.pytest_plugin and harness.cluster.cli)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.cluster.apps import BuildMode
from harness.cluster.hosts import DEFAULT_INTERNET_HOST, EXTERNAL_ALIAS
from harness.common import versions
from harness.common.paths import REPO_ROOT

ExternalMode = Literal["container", "internet"]
#: which node provider makes the harness's own cluster: kind's containers, or network namespaces
Provider = Literal["kind", "netns"]
PROVIDERS: tuple[str, ...] = ("kind", "netns")
#: ``istioctl analyze`` before a scenario is applied: with the live cluster, on the files alone, or not
AnalyzeMode = Literal["cluster", "files", "off"]
EXTERNAL_MODES: tuple[str, ...] = ("container", "internet")
ANALYZE_MODES: tuple[str, ...] = ("cluster", "files", "off")


def new_run_id() -> str:
    """Six hex digits: short enough for names, random enough for concurrent runs."""
    return secrets.token_hex(3)


@dataclass(frozen=True)
class E2EOptions:
    """How a run is set up (the pytest options map onto these; see harness.pytest_plugin)."""

    istio_version: str = field(default_factory=versions.istio_version)
    #: the node provider of the harness's own cluster (not used with ``kubeconfig``)
    provider: Provider = "kind"
    cluster_name: str = "egress-harness"
    reuse_cluster: bool = False
    #: keep cluster, Istio, namespace and apps (always)
    keep_cluster: bool = False
    #: keep them when a test failed (EGRESS_HARNESS_KEEP_CLUSTER=1)
    keep_on_failure: bool = False
    #: an existing cluster instead of a kind cluster
    kubeconfig: Path | None = None
    context: str | None = None
    access_log_encoding: str = "TEXT"
    outbound_traffic_policy: str = "ALLOW_ANY"
    external: ExternalMode = "container"
    external_host: str | None = None
    external_port: int = 80
    #: where the client reaches the ingress gateway (default: kind's port mapping on 127.0.0.1)
    ingress_url: str | None = None
    #: a relay image the cluster can pull; needed for an existing cluster, default: built and loaded
    relay_image: str | None = None
    image_build_mode: BuildMode = "auto"
    analyze: AnalyzeMode = "cluster"
    #: whether pod traffic to the external host is source-NATed to the node (None: yes on kind)
    pod_source_nat: bool | None = None
    artifacts_dir: Path = REPO_ROOT / "artifacts"
    #: install the Gateway API CRDs (GATEWAY_API_VERSION) when the cluster has none
    gateway_api: bool = False
    #: more network aliases of the recorder: the catalog's hosts (:func:`recorder_aliases`)
    recorder_aliases: tuple[str, ...] = ()
    #: with ``external="container"``: make the run's PKI, serve HTTPS and run the mTLS recorder
    external_tls: bool = True
    #: more network aliases of the mutual-TLS recorder (:func:`mtls_recorder_aliases`)
    mtls_aliases: tuple[str, ...] = ()
    #: on an existing cluster: let the run create (and delete) credential Secrets in istio-system,
    #: which is beyond "only the run's namespaces" (``--allow-gateway-secrets``)
    allow_gateway_secrets: bool = False
    #: install Istio, the run namespace and its relays (False: only the cluster, the Gateway API CRDs
    #: and the external host, for an upgrade run that installs Istio itself)
    install_istio: bool = True
    #: more Istio labels the netns cluster runs images of (an upgrade's target version)
    more_istio_versions: tuple[str, ...] = ()
    #: the control plane revision the run's proxies belong to (an upgrade's canary), which istiod's
    #: sync status is asked of (``istioctl proxy-status --revision``); None: the default revision
    istio_revision: str | None = None

    @property
    def existing_cluster(self) -> bool:
        return self.kubeconfig is not None

    @property
    def host(self) -> str:
        if self.external_host:
            return self.external_host
        return EXTERNAL_ALIAS if self.external == "container" else DEFAULT_INTERNET_HOST

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when they can run)."""
        out: list[str] = []
        if self.access_log_encoding not in ("TEXT", "JSON"):
            out.append(f"access log encoding must be TEXT or JSON, not {self.access_log_encoding!r}")
        if self.external not in EXTERNAL_MODES:
            out.append(f"external must be one of {EXTERNAL_MODES}, not {self.external!r}")
        if self.analyze not in ANALYZE_MODES:
            out.append(f"analyze must be one of {ANALYZE_MODES}, not {self.analyze!r}")
        if self.provider not in PROVIDERS:
            out.append(f"provider must be one of {PROVIDERS}, not {self.provider!r}")
        if self.provider == "netns":
            if self.existing_cluster:
                out.append("--provider netns makes a cluster of its own; it does not go with --kubeconfig")
            if self.istio_version not in versions.ISTIO_MODULE_VERSIONS:
                out.append(
                    f"Istio {self.istio_version} is not a version the netns provider builds; it builds "
                    f"{', '.join(versions.ISTIO_BUILDABLE_LABELS)}"
                )
        elif self.istio_version not in versions.SUPPORTED_ISTIO_VERSIONS and not self.existing_cluster:
            out.append(
                f"Istio {self.istio_version} is not one of the supported {', '.join(versions.SUPPORTED_ISTIO_VERSIONS)}"
            )
        if self.existing_cluster:
            if self.external == "container":
                out.append(
                    "--external container needs the harness's kind cluster (the recorder joins kind's Docker "
                    "network); with --kubeconfig use --external internet --external-host HOST"
                )
            if not self.relay_image:
                out.append(
                    "an existing cluster cannot be given a locally built image: push the relay image "
                    "(apps/relay) to a registry the cluster pulls from and set EGRESS_HARNESS_RELAY_IMAGE"
                )
            if not self.ingress_url:
                out.append(
                    "an existing cluster needs the ingress gateway's address: set EGRESS_HARNESS_INGRESS_URL "
                    "(e.g. http://127.0.0.1:8080 after `kubectl port-forward -n istio-system "
                    "svc/istio-ingressgateway 8080:80`)"
                )
        return out
