"""The mission on a real cluster: plain HTTP to an external host leaves the mesh through the egress gateway.

The scenario ``http-via-egress-gateway`` is applied into the run namespace, one request goes down
``client -> ingress -> proxy -> target -> external host``, and three witnesses must agree:

1. the ``target`` sidecar's access log: it sent the request to the egress gateway;
2. the egress gateway's access log (every replica): it sent it on to the external host;
3. the external host (the recorder container on kind's network): the caller was an egress gateway
   address. The gateway pods come from ``Kube.list_pods`` (label ``istio=egressgateway``). On kind the
   pods' traffic to the Docker network is masqueraded to their node's address, so the recorder sees
   the node of the gateway pod; when the gateway and ``target`` share a node (one-node cluster) that
   address cannot tell them apart, and the test says so with a warning instead of claiming more.

Needs Docker, the pinned kind and istioctl (``make tools``); without them it is skipped with the list
of what is missing. Failures leave their diagnostics under ``artifacts/<test id>/``.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from harness.cluster import E2ERun
from harness.evidence import EgressTarget, Wait, assert_through_gateway
from harness.pytest_plugin import E2EResults, Recording
from harness.scenarios import load_catalog, render_request

REPO = Path(__file__).resolve().parents[2]
MISSION = "http-via-egress-gateway"
WAIT = Wait(timeout=20.0, interval=0.25, settle=2.0)


@pytest.mark.timeout(1800)  # the body only: the run's cluster setup is not counted (harness.pytest_plugin)
def test_http_leaves_the_mesh_through_the_egress_gateway(
    e2e_run: E2ERun, scenario_namespace: str, e2e_results: E2EResults
) -> None:
    # recorded as a scenario of its own: the catalog's run of MISSION (tests/e2e/test_catalog.py) is
    # another one, in a namespace of its own with its own host
    with e2e_results.recording(f"mission/{MISSION}") as note:
        _mission(e2e_run, scenario_namespace, note)


def _mission(e2e_run: E2ERun, scenario_namespace: str, note: Recording) -> None:
    scenario = load_catalog(REPO / "scenarios").get(MISSION)
    reason = e2e_run.skip_reason(scenario)
    if reason:
        pytest.skip(f"{MISSION}: {reason}")
    applied = e2e_run.apply_scenario(scenario)
    note.convergence_s = applied.converged_s
    assert {r.kind for r in applied.refs} >= {"ServiceEntry", "Gateway", "DestinationRule", "VirtualService"}
    assert all(r.namespace == scenario_namespace for r in applied.refs)

    (spec,) = scenario.requests
    request = render_request(spec, e2e_run.render_context(), source=scenario.file)
    result = e2e_run.send_chain(request.host, request.port, request.path)
    response = result.response
    assert response.status == request.expect.status, (
        f"client got HTTP {response.status} (x-request-id {result.request_id}, failed hop "
        f"{response.failed_hop or '-'}: {response.error or '-'})"
    )
    assert response.services == ["proxy", "target"]

    # witnesses 1 and 2: the target's sidecar sent it to the gateway, the gateway to the external host
    # the path token, not the x-request-id: Istio's gateways give requests from callers they do not
    # count as internal a fresh x-request-id (seen with real istiod and Envoy on the netns cluster)
    ref = result.ref(request.host)
    since = result.sent_at - timedelta(seconds=5)
    sidecar = e2e_run.sidecar_log("target", since=since)
    gateway = e2e_run.gateway_log(since=since)
    evidence = assert_through_gateway(
        ref, EgressTarget(request.host, request.port), gateway=gateway, sidecar=sidecar, wait=WAIT
    )
    assert [e.hop for e in evidence] == ["target sidecar", "egress gateway"]

    # the scenario's own expectations (exact upstream clusters, codes, flags) hold for the same entries
    from harness.scenarios.expect import judge

    judge(request, ref, sidecar=sidecar, gateway=gateway, wait=WAIT)

    # witness 3: the external host's record of the caller
    if e2e_run.recorder is None:
        pytest.skip("--external internet: the external host keeps no record; two witnesses checked")
    gateway_callers = e2e_run.gateway_callers()
    assert gateway_callers, "no egress gateway pod address found (label istio=egressgateway)"
    record = e2e_run.expect_external_from_gateway(result.request_id, path_token=result.path_token)
    assert record["client_ip"] in gateway_callers
    assert result.path_token and result.path_token in record["path"]
    if e2e_run.options.kubeconfig is None:
        # The harness's own kind cluster puts the egress gateway alone on a worker node
        # (manifests/kind/cluster.yaml), so its source-NATed address is the gateway's own.
        assert e2e_run.caller_witness_discriminates("target"), (
            f"the target pod reaches the external host from {record['client_ip']} too: the egress "
            "gateway is not alone on its node (see manifests/kind/cluster.yaml and manifests/istio/egress.yaml)"
        )
    elif not e2e_run.caller_witness_discriminates("target"):
        warnings.warn(
            f"the external host saw {record['client_ip']}, an egress gateway address, but the target pod "
            "reaches it from the same address (same node, source NAT): this witness agrees without "
            "telling the gateway apart; the two access logs carry the proof",
            UserWarning,
            stacklevel=1,
        )
    note.proxy_versions = e2e_run.proxy_versions()
    note.message = f"through the egress gateway; external host called from {record['client_ip']}"
    print(
        f"through the egress gateway: sidecar {evidence[0].entry.upstream_cluster}, gateway "
        f"{evidence[1].entry.upstream_cluster}, external host called from {record['client_ip']}; "
        f"converged in {applied.converged_s:.1f}s, chain answered after {result.attempts} attempt(s)"
    )
