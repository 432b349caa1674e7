"""Load ``scenarios/<name>/scenario.yaml`` files into the model, strictly.

Every problem becomes a :class:`ScenarioIssue` naming the file, the line and the field path
(``scenarios/x/scenario.yaml:14: requests[0].expect.status: expected int, got str``). A catalog is
checked whole: :func:`load_catalog` collects every issue of every scenario before it raises one
:class:`ScenarioError`.

The YAML is composed to nodes, not loaded, so each value keeps the line it came from.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import yaml

from harness.accesslog import INT_FIELDS
from harness.scenarios.issues import FieldPath, ScenarioError, ScenarioIssue, display_path, format_field
from harness.scenarios.jsonkeys import json_key
from harness.scenarios.model import (
    ACCESS_LOG_ENCODINGS,
    ACCESS_LOG_FIELDS,
    BLOCKED_AT,
    CALLER_SIDECARS,
    CREDENTIAL_VARIABLES,
    DEFAULT_CHAIN,
    EXTERNAL_CALLERS,
    EXTERNAL_KINDS,
    HOPS,
    LOG_HOPS,
    OUTBOUND_TRAFFIC_POLICIES,
    SCHEMES,
    SIDECAR_ABSENT,
    Caller,
    Catalog,
    Expectation,
    IstioVersion,
    LogValue,
    RequestSpec,
    Requirements,
    Scenario,
    VersionRange,
)
from harness.scenarios.placeholders import PLACEHOLDER_RE, fill_placeholders, offline_context, template_issues
from harness.scenarios.tcp import expected_tcp_bytes, tcp_payload

__all__ = [
    "DEFAULT_SCENARIOS_DIR",
    "PROJECT_ROOT",
    "SCENARIO_FILE",
    "FieldPath",
    "ScenarioError",
    "ScenarioIssue",
    "YamlDocument",
    "display_path",
    "format_field",
    "load_catalog",
    "load_scenario",
    "parse_yaml_documents",
    "template_issues",
]

SCENARIO_FILE = "scenario.yaml"
#: the checkout this module runs from (the harness runs from its repository, installed editable)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCENARIOS_DIR = PROJECT_ROOT / "scenarios"

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_METHOD_RE = re.compile(r"^[A-Z]+$")


# --------------------------------------------------------------------------------------- YAML nodes


@dataclass(frozen=True)
class YamlDocument:
    """One YAML document as plain data, with the line of every mapping entry and list item."""

    source: Path
    #: 0-based position among the file's documents
    index: int
    #: 1-based line where the document's content starts
    line: int
    value: Any
    lines: Mapping[FieldPath, int]

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of ``path``, or of its nearest ancestor that exists."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.line


class _Builder:
    """Turns composed nodes into plain Python data, recording lines, refusing duplicate keys."""

    def __init__(self, source: Path, issues: list[ScenarioIssue]) -> None:
        self.source = source
        self.issues = issues
        self.lines: dict[FieldPath, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._issue(line, path, "YAML merge keys ('<<') are not supported; write the fields out")
                    continue
                key = self._scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    # kubectl sends `8080:` as the JSON key "8080" (sigs.k8s.io/yaml); so does the harness
                    key = json_key(key)
                if key is None:
                    self._issue(
                        line,
                        path,
                        f"mapping keys must be strings, numbers or booleans, got {key_node.value!r}",
                    )
                    continue
                sub = (*path, key)
                if key in out:
                    self._issue(
                        line,
                        sub,
                        f"duplicate key (first at line {self.lines.get(sub, '?')}); YAML keeps only one",
                    )
                    continue
                self.lines[sub] = line
                out[key] = self.build(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, i)))
            return items
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        value = self._constructor.construct_object(node)
        # Kubernetes reads YAML as JSON: timestamps and binary stay the text that was written
        if not isinstance(value, str | int | float | bool | type(None)):
            return str(node.value)
        return value

    def _issue(self, line: int, path: FieldPath, message: str) -> None:
        self.issues.append(ScenarioIssue(self.source, line, format_field(path), message))


def parse_yaml_documents(text: str, source: Path) -> tuple[list[YamlDocument], list[ScenarioIssue]]:
    """Every document of ``text`` (empty ones included, as ``value=None``), and the problems found."""
    issues: list[ScenarioIssue] = []
    docs: list[YamlDocument] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        msg = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        return [], [ScenarioIssue(source, line, "", msg)]
    for index, node in enumerate(nodes):
        if node is None:
            docs.append(YamlDocument(source, index, 1, None, {}))
            continue
        builder = _Builder(source, issues)
        value = builder.build(node, ())
        docs.append(
            YamlDocument(source, index, node.start_mark.line + 1, value, MappingProxyType(builder.lines))
        )
    return docs, issues


# ------------------------------------------------------------------------------------ strict reader

#: the value of a required key that is absent (reported once, by the mapping check)
_MISSING: Any = object()
_TYPE_NAMES = {str: "str", int: "int", bool: "bool", float: "float", list: "list", dict: "mapping"}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Reader:
    """Typed access to one YAML document; every mismatch becomes an issue with file, line and field."""

    def __init__(self, doc: YamlDocument, issues: list[ScenarioIssue]) -> None:
        self.doc = doc
        self.issues = issues

    def issue(self, path: FieldPath, message: str) -> None:
        self.issues.append(
            ScenarioIssue(self.doc.source, self.doc.line_of(path), format_field(path), message)
        )

    def expect(self, path: FieldPath, value: object, kind: type, hint: str = "") -> bool:
        if value is _MISSING:  # a missing required key, already reported by mapping()
            return False
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.issue(path, f"expected {_TYPE_NAMES[kind]}, got {_type_name(value)}{hint}")
        return ok

    def mapping(
        self, path: FieldPath, value: object, required: Sequence[str], optional: Sequence[str]
    ) -> dict[str, Any] | None:
        if not self.expect(path, value, dict):
            return None
        data = cast(dict[str, Any], value)
        allowed = [*required, *optional]
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(allowed)}"
                self.issue((*path, key), f"unknown key{extra}")
        for key in required:
            if key not in data:
                self.issue(path, f"missing required key {key!r}")
        return data

    def string(self, path: FieldPath, value: object, *, template: bool = False, hint: str = "") -> str | None:
        if not self.expect(path, value, str, hint):
            return None
        text = cast(str, value)
        if template:
            self.issues.extend(
                template_issues(
                    text, self.doc.source, first_line=self.doc.line_of(path), field=format_field(path)
                )
            )
        return text

    def choice(self, path: FieldPath, value: object, choices: Sequence[str]) -> str | None:
        text = self.string(path, value)
        if text is not None and text not in choices:
            self.issue(path, f"expected one of {', '.join(choices)}, got {text!r}")
            return None
        return text

    def string_list(
        self, path: FieldPath, value: object, *, choices: Sequence[str] | None = None, non_empty: bool = False
    ) -> list[str] | None:
        if not self.expect(path, value, list):
            return None
        items = cast(list[object], value)
        if non_empty and not items:
            self.issue(path, "must not be empty")
        out: list[str] = []
        for i, item in enumerate(items):
            text = self.choice((*path, i), item, choices) if choices else self.string((*path, i), item)
            if text is None:
                continue
            if text in out:
                self.issue((*path, i), f"duplicate entry {text!r}")
                continue
            out.append(text)
        return out


# -------------------------------------------------------------------------------------- the loader

_TOP_REQUIRED = ("name", "description", "istio", "manifests", "requests")
_TOP_OPTIONAL = ("requires", "caller", "tags")
_REQUEST_REQUIRED = ("name", "host", "expect")
_REQUEST_OPTIONAL = ("chain", "scheme", "method", "port", "path", "bytes")
_EXPECT_REQUIRED = ("status", "via_gateway")
_EXPECT_OPTIONAL = ("blocked", "external_caller", "external_attempts", "tcp_bytes", *LOG_HOPS)


def load_scenario(directory: Path) -> Scenario:
    """One scenario folder; raises :class:`ScenarioError` with every issue found."""
    issues: list[ScenarioIssue] = []
    scenario = _load_scenario(directory, issues)
    if issues or scenario is None:
        raise ScenarioError(issues)
    return scenario


def load_catalog(roots: Path | Sequence[Path]) -> Catalog:
    """Every ``*/scenario.yaml`` under each root; raises :class:`ScenarioError` with every issue of
    every scenario (a duplicate name across roots included)."""
    root_list = [roots] if isinstance(roots, Path) else list(roots)
    issues: list[ScenarioIssue] = []
    scenarios: list[Scenario] = []
    seen: dict[str, Scenario] = {}
    for root in root_list:
        if not root.is_dir():
            issues.append(ScenarioIssue(root, None, "", "scenario catalog folder does not exist"))
            continue
        for directory in sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
        ):
            scenario = _load_scenario(directory, issues)
            if scenario is None:
                continue
            first = seen.get(scenario.name)
            if first is not None:
                issues.append(
                    ScenarioIssue(
                        scenario.file,
                        _name_line(scenario.file),
                        "name",
                        f"duplicate scenario name {scenario.name!r}; also defined in "
                        f"{display_path(first.file)}:{_name_line(first.file)}",
                    )
                )
                continue
            seen[scenario.name] = scenario
            scenarios.append(scenario)
    if issues:
        raise ScenarioError(issues)
    return Catalog(tuple(scenarios), tuple(root_list))


def _name_line(file: Path) -> int | None:
    docs, _ = parse_yaml_documents(file.read_text(encoding="utf-8"), file)
    return docs[0].lines.get(("name",)) if docs else None


def _load_scenario(directory: Path, issues: list[ScenarioIssue]) -> Scenario | None:
    file = directory / SCENARIO_FILE
    if not file.is_file():
        issues.append(ScenarioIssue(directory, None, "", f"a scenario folder needs a {SCENARIO_FILE}"))
        return None
    before = len(issues)
    docs, yaml_issues = parse_yaml_documents(file.read_text(encoding="utf-8"), file)
    issues.extend(yaml_issues)
    docs = [d for d in docs if d.value is not None]
    if len(docs) != 1:
        if not yaml_issues:
            issues.append(
                ScenarioIssue(file, None, "", f"expected exactly one YAML document, found {len(docs)}")
            )
        return None
    r = _Reader(docs[0], issues)
    top = r.mapping((), docs[0].value, _TOP_REQUIRED, _TOP_OPTIONAL)
    if top is None:
        return None

    name = r.string(("name",), top.get("name", _MISSING))
    if name is not None:
        if not _NAME_RE.match(name):
            r.issue(("name",), f"{name!r} is not a DNS label (lower-case letters, digits and '-')")
        elif name != directory.name:
            r.issue(("name",), f"{name!r} must equal the scenario's folder name {directory.name!r}")
    description = r.string(("description",), top.get("description", _MISSING))
    if description is not None and not description.strip():
        r.issue(("description",), "must not be empty")
    istio = _version_range(r, top.get("istio", _MISSING))
    requires = _requirements(r, top.get("requires", {}))
    manifests = _manifests(r, directory, top.get("manifests", _MISSING))
    requests = _requests(r, top.get("requests", _MISSING))
    caller = _caller(r, top.get("caller", {}))
    tags = r.string_list(("tags",), top.get("tags", []))

    if (
        len(issues) > before
        or name is None
        or description is None
        or istio is None
        or requires is None
        or manifests is None
        or requests is None
        or caller is None
        or tags is None
    ):
        return None
    _requirement_issues(r, requires, manifests, requests)
    _caller_issues(r, caller, requests)
    if len(issues) > before:
        return None
    return Scenario(
        name=name,
        description=description.strip(),
        file=file,
        istio=istio,
        requires=requires,
        manifests=manifests,
        requests=requests,
        tags=tuple(tags),
        caller=caller,
    )


def _version_range(r: _Reader, value: object) -> VersionRange | None:
    data = r.mapping(("istio",), value, ("min",), ("max",))
    if data is None:
        return None
    bounds: dict[str, IstioVersion] = {}
    for key in ("min", "max"):
        if key not in data:
            continue
        raw = data[key]
        hint = (
            ' (quote versions: "1.23")' if isinstance(raw, float | int) and not isinstance(raw, bool) else ""
        )
        text = r.string(("istio", key), raw, hint=hint)
        if text is None:
            continue
        try:
            bounds[key] = IstioVersion.parse(text)
        except ValueError as exc:
            r.issue(("istio", key), str(exc))
    if "min" not in bounds or ("max" in data and "max" not in bounds):
        return None
    try:
        return VersionRange(bounds["min"], bounds.get("max"))
    except ValueError as exc:
        r.issue(("istio", "max"), f"bad version range: {exc}")
        return None


_REQUIRES_OPTIONAL = (
    "outbound_traffic_policy",
    "gateway_api",
    "access_log_encoding",
    "external",
    "client_credential",
    "server_ca_credential",
    "untrusted_ca_credential",
)


def _requirements(r: _Reader, value: object) -> Requirements | None:
    path: FieldPath = ("requires",)
    data = r.mapping(path, value, (), _REQUIRES_OPTIONAL)
    if data is None:
        return None
    before = len(r.issues)
    policy = None
    if data.get("outbound_traffic_policy") is not None:
        policy = r.choice(
            (*path, "outbound_traffic_policy"), data["outbound_traffic_policy"], OUTBOUND_TRAFFIC_POLICIES
        )
    gateway_api = data.get("gateway_api", False)
    r.expect((*path, "gateway_api"), gateway_api, bool)
    encodings = r.string_list(
        (*path, "access_log_encoding"),
        data.get("access_log_encoding", list(ACCESS_LOG_ENCODINGS)),
        choices=ACCESS_LOG_ENCODINGS,
        non_empty=True,
    )
    external = r.choice((*path, "external"), data.get("external", "http"), EXTERNAL_KINDS)
    credentials: dict[str, bool] = {}
    for key in CREDENTIAL_VARIABLES.values():
        flag = data.get(key, False)
        if r.expect((*path, key), flag, bool) and flag and external == "http":
            r.issue(
                (*path, key),
                "a credential for TLS origination needs an external host that serves TLS: "
                "set requires.external to tls or mtls",
            )
        credentials[key] = flag is True
    if encodings is None or external is None or len(r.issues) > before:
        return None
    return Requirements(
        policy,
        bool(gateway_api),
        tuple(encodings),
        external=external,
        client_credential=credentials["client_credential"],
        server_ca_credential=credentials["server_ca_credential"],
        untrusted_ca_credential=credentials["untrusted_ca_credential"],
    )


def _requirement_issues(
    r: _Reader, requires: Requirements, manifests: Sequence[Path], requests: Sequence[RequestSpec]
) -> None:
    """What ``requires`` says against what the manifests and requests use: a credential variable
    without the Secret declared (or the reverse), an https request to a host that serves no TLS."""
    for variable, key in CREDENTIAL_VARIABLES.items():
        declared = getattr(requires, key)
        used = False
        for manifest in manifests:
            for number, line in enumerate(manifest.read_text(encoding="utf-8").split("\n"), start=1):
                if not any(m.group(1) == variable for m in PLACEHOLDER_RE.finditer(line)):
                    continue
                used = True
                if not declared:
                    r.issues.append(
                        ScenarioIssue(
                            manifest,
                            number,
                            "",
                            f"uses {{{{ {variable} }}}}, but {display_path(r.doc.source)} does not set "
                            f"requires.{key}: true, so the run would not create that Secret",
                        )
                    )
        if declared and not used:
            r.issue(
                ("requires", key),
                f"true, but no manifest uses {{{{ {variable} }}}}: name the Secret (credentialName) or drop it",
            )
    if requires.external_tls:
        return
    for i, request in enumerate(requests):
        if request.scheme == "https":
            r.issue(
                ("requests", i, "scheme"),
                "an https request needs an external host that serves TLS: set requires.external "
                f"to tls or mtls (it is {requires.external})",
            )


def _caller(r: _Reader, value: object) -> Caller | None:
    data = r.mapping(("caller",), value, (), ("sidecar",))
    if data is None:
        return None
    sidecar = r.choice(("caller", "sidecar"), data.get("sidecar", "injected"), CALLER_SIDECARS)
    return None if sidecar is None else Caller(sidecar)


def _caller_issues(r: _Reader, caller: Caller, requests: Sequence[RequestSpec]) -> None:
    """What ``caller`` says against the requests: a caller whose sidecar does not capture the request
    (``none``, ``excludes-external``) goes straight to the external host, whatever the mesh routes,
    and only the external host's record shows where it came from; a captured one is always logged."""
    for i, request in enumerate(requests):
        exp, path = request.expect, ("requests", i, "expect")
        if caller.captured:
            if exp.sidecar_absent:
                r.issue(
                    (*path, "sidecar"),
                    f"{SIDECAR_ABSENT}: the calling workload's sidecar captures and logs every request it "
                    "sends; set caller.sidecar to none or excludes-external for a workload that bypasses it",
                )
            continue
        why = f"the caller's sidecar is {caller.sidecar!r}: it does not capture the request, which goes "
        if exp.via_gateway or exp.blocked is not None:
            r.issue(
                (*path, "via_gateway" if exp.blocked is None else "blocked"),
                why + "straight to the external host (use via_gateway: false, no blocked)",
            )
        if not exp.sidecar_absent:
            r.issue(
                (*path, "sidecar"),
                why + f"past the sidecar's log: expect sidecar: {SIDECAR_ABSENT}",
            )
        if exp.external_caller != "workload":
            r.issue(
                (*path, "external_caller"),
                why
                + "direct, and only the external host's record shows it: expect external_caller: workload",
            )


