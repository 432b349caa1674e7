"""Run a scenario on the local Envoy tier, from the same ``scenario.yaml`` the cluster tier uses.

The scenario's manifests become a local routing plan (``plan``), and the one scenario runner
(``harness.runner``) runs it on a ``LocalTier``: each request goes down the local chain to its host,
and its ``expect:`` block is judged by the evidence engine (``harness.scenarios.expect``), then the
client's status, then the external host's witness for requests that must leave through the gateway.
"""

from __future__ import annotations

from harness.localmesh.mesh import LogEncoding
from harness.localmesh.tier import LOCAL_ISTIO_VERSION, LocalTier
from harness.runner import RequestOutcome, run_scenario
from harness.scenarios.model import Scenario

__all__ = ["LOCAL_ISTIO_VERSION", "RequestOutcome", "run_locally"]


def run_locally(
    scenario: Scenario, *, encoding: LogEncoding = "text", flush_interval_ms: int = 1000
) -> list[RequestOutcome]:
    """Every request of ``scenario`` through a local mesh built from its manifests.

    Raises ``NotEmulable`` (before starting anything) when the local tier has no image of it, and
    the exception that kept the tier from running it (a part of the mesh that did not start, a
    request that got no answer); a request whose evidence disagrees is a ``RequestOutcome`` with its
    ``error``. ``flush_interval_ms`` is the Envoys' access-log flush interval (Istio's is one second;
    tests use a shorter one to run faster: the waits scale with it).
    """
    with LocalTier(encoding=encoding, flush_interval_ms=flush_interval_ms) as tier:
        tier.routing(scenario)  # NotEmulable, before anything starts
        run = run_scenario(tier, scenario)
    if run.result.outcome == "error" and run.error is not None:
        raise run.error
    return list(run.requests)
