"""Validate the catalog offline: every scenario rendered for every Istio release in its range, and
every rendered document checked against that release's CRD schemas (and against the Gateway API
release that Istio release pins, see :func:`~harness.scenarios.crds.bundles.choose_gateway_api_bundles`).

Failures are :class:`CatalogIssue` located by template file and line; a :class:`ValidationReport`
also lists what was skipped and the CEL rules nobody could evaluate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.scenarios.crds.bundles import (
    GATEWAY_API_GROUP,
    CrdBundle,
    CrdError,
    GatewayApiChoice,
    IstioCrdDir,
    choose_gateway_api_bundles,
    load_bundle_dir,
)
from harness.scenarios.crds.schema import (
    Coverage,
    DocumentResult,
    UncheckedRule,
    split_api_version,
    validate_document,
)
from harness.scenarios.issues import ScenarioError, display_path, format_field
from harness.scenarios.model import Catalog, IstioVersion
from harness.scenarios.placeholders import offline_context
from harness.scenarios.render import RenderedDocument, render_scenario

__all__ = ["CatalogIssue", "DocumentCheck", "ValidationReport", "validate_catalog"]


@dataclass(frozen=True)
class CatalogIssue:
    """One failure of catalog validation, located as precisely as it can be."""

    message: str
    scenario: str | None = None
    istio_version: str | None = None
    template: Path | None = None
    line: int | None = None
    #: 0-based position of the document within its template file
    document: int | None = None
    object: str | None = None
    field: str = ""
    schema_source: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.template is not None:
            parts.append(display_path(self.template) + (f":{self.line}" if self.line else ""))
        if self.document is not None:
            parts.append(f"document {self.document} ({self.object})")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        context = [f"scenario {self.scenario}"] if self.scenario else []
        if self.istio_version:
            context.append(f"Istio {self.istio_version}")
        if self.schema_source:
            context.append(f"schema {self.schema_source}")
        return ": ".join(parts) + (f" [{', '.join(context)}]" if context else "")


@dataclass(frozen=True)
class DocumentCheck:
    scenario: str
    istio_version: str
    template: Path
    document: int
    object: str
    schema_source: str
    coverage: Coverage
    errors: int
    unchecked: tuple[UncheckedRule, ...]
    warnings: tuple[str, ...]


@dataclass
class ValidationReport:
    crd_dir: Path
    istio_versions: tuple[str, ...] = ()
    checks: list[DocumentCheck] = field(default_factory=list)
    issues: list[CatalogIssue] = field(default_factory=list)
    #: (scenario, Istio version, reason)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    #: Istio version -> the Gateway API bundles its Gateway API objects were checked against (only
    #: the versions whose catalog had such objects)
    gateway_api: dict[str, GatewayApiChoice] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues and bool(self.checks)

    def format(self, *, verbose: bool = False) -> str:
        lines = [f"error: {i}" for i in self.issues]
        scenarios = sorted({c.scenario for c in self.checks})
        basic = [c for c in self.checks if c.coverage == "basic"]
        lines.append(
            f"checked {len(self.checks)} documents of {len(scenarios)} scenarios against Istio "
            f"{', '.join(self.istio_versions) or '(none)'} CRDs from {display_path(self.crd_dir)}"
            + (f" ({len(basic)} core objects with basic checks only)" if basic else "")
        )
        if verbose:
            lines.extend(
                f"  {c.scenario} @ {c.istio_version}: {display_path(c.template)} document {c.document} "
                f"{c.object}: {c.schema_source}" + (" (basic)" if c.coverage == "basic" else "")
                for c in self.checks
            )
        if self.gateway_api:
            lines.append(
                "Gateway API CRDs by Istio release: " + "; ".join(c.note for c in self.gateway_api.values())
            )
        lines.extend(f"skipped: {s} @ Istio {v}: {why}" for s, v, why in self.skipped)
        lines.extend(f"warning: {c.warning}" for c in self.gateway_api.values() if c.warning)
        warnings = sorted({f"{c.object}: {w}" for c in self.checks for w in c.warnings})
        lines.extend(f"warning: {w}" for w in warnings)
        rules = [(c, r) for c in self.checks for r in c.unchecked]
        if rules:
            lines.append(
                f"not checked: {len(rules)} x-kubernetes-validations (CEL) rules reached by "
                f"{len({id(c) for c, _ in rules})} documents; CEL cannot run offline, the API server "
                "evaluates them on apply"
            )
            if verbose:
                unique = sorted(
                    {f"{display_path(c.template)} document {c.document} {c.object}: {r}" for c, r in rules}
                )
                lines.extend(f"  {u}" for u in unique)
        n = len(self.issues)
        if self.ok:
            lines.append("OK")
        else:
            lines.append(f"FAILED: {n} error{'s' if n != 1 else ''}" if n else "FAILED: nothing checked")
        return "\n".join(lines)


def _record(
    report: ValidationReport,
    scenario: str,
    version: str,
    doc: RenderedDocument,
    results: Sequence[DocumentResult],
) -> None:
    for res in results:
        report.checks.append(
            DocumentCheck(
                scenario=scenario,
                istio_version=version,
                template=doc.template,
                document=doc.index,
                object=doc.describe(),
                schema_source=res.schema_source,
                coverage=res.coverage,
                errors=len(res.errors),
                unchecked=res.result.unchecked,
                warnings=res.warnings,
            )
        )
        for err in res.errors:
            report.issues.append(
                CatalogIssue(
                    message=err.message,
                    scenario=scenario,
                    istio_version=version,
                    template=doc.template,
                    line=doc.line_of(err.path),
                    document=doc.index,
                    object=doc.describe(),
                    field=format_field(err.path),
                    schema_source=res.schema_source,
                )
            )


def validate_catalog(
    catalog: Catalog,
    istio_versions: Sequence[str] | None,
    crd_dir: Path,
    gateway_api_dir: Path | None = None,
) -> ValidationReport:
    """Render every scenario for each Istio version in its range and validate every document.

    ``istio_versions`` ``None`` or empty: every version ``crd_dir`` has a bundle for. Nothing is
    skipped silently: a version out of a scenario's range is listed in ``report.skipped``, missing
    CRDs are issues, and a report that checked nothing is not ``ok``.
    """
    crds = IstioCrdDir(crd_dir)
    versions = tuple(istio_versions) if istio_versions else crds.versions()
    report = ValidationReport(crd_dir=crd_dir, istio_versions=versions)
    if not versions:
        report.issues.append(
            CatalogIssue(
                f"no Istio CRD bundles in {display_path(crd_dir)}: nothing to validate against; pass --crd-dir, "
                "set EGRESS_HARNESS_CRD_DIR, or fetch one: egress-harness scenarios fetch-crds VERSION"
            )
        )
        return report
    gateway_bundles: tuple[CrdBundle, ...] = ()
    if gateway_api_dir is not None:
        try:
            gateway_bundles = load_bundle_dir(gateway_api_dir)
        except CrdError as exc:
            report.issues.append(CatalogIssue(f"Gateway API CRDs: {exc}"))
    for version in versions:
        try:
            parsed = IstioVersion.parse(version)
            istio_bundle = crds.bundle(version)
        except (ValueError, CrdError) as exc:
            report.issues.append(CatalogIssue(str(exc), istio_version=version))
            continue
        # The Gateway API CRDs on a cluster are one release, not every release of the folder: the one
        # this Istio release pins (a field one release forbids and the pinned one allows is valid).
        gateway_choice = choose_gateway_api_bundles(gateway_bundles, version) if gateway_bundles else None
        for scenario in catalog.scenarios:
            applies, reason = scenario.istio.applies_to(parsed)
            if not applies:
                report.skipped.append((scenario.name, version, reason))
                continue
            try:
                rendered = render_scenario(scenario, offline_context(version))
            except ScenarioError as exc:
                report.issues.extend(
                    CatalogIssue(str(i), scenario=scenario.name, istio_version=version) for i in exc.issues
                )
                continue
            for doc in rendered.documents:
                group, _ = split_api_version(doc.api_version)
                if group == GATEWAY_API_GROUP and not scenario.requires.gateway_api:
                    report.issues.append(
                        CatalogIssue(
                            f"a Gateway API object in a scenario without requires.gateway_api: true "
                            f"(set it in {display_path(scenario.file)})",
                            scenario=scenario.name,
                            istio_version=version,
                            template=doc.template,
                            line=doc.line,
                            document=doc.index,
                            object=doc.describe(),
                        )
                    )
                bundles = [istio_bundle]
                if gateway_choice is not None:
                    bundles.extend(gateway_choice.bundles)
                    if any(b.served_versions(group, doc.kind) for b in gateway_bundles):
                        report.gateway_api.setdefault(version, gateway_choice)
                _record(report, scenario.name, version, doc, validate_document(doc.body, bundles))
    return report