def _manifests(r: _Reader, directory: Path, value: object) -> tuple[Path, ...] | None:
    names = r.string_list(("manifests",), value)
    if names is None:
        return None
    paths: list[Path] = []
    done: set[str] = set()
    for i, name in enumerate(cast(list[object], value)):
        if not isinstance(name, str) or name in done:
            continue  # a wrong type or a duplicate, already reported
        done.add(name)
        where: FieldPath = ("manifests", i)
        if "/" in name or "\\" in name or name.startswith("."):
            r.issue(where, f"{name!r}: a manifest is a file name beside {SCENARIO_FILE}, not a path")
            continue
        if not name.endswith((".yaml", ".yml")):
            r.issue(where, f"{name!r}: manifest files end in .yaml or .yml")
            continue
        path = directory / name
        if not path.is_file():
            r.issue(where, f"manifest file {name!r} does not exist in {display_path(directory)}")
            continue
        text = path.read_text(encoding="utf-8")
        found = template_issues(text, path)
        r.issues.extend(found)
        if not found:
            r.issues.extend(_manifest_yaml_issues(text, path))
        paths.append(path)
    listed = set(names)
    for stray in sorted(directory.iterdir()):
        if stray.suffix in (".yaml", ".yml") and stray.name != SCENARIO_FILE and stray.name not in listed:
            r.issue(("manifests",), f"{stray.name!r} is in the scenario folder but not listed in manifests")
    return tuple(paths)


