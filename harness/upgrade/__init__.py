"""Upgrading Istio under the scenario catalog: install A, run the catalog, upgrade to B, run it again.

- ``plan``: ``UpgradePlan``, what to upgrade from and to, how (``in-place`` or ``canary``) and where;
- ``runner``: ``UpgradeRun``, which carries a plan out on a cluster and returns its ``RunResult``;
- ``api``: the cluster reads and writes a run needs (``UpgradeApi``, ``KubeUpgradeApi``);
- ``proxies``: what ``istioctl proxy-status`` and the pods' images say about the proxies' version;
- ``prober``: ``Prober``, traffic sent all along the upgrade and judged against a success threshold.
"""

from __future__ import annotations

from harness.upgrade.api import RESTARTED_AT, KubeUpgradeApi, UpgradeApi, label_patch, restart_patch
from harness.upgrade.plan import (
    FROM_ENV,
    INJECTION_LABEL,
    MODE_ENV,
    REV_LABEL,
    TO_ENV,
    UPGRADE_MODES,
    UpgradeMode,
    UpgradePlan,
    revision_name,
)
from harness.upgrade.prober import (
    DEFAULT_INTERVAL_S,
    DEFAULT_THRESHOLD,
    ProbeBelowThresholdError,
    Prober,
    ProberError,
    Sample,
    judge,
    outages,
)
from harness.upgrade.proxies import (
    ProxyStatus,
    ProxyStatusError,
    parse_proxy_status,
    pod_image_problems,
    proxy_problems,
)
from harness.upgrade.runner import CatalogRunner, StepFailedError, UpgradeError, UpgradeRun

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_THRESHOLD",
    "FROM_ENV",
    "INJECTION_LABEL",
    "MODE_ENV",
    "RESTARTED_AT",
    "REV_LABEL",
    "TO_ENV",
    "UPGRADE_MODES",
    "CatalogRunner",
    "KubeUpgradeApi",
    "ProbeBelowThresholdError",
    "Prober",
    "ProberError",
    "ProxyStatus",
    "ProxyStatusError",
    "Sample",
    "StepFailedError",
    "UpgradeApi",
    "UpgradeError",
    "UpgradeMode",
    "UpgradePlan",
    "UpgradeRun",
    "judge",
    "label_patch",
    "outages",
    "parse_proxy_status",
    "pod_image_problems",
    "proxy_problems",
    "restart_patch",
    "revision_name",
]
