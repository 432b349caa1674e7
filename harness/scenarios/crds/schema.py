"""Kubernetes objects checked against structural schemas, offline.

* :func:`validate` checks a value against a Kubernetes *structural* schema the way the API server
  does with strict field validation: unknown fields are errors. ``x-kubernetes-validations`` (CEL)
  cannot be evaluated here; each rule a document reaches is reported as *not checked*, never passed.
  It checks what the API server checks, not the YAML as written: mapping keys as kubectl sends them
  (``8080:`` is the JSON key ``"8080"``) and without the nulls the API server drops before it
  validates (``match:`` written with no value).
* :func:`validate_document` checks one object (its ObjectMeta, then the rest) against the CRD of its
  kind in every bundle given. Core kinds (Namespace, Service, Deployment, ...) have no CRD: a small
  built-in schema checks the fields that matter and leaves the rest alone, and results say so
  (coverage ``basic``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.scenarios.crds.bundles import GATEWAY_API_GROUP, CrdBundle
from harness.scenarios.issues import FieldPath, format_field
from harness.scenarios.jsonkeys import json_key

__all__ = [
    "CORE_SCHEMAS",
    "OBJECT_META_SCHEMA",
    "Coverage",
    "DocumentResult",
    "SchemaResult",
    "SchemaViolation",
    "UncheckedRule",
    "json_key",
    "split_api_version",
    "validate",
    "validate_document",
]

# ------------------------------------------------------------------------------ structural schemas


@dataclass(frozen=True)
class SchemaViolation:
    path: FieldPath
    message: str

    def __str__(self) -> str:
        return f"{format_field(self.path) or '(root)'}: {self.message}"


@dataclass(frozen=True)
class UncheckedRule:
    """An ``x-kubernetes-validations`` (CEL) rule the document reaches but nobody evaluated."""

    path: FieldPath
    rule: str
    message: str | None

    def __str__(self) -> str:
        what = f"{self.message!r} " if self.message else ""
        return f"{format_field(self.path) or '(root)'}: {what}(rule: {self.rule})"


@dataclass(frozen=True)
class SchemaResult:
    errors: tuple[SchemaViolation, ...]
    unchecked: tuple[UncheckedRule, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _has_type(expected: str, value: object) -> bool:
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _format_error(fmt: str, value: str) -> str | None:
    """A message when ``value`` breaks a string ``format`` we can check cheaply; others pass."""
    if fmt == "date-time" and not _DATE_TIME.match(value):
        return "not an RFC 3339 date-time"
    if fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return "not base64"
    if fmt in ("ipv4", "ipv6"):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return f"not an {fmt} address"
        if addr.version != int(fmt[-1]):
            return f"not an {fmt} address"
    return None


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # an RE2-only construct: leave the value alone
        return None


def _describe(schema: Mapping[str, Any]) -> str:
    """A short human description of a combinator branch."""
    keys = set(schema)
    if keys == {"required"}:
        return " and ".join(f"'{r}' set" for r in schema["required"])
    if keys == {"not"}:
        return f"not ({_describe(schema['not'])})"
    if keys == {"anyOf"}:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    if keys == {"type"}:
        return f"of type {schema['type']}"
    return "a schema with " + ", ".join(sorted(keys))


def _exclusive_fields(branches: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The fields of the common structural idiom "at most one of a, b" written as
    ``oneOf: [{not: {anyOf: [{required: [a]}, {required: [b]}]}}, {required: [a]}, {required: [b]}]``."""
    first, rest = branches[0], branches[1:]
    if set(first) != {"not"} or set(first["not"]) != {"anyOf"}:
        return None
    inner = first["not"]["anyOf"]
    if not all(set(b) == {"required"} and len(b["required"]) == 1 for b in [*inner, *rest]):
        return None
    fields = [b["required"][0] for b in rest]
    return fields if fields == [b["required"][0] for b in inner] else None