def _manifest_yaml_issues(text: str, path: Path) -> list[ScenarioIssue]:
    """YAML syntax of a template, checked on a render with the offline context."""
    docs, issues = parse_yaml_documents(fill_placeholders(text, offline_context().variables()), path)
    for doc in docs:
        if doc.value is not None and not isinstance(doc.value, dict):
            issues.append(
                ScenarioIssue(
                    path, doc.line, "", f"document {doc.index}: expected a mapping (a Kubernetes object)"
                )
            )
    return issues


def _requests(r: _Reader, value: object) -> tuple[RequestSpec, ...] | None:
    if not r.expect(("requests",), value, list):
        return None
    items = cast(list[object], value)
    if not items:
        r.issue(("requests",), "a scenario needs at least one request")
    out: list[RequestSpec] = []
    names: dict[str, int] = {}
    for i, item in enumerate(items):
        req = _request(r, ("requests", i), item)
        if req is None:
            continue
        if req.name in names:
            r.issue(
                ("requests", i, "name"),
                f"duplicate request name {req.name!r} (first is requests[{names[req.name]}])",
            )
            continue
        names[req.name] = i
        out.append(req)
    return tuple(out)


def _request(r: _Reader, path: FieldPath, value: object) -> RequestSpec | None:
    data = r.mapping(path, value, _REQUEST_REQUIRED, _REQUEST_OPTIONAL)
    if data is None:
        return None
    before = len(r.issues)
    name = r.string((*path, "name"), data.get("name", _MISSING))
    if name is not None and not _NAME_RE.match(name):
        r.issue((*path, "name"), f"{name!r} is not a DNS label (lower-case letters, digits and '-')")
    host = r.string((*path, "host"), data.get("host", _MISSING), template=True)
    chain = r.string_list(
        (*path, "chain"), data.get("chain", list(DEFAULT_CHAIN)), choices=HOPS, non_empty=True
    )
    scheme = r.choice((*path, "scheme"), data.get("scheme", "http"), SCHEMES)
    method = r.string((*path, "method"), data.get("method", "GET"))
    if method is not None and not _METHOD_RE.match(method):
        r.issue((*path, "method"), f"expected an upper-case HTTP method such as GET, got {method!r}")
    port = _port(r, (*path, "port"), data.get("port"))
    req_path = r.string((*path, "path"), data.get("path", "/"), template=True)
    if req_path is not None and not req_path.startswith("/"):
        r.issue((*path, "path"), f"must start with '/', got {req_path!r}")
    expect = _expectation(r, (*path, "expect"), data.get("expect", _MISSING))
    size = tcp_payload(r, path, data, scheme=scheme, expect=expect)
    if (
        len(r.issues) > before
        or name is None
        or host is None
        or chain is None
        or scheme is None
        or method is None
        or req_path is None
        or expect is None
    ):
        return None
    return RequestSpec(
        name=name,
        host=host,
        expect=expect,
        chain=tuple(chain),
        scheme=scheme,
        method=method,
        port=port,
        path=req_path,
        line=r.doc.line_of(path),
        bytes=size,
    )


