"""Offline validation of rendered manifests against the exact CRD schemas of each Istio release.

* :mod:`~harness.scenarios.crds.bundles`: CRD bundles (multi-document YAML of
  ``CustomResourceDefinition`` objects) map (group, version, kind) to the ``openAPIV3Schema`` of each
  *served* version; a folder of Istio bundles named by version (``1.28.10.yaml``, ``1.31-dev.yaml``)
  picks the bundle of a release, and of a folder of Gateway API releases each Istio release is checked
  against the one it pins. Where bundles are found, and their download.
* :mod:`~harness.scenarios.crds.schema`: :func:`validate` checks a value against a Kubernetes
  *structural* schema the way the API server does with strict field validation: unknown fields are
  errors; what the API server accepts before it validates is accepted (YAML integer keys sent as
  JSON strings, nulls on non-nullable fields dropped). ``x-kubernetes-validations`` (CEL) cannot be evaluated here; each rule a document reaches
  is reported as *not checked*, never passed. Core kinds (Namespace, Service, Deployment, ...) have
  no CRD: a small built-in schema checks the fields that matter and leaves the rest alone, and
  results say so (coverage ``basic``).
* :mod:`~harness.scenarios.crds.catalog`: :func:`validate_catalog` renders every scenario for every
  Istio version in its range and validates every document.
"""

from harness.scenarios.crds.bundles import (
    CACHE_DIR,
    GATEWAY_API_GROUP,
    GATEWAY_API_PINS,
    ISTIO_RAW_BASE,
    CrdBundle,
    CrdError,
    CrdVersion,
    GatewayApiChoice,
    IstioCrdDir,
    choose_gateway_api_bundles,
    default_crd_dir,
    default_gateway_api_dir,
    download_istio_crds,
    gateway_api_pin,
    istio_crd_url,
    load_bundle,
    load_bundle_dir,
    shared_dir,
)
from harness.scenarios.crds.catalog import CatalogIssue, DocumentCheck, ValidationReport, validate_catalog
from harness.scenarios.crds.schema import (
    CORE_SCHEMAS,
    OBJECT_META_SCHEMA,
    DocumentResult,
    SchemaResult,
    SchemaViolation,
    UncheckedRule,
    json_key,
    validate,
    validate_document,
)

__all__ = [
    "CACHE_DIR",
    "CORE_SCHEMAS",
    "GATEWAY_API_GROUP",
    "GATEWAY_API_PINS",
    "ISTIO_RAW_BASE",
    "OBJECT_META_SCHEMA",
    "CatalogIssue",
    "CrdBundle",
    "CrdError",
    "CrdVersion",
    "DocumentCheck",
    "DocumentResult",
    "GatewayApiChoice",
    "IstioCrdDir",
    "SchemaResult",
    "SchemaViolation",
    "UncheckedRule",
    "ValidationReport",
    "choose_gateway_api_bundles",
    "default_crd_dir",
    "default_gateway_api_dir",
    "download_istio_crds",
    "gateway_api_pin",
    "istio_crd_url",
    "json_key",
    "load_bundle",
    "load_bundle_dir",
    "shared_dir",
    "validate",
    "validate_catalog",
    "validate_document",
]
