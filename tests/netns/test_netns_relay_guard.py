"""Issue 14 on the istiod tier: what the harness deploys opens no hole. On a netns cluster with real
istiod and its real ingress gateway, a request without the run's token gets 404 from the ingress
route (the relay never sees it), and the relays refuse a host outside their list (the cluster's own
API server) and the cloud metadata address with 403 naming it; the run's own chain still answers."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from harness.cluster.chain import chain_for
from harness.cluster.cli import bring_down, bring_up
from harness.cluster.options import E2EOptions
from harness.cluster.providers.netns import binaries
from harness.cluster.providers.netns.cluster import leftovers
from harness.cluster.run import E2ERun
from harness.common import versions
from harness.common.traffic import TOKEN_HEADER, Traffic


@pytest.fixture(scope="module")
def istio_built(netns_ready: None) -> str:
    label = versions.DEFAULT_NETNS_ISTIO_VERSION
    try:
        binaries.istio_binaries(label)
    except binaries.BinariesError as exc:
        pytest.skip(f"Istio {label} binaries: {exc} (make istio-bin)")
    return label


@pytest.mark.timeout(900)
def test_the_ingress_wants_the_runs_token_and_the_relays_fetch_only_the_runs_hosts(
    istio_built: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    state = bring_up(E2EOptions(provider="netns", istio_version=istio_built), run_dir)
    prefix = f"egh-{json.loads((run_dir / 'netns' / 'netns-cluster.json').read_text())['run_id']}-"
    try:
        assert stat.S_IMODE(state.path.stat().st_mode) == 0o600 and state.ingress_token
        manifest = (run_dir / "manifests" / "relay.yaml").read_text()
        assert state.ingress_token not in manifest and "ALLOWED_UPSTREAMS" in manifest
        with E2ERun(E2EOptions(provider="netns", istio_version=istio_built), run_dir, state=state) as run:
            assert run.wait_chain_ready(deadline_s=60).response.status == 200  # the allowed chain

            def url(destination: str) -> str:
                return chain_for(run.ingress_url, run.namespace, destination)

            healthz = url(f"http://target.{run.namespace}.svc.cluster.local:8080/healthz")
            host_only = {"Host": run.ingress_headers["Host"]}
            with Traffic(timeout=30.0) as client:
                no_token = client.send(healthz, headers=host_only)
                wrong_token = client.send(healthz, headers={**host_only, TOKEN_HEADER: "not-the-runs"})
                api_server = client.send(
                    url("https://kubernetes.default.svc.cluster.local:443/"), headers=run.ingress_headers
                )
                metadata = client.send(
                    url("http://169.254.169.254/latest/meta-data/"), headers=run.ingress_headers
                )
                first_hop = client.send(
                    f"{run.ingress_url}/proxy?url=http%3A%2F%2F169.254.169.254%2F",
                    headers=run.ingress_headers,
                )
    finally:
        problems = bring_down(run_dir)
    assert problems == []
    assert leftovers(prefix) == []

    for refused in (no_token, wrong_token):
        # the ingress gateway's own answer: no route matched, the relay was never called
        assert refused.status == 404, refused.text
        assert refused.headers.get("server") == "istio-envoy"
        assert "x-relay-service" not in refused.headers and refused.services == []
    assert api_server.status == 403, api_server.text
    assert (api_server.failed_hop, api_server.json["refused_host"]) == (
        "target",
        "kubernetes.default.svc.cluster.local:443",
    )
    assert "ALLOWED_UPSTREAMS" in api_server.json["hint"]
    assert metadata.status == 403, metadata.text
    assert (metadata.failed_hop, metadata.json["refused_host"]) == ("target", "169.254.169.254:80")
    assert first_hop.status == 403, first_hop.text
    assert (first_hop.failed_hop, first_hop.json["refused_host"]) == ("proxy", "169.254.169.254:80")
