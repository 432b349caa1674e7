"""The cluster tier behind the tier interface (``harness.cluster.tier``), against the stand-in run of
``test_e2e_catalog``: a hand-written test stages a scenario, the shared runner's texts for what the
cluster used to word itself, the run's lock released whatever happened, the tier's versions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import ClusterTier, E2EError, ScenarioLock, ScenarioRunner
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.common import versions
from harness.evidence import Wait
from harness.runner import exercise, run_scenario
from harness.scenarios import render_request
from harness.tier import Tier, staged
from tests.unit.test_e2e_catalog import CATALOG, MISSION, NS1, Cluster


@pytest.fixture
def cluster(tmp_path: Path, fakebin: Any) -> Cluster:
    return Cluster(tmp_path, fakebin)


def tier_of(cluster: Cluster, **kw: Any) -> ClusterTier:
    kw.setdefault("wait", Wait(timeout=0.5, interval=0.02, settle=0.05))
    kw.setdefault("collect_diagnostics", False)
    kw.setdefault("lock", ScenarioLock(cluster.run.run_dir, timeout_s=1))
    kw.setdefault("converge_s", 10.0)
    return ClusterTier(cluster.run, **kw)


def lock_is_free(cluster: Cluster) -> bool:
    """Whether the run's scenario lock can be held alone at once (nothing of a scenario holds it)."""
    try:
        with ScenarioLock(cluster.run.run_dir, timeout_s=0.2, interval_s=0.02).hold(exclusive=True):
            return True
    except E2EError:
        return False


def test_a_hand_written_test_stages_a_scenario_on_the_cluster_tier(cluster: Cluster) -> None:
    cluster.proxy_config(NS1)
    scenario = CATALOG.get(MISSION)
    tier: Tier = tier_of(cluster)
    with tier, staged(tier, scenario) as stage:
        assert cluster.kube.calls[0][:2] == ("create namespace", NS1)
        assert not lock_is_free(cluster)  # the scenario shares the run's lock while it is applied
        assert stage.context.namespace == NS1
        request = render_request(scenario.requests[0], stage.context, source=scenario.file)
        outcome = exercise(stage, request)
        assert outcome.passed, outcome.error
        assert outcome.line == (
            "via-gateway: HTTP 200, target sidecar -> egress gateway -> external host (called from 172.18.0.2)"
        )
        assert stage.proxy_versions() == ["1.30.3"]
        with pytest.raises(E2EError, match="only the full chain ingress -> proxy -> target runs here"):
            stage.send(dataclasses.replace(request, chain=("proxy", "target")))
    assert cluster.kube.calls[-2:] == [
        ("delete", ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService"]),
        ("delete namespace", NS1),
    ]
    assert lock_is_free(cluster)


def test_a_namespace_that_cannot_be_removed_makes_a_passed_scenario_an_error(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.proxy_config(NS1)

    def stuck(name: str, **kw: Any) -> None:
        raise RuntimeError(f"namespace {name} stuck")

    monkeypatch.setattr(cluster.kube, "delete_namespace", stuck)
    report = ScenarioRunner(cluster.run, lock=ScenarioLock(cluster.run.run_dir, timeout_s=1)).run_scenario(
        CATALOG.get(MISSION)
    )
    result = report.result
    assert result.outcome == "error" and not report.kept
    assert result.message.startswith(
        f"removing scenario {MISSION} failed: RuntimeError: namespace {NS1} stuck\nvia-gateway: HTTP 200"
    )
    assert lock_is_free(cluster)


def test_keep_on_failure_says_how_to_remove_what_it_kept_and_releases_the_lock(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.proxy_config(NS1)
    cluster.mode = "passthrough"
    with tier_of(cluster, keep_on_failure=True) as tier:
        run = run_scenario(tier, CATALOG.get(MISSION), keep_going=False)
    assert run.result.outcome == "failed" and run.kept
    assert f"keeping namespace {NS1} of the failed scenario {MISSION} (keep-on-failure)" in (
        capsys.readouterr().err
    )
    assert lock_is_free(cluster)


def test_a_skip_reason_that_raises_is_an_error_and_touches_nothing(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(scenario: Any) -> str | None:
        raise RuntimeError("no state")

    monkeypatch.setattr(cluster.run, "skip_reason", broken)
    result = ScenarioRunner(cluster.run).run_scenario(CATALOG.get(MISSION)).result
    assert (result.outcome, result.message) == (
        "error",
        f"scenario {MISSION} could not run: RuntimeError: no state",
    )
    assert cluster.kube.calls == [] and cluster.sent == []


def test_the_tiers_versions_name_istio_and_a_kind_clusters_kubernetes(
    cluster: Cluster, tmp_path: Path
) -> None:
    tier = tier_of(cluster)
    assert tier.name == "cluster" and tier.istio_version == "1.30.3"
    assert isinstance(cluster.run.cluster, ExistingCluster)
    assert tier.versions().header() == "Istio 1.30.3"  # a visited cluster's version is not read
    cluster.run.cluster = KindCluster("egress", tmp_path)
    assert tier.versions().kubernetes == f"v{versions.KUBERNETES_VERSION}"
    assert tier.versions().header() == f"Istio 1.30.3, Kubernetes v{versions.KUBERNETES_VERSION}"