def _port(r: _Reader, path: FieldPath, value: object) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = r.string(path, value, template=True)
        if text is not None and not PLACEHOLDER_RE.fullmatch(text.strip()):
            r.issue(
                path, f"expected an int or one placeholder such as '{{{{ external_port }}}}', got {text!r}"
            )
        return text
    if r.expect(path, value, int):
        port = cast(int, value)
        if not 0 < port < 65536:
            r.issue(path, f"port out of range 1-65535: {port}")
        return port
    return None


def _expectation(r: _Reader, path: FieldPath, value: object) -> Expectation | None:
    data = r.mapping(path, value, _EXPECT_REQUIRED, _EXPECT_OPTIONAL)
    if data is None:
        return None
    before = len(r.issues)
    status = data.get("status", _MISSING)
    if r.expect((*path, "status"), status, int) and not 100 <= cast(int, status) <= 599:
        r.issue((*path, "status"), f"not an HTTP status code: {status}")
    via_gateway = data.get("via_gateway", _MISSING)
    r.expect((*path, "via_gateway"), via_gateway, bool)
    blocked_raw = data.get("blocked", False)
    blocked: str | None = None
    if blocked_raw is not False:
        if isinstance(blocked_raw, str) and blocked_raw in BLOCKED_AT:
            blocked = blocked_raw
        else:
            r.issue(
                (*path, "blocked"), f"expected one of {', '.join(BLOCKED_AT)} or false, got {blocked_raw!r}"
            )
    caller, attempts = _external_fields(r, path, data)
    tcp_bytes = expected_tcp_bytes(r, path, data)
    logs, sidecar_absent = _log_matches(r, path, data)
    if len(r.issues) > before or status is _MISSING or via_gateway is _MISSING:
        return None
    # what the fields say together must be possible
    if blocked == "sidecar" and via_gateway:
        r.issue(
            (*path, "via_gateway"), "a request blocked at the sidecar never reaches the gateway: use false"
        )
    if blocked == "gateway" and not via_gateway:
        r.issue((*path, "via_gateway"), "a request blocked at the gateway went via the gateway: use true")
    if logs["gateway"] and not via_gateway:
        r.issue((*path, "gateway"), "gateway log fields are expected, but via_gateway is false")
    if sidecar_absent and (via_gateway or blocked is not None):
        r.issue(
            (*path, "sidecar"),
            f"{SIDECAR_ABSENT}: a request that leaves via the gateway or is blocked on the way passed the "
            "calling sidecar, which logged it",
        )
    _external_issues(
        r, path, via_gateway=bool(via_gateway), blocked=blocked, caller=caller, attempts=attempts
    )
    if len(r.issues) > before:
        return None
    return Expectation(
        status=cast(int, status),
        via_gateway=cast(bool, via_gateway),
        blocked=cast(Literal["sidecar", "gateway"] | None, blocked),
        sidecar=logs["sidecar"],
        gateway=logs["gateway"],
        external_caller=cast(Literal["not-gateway", "workload"] | None, caller),
        external_attempts=attempts,
        sidecar_absent=sidecar_absent,
        tcp_bytes=tcp_bytes,
    )