class _Validator:
    def __init__(self) -> None:
        self.errors: list[SchemaViolation] = []
        self.unchecked: dict[tuple[FieldPath, str], UncheckedRule] = {}

    def error(self, path: FieldPath, message: str) -> None:
        self.errors.append(SchemaViolation(path, message))

    def trial(self, schema: Mapping[str, Any], value: object, path: FieldPath) -> bool:
        sub = _Validator()
        sub.check(schema, value, path, structural=False)
        self.unchecked.update(sub.unchecked)
        return not sub.errors

    def check(self, schema: Mapping[str, Any], value: object, path: FieldPath, *, structural: bool) -> None:
        """``structural``: this schema is the structural part (it decides which fields exist); inside
        allOf/anyOf/oneOf/not it is not, and only adds constraints."""
        if value is None and schema.get("nullable", False):
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not isinstance(value, int | str) or isinstance(value, bool):
                self.error(path, f"expected integer or string, got {_json_type(value)}")
                return
        elif "type" in schema and not _has_type(schema["type"], value):
            self.error(path, f"expected {schema['type']}, got {_json_type(value)}")
            return

        for rule in schema.get("x-kubernetes-validations", ()):
            key = (path, str(rule.get("rule", "")))
            self.unchecked.setdefault(key, UncheckedRule(path, key[1], rule.get("message")))

        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(json.dumps(e) for e in schema["enum"])
            self.error(path, f"{json.dumps(value)} is not one of {allowed}")
        if isinstance(value, str):
            self._string(schema, value, path)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(schema, value, path)
        elif isinstance(value, dict):
            self._object(schema, value, path, structural)
        elif isinstance(value, list):
            self._array(schema, value, path, structural)
        self._combinators(schema, value, path)

    def _string(self, schema: Mapping[str, Any], value: str, path: FieldPath) -> None:
        if "minLength" in schema and len(value) < schema["minLength"]:
            self.error(path, f"{json.dumps(value)} is shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.error(path, f"{len(value)} characters, more than the maximum {schema['maxLength']}")
        if "pattern" in schema:
            regex = _regex(schema["pattern"])
            if regex is not None and not regex.search(value):
                self.error(
                    path, f"{json.dumps(value)} does not match the pattern {json.dumps(schema['pattern'])}"
                )
        if "format" in schema:
            problem = _format_error(schema["format"], value)
            if problem:
                self.error(path, f"{json.dumps(value)}: {problem}")

    def _number(self, schema: Mapping[str, Any], value: float, path: FieldPath) -> None:
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                self.error(path, f"{value} is less than the minimum {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") and value == high):
                self.error(path, f"{value} is more than the maximum {high}")

    def _object(
        self, schema: Mapping[str, Any], value: dict[str, Any], path: FieldPath, structural: bool
    ) -> None:
        props: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        for key, item in value.items():
            sub = (*path, key)
            if key in props:
                self.check(props[key], item, sub, structural=structural)
            elif isinstance(extra, Mapping):
                self.check(extra, item, sub, structural=structural)
            elif structural and not preserve and extra is not True:
                close = difflib.get_close_matches(key, list(props), n=1)
                known = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"known fields: {', '.join(sorted(props)) or 'none'}"
                )
                self.error(sub, f"unknown field ({known})")
        for name in schema.get("required", ()):
            if name not in value and not (structural and "default" in props.get(name, {})):
                self.error((*path, name), "required field is missing")
        n = len(value)
        if "minProperties" in schema and n < schema["minProperties"]:
            self.error(path, f"{n} entries, fewer than the minimum {schema['minProperties']}")
        if "maxProperties" in schema and n > schema["maxProperties"]:
            self.error(path, f"{n} entries, more than the maximum {schema['maxProperties']}")
        if schema.get("x-kubernetes-embedded-resource"):
            for name in ("apiVersion", "kind"):
                if not isinstance(value.get(name), str) or not value[name]:
                    self.error((*path, name), "an embedded resource needs a non-empty string here")
            if "metadata" in value:
                self.check(OBJECT_META_SCHEMA, value["metadata"], (*path, "metadata"), structural=structural)

    def _array(self, schema: Mapping[str, Any], value: list[Any], path: FieldPath, structural: bool) -> None:
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                self.check(items, item, (*path, i), structural=structural)
        n = len(value)
        if "minItems" in schema and n < schema["minItems"]:
            self.error(path, f"{n} items, fewer than the minimum {schema['minItems']}")
        if "maxItems" in schema and n > schema["maxItems"]:
            self.error(path, f"{n} items, more than the maximum {schema['maxItems']}")
        list_type = schema.get("x-kubernetes-list-type")
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            if list_type == "set":
                key = json.dumps(item, sort_keys=True)
            elif list_type == "map" and isinstance(item, dict):
                keys = schema.get("x-kubernetes-list-map-keys", ())
                key = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            else:
                continue
            if key in seen:
                self.error((*path, i), f"duplicate entry {key} (same as [{seen[key]}])")
            else:
                seen[key] = i

    def _combinators(self, schema: Mapping[str, Any], value: object, path: FieldPath) -> None:
        for sub in schema.get("allOf", ()):
            self.check(sub, value, path, structural=False)
        if "anyOf" in schema and not any(self.trial(s, value, path) for s in schema["anyOf"]):
            self.error(
                path, "must match at least one of: " + " | ".join(_describe(s) for s in schema["anyOf"])
            )
        if "oneOf" in schema:
            branches = schema["oneOf"]
            matched = [i for i, s in enumerate(branches) if self.trial(s, value, path)]
            if len(matched) != 1:
                exclusive = _exclusive_fields(branches)
                if exclusive is not None and isinstance(value, dict):
                    found = ", ".join(f for f in exclusive if f in value)
                    self.error(path, f"set at most one of {', '.join(exclusive)} (found: {found})")
                else:
                    alternatives = " | ".join(_describe(s) for s in branches)
                    self.error(path, f"must match exactly one of: {alternatives} (matched {len(matched)})")
        if "not" in schema and self.trial(schema["not"], value, path):
            self.error(path, f"must not be {_describe(schema['not'])}")


