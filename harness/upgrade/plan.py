"""What an upgrade run is asked to do: the versions, the mode, the namespaces and every wait's limit.

``UpgradePlan`` checks itself when made: both versions supported by this harness, the newer one
second, at most one minor version apart in place and two with revisions (Istio's documented limits),
usable namespaces, a known access-log encoding and outbound traffic policy. ``UpgradePlan.from_env``
reads $EGRESS_HARNESS_UPGRADE_FROM/_TO/_MODE. In a canary each version is a revision whose name is
the version with dashes (``revision_name``), and the namespaces are moved between control planes by
their labels (``namespace_labels``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from harness.cluster.istio import ACCESS_LOG_ENCODINGS, ISTIO_NAMESPACE, OUTBOUND_POLICIES
from harness.cluster.providers.kind import INGRESS_NODE_PORT
from harness.common import versions
from harness.scenarios.model import IstioVersion

UpgradeMode = Literal["in-place", "canary"]
UPGRADE_MODES: tuple[UpgradeMode, ...] = get_args(UpgradeMode)

FROM_ENV: Final = "EGRESS_HARNESS_UPGRADE_FROM"
TO_ENV: Final = "EGRESS_HARNESS_UPGRADE_TO"
MODE_ENV: Final = "EGRESS_HARNESS_UPGRADE_MODE"

REV_LABEL: Final = "istio.io/rev"
INJECTION_LABEL: Final = "istio-injection"

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+)|-dev)$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def revision_name(version: str) -> str:
    """The revision name Istio's docs use for a version: ``1.30.3`` -> ``1-30-3``, and for a label
    the netns provider builds ``1.31-dev`` -> ``1-31-dev`` (a dot is not valid in a revision)."""
    if not _VERSION.match(version):
        raise ValueError(f"not an Istio release version (X.Y.Z) or netns label (X.Y-dev): {version!r}")
    return version.replace(".", "-")


def _line(version: str) -> tuple[int, int]:
    """The Istio line (major, minor) of a release or a netns label."""
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not an Istio release version (X.Y.Z) or netns label (X.Y-dev): {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_version(version: str) -> str:
    """``version`` when this harness can install it: a supported release (downloaded istioctl) or a
    label the netns provider builds (``1.30-dev``, ``1.31-dev``)."""
    if version in versions.ISTIO_BUILDABLE_LABELS:
        return version
    return versions.istio_version(version)


@dataclass(frozen=True)
class UpgradePlan:
    """What to upgrade from and to, how, in which namespaces, and how long each wait may take."""

    from_version: str
    to_version: str
    mode: UpgradeMode = "canary"
    namespaces: tuple[str, ...] = ("egress-harness-upgrade",)
    access_log_encoding: str = "TEXT"
    outbound_traffic_policy: str = "ALLOW_ANY"
    ingress_node_port: int = INGRESS_NODE_PORT
    install_timeout_s: float = 900.0
    readiness_timeout_s: float = 600.0
    rollout_timeout_s: float = 300.0
    proxy_wait_s: float = 180.0
    poll_interval_s: float = 5.0
    prober_threshold: float = 0.95
    prober_interval_s: float = 0.2

    def __post_init__(self) -> None:
        for version in (self.from_version, self.to_version):
            check_version(version)  # raises for a version this harness does not support
        if self.mode not in UPGRADE_MODES:
            raise ValueError(f"mode must be one of {', '.join(UPGRADE_MODES)}, not {self.mode!r}")
        # labels order by their Istio line (1.30-dev before 1.30.3 before 1.31-dev), as scenarios' istio.min does
        if IstioVersion.parse(self.to_version).sort_key <= IstioVersion.parse(self.from_version).sort_key:
            raise ValueError(f"an upgrade goes to a newer Istio: {self.from_version} -> {self.to_version}")
        old, new = _line(self.from_version), _line(self.to_version)
        steps = new[1] - old[1] if new[0] == old[0] else 99
        # In-place: the installed Istio may be at most one minor behind; revisions may skip one minor.
        limit = 1 if self.mode == "in-place" else 2
        if steps > limit:
            raise ValueError(
                f"{self.mode} upgrades span at most {limit} minor version{'s' if limit > 1 else ''}; "
                f"{self.from_version} -> {self.to_version} spans {steps}"
            )
        if not self.namespaces:
            raise ValueError("namespaces must name at least one namespace for the workloads")
        for ns in self.namespaces:
            if not _NAMESPACE.match(ns) or ns == ISTIO_NAMESPACE:
                raise ValueError(f"not a usable workload namespace: {ns!r}")
        if self.access_log_encoding not in ACCESS_LOG_ENCODINGS:
            raise ValueError(f"access_log_encoding must be one of {ACCESS_LOG_ENCODINGS}")
        if self.outbound_traffic_policy not in OUTBOUND_POLICIES:
            raise ValueError(f"outbound_traffic_policy must be one of {OUTBOUND_POLICIES}")

    @property
    def from_revision(self) -> str | None:
        return revision_name(self.from_version) if self.mode == "canary" else None

    @property
    def to_revision(self) -> str | None:
        return revision_name(self.to_version) if self.mode == "canary" else None

    def revision(self, version: str) -> str | None:
        return revision_name(version) if self.mode == "canary" else None

    def istiod_deployment(self, version: str) -> str:
        rev = self.revision(version)
        return f"istiod-{rev}" if rev else "istiod"

    def namespace_labels(self, version: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """(labels to set, labels to remove) so that new pods in the namespaces get ``version``'s sidecar."""
        rev = self.revision(version)
        if rev is None:
            return {INJECTION_LABEL: "enabled"}, (REV_LABEL,)
        # istio-injection takes precedence over istio.io/rev, so it must go.
        return {REV_LABEL: rev}, (INJECTION_LABEL,)

    def describe(self) -> str:
        return f"{self.mode} upgrade {self.from_version} -> {self.to_version}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> UpgradePlan | None:
        """The plan named by $EGRESS_HARNESS_UPGRADE_FROM/_TO/_MODE, or None when FROM and TO are unset."""
        env = os.environ if environ is None else environ
        old, new = env.get(FROM_ENV, "").strip(), env.get(TO_ENV, "").strip()
        if not old and not new:
            return None
        if not old or not new:
            raise ValueError(
                f"set both {FROM_ENV} and {TO_ENV} (got {old or 'nothing'} -> {new or 'nothing'})"
            )
        mode = env.get(MODE_ENV, "").strip() or "canary"
        return cls(old, new, mode, **overrides)  # type: ignore[arg-type]
