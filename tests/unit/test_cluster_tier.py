"""The cluster tier behind the tier interface (``harness.cluster.tier``), against the stand-in run of
``test_e2e_catalog``: a hand-written test stages a scenario, the shared runner's texts for what the
cluster used to word itself, the run's lock released whatever happened, the tier's versions."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import (
    ClusterTier,
    E2EError,
    ScenarioLock,
    ScenarioRunner,
    scenario_hosts,
    scenario_namespace_name,
)
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.common import versions
from harness.common.traffic import unwrap_chain
from harness.evidence import Wait
from harness.runner import exercise, run_scenario
from harness.scenarios import render_request
from harness.tier import Tier, staged
from tests.unit.test_e2e_catalog import CATALOG, MISSION, NS1, Cluster
from tests.unit.test_e2e_run import fake_pki


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


# --- issue 10: TLS correlation, refusals at the gateway, live gateway logs -------------------------

GATEWAY_SERVICE = "istio-egressgateway.istio-system.svc.cluster.local"
CANARY_MISSING = "the gateway's log source shows no entry of a canary sent to it: the absence of the request proves nothing"
CANARY_URL = re.compile(
    rf"http://{re.escape(GATEWAY_SERVICE)}:80/egh-live-[0-9a-f-]{{36}}\?egh-token=[0-9a-f-]{{36}}"
)


def tls_run(cluster: Cluster, tmp_path: Path) -> Cluster:
    """The stand-in run with the run's PKI and a recorder serving TLS."""
    cluster.run.pki = fake_pki(tmp_path / "pki")
    cluster.recorder.serves, cluster.recorder.tls_port = ("http", "tls"), 443
    return cluster


def registry_only(cluster: Cluster) -> Cluster:
    cluster.run.options = dataclasses.replace(cluster.run.options, outbound_traffic_policy="REGISTRY_ONLY")
    return cluster


def canaries(cluster: Cluster) -> list[str]:
    return [u for u in (unwrap_chain(s, levels=2)[-1] for s in cluster.sent) if "/egh-live-" in u]


def test_a_tls_passthrough_is_found_by_its_sni_not_by_the_token_in_the_inbound_entry(
    cluster: Cluster, tmp_path: Path
) -> None:
    name = "https-passthrough-via-egress-gateway"
    ns = scenario_namespace_name("eabc123", name)
    tls_run(cluster, tmp_path).proxy_config(ns, name)
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert run.result.outcome == "passed", run.result.message
    host = scenario_hosts(name).external
    assert run.result.message == (
        "tls-via-gateway: HTTP 200, target sidecar -> egress gateway -> "
        f"external host (called from 172.18.0.2) over TLSv1.3, SNI {host}"
    )
    [outcome] = run.requests
    assert all(h.entry.is_tcp and h.entry.requested_server_name == host for h in outcome.proof)
    # the token went into the destination's query and shows in the target's inbound entry only
    assert outcome.sent.path_token and outcome.sent.path_token in cluster.kube.logs["target-1"][0]
    assert outcome.sent.answered_at is not None and outcome.sent.answered_at >= outcome.sent.sent_at
    assert canaries(cluster) == []  # nothing is absent here: no canary, no liveness Gateway
    assert not any(c[:3] == ("apply", ns, ["Gateway"]) for c in cluster.kube.calls)


def test_registry_only_tls_blocks_at_the_sidecar_and_lets_the_registered_host_out_directly(
    cluster: Cluster, tmp_path: Path
) -> None:
    name = "registry-only-blocked-tls"
    ns = scenario_namespace_name("eabc123", name)
    registry_only(tls_run(cluster, tmp_path)).proxy_config(ns, name)
    cluster.mode = "direct"
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert run.result.outcome == "passed", run.result.message
    blocked, allowed = run.requests
    assert (blocked.status, blocked.proof[0].entry.upstream_cluster) == (502, "BlackHoleCluster")
    assert allowed.proof[0].entry.upstream_cluster == f"outbound|443||{scenario_hosts(name).external}"
    # the registered host's "not at the gateway" was watched with a canary through that gateway
    [canary] = canaries(cluster)
    assert CANARY_URL.fullmatch(canary), canary
    # the blocked request left no record at the external host
    assert cluster.recorder.records() == []