# ------------------------------------------------------ what reaches the API server's validation


def _key_text(key: object) -> str:
    return json.dumps(key) if key is None or isinstance(key, str | int | float) else repr(key)


def _json_keys(value: Any, path: FieldPath, errors: list[SchemaViolation]) -> Any:
    """``value`` with its mapping keys as kubectl sends them (:func:`json_key`). Two keys that become
    one JSON key are an error here: which one survives the conversion is undefined. Returns a copy;
    the caller's value is not changed."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        written: dict[str, object] = {}
        for key, item in value.items():
            name = json_key(key)
            if name is None:
                errors.append(
                    SchemaViolation(path, f"mapping key {_key_text(key)}: kubectl cannot send it as JSON")
                )
                continue
            if name in out:
                errors.append(
                    SchemaViolation(
                        (*path, name),
                        f"duplicate key: {_key_text(written[name])} and {_key_text(key)} are both the JSON key "
                        f"{json.dumps(name)}",
                    )
                )
                continue
            written[name] = key
            out[name] = _json_keys(item, (*path, name), errors)
        return out
    if isinstance(value, list):
        return [_json_keys(item, (*path, i), errors) for i, item in enumerate(value)]
    return value


def _entry_schema(schema: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    if schema is None:
        return None
    properties = schema.get("properties") or {}
    if key in properties:
        return properties[key]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _is_dropped_null(item: object, schema: Mapping[str, Any] | None) -> bool:
    return item is None and schema is not None and not schema.get("nullable", False)


def _drop_nulls(schema: Mapping[str, Any] | None, value: Any) -> Any:
    """``value`` as the API server validates it: without the nulls it drops first.

    What Kubernetes does, read in its source (k8s.io/apiextensions-apiserver): decoding a custom
    resource (``unstructuredSchemaCoercer.apply`` in ``pkg/apiserver/customresource_handler.go``,
    "removal of non-defaulted non-nullable null map values") prunes the unknown fields, then calls
    ``PruneNonNullableNullsWithoutDefaults`` (``pkg/apiserver/schema/defaulting/prunenulls.go``): in
    every object it deletes each entry whose value is null when the schema of that entry (the
    property's, else ``additionalProperties``') is not ``nullable`` and has no ``default``, and walks
    on into the other entries and into list items. A list item is never deleted, and an entry no schema
    describes (kept by ``x-kubernetes-preserve-unknown-fields``) keeps its null. Defaulting
    (``Default`` in ``defaulting/algorithm.go``) then replaces a non-nullable null that has a default
    by the default, for entries and for list items alike. Validation runs on the result: so
    ``match:`` written with no value is as if it were not written, a required field written as null
    is missing, and ``hosts: [a, null]`` is still an error. Returns a copy.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = _entry_schema(schema, key)
            if _is_dropped_null(item, sub):
                assert sub is not None
                if sub.get("default") is not None:
                    out[key] = copy.deepcopy(sub["default"])
                continue
            out[key] = _drop_nulls(sub, item)
        return out
    if isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        items = items if isinstance(items, Mapping) else None
        return [
            copy.deepcopy(items["default"])
            if items is not None and _is_dropped_null(item, items) and items.get("default") is not None
            else _drop_nulls(items, item)
            for item in value
        ]
    return value


