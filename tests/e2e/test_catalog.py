"""The whole scenario catalog on the cluster, one test per scenario, each in a namespace of its own.

Every scenario of ``scenarios/`` runs through ``harness.cluster.runner.ScenarioRunner``: its own namespace with
its own ``proxy`` and ``target`` (reached through the run's shared ingress Gateway at
``/<ns>/proxy``), its own external host names (``<scenario>.egress-harness.test``, answered by the
recorder), its manifests applied and awaited in the proxies, each request judged by the target's
sidecar log, the gateway's log and the recorder's record of the caller. Test ids carry the run's
access-log encoding (``http-via-egress-gateway-text``).

The TLS scenarios run against the recorders of ``e2e up``: HTTPS with a certificate of the run's CA
(which the relays trust), and for ``requires.external: mtls`` the recorder that requires client
certificates; the credential Secrets a scenario names are created in istio-system around it and
awaited in the egress gateway, and the external host's record must show the host as SNI (and the
run's client certificate for mutual TLS).

A scenario outside the run's Istio range, or needing what the run does not have (the other outbound
traffic policy, the Gateway API CRDs, another access-log encoding, an external host serving TLS or
mutual TLS, the right to create Secrets in istio-system on an existing cluster), is skipped with
that reason. Each test records its ``ScenarioResult`` (see ``e2e_results``). Runs in
parallel under pytest-xdist against one cluster made by ``egress-harness e2e up`` (``make e2e``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cluster import E2ERun, ScenarioRunner
from harness.pytest_plugin import E2EResults, mark_diagnosed, run_encoding
from harness.scenarios import load_catalog

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "scenarios")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "catalog_scenario" in metafunc.fixturenames:
        encoding = run_encoding(metafunc.config).lower()
        names = list(CATALOG.names())
        metafunc.parametrize("catalog_scenario", names, ids=[f"{name}-{encoding}" for name in names])


#: a scenario that needs the cluster alone waits for the others (harness.cluster.lock.LOCK_TIMEOUT_S); the
#: timeout covers the test's body only, never the setup of its run's cluster (harness.pytest_plugin)
@pytest.mark.timeout(3600)
def test_catalog_scenario(
    catalog_scenario: str, e2e_run: E2ERun, e2e_results: E2EResults, request: pytest.FixtureRequest
) -> None:
    scenario = CATALOG.get(catalog_scenario)
    report = ScenarioRunner(e2e_run).run_scenario(scenario, test_id=request.node.nodeid)
    result = e2e_results.record(report.result)
    if report.diagnostics is not None:
        mark_diagnosed(request.node, report.diagnostics)
    if result.outcome == "skipped":
        pytest.skip(f"{scenario.name}: {result.message}")
    where = f" (diverged at hop {result.hop!r})" if result.hop else ""
    assert result.outcome == "passed", f"{scenario.name} {result.outcome}{where}: {result.message}"
    print(
        f"{scenario.name} in {report.namespace}: {result.message}; converged in "
        f"{result.convergence_s or 0.0:.1f}s; proxies {', '.join(result.proxy_versions) or '?'}"
    )
