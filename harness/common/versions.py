"""The one place where the cluster path's versions, download addresses and checksum addresses are pinned.

Sources of each pin (checked when it was set; re-check them together when bumping):

* kind 0.33.0 and its node image: the v0.33.0 release notes list the images built for that release,
  each with the digest that must be used with it. We take Kubernetes 1.34 from that list because
  1.34 is inside the supported Kubernetes range of every Istio release below (1.28: 1.30-1.34,
  1.29: 1.31-1.35, 1.30: 1.32-1.36, per Istio's support table).
* No kubectl is pinned: the harness talks to the API server through the Kubernetes Python client and
  never runs kubectl (the netns provider builds its own for users, see ``NETNS_KUBERNETES_VERSION``).
* Release assets: kind publishes ``kind-<os>-<arch>`` with ``<asset>.sha256sum`` beside it
  (``shasum -a 256`` output); Istio publishes
  ``istioctl-<v>-<platform>.tar.gz`` with ``<asset>.sha256`` (``<digest> <file name>``), where the
  platform of an Intel Mac is plain ``osx`` and of an Apple-silicon Mac ``osx-arm64``.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

#: The Gateway API release whose standard-channel CRDs ``--gateway-api`` installs. v1.5 is the first
#: with TLSRoute in the standard channel as gateway.networking.k8s.io/v1, which Istio 1.30 reads.
GATEWAY_API_VERSION: Final = "v1.5.1"
GATEWAY_API_CRDS_URL: Final = f"https://github.com/kubernetes-sigs/gateway-api/releases/download/{GATEWAY_API_VERSION}/standard-install.yaml"

KIND_VERSION: Final = "0.33.0"
KUBERNETES_VERSION: Final = "1.34.11"
KIND_NODE_IMAGE: Final = (
    "kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d"
)

DEFAULT_ISTIO_VERSION: Final = "1.30.3"
SUPPORTED_ISTIO_VERSIONS: Final = ("1.28.10", "1.29.6", "1.30.3")
# Environment variable that picks one of SUPPORTED_ISTIO_VERSIONS for a run (make e2e ISTIO_VERSION=...).
ISTIO_VERSION_ENV: Final = "EGRESS_HARNESS_ISTIO_VERSION"

# Platforms we download for: (os, arch) in Go's spelling.
PLATFORMS: Final = (("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64"))


@dataclass(frozen=True)
class ToolSpec:
    """How to download one tool: URL template, where its checksum lives, which asset per platform.

    ``url_template`` takes ``{base}``, ``{version}``, ``{os}``, ``{arch}`` and ``{asset}`` (the
    platform's asset name from ``assets``). ``checksum_suffix`` is appended to the download URL.
    ``archive_member`` is set when the asset is a tar.gz holding the binary under that name.
    """

    name: str
    default_base_url: str
    base_url_env: str
    url_template: str
    checksum_suffix: str
    assets: MappingProxyType[tuple[str, str], str]
    pinned_version: str
    archive_member: str | None = None

    def asset(self, os_name: str, arch: str, version: str) -> str:
        try:
            template = self.assets[(os_name, arch)]
        except KeyError:
            supported = ", ".join(f"{o}/{a}" for o, a in self.assets)
            raise UnsupportedPlatformError(
                f"{self.name} has no download for {os_name}/{arch} (supported: {supported})"
            ) from None
        return template.format(version=version)

    def base_url(self, override: str | None = None) -> str:
        base = override or os.environ.get(self.base_url_env) or self.default_base_url
        return base.rstrip("/")

    def url(self, version: str, os_name: str, arch: str, *, base_url: str | None = None) -> str:
        return self.url_template.format(
            base=self.base_url(base_url),
            version=version,
            os=os_name,
            arch=arch,
            asset=self.asset(os_name, arch, version),
        )

    def checksum_url(self, version: str, os_name: str, arch: str, *, base_url: str | None = None) -> str:
        return self.url(version, os_name, arch, base_url=base_url) + self.checksum_suffix


class UnsupportedPlatformError(RuntimeError):
    """This machine's OS/architecture has no published binary."""


KIND: Final = ToolSpec(
    name="kind",
    default_base_url="https://github.com/kubernetes-sigs/kind/releases/download",
    base_url_env="EGRESS_HARNESS_KIND_BASE_URL",
    url_template="{base}/v{version}/{asset}",
    checksum_suffix=".sha256sum",
    assets=MappingProxyType(
        {
            ("linux", "amd64"): "kind-linux-amd64",
            ("linux", "arm64"): "kind-linux-arm64",
            ("darwin", "amd64"): "kind-darwin-amd64",
            ("darwin", "arm64"): "kind-darwin-arm64",
        }
    ),
    pinned_version=KIND_VERSION,
)

ISTIOCTL: Final = ToolSpec(
    name="istioctl",
    default_base_url="https://github.com/istio/istio/releases/download",
    base_url_env="EGRESS_HARNESS_ISTIO_BASE_URL",
    url_template="{base}/{version}/{asset}",
    checksum_suffix=".sha256",
    assets=MappingProxyType(
        {
            ("linux", "amd64"): "istioctl-{version}-linux-amd64.tar.gz",
            ("linux", "arm64"): "istioctl-{version}-linux-arm64.tar.gz",
            ("darwin", "amd64"): "istioctl-{version}-osx.tar.gz",
            ("darwin", "arm64"): "istioctl-{version}-osx-arm64.tar.gz",
        }
    ),
    pinned_version=DEFAULT_ISTIO_VERSION,
    archive_member="istioctl",
)

TOOLS: Final = MappingProxyType({spec.name: spec for spec in (KIND, ISTIOCTL)})


def host_platform() -> tuple[str, str]:
    """This machine as (os, arch) in Go's spelling, e.g. ("linux", "amd64")."""
    os_name = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return os_name, arch


def istio_version(requested: str | None = None) -> str:
    """The Istio version for this run: ``requested``, else $EGRESS_HARNESS_ISTIO_VERSION, else the default."""
    version = requested or os.environ.get(ISTIO_VERSION_ENV) or DEFAULT_ISTIO_VERSION
    if version not in SUPPORTED_ISTIO_VERSIONS:
        raise ValueError(
            f"Istio {version} is not supported by this harness; pick one of "
            f"{', '.join(SUPPORTED_ISTIO_VERSIONS)} (default {DEFAULT_ISTIO_VERSION})"
        )
    return version


def pinned_version(tool: str, istio: str | None = None) -> str:
    """The version of ``tool`` this harness uses (istioctl follows the Istio version of the run)."""
    if tool == ISTIOCTL.name:
        return istio_version(istio)
    return TOOLS[tool].pinned_version


# --- the netns node provider: binaries built from the Go module proxy -------------------------------
# Sources: ../shared/design/netns-cluster.md section 0 (what the module proxy serves and what builds),
# ../shared/README.md (the release commits' module versions). The wrapper modules are go/kube and
# go/istio/<label>; their go.mod files pin the same versions as below (a unit test checks).

#: Kubernetes of the netns cluster (k8s.io/kubernetes module version) and its etcd (go.etcd.io/etcd/server/v3).
NETNS_KUBERNETES_VERSION: Final = "v1.36.3"
NETNS_ETCD_VERSION: Final = "3.6.8"
#: what the netns cluster's Nodes report as kubelet version (>= 1.33: Istio injects native sidecars)
NETNS_KUBELET_VERSION: Final = NETNS_KUBERNETES_VERSION
#: virtual-kubelet, the framework of the harness kubelet (go/kubelet)
VIRTUAL_KUBELET_VERSION: Final = "v1.14.1"

#: Istio versions the netns provider builds, by label -> module version of istio.io/istio. The
#: ``-dev`` labels are served by every Go module proxy; the release labels resolve to their release
#: commits, which the public proxy serves and some mirrors refuse (the build then says so).
ISTIO_MODULE_VERSIONS: Final = MappingProxyType(
    {
        "1.31-dev": "v0.0.0-20260827124520-eed52ebb66ad",
        "1.30-dev": "v0.0.0-20260826214018-9739e10eb9d7",
        "1.30.3": "v0.0.0-20260713165634-56df41f63e51",
        "1.29.6": "v0.0.0-20260713140233-7019d6d3608e",
        "1.28.10": "v0.0.0-20260629163924-ff49c1889eba",
    }
)
#: labels whose wrapper module is in go/istio/<label> (the others need one written when their
#: commit is served: the release-1.30 branch needed pinned dependencies, see the design note)
ISTIO_BUILDABLE_LABELS: Final = ("1.31-dev", "1.30-dev")
DEFAULT_NETNS_ISTIO_VERSION: Final = "1.31-dev"