def validate(schema: Mapping[str, Any], value: object, path: FieldPath = ()) -> SchemaResult:
    """Check ``value`` against a Kubernetes structural schema (strict: unknown fields are errors), as
    the API server receives it: keys as JSON strings, nulls it drops dropped."""
    v = _Validator()
    received = _drop_nulls(schema, _json_keys(value, path, v.errors))
    v.check(schema, received, path, structural=True)
    return SchemaResult(tuple(v.errors), tuple(v.unchecked.values()))


# ----------------------------------------------------------------------------- object level, core

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_MAP = {
    "type": "object",
    "additionalProperties": {
        "type": "string",
        "maxLength": 63,
        "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
    },
}
_PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

#: ObjectMeta as a client may write it.
OBJECT_META_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "labels": _LABEL_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": _PRESERVE},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": "string", "nullable": True},
        "deletionTimestamp": {"type": "string"},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array", "items": _PRESERVE},
    },
}


def _loose(properties: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """An object whose listed fields are checked and whose other fields are let through."""
    return {
        "type": "object",
        "properties": dict(properties),
        "x-kubernetes-preserve-unknown-fields": True,
        **extra,
    }


_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_SERVICE_PORT = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "name": {"type": "string", "maxLength": 63},
        "port": _PORT,
        "targetPort": {"x-kubernetes-int-or-string": True},
        "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
        "appProtocol": {"type": "string"},
        "nodePort": _PORT,
    },
}

#: Core kinds the catalog may use, with only the fields that matter checked ("basic" coverage).
CORE_SCHEMAS: Mapping[tuple[str, str, str], Mapping[str, Any]] = {
    ("", "v1", "Namespace"): {"type": "object", "properties": {"spec": _PRESERVE, "status": _PRESERVE}},
    ("", "v1", "ServiceAccount"): {
        "type": "object",
        "properties": {
            "automountServiceAccountToken": {"type": "boolean"},
            "secrets": {"type": "array", "items": _PRESERVE},
            "imagePullSecrets": {"type": "array", "items": _PRESERVE},
        },
    },
    ("", "v1", "ConfigMap"): {
        "type": "object",
        "properties": {
            "data": _STRING_MAP,
            "binaryData": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
            "immutable": {"type": "boolean"},
        },
    },
    ("", "v1", "Secret"): {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "data": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
            "stringData": _STRING_MAP,
            "immutable": {"type": "boolean"},
        },
    },
    ("", "v1", "Service"): {
        "type": "object",
        "properties": {
            "spec": _loose(
                {
                    "type": {
                        "type": "string",
                        "enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
                    },
                    "selector": _STRING_MAP,
                    "ports": {"type": "array", "items": _SERVICE_PORT},
                    "externalName": {"type": "string"},
                }
            ),
            "status": _PRESERVE,
        },
    },
    ("apps", "v1", "Deployment"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": _loose(
                {
                    "replicas": {"type": "integer", "minimum": 0},
                    "selector": _loose({"matchLabels": _STRING_MAP}),
                    "template": _loose({"metadata": OBJECT_META_SCHEMA, "spec": _PRESERVE}),
                },
                required=["selector", "template"],
            ),
            "status": _PRESERVE,
        },
    },
}

Coverage = Literal["crd", "basic"]


