"""Render a scenario: its manifest templates filled from a :class:`RenderContext` and parsed, and
its requests resolved.

The engine is :mod:`harness.scenarios.placeholders` (plain ``{{ name }}`` substitution, file:line
errors); :func:`render_template` is the same engine for any template and values, the one the cluster
tier renders its own manifests with. Values are single lines, so a rendered template keeps the line
numbers of its source and errors found later (schema validation) point into the template.

The same scenario and context always render to byte-identical text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.scenarios.issues import FieldPath, ScenarioError, ScenarioIssue
from harness.scenarios.loader import YamlDocument, parse_yaml_documents
from harness.scenarios.model import (
    LogValue,
    RenderContext,
    RequestSpec,
    ResolvedRequest,
    Scenario,
    tcp_payload_size,
)
from harness.scenarios.placeholders import (
    PLACEHOLDER_RE,
    TemplateError,
    fill_placeholders,
    offline_context,
    render_template,
)

__all__ = [
    "RenderedDocument",
    "RenderedScenario",
    "TemplateError",
    "fill_placeholders",
    "offline_context",
    "render_request",
    "render_scenario",
    "render_template",
    "render_text",
]


def render_text(
    text: str, context: RenderContext, *, source: Path, first_line: int = 1, field: str = ""
) -> str:
    """``text`` with its placeholders filled; :class:`ScenarioError` for an unknown or malformed one,
    or one whose value the context leaves empty (``external_host_domain`` of a single-label host)."""
    variables = context.variables()
    empty: list[ScenarioIssue] = []
    for offset, line_text in enumerate(text.split("\n")):
        for m in PLACEHOLDER_RE.finditer(line_text):
            if variables.get(m.group(1)) == "":
                empty.append(
                    ScenarioIssue(
                        source,
                        first_line + offset,
                        field,
                        f"{{{{ {m.group(1)} }}}} has no value in this run: external_host "
                        f"{context.external_host!r} has no domain (one label); set external_host_domain",
                    )
                )
    try:
        rendered = render_template(text, variables, source=source, first_line=first_line, field=field)
    except TemplateError as exc:
        raise ScenarioError([*exc.issues, *empty]) from None
    if empty:
        raise ScenarioError(empty)
    return rendered


@dataclass(frozen=True)
class RenderedDocument:
    """One Kubernetes object of a rendered scenario, with the template file and lines it came from."""

    document: YamlDocument

    @property
    def template(self) -> Path:
        return self.document.source

    @property
    def index(self) -> int:
        """0-based position of the document within its template file."""
        return self.document.index

    @property
    def line(self) -> int:
        return self.document.line

    @property
    def body(self) -> Mapping[str, Any]:
        body: Mapping[str, Any] = self.document.value
        return body

    def line_of(self, path: FieldPath) -> int:
        return self.document.line_of(path)

    def _text(self, *keys: str) -> str:
        value: Any = self.body
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value if isinstance(value, str) else ""

    @property
    def api_version(self) -> str:
        return self._text("apiVersion")

    @property
    def kind(self) -> str:
        return self._text("kind")

    @property
    def name(self) -> str:
        return self._text("metadata", "name")

    def describe(self) -> str:
        """``Gateway/egress-gateway`` (with ``?`` for what is missing)."""
        return f"{self.kind or '?'}/{self.name or '?'}"


@dataclass(frozen=True)
class RenderedScenario:
    scenario: Scenario
    context: RenderContext
    #: the manifests as one multi-document YAML stream, each file headed by a ``# Source:`` comment
    text: str
    documents: tuple[RenderedDocument, ...]


def render_scenario(scenario: Scenario, context: RenderContext) -> RenderedScenario:
    """Every manifest of ``scenario`` rendered and parsed; :class:`ScenarioError` lists every problem."""
    issues: list[ScenarioIssue] = []
    parts: list[str] = []
    documents: list[RenderedDocument] = []
    for template in scenario.manifests:
        try:
            rendered = render_text(template.read_text(encoding="utf-8"), context, source=template)
        except ScenarioError as exc:
            issues.extend(exc.issues)
            continue
        if not rendered.endswith("\n"):
            rendered += "\n"
        parts.append(f"# Source: {scenario.name}/{template.name}\n{rendered}")
        docs, yaml_issues = parse_yaml_documents(rendered, template)
        issues.extend(yaml_issues)
        for doc in docs:
            if doc.value is None:
                continue
            if not isinstance(doc.value, dict):
                issues.append(
                    ScenarioIssue(
                        template, doc.line, "", f"document {doc.index}: expected a Kubernetes object"
                    )
                )
                continue
            documents.append(RenderedDocument(doc))
    if issues:
        raise ScenarioError(issues)
    return RenderedScenario(scenario, context, "---\n".join(parts), tuple(documents))


def render_request(request: RequestSpec, context: RenderContext, *, source: Path) -> ResolvedRequest:
    """``request`` with host, path, port and expected log values filled in.

    ``source`` is the scenario file, for error messages (the loader already rejected unknown
    placeholders, so this raises only for a request built by hand).
    """

    def fill(text: str, field: str) -> str:
        return render_text(text, context, source=source, first_line=request.line, field=field)

    if request.port is None:
        port = {"https": context.external_tls_port, "tcp": context.external_tcp_port}.get(
            request.scheme, context.external_port
        )
    elif isinstance(request.port, int):
        port = request.port
    else:
        text = fill(request.port, "port")
        if not text.strip().isdigit():
            raise ScenarioError(
                [ScenarioIssue(source, request.line, "port", f"rendered to {text!r}, not a port number")]
            )
        port = int(text)

    def logs(values: Mapping[str, LogValue], hop: str) -> dict[str, LogValue]:
        return {k: fill(v, f"expect.{hop}.{k}") if isinstance(v, str) else v for k, v in values.items()}

    expect = request.expect
    return ResolvedRequest(
        name=request.name,
        chain=request.chain,
        scheme=request.scheme,
        method=request.method,
        host=fill(request.host, "host"),
        port=port,
        path=fill(request.path, "path"),
        bytes=tcp_payload_size(request.scheme, request.bytes, request.expect.tcp_bytes),
        # every other field of the expectation as written (replace: none is dropped on the way)
        expect=replace(
            expect, sidecar=logs(expect.sidecar, "sidecar"), gateway=logs(expect.gateway, "gateway")
        ),
    )
