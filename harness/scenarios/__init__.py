"""The scenario catalog: declarative egress scenarios (``scenarios/<name>/scenario.yaml`` plus
manifest templates), their strict loader, their renderer and their offline validation. It knows no
tier: the local mesh and the cluster take a rendered scenario and its resolved requests from here.

Modules, each importing only those above it in this list:

* ``model``: the scenario as data (:class:`Scenario`, :class:`RenderContext`, :class:`IstioVersion`)
* ``issues``: :class:`ScenarioIssue` (file, line, field, message) and :class:`ScenarioError`
* ``placeholders``: the ``{{ name }}`` engine, :func:`render_template`, the project's one renderer
* ``loader``: ``scenario.yaml`` into the model, strictly (:func:`load_catalog`)
* ``render``: a scenario's manifests rendered and parsed, its requests resolved
* ``crds``: rendered manifests validated against each Istio release's CRD schemas
  (:func:`validate_catalog`)
* ``expect``: a request's expectations judged against the evidence
* ``preflight``: ``istioctl analyze`` of rendered manifests
* ``cli``: ``egress-harness scenarios ...``
"""

from harness.scenarios.crds import (
    CatalogIssue,
    CrdError,
    IstioCrdDir,
    ValidationReport,
    default_crd_dir,
    default_gateway_api_dir,
    download_istio_crds,
    validate_catalog,
    validate_document,
)
from harness.scenarios.expect import judge
from harness.scenarios.issues import FieldPath, ScenarioError, ScenarioIssue, display_path, format_field
from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR, load_catalog, load_scenario
from harness.scenarios.model import (
    TEMPLATE_VARIABLES,
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
from harness.scenarios.placeholders import TemplateError, offline_context, render_template
from harness.scenarios.render import (
    RenderedDocument,
    RenderedScenario,
    render_request,
    render_scenario,
    render_text,
)

__all__ = [
    "DEFAULT_SCENARIOS_DIR",
    "TEMPLATE_VARIABLES",
    "Catalog",
    "CatalogIssue",
    "CrdError",
    "Expectation",
    "FieldPath",
    "IstioCrdDir",
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
    "TemplateError",
    "ValidationReport",
    "VersionRange",
    "default_crd_dir",
    "default_gateway_api_dir",
    "display_path",
    "download_istio_crds",
    "format_field",
    "judge",
    "load_catalog",
    "load_scenario",
    "offline_context",
    "render_request",
    "render_scenario",
    "render_template",
    "render_text",
    "validate_catalog",
    "validate_document",
]