@dataclass(frozen=True)
class DocumentResult:
    """One document checked against one schema."""

    api_version: str
    kind: str
    name: str
    #: where the schema came from: a bundle file name, or "built-in core schema"
    schema_source: str
    coverage: Coverage
    result: SchemaResult
    warnings: tuple[str, ...] = ()

    @property
    def errors(self) -> tuple[SchemaViolation, ...]:
        return self.result.errors


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _strip_envelope(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The root schema without apiVersion/kind/metadata, which :func:`validate_document` checks itself."""
    envelope = ("apiVersion", "kind", "metadata")
    root = dict(schema)
    root["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k not in envelope}
    root["required"] = [r for r in schema.get("required", ()) if r not in envelope]
    root.setdefault("type", "object")
    return root


def _check_object(
    body: Mapping[str, Any],
    schema: Mapping[str, Any],
    *,
    source: str,
    coverage: Coverage,
    warnings: Iterable[str],
    key_errors: Iterable[SchemaViolation] = (),
) -> DocumentResult:
    """``body``: with its keys as JSON strings already (``key_errors`` say what could not be)."""
    v = _Validator()
    v.errors.extend(key_errors)
    meta = body.get("metadata")
    if meta is None:
        v.error(("metadata",), "required field is missing")
    else:
        # ObjectMeta is decoded into its Go struct, where a null is the empty value: as good as absent
        meta = _drop_nulls(OBJECT_META_SCHEMA, meta)
        v.check(OBJECT_META_SCHEMA, meta, ("metadata",), structural=True)
        if isinstance(meta, dict) and not meta.get("name") and not meta.get("generateName"):
            v.error(("metadata", "name"), "required field is missing")
    rest = {k: val for k, val in body.items() if k not in ("apiVersion", "kind", "metadata")}
    root = _strip_envelope(schema)
    v.check(root, _drop_nulls(root, rest), (), structural=True)
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    return DocumentResult(
        api_version=str(body.get("apiVersion", "")),
        kind=str(body.get("kind", "")),
        name=name if isinstance(name, str) else "",
        schema_source=source,
        coverage=coverage,
        result=SchemaResult(tuple(v.errors), tuple(v.unchecked.values())),
        warnings=tuple(warnings),
    )


def validate_document(body: Mapping[str, Any], bundles: Sequence[CrdBundle]) -> list[DocumentResult]:
    """Check one Kubernetes object against every bundle that defines its kind (one result each), or
    against the built-in core schema. An object no bundle and no core schema knows is one error.

    ``body`` is checked as the API server would receive it from ``kubectl apply`` (keys as JSON
    strings, the nulls it drops dropped); ``body`` itself is left as it is."""
    key_errors: list[SchemaViolation] = []
    body = _json_keys(body, (), key_errors)
    api_version, kind = body.get("apiVersion"), body.get("kind")
    meta = body.get("metadata")
    name = meta.get("name", "") if isinstance(meta, dict) else ""

    def failure(path: FieldPath, message: str) -> list[DocumentResult]:
        result = SchemaResult((SchemaViolation(path, message),), ())
        return [DocumentResult(str(api_version or ""), str(kind or ""), str(name), "(none)", "crd", result)]

    if not isinstance(api_version, str) or not api_version:
        return failure(("apiVersion",), "required: a non-empty string such as networking.istio.io/v1")
    if not isinstance(kind, str) or not kind:
        return failure(("kind",), "required: a non-empty string such as ServiceEntry")
    group, version = split_api_version(api_version)

    core = CORE_SCHEMAS.get((group, version, kind))
    if core is not None:
        return [
            _check_object(
                body,
                core,
                source="built-in core schema",
                coverage="basic",
                warnings=(),
                key_errors=key_errors,
            )
        ]

    results: list[DocumentResult] = []
    served_elsewhere: list[str] = []
    for bundle in bundles:
        crd = bundle.lookup(group, version, kind)
        if crd is None:
            served = bundle.served_versions(group, kind)
            if served:
                served_elsewhere.append(f"{bundle.label} serves {group}/{kind} only as {', '.join(served)}")
            continue
        warnings = []
        if crd.deprecated:
            warnings.append(crd.deprecation_warning or f"{api_version} {kind} is deprecated")
        results.append(
            _check_object(
                body,
                crd.schema,
                source=bundle.label,
                coverage="crd",
                warnings=warnings,
                key_errors=key_errors,
            )
        )
    if results:
        return results
    if served_elsewhere:
        return failure(("apiVersion",), f"{api_version} is not served: " + "; ".join(served_elsewhere))
    searched = ", ".join(b.label for b in bundles) or "no bundles"
    hint = " (pass the Gateway API CRDs: --gateway-api-crd-dir)" if group == GATEWAY_API_GROUP else ""
    return failure(("kind",), f"no CRD defines {api_version} {kind} (searched: {searched}){hint}")
