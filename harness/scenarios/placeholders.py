"""The ``{{ name }}`` template engine: the project's one renderer, for the scenario catalog and for the
cluster tier's own manifests (``manifests/kind``, ``manifests/istio``).

Deliberately tiny: plain substitution of named values, nothing else (no expressions, filters or
loops). Every problem is reported with the file and line it is on: a malformed placeholder, a name
without a value (with the closest known name), and on request a value no placeholder uses. Values
are single lines, so a rendered template keeps the line numbers of its source and errors found later
(schema validation) point into the template.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from harness.scenarios.issues import ScenarioError, ScenarioIssue, display_path
from harness.scenarios.model import TEMPLATE_VARIABLES, RenderContext

__all__ = [
    "PLACEHOLDER_RE",
    "TemplateError",
    "fill_placeholders",
    "offline_context",
    "placeholder_names",
    "render_template",
    "template_issues",
    "unknown_variable_message",
]

#: a well-formed placeholder, and any "{{" that starts one (to catch malformed ones)
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_OPEN_RE = re.compile(r"\{\{")


def offline_context(istio_version: str = "1.0") -> RenderContext:
    """The placeholder values used without a cluster (rendering for a look, offline validation):
    the defaults of :class:`RenderContext`, e.g. ``external_host_domain`` ``egress-harness.test`` and
    ``client_credential_name`` ``egress-harness-client-offline``."""
    return RenderContext(istio_version=istio_version)


def placeholder_names(text: str) -> set[str]:
    """The names of the well-formed placeholders in ``text``."""
    return {m.group(1) for m in PLACEHOLDER_RE.finditer(text)}


def fill_placeholders(text: str, variables: Mapping[str, str]) -> str:
    """Substitute every well-formed placeholder whose name is in ``variables``; leave others alone."""
    return PLACEHOLDER_RE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def unknown_variable_message(name: str, known: Collection[str] = TEMPLATE_VARIABLES) -> str:
    hint = difflib.get_close_matches(name, sorted(known), n=1)
    names = ", ".join(sorted(known)) or "none"
    return f"unknown template variable {name!r}" + (
        f" (did you mean {hint[0]!r}?)" if hint else f" (known: {names})"
    )


def template_issues(
    text: str,
    source: Path,
    *,
    first_line: int = 1,
    field: str = "",
    known: Collection[str] = TEMPLATE_VARIABLES,
) -> list[ScenarioIssue]:
    """Unknown or malformed ``{{ ... }}`` placeholders in ``text`` (line numbers from ``first_line``);
    a name is known when it is in ``known`` (by default the catalog's template variables)."""
    issues = []
    for offset, line_text in enumerate(text.split("\n")):
        line = first_line + offset
        good = {m.start(): m for m in PLACEHOLDER_RE.finditer(line_text)}
        for opening in _OPEN_RE.finditer(line_text):
            m = good.get(opening.start())
            if m is None:
                end = line_text.find("}}", opening.start() + 2)
                snippet = line_text[
                    opening.start() : end + 2 if 0 <= end < opening.start() + 40 else opening.start() + 30
                ]
                issues.append(
                    ScenarioIssue(
                        source,
                        line,
                        field,
                        f"malformed placeholder {snippet!r}: write {{{{ variable_name }}}}",
                    )
                )
                continue
            name = m.group(1)
            if name not in known:
                issues.append(ScenarioIssue(source, line, field, unknown_variable_message(name, known)))
    return issues


class TemplateError(ScenarioError, KeyError):
    """A template that cannot be rendered with the values given.

    A :class:`ScenarioError` (``issues`` name the file and line of each problem) and, as the cluster
    tier's renderer always raised, a ``KeyError``. ``missing``: names without a value; ``unused``:
    values no placeholder uses (checked only when asked for).
    """

    def __init__(
        self,
        source: Path,
        issues: Iterable[ScenarioIssue],
        *,
        missing: Iterable[str] = (),
        unused: Iterable[str] = (),
    ) -> None:
        self.source = source
        self.missing: tuple[str, ...] = tuple(sorted(set(missing)))
        self.unused: tuple[str, ...] = tuple(sorted(set(unused)))
        super().__init__(issues)
        summary = []
        if self.missing:
            summary.append(f"template needs values for: {', '.join(self.missing)}")
        if self.unused:
            summary.append(f"template has no placeholder for: {', '.join(self.unused)}")
        malformed = sum(i.message.startswith("malformed placeholder") for i in self.issues)
        if malformed:
            summary.append(f"{malformed} malformed placeholder{'s' if malformed != 1 else ''}")
        head = f"{display_path(source)}: cannot render the template: {'; '.join(summary)}"
        self.args = ("\n".join([head, *(f"  {i}" for i in self.issues)]),)

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


def render_template(
    text: str,
    values: Mapping[str, object],
    *,
    source: Path,
    first_line: int = 1,
    field: str = "",
    exact: bool = False,
) -> str:
    """``text`` with every ``{{ name }}`` replaced by ``str(values[name])``.

    ``source`` (and ``first_line``, ``field``) locate ``text`` for error messages. Raises
    :class:`TemplateError` listing every problem: a malformed placeholder, a placeholder whose name
    ``values`` lacks, and with ``exact`` a value that no placeholder uses.
    """
    issues = template_issues(text, source, first_line=first_line, field=field, known=values)
    used = placeholder_names(text)
    unused = sorted(set(values) - used) if exact else []
    if unused:
        issues.append(
            ScenarioIssue(source, None, field, f"no placeholder uses the value of: {', '.join(unused)}")
        )
    if issues:
        raise TemplateError(source, issues, missing=used - set(values), unused=unused)
    return fill_placeholders(text, {name: str(value) for name, value in values.items()})