def test_an_absence_needs_a_canary_through_the_gateway_it_is_watched_at(cluster: Cluster) -> None:
    name = "sidecar-only-egress"
    ns = scenario_namespace_name("eabc123", name)
    cluster.proxy_config(ns, name)
    cluster.mode = "direct"
    cluster.canaries_refused = 2  # the gateway does not listen on port 80 yet
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert run.result.outcome == "passed", run.result.message
    sent = [unwrap_chain(u, levels=2) for u in cluster.sent]
    urls = [s[-1] for s in sent if "/egh-live-" in s[-1]]
    assert len(urls) == 3 and all(CANARY_URL.fullmatch(u) for u in urls), urls
    # down the chain of the scenario's namespace, like its requests
    assert {tuple(s[:2]) for s in sent} == {
        (f"http://127.0.0.1:18080/{ns}/proxy", f"http://target.{ns}.svc.cluster.local:8080/proxy")
    }
    # a Gateway on port 80 of the scenario's gateway gives it a listener that logs the canary
    applied = [c for c in cluster.kube.calls if c[0] == "apply" and c[1] == ns]
    assert applied[-1] == ("apply", ns, ["Gateway"])
    assert ("delete", ["Gateway"]) in cluster.kube.calls
    gateway_lines = [line for line in cluster.kube.logs["gw-1"] if "egh-live-" in line]
    assert len(gateway_lines) == 1 and " 404 NR route_not_found " in gateway_lines[0]


def test_an_absence_at_a_gateway_whose_logs_show_nothing_fails_naming_the_canary(cluster: Cluster) -> None:
    name = "sidecar-only-egress"
    cluster.proxy_config(scenario_namespace_name("eabc123", name), name)
    cluster.mode = "direct"
    cluster.gateway_logs_lost = True
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert (run.result.outcome, run.result.hop) == ("failed", "egress gateway")
    assert run.result.message.startswith(f"hop 'egress gateway': {CANARY_MISSING}")


def test_the_authz_scenario_is_refused_by_rbac_at_the_gateway_and_never_reaches_the_host(
    cluster: Cluster,
) -> None:
    name = "authz-policy-on-egress-gateway"
    cluster.proxy_config(scenario_namespace_name("eabc123", name), name)
    cluster.subset, cluster.denied = "external-authz", {"/denied"}
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert run.result.outcome == "passed", run.result.message
    allowed, denied = run.requests
    assert (allowed.status, denied.status) == (200, 403)
    assert denied.proof[1].entry.response_code_details == "rbac_access_denied_matched_policy[none]"
    assert [r["path"].split("?")[0] for r in cluster.recorder.records()] == ["/allowed"]
    # the same refusal with a record of it at the external host: the evidence disagrees
    cluster.recorder.seen.clear()
    cluster.recorder.paths.clear()
    leak = cluster.send

    def leaky(url: str) -> Any:
        answer = leak(url)
        destination = unwrap_chain(url, levels=2)[-1]
        if "/denied" in destination:
            cluster.recorder.seen[answer.request_id] = cluster.caller
            cluster.recorder.paths[answer.request_id] = destination.split("/", 3)[3]
        return answer

    cluster.run._send = leaky  # type: ignore[method-assign]
    cluster.proxy_config(scenario_namespace_name("eabc123", name), name)
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert (run.result.outcome, run.result.hop) == ("failed", "external host")
    assert "the refused request with path token" in run.result.message
    assert "reached the external host anyway" in run.result.message


BYPASSES = ("bypass-without-sidecar", "bypass-sidecar-excludes-external")


