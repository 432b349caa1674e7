"""The netns cluster tier: a real Kubernetes control plane and the harness kubelet in network
namespaces of this run. Needs root, iproute2/iptables, and the binaries (built with Go from the
module proxy, or cached): every test here skips naming what is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster.providers.netns import binaries
from harness.cluster.providers.netns.cluster import NetnsCluster, leftovers, unavailable_reason
from harness.common import versions


def _missing() -> str | None:
    reason = unavailable_reason()
    if reason:
        return reason
    try:
        binaries.kube_binaries()
        binaries.kubelet_binaries()
    except binaries.BinariesError as exc:
        return f"netns cluster binaries: {exc} (make kube-bin kubelet-bin)"
    return None


@pytest.fixture(scope="session")
def netns_ready() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def istio_built(netns_ready: None) -> str:
    """The default netns Istio label, once its binaries are built (else the test skips, naming
    ``make istio-bin``)."""
    label = versions.DEFAULT_NETNS_ISTIO_VERSION
    try:
        binaries.istio_binaries(label)
    except binaries.BinariesError as exc:
        pytest.skip(f"Istio {label} binaries: {exc} (make istio-bin)")
    return label


@pytest.fixture(scope="module")
def netns_cluster(netns_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    run_dir: Path = tmp_path_factory.mktemp("netns-run")
    with NetnsCluster(run_dir, istio_versions=()) as cluster:
        yield cluster
    left = leftovers(cluster.layout.prefix)  # its own names only: other runs may be up meanwhile
    assert not left, f"the netns cluster left behind: {left}"
    assert os.path.exists(run_dir)
