"""The scenario catalog: declarative egress scenarios (``scenarios/<name>/scenario.yaml`` plus
manifest templates), their strict loader and their renderer. Offline schema validation of the
rendered manifests lives in ``harness.scenarios.crds``."""

from harness.scenarios.loader import ScenarioError, ScenarioIssue, load_catalog, load_scenario
from harness.scenarios.model import (
    Catalog,
    Expectation,
    IstioVersion,
    RenderContext,
    RequestSpec,
    Requirements,
    ResolvedRequest,
    Scenario,
    VersionRange,
)
from harness.scenarios.render import RenderedDocument, RenderedScenario, render_request, render_scenario

__all__ = [
    "Catalog",
    "Expectation",
    "IstioVersion",
    "RenderContext",
    "RenderedDocument",
    "RenderedScenario",
    "RequestSpec",
    "Requirements",
    "ResolvedRequest",
    "Scenario",
    "ScenarioError",
    "ScenarioIssue",
    "VersionRange",
    "load_catalog",
    "load_scenario",
    "render_request",
    "render_scenario",
]
