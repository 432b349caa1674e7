"""The issue's end-to-end check on the netns cluster: `e2e up --provider netns` with real istiod
1.31-dev, the seed's chain client -> ingress -> proxy -> target -> www.baidu.com through the egress
gateway proven from the real access logs and the external host's record, then `e2e down` leaving
nothing behind."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from harness.cluster.cli import bring_down, bring_up
from harness.cluster.options import E2EOptions
from harness.cluster.providers.netns.cluster import leftovers
from harness.cluster.run import E2ERun
from harness.evidence import EgressTarget, Wait, assert_through_gateway
from harness.scenarios import load_catalog, render_request

REPO = Path(__file__).resolve().parents[2]
SEED_HOST = "www.baidu.com"
WAIT = Wait(timeout=20.0, interval=0.25, settle=2.0)


@pytest.mark.timeout(900)
def test_the_seed_chain_leaves_through_the_egress_gateway_and_down_leaves_nothing(
    istio_built: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    options = E2EOptions(provider="netns", istio_version=istio_built, external_host=SEED_HOST)
    state = bring_up(options, run_dir)
    netns_state = json.loads((run_dir / "netns" / "netns-cluster.json").read_text())
    prefix = f"egh-{netns_state['run_id']}-"
    try:
        assert state.cluster == "netns" and state.istio_version == istio_built
        with E2ERun(options, run_dir, state=state) as run:
            kube = run._kube()
            for namespace in ("istio-system", run.namespace):
                pods = kube.list_pods(namespace, "")
                assert pods, f"no pods in {namespace}"
                for pod in pods:
                    ready = [c for c in pod["status"].get("conditions", []) if c["type"] == "Ready"]
                    assert ready and ready[0]["status"] == "True", f"{pod['metadata']['name']} is not Ready"
            relays = kube.list_pods(run.namespace, "app=target")
            assert "istio-proxy" in {c["name"] for c in relays[0]["spec"].get("initContainers", [])}
            # the harness's own cluster: relays on the control plane, the egress gateway on its worker
            for app in ("proxy", "target"):
                assert {p["spec"].get("nodeName") for p in kube.list_pods(run.namespace, f"app={app}")} == {
                    "egh-control-plane"
                }, app
            gateways = kube.list_pods("istio-system", "istio=egressgateway")
            assert {p["spec"].get("nodeName") for p in gateways} == {"egh-worker"}

            scenario = load_catalog(REPO / "scenarios").get("http-via-egress-gateway")
            applied = run.apply_scenario(scenario)
            try:
                (spec,) = scenario.requests
                request = render_request(spec, run.render_context(), source=scenario.file)
                assert request.host == SEED_HOST
                result = run.send_chain(request.host, request.port, request.path)
                assert result.response.status == 200, result.response.text[:500]
                since = result.sent_at - timedelta(seconds=5)
                evidence = assert_through_gateway(
                    result.ref(request.host),
                    EgressTarget(request.host, request.port),
                    gateway=run.gateway_log(since=since),
                    sidecar=run.sidecar_log("target", since=since),
                    wait=WAIT,
                )
                assert [e.hop for e in evidence] == ["target sidecar", "egress gateway"]
                record = run.expect_external_from_gateway(result.request_id, path_token=result.path_token)
                # no NAT here: the external host sees the egress gateway pod's own address
                assert record["client_ip"] in run.gateway_callers()
                assert record["client_ip"] not in run.workload_callers("target")
                assert record["host"].rsplit(":", 1)[0] == SEED_HOST  # the gateway sends host:port
            finally:
                run.delete_scenario(applied)
    finally:
        problems = bring_down(run_dir)
    assert problems == []
    assert leftovers(prefix) == [], "e2e down left network namespaces or files behind"
    keys = [p for pattern in ("*.key", "*.pem") for p in run_dir.rglob(pattern)]
    assert keys == [], f"e2e down left private keys behind: {keys}"
    assert not [p for p in Path("/proc").glob("[0-9]*") if _runs_in(p, prefix)], "processes of the run remain"


def _runs_in(proc: Path, prefix: str) -> bool:
    """Whether a process still runs something of the run (its command line names the run's files)."""
    try:
        return prefix in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.timeout(900)
def test_a_second_run_visits_the_kept_cluster_by_kubeconfig_and_both_runs_answer(
    istio_built: str, tmp_path: Path
) -> None:
    """The existing-cluster path (``e2e up --kubeconfig``) for real: a second harness run on the netns
    cluster the first one made and keeps. Both runs' ingress routes share the cluster's one ingress
    gateway on port 80 (before each had a host of its own, istioctl analyze reported IST0145 there and
    the second run's mission failed); the second run's mission goes out through the egress gateway,
    the first run's chain still answers, and the second's ``down`` removes its namespace only."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first = bring_up(
        E2EOptions(provider="netns", istio_version=istio_built, external_host=SEED_HOST), first_dir
    )
    prefix = f"egh-{json.loads((first_dir / 'netns' / 'netns-cluster.json').read_text())['run_id']}-"
    try:
        visit = E2EOptions(
            istio_version=istio_built,
            kubeconfig=first.kubeconfig,
            context=first.context,
            ingress_url=first.ingress_url,
            relay_image=first.relay_image,
            external="internet",
            external_host=SEED_HOST,
        )
        second = bring_up(visit, second_dir)
        assert second.namespace != first.namespace
        try:
            with E2ERun(visit, second_dir, state=second) as run:
                # a cluster the second run does not own: its relays are not pinned, the scheduler
                # places them (on the untainted worker here) and they answer
                assert not run.own_cluster
                for pod in run._kube().list_pods(run.namespace, ""):
                    spec = pod["spec"]
                    assert not spec.get("nodeSelector"), pod["metadata"]["name"]
                    assert "node-role.kubernetes.io/control-plane" not in {
                        t.get("key") for t in spec.get("tolerations") or []
                    }, pod["metadata"]["name"]
                    assert spec.get("nodeName") == "egh-worker", pod["metadata"]["name"]
                scenario = load_catalog(REPO / "scenarios").get("http-via-egress-gateway")
                applied = run.apply_scenario(scenario)  # runs istioctl analyze against the live cluster
                try:
                    (spec,) = scenario.requests
                    request = render_request(spec, run.render_context(), source=scenario.file)
                    result = run.send_chain(request.host, request.port, request.path)
                    assert result.response.status == 200, result.response.text[:500]
                    since = result.sent_at - timedelta(seconds=5)
                    assert_through_gateway(
                        result.ref(request.host),
                        EgressTarget(request.host, request.port),
                        gateway=run.gateway_log(since=since),
                        sidecar=run.sidecar_log("target", since=since),
                        wait=WAIT,
                    )
                finally:
                    run.delete_scenario(applied)
            with E2ERun(
                E2EOptions(provider="netns", istio_version=istio_built), first_dir, state=first
            ) as run:
                assert run.wait_chain_ready(deadline_s=60).response.status == 200
        finally:
            assert bring_down(second_dir) == []
        with E2ERun(E2EOptions(provider="netns", istio_version=istio_built), first_dir, state=first) as run:
            kube = run._kube()
            assert kube.namespace_exists(first.namespace) and not kube.namespace_exists(second.namespace)
            assert run.wait_chain_ready(deadline_s=60).response.status == 200
    finally:
        problems = bring_down(first_dir)
    assert problems == []
    assert leftovers(prefix) == []