@pytest.mark.parametrize("name", BYPASSES)
def test_a_bypass_is_reported_not_through_the_gateway_by_the_workloads_own_address(
    cluster: Cluster, name: str
) -> None:
    ns = scenario_namespace_name("eabc123", name)
    cluster.proxy_config(ns, name)
    cluster.mode = "bypass"
    cluster.kube.app_host_ip = "172.18.0.3"  # the relays' node; the gateway's is 172.18.0.2
    cluster.kube.bare_target = name == "bypass-without-sidecar"
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert run.result.outcome == "passed", run.result.message
    [outcome] = run.requests
    assert outcome.line == (
        f"{outcome.request.name}: HTTP 200, external host (called from 172.18.0.3: target itself, not the gateway)"
    )
    relays = next(t for t in cluster.kube.texts if "kind: Deployment" in t)
    if cluster.kube.bare_target:
        assert "sidecar.istio.io/inject: 'false'" in relays
    else:
        assert "traffic.sidecar.istio.io/excludeOutboundIPRanges: 172.18.0.9/32" in relays
    # the absences were watched with canaries (one per log that must show nothing)
    assert len([u for u in cluster.sent if "egh-live-" in u]) == (1 if cluster.kube.bare_target else 2)


@pytest.mark.parametrize(("name", "hop"), [(BYPASSES[0], "egress gateway"), (BYPASSES[1], "target sidecar")])
def test_a_captured_request_fails_a_bypass_at_the_first_proxy_that_logged_it(
    cluster: Cluster, name: str, hop: str
) -> None:
    cluster.proxy_config(scenario_namespace_name("eabc123", name), name)
    cluster.kube.app_host_ip = "172.18.0.3"
    cluster.kube.bare_target = name == "bypass-without-sidecar"
    # mode via-gateway: the sidecar sent it to the gateway, which called the host
    with tier_of(cluster) as tier:
        run = run_scenario(tier, CATALOG.get(name))
    assert (run.result.outcome, run.result.hop) == ("failed", hop), run.result.message
    assert "an entry that should not exist" in run.result.message


def test_a_bypass_seen_from_the_gateways_node_fails_at_the_external_host(cluster: Cluster) -> None:
    name = BYPASSES[1]
    cluster.proxy_config(scenario_namespace_name("eabc123", name), name)
    cluster.mode = "bypass"
    cluster.kube.app_host_ip = "172.18.0.3"
    with tier_of(cluster) as tier:
        stage = tier.stage(CATALOG.get(name))
        try:
            stage.apply()
            request = render_request(
                CATALOG.get(name).requests[0], stage.context, source=CATALOG.get(name).file
            )
            sent = stage.send(request)
            cluster.recorder.seen[sent.request_id] = "172.18.0.2"  # the gateway's node
            with pytest.raises(
                AssertionError, match=r"not from the calling workload 'target' \(172\.18\.0\.3\)"
            ):
                stage.witness(request, sent)
        finally:
            stage.remove(failed=False)


@pytest.mark.parametrize("own", [True, False])
def test_a_scenarios_relays_run_on_the_control_plane_of_the_harnesss_own_cluster_only(
    cluster: Cluster, own: bool
) -> None:
    import yaml

    from harness.cluster.apps import CONTROL_PLANE_NODE_SELECTOR

    if not own:  # a cluster given by --kubeconfig: its nodes are not the harness's to choose
        cluster.run.options = dataclasses.replace(cluster.run.options, kubeconfig=Path("/elsewhere"))
    cluster.proxy_config(NS1)
    with tier_of(cluster) as tier, staged(tier, CATALOG.get(MISSION)):
        pass
    deployments = [
        doc
        for text in cluster.kube.texts
        for doc in yaml.safe_load_all(text)
        if doc and doc.get("kind") == "Deployment"
    ]
    assert sorted(d["metadata"]["name"] for d in deployments) == ["proxy", "target"]
    for d in deployments:
        selector = d["spec"]["template"]["spec"].get("nodeSelector") or {}
        pinned = all(selector.get(k) == v for k, v in CONTROL_PLANE_NODE_SELECTOR.items())
        assert pinned is own, (d["metadata"]["name"], selector)
