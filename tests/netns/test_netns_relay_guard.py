"""Issue 14 on the istiod tier: what the harness deploys opens no hole. On a netns cluster with real
istiod and its real ingress gateway, a request without the run's token gets 404 from the ingress
route (the relay never sees it), and the relays refuse a host outside their list (the cluster's own
API server) and the cloud metadata address with 403 naming it; inside the mesh, another workload (the
`target` pod calling `proxy` directly) gets 403 from proxy's sidecar (the relays' AuthorizationPolicies
answer only the callers the chain needs); the run's own chain still answers."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cluster.chain import chain_for
from harness.cluster.cli import bring_down, bring_up
from harness.cluster.options import E2EOptions
from harness.cluster.providers.netns.cluster import leftovers
from harness.cluster.run import E2ERun
from harness.common.traffic import TOKEN_HEADER, Traffic


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
            # a workload of the mesh that is not the ingress gateway: a process in target's pod (its
            # traffic goes out through target's sidecar, with target's identity) calling proxy directly
            proxy_ip = run._kube().list_pods(run.namespace, "app=proxy")[0]["status"]["podIP"]
            in_mesh = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    _pod_netns(prefix, run.namespace, "target"),
                    sys.executable,
                    "-c",
                    _GET,
                ],
                input=f"http://{proxy_ip}:8080/proxy?url=http%3A%2F%2F169.254.169.254%2F",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
    finally:
        problems = bring_down(run_dir)
    assert problems == []
    assert leftovers(prefix) == []

    assert in_mesh.returncode == 0, in_mesh.stderr
    assert in_mesh.stdout.startswith("403 RBAC: access denied"), in_mesh.stdout
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


#: GET the URL read from stdin; print the status and the body's start
_GET = """
import sys, urllib.error, urllib.request
url = sys.stdin.read().strip()
try:
    answer = urllib.request.urlopen(url, timeout=20)
except urllib.error.HTTPError as err:
    answer = err
print(answer.status, answer.read(200).decode(errors="replace"))
"""


def _pod_netns(prefix: str, namespace: str, app: str) -> str:
    """The network namespace of ``app``'s pod in ``namespace`` (the harness kubelet's name for it:
    ``<prefix>p-pod-<ns>.<pod>-<hex>``)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    (name,) = [n for n in names if n.startswith(f"{prefix}p-pod-{namespace}.{app}-")]
    return name