def _log_matches(
    r: _Reader, path: FieldPath, data: Mapping[str, object]
) -> tuple[dict[str, Mapping[str, LogValue]], bool]:
    """The ``sidecar`` and ``gateway`` field maps of an ``expect:`` block, and whether it says
    ``sidecar: absent`` instead of a map."""
    logs: dict[str, Mapping[str, LogValue]] = {}
    sidecar_absent = data.get("sidecar") == SIDECAR_ABSENT
    for hop in LOG_HOPS:
        if hop == "sidecar" and sidecar_absent:
            logs[hop] = MappingProxyType({})
            continue
        hint = f" (or {SIDECAR_ABSENT!r}: no entry of the request there)" if hop == "sidecar" else ""
        logs[hop] = _log_match(r, (*path, hop), data.get(hop, {}), hint=hint)
    return logs, sidecar_absent


def _external_fields(
    r: _Reader, path: FieldPath, data: Mapping[str, object]
) -> tuple[str | None, int | None]:
    """``external_caller`` and ``external_attempts`` of an ``expect:`` block, each checked alone."""
    caller = None
    if "external_caller" in data:
        caller = r.choice((*path, "external_caller"), data["external_caller"], EXTERNAL_CALLERS)
    attempts = data.get("external_attempts")
    if "external_attempts" not in data or not r.expect((*path, "external_attempts"), attempts, int):
        return caller, None
    if cast(int, attempts) < 1:
        r.issue(
            (*path, "external_attempts"),
            f"at least 1, got {attempts} (a request that must not reach the external host is blocked)",
        )
    return caller, cast(int, attempts)


def _external_issues(
    r: _Reader,
    path: FieldPath,
    *,
    via_gateway: bool,
    blocked: str | None,
    caller: str | None,
    attempts: int | None,
) -> None:
    """What ``external_caller`` and ``external_attempts`` say against the rest of the expectation."""
    if caller is not None and via_gateway:
        r.issue(
            (*path, "external_caller"),
            f"{caller}: the external host's caller of a request that went via the gateway is the gateway; "
            "use via_gateway: false (or drop external_caller)",
        )
    elif caller is not None and blocked is not None:
        r.issue(
            (*path, "external_caller"),
            f"a request blocked at the {blocked} never reaches the external host: it has no caller there "
            "(drop external_caller)",
        )
    witnessed = blocked is None and (via_gateway or caller is not None)
    if attempts is not None and not witnessed:
        r.issue(
            (*path, "external_attempts"),
            "counts the external host's records of a request it witnesses: one via the gateway, or a "
            "direct one with external_caller (not-gateway or workload)"
            + (f" (this one is blocked at the {blocked})" if blocked else ""),
        )


def _log_match(r: _Reader, path: FieldPath, value: object, *, hint: str = "") -> Mapping[str, LogValue]:
    if hint and not isinstance(value, dict):
        r.issue(path, f"expected a mapping of access-log fields{hint}, got {_type_name(value)} {value!r}")
        return MappingProxyType({})
    data = r.mapping(path, value, (), ACCESS_LOG_FIELDS)
    out: dict[str, LogValue] = {}
    for key, item in (data or {}).items():
        if key not in ACCESS_LOG_FIELDS:
            continue  # reported by mapping()
        sub = (*path, key)
        if item is None:
            out[key] = None
        elif key in INT_FIELDS:
            if r.expect(sub, item, int, " (an integer log field; null for absent)"):
                out[key] = cast(int, item)
        elif r.string(sub, item, template=True, hint=" (null for absent)") is not None:
            out[key] = cast(str, item)
    return MappingProxyType(out)
