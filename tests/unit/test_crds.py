"""Offline CRD validation: the structural-schema validator on small hand-made schemas, the real Istio
and Gateway API bundles of ../shared (skipped with a reason when absent), the whole catalog against
every Istio release there, and the bundle downloader against a loopback HTTP server."""

from __future__ import annotations

import copy
import http.server
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from harness.scenarios import IstioVersion, load_catalog
from harness.scenarios.crds import (
    CrdBundle,
    CrdError,
    IstioCrdDir,
    choose_gateway_api_bundles,
    download_istio_crds,
    gateway_api_pin,
    istio_crd_url,
    json_key,
    load_bundle,
    load_bundle_dir,
    shared_dir,
    validate,
    validate_catalog,
    validate_document,
)
from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR
from harness.scenarios.render import offline_context, render_scenario

SHARED = shared_dir()
ISTIO_CRDS = SHARED / "istio" / "crds" if SHARED else None
GATEWAY_API_CRDS = SHARED / "gateway-api" / "crds" if SHARED else None
HAVE_SHARED = bool(ISTIO_CRDS and ISTIO_CRDS.is_dir() and GATEWAY_API_CRDS and GATEWAY_API_CRDS.is_dir())
needs_shared = pytest.mark.skipif(
    not HAVE_SHARED,
    reason="the Istio and Gateway API CRD bundles are absent: no ../shared/istio/crds and "
    "../shared/gateway-api/crds beside the repository; set EGRESS_HARNESS_SHARED=/path/to/shared "
    "(or fetch bundles with `egress-harness scenarios fetch-crds VERSION` and use --crd-dir)",
)
ISTIO_VERSIONS = IstioCrdDir(ISTIO_CRDS).versions() if HAVE_SHARED and ISTIO_CRDS else ("absent",)
GATEWAY_API_FILES = (
    tuple(p.name for p in sorted(GATEWAY_API_CRDS.glob("*.yaml")))
    if HAVE_SHARED and GATEWAY_API_CRDS
    else ("absent",)
)
CATALOG = load_catalog(DEFAULT_SCENARIOS_DIR)
#: real configurations from Istio's documentation and repository (each file names its source)
DOCS = Path(__file__).parent / "data" / "crd_docs"


def errors(schema: dict[str, Any], value: object) -> list[str]:
    return [str(e) for e in validate(schema, value).errors]


# ------------------------------------------------------------------- the validator, hand-made schemas


def test_types_and_json_names() -> None:
    assert errors({"type": "integer"}, 80) == []
    assert errors({"type": "integer"}, "80") == ["(root): expected integer, got string"]
    assert errors({"type": "integer"}, True) == ["(root): expected integer, got boolean"]
    assert errors({"type": "integer"}, 1.5) == ["(root): expected integer, got number"]
    assert errors({"type": "number"}, 3) == []
    assert errors({"type": "boolean"}, "true") == ["(root): expected boolean, got string"]
    assert errors({"type": "array"}, {}) == ["(root): expected array, got object"]
    assert errors({"type": "object"}, []) == ["(root): expected object, got array"]
    assert errors({"type": "string"}, None) == ["(root): expected string, got null"]


def test_int_or_string() -> None:
    schema = {
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        },
    }
    assert errors(schema, {"port": 8080}) == []
    assert errors(schema, {"port": "http"}) == []
    assert errors(schema, {"port": 1.5}) == ["port: expected integer or string, got number"]
    assert errors(schema, {"port": [80]}) == ["port: expected integer or string, got array"]
    assert errors(schema, {"port": False}) == ["port: expected integer or string, got boolean"]


def test_nullable() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "nullable": True}, "b": {"type": "string"}},
    }
    assert errors(schema, {"a": None}) == []
    assert errors(schema, {"a": 1}) == ["a: expected string, got integer"]
    # a null at the root is not a field the API server could drop
    assert errors({"type": "object"}, None) == ["(root): expected object, got null"]


NULLS = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "match": {"type": "object", "properties": {"context": {"type": "string"}}},
        "kept": {"type": "string", "nullable": True},
        "weight": {"type": "integer", "maximum": 3, "default": 5},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "hosts": {"type": "array", "items": {"type": "string"}},
        "anything": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}


def test_nulls_on_non_nullable_fields_are_dropped_as_the_api_server_does() -> None:
    # `match:` with no value: dropped before validation, as if it were not written
    assert errors(NULLS, {"name": "x", "match": None}) == []
    # a dropped required field is missing
    assert errors(NULLS, {"name": None}) == ["name: required field is missing"]
    # a nullable field keeps its null, and a null with a default becomes the default (checked)
    assert errors(NULLS, {"name": "x", "kept": None}) == []
    assert errors(NULLS, {"name": "x", "weight": None}) == ["weight: 5 is more than the maximum 3"]
    # map values are dropped like fields; list items are not
    assert errors(NULLS, {"name": "x", "labels": {"app": None}}) == []
    assert errors(NULLS, {"name": "x", "hosts": ["a", None]}) == ["hosts[1]: expected string, got null"]
    # a field no schema declares is not dropped: kept where unknown fields are kept, unknown elsewhere
    assert errors(NULLS, {"name": "x", "anything": {"free": None}}) == []
    assert errors(NULLS, {"name": "x", "match": {"contxt": None}}) == [
        "match.contxt: unknown field (did you mean 'context'?)"
    ]


def test_a_dropped_null_counts_as_absent_in_combinators() -> None:
    assert errors(AT_MOST_ONE, {"wasm": None, "lua": "b"}) == []
    assert errors(AT_MOST_ONE, {"wasm": None, "lua": None}) == []


def test_integer_map_keys_are_sent_as_json_strings() -> None:
    ports = {
        "type": "object",
        "properties": {
            "portLevelMtls": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"mode": {"type": "string", "enum": ["DISABLE", "STRICT"]}},
                },
            }
        },
    }
    assert errors(ports, {"portLevelMtls": {8080: {"mode": "DISABLE"}}}) == []
    # the key is the string "8080" (a map key), not a list index
    assert errors(ports, {"portLevelMtls": {8080: {"mode": "OFF"}}}) == [
        'portLevelMtls[\'8080\'].mode: "OFF" is not one of "DISABLE", "STRICT"'
    ]
    # sigs.k8s.io/yaml's conversion: int, bool and float keys (floats as Go formats a float32)
    numbers = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert errors(numbers, {8080: "a", True: "b", False: "c", 1.5: "d", 1.0e6: "e", 100000.0: "f"}) == [
        "['8080']: expected integer, got string",
        "true: expected integer, got string",
        "false: expected integer, got string",
        "['1.5']: expected integer, got string",
        "['1e+06']: expected integer, got string",
        "['100000']: expected integer, got string",
    ]
    # two YAML keys that become one JSON key; a key JSON has no string for
    assert errors(numbers, {8080: 1, "8080": 2}) == [
        '[\'8080\']: duplicate key: 8080 and "8080" are both the JSON key "8080"'
    ]
    assert errors(numbers, {None: 1}) == ["(root): mapping key null: kubectl cannot send it as JSON"]
    assert [json_key(k) for k in ("a", 8080, True, 0.5, None)] == ["a", "8080", "true", "0.5", None]
    assert [json_key(k) for k in (-2.5, 0.00001, 123456789.0, 1e39, float("-inf"), float("nan"))] == [
        "-2.5",
        "1e-05",
        "1.2345679e+08",  # float32 precision, as Go formats it
        ".inf",
        "-.inf",
        ".nan",
    ]
    # the keys of fields are converted too: an integer key is no field's name
    assert errors(ports, {80: {}}) == ["['80']: unknown field (known fields: portLevelMtls)"]


def test_the_checked_value_is_not_modified() -> None:
    value: dict[str, Any] = {"name": None, "match": None, "labels": {1: None}}
    before = copy.deepcopy(value)
    errors(NULLS, value)
    assert value == before


def test_unknown_fields_are_errors_unless_preserved() -> None:
    closed = {"type": "object", "properties": {"known": {"type": "string"}}}
    assert errors(closed, {"known": "x", "other": 1}) == ["other: unknown field (known fields: known)"]
    preserved = {**closed, "x-kubernetes-preserve-unknown-fields": True}
    assert errors(preserved, {"known": "x", "other": {"deep": [1]}}) == []
    # the listed fields of a preserving object are still checked
    assert errors(preserved, {"known": 5}) == ["known: expected string, got integer"]
    nested = {
        "type": "object",
        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
    assert errors(nested, {"spec": {"anything": 1}}) == []
    assert errors(nested, {"status": {}}) == ["status: unknown field (known fields: spec)"]


def test_additional_properties_as_a_map() -> None:
    labels = {
        "type": "object",
        "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
    }
    assert errors(labels, {"labels": {"app": "x", "tier": "y"}}) == []
    assert errors(labels, {"labels": {"app": "x", "version": 2}}) == [
        "labels.version: expected string, got integer"
    ]
    assert errors(labels, {"labels": {"app.kubernetes.io/name": 1}}) == [
        "labels['app.kubernetes.io/name']: expected string, got integer"
    ]
    anything = {"type": "object", "additionalProperties": True}
    assert errors(anything, {"a": 1, "b": [2]}) == []
    nothing = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    assert errors(nothing, {"a": 1, "b": 2}) == ["b: unknown field (known fields: a)"]


def test_required_and_defaults() -> None:
    schema = {
        "type": "object",
        "required": ["name", "mode"],
        "properties": {"name": {"type": "string"}, "mode": {"type": "string", "default": "A"}},
    }
    assert errors(schema, {"name": "x"}) == []  # the API server defaults mode before it validates
    assert errors(schema, {}) == ["name: required field is missing"]


def test_string_constraints() -> None:
    schema = {
        "type": "string",
        "minLength": 2,
        "maxLength": 4,
        "pattern": "^[a-z]+$",
        "enum": ["ab", "abcde", "AB"],
    }
    assert errors(schema, "ab") == []
    assert errors(schema, "a") == [
        '(root): "a" is not one of "ab", "abcde", "AB"',
        '(root): "a" is shorter than 2 characters',
    ]
    assert errors(schema, "abcde") == ["(root): 5 characters, more than the maximum 4"]
    assert errors(schema, "AB") == ['(root): "AB" does not match the pattern "^[a-z]+$"']


def test_pattern_is_a_search_as_in_json_schema() -> None:
    assert errors({"type": "string", "pattern": "b"}, "abc") == []


@pytest.mark.parametrize(
    ("fmt", "good", "bad", "message"),
    [
        ("date-time", "2026-08-22T10:00:00Z", "22/08/2026", "not an RFC 3339 date-time"),
        ("byte", "aGVsbG8=", "not base64!", "not base64"),
        ("ipv4", "10.0.0.1", "::1", "not an ipv4 address"),
        ("ipv6", "fd00::1", "10.0.0.1", "not an ipv6 address"),
        ("uri-reference-of-some-kind", "whatever", None, ""),
    ],
)
def test_formats(fmt: str, good: str, bad: str | None, message: str) -> None:
    schema = {"type": "string", "format": fmt}
    assert errors(schema, good) == []
    if bad is not None:
        assert errors(schema, bad) == [f"(root): {json.dumps(bad)}: {message}"]


def test_number_bounds() -> None:
    schema = {"type": "integer", "minimum": 1, "maximum": 65535}
    assert errors(schema, 1) == []
    assert errors(schema, 0) == ["(root): 0 is less than the minimum 1"]
    assert errors(schema, 65536) == ["(root): 65536 is more than the maximum 65535"]
    exclusive = {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert errors(exclusive, 0) == ["(root): 0 is less than the minimum 0"]


def test_arrays_and_list_types() -> None:
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}
    assert errors(schema, ["a"]) == []
    assert errors(schema, []) == ["(root): 0 items, fewer than the minimum 1"]
    assert errors(schema, ["a", 1]) == ["[1]: expected string, got integer"]
    assert errors(schema, ["a", "b", "c"]) == ["(root): 3 items, more than the maximum 2"]
    a_set = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    assert errors(a_set, ["a", "a"]) == ['[1]: duplicate entry "a" (same as [0])']
    a_map = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}},
    }
    assert errors(a_map, [{"name": "x", "n": 1}, {"name": "y", "n": 1}]) == []
    assert errors(a_map, [{"name": "x", "n": 1}, {"name": "x", "n": 2}]) == [
        '[1]: duplicate entry {"name": "x"} (same as [0])'
    ]


def test_object_sizes() -> None:
    schema = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "minProperties": 1,
        "maxProperties": 1,
    }
    assert errors(schema, {"a": "1"}) == []
    assert errors(schema, {}) == ["(root): 0 entries, fewer than the minimum 1"]
    assert errors(schema, {"a": "1", "b": "2"}) == ["(root): 2 entries, more than the maximum 1"]


AT_MOST_ONE = {
    "type": "object",
    "properties": {"wasm": {"type": "string"}, "lua": {"type": "string"}, "name": {"type": "string"}},
    "oneOf": [
        {"not": {"anyOf": [{"required": ["wasm"]}, {"required": ["lua"]}]}},
        {"required": ["wasm"]},
        {"required": ["lua"]},
    ],
}


def test_one_of_the_at_most_one_idiom() -> None:
    assert errors(AT_MOST_ONE, {"name": "x"}) == []
    assert errors(AT_MOST_ONE, {"wasm": "a"}) == []
    assert errors(AT_MOST_ONE, {"wasm": "a", "lua": "b"}) == [
        "(root): set at most one of wasm, lua (found: wasm, lua)"
    ]


def test_combinators_add_constraints_but_never_decide_fields() -> None:
    # a branch with its own properties must not turn the object's other fields into "unknown" ones
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        "allOf": [{"properties": {"a": {"maxLength": 3}}}],
        "not": {"required": ["a", "b"]},
    }
    assert errors(schema, {"a": "x"}) == []
    assert errors(schema, {}) == ["(root): must match at least one of: 'a' set | 'b' set"]
    assert errors(schema, {"a": "long!"}) == ["a: 5 characters, more than the maximum 3"]
    assert errors(schema, {"a": "x", "b": "y"}) == ["(root): must not be 'a' set and 'b' set"]
    one_of = {"oneOf": [{"type": "integer"}, {"type": "string"}]}
    assert errors(one_of, 1) == []
    assert errors(one_of, 1.5) == [
        "(root): must match exactly one of: of type integer | of type string (matched 0)"
    ]


def test_cel_rules_are_reported_unchecked_never_passed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "port": {
                "type": "integer",
                "x-kubernetes-validations": [{"rule": "self > 0", "message": "port must be positive"}],
            },
            "unused": {"type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]},
        },
        "x-kubernetes-validations": [{"rule": "has(self.port)"}],
    }
    result = validate(schema, {"port": -1})
    assert result.ok  # -1 breaks the CEL rule, which nobody evaluated here ...
    # ... so the rule is reported as not checked, with its place; a field that is absent reaches none
    assert sorted(str(r) for r in result.unchecked) == [
        "(root): (rule: has(self.port))",
        "port: 'port must be positive' (rule: self > 0)",
    ]


def test_embedded_resources() -> None:
    schema = {
        "type": "object",
        "properties": {
            "template": {
                "type": "object",
                "x-kubernetes-embedded-resource": True,
                "x-kubernetes-preserve-unknown-fields": True,
            }
        },
    }
    good = {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}}
    assert errors(schema, good) == []
    assert errors(schema, {"template": {"kind": "Pod", "metadata": {"name": "Bad_Name"}}}) == [
        "template.apiVersion: an embedded resource needs a non-empty string here",
        'template.metadata.name: "Bad_Name" does not match the pattern '
        '"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"',
    ]


# ------------------------------------------------------------------ a hand-made CRD (no ../shared)

WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.test}
spec:
  group: example.test
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, x-kubernetes-validations: [{rule: "self < 100"}]}
    - name: v1beta1
      served: true
      storage: false
      deprecated: true
      deprecationWarning: example.test/v1beta1 Widget is going away
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    - name: v0
      served: false
      storage: false
      schema:
        openAPIV3Schema: {type: object}
"""


@pytest.fixture
def widget_bundle(tmp_path: Path) -> CrdBundle:
    path = tmp_path / "widgets.yaml"
    path.write_text("# a comment-only document first\n---\n" + WIDGET_CRD)
    return load_bundle(path)


def widget(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def test_a_bundle_maps_served_versions_only(widget_bundle: CrdBundle) -> None:
    assert set(widget_bundle.crds) == {
        ("example.test", "v1", "Widget"),
        ("example.test", "v1beta1", "Widget"),
    }
    assert widget_bundle.served_versions("example.test", "Widget") == ("v1", "v1beta1")


def test_validate_document_checks_envelope_and_body(widget_bundle: CrdBundle) -> None:
    (ok,) = validate_document(widget(size=3), [widget_bundle])
    assert (ok.errors, ok.coverage, ok.schema_source, ok.kind, ok.name) == (
        (),
        "crd",
        "widgets.yaml",
        "Widget",
        "w",
    )
    assert [r.rule for r in ok.result.unchecked] == ["self < 100"]
    (bad,) = validate_document(widget(size="3", colour="red"), [widget_bundle])
    assert [str(e) for e in bad.errors] == [
        "spec.size: expected integer, got string",
        "spec.colour: unknown field (known fields: size)",
    ]
    no_name = {**widget(size=1), "metadata": {"labels": {"a": "b"}}}
    assert [str(e) for e in validate_document(no_name, [widget_bundle])[0].errors] == [
        "metadata.name: required field is missing"
    ]
    no_spec = {k: v for k, v in widget().items() if k != "spec"}
    assert [str(e) for e in validate_document(no_spec, [widget_bundle])[0].errors] == [
        "spec: required field is missing"
    ]


def test_metadata_is_checked_as_object_meta(widget_bundle: CrdBundle) -> None:
    doc = widget(size=1)
    doc["metadata"] = {"name": "w", "namespace": "NS", "labels": {"v": 1}, "annotation": {}, "zzz": 1}
    assert sorted(str(e) for e in validate_document(doc, [widget_bundle])[0].errors) == [
        "metadata.annotation: unknown field (did you mean 'annotations'?)",
        "metadata.labels.v: expected string, got integer",
        'metadata.namespace: "NS" does not match the pattern "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"',
        "metadata.zzz: unknown field (known fields: annotations, creationTimestamp, deletionGracePeriodSeconds, "
        "deletionTimestamp, finalizers, generateName, generation, labels, managedFields, name, namespace, "
        "ownerReferences, resourceVersion, uid)",
    ]


def test_unserved_unknown_and_deprecated_versions(widget_bundle: CrdBundle) -> None:
    (old,) = validate_document({**widget(size=1), "apiVersion": "example.test/v0"}, [widget_bundle])
    assert [str(e) for e in old.errors] == [
        "apiVersion: example.test/v0 is not served: widgets.yaml serves example.test/Widget only as v1, v1beta1"
    ]
    (unknown,) = validate_document({**widget(), "kind": "Gadget"}, [widget_bundle])
    assert [str(e) for e in unknown.errors] == [
        "kind: no CRD defines example.test/v1 Gadget (searched: widgets.yaml)"
    ]
    (beta,) = validate_document({**widget(), "apiVersion": "example.test/v1beta1"}, [widget_bundle])
    assert beta.errors == ()
    assert beta.warnings == ("example.test/v1beta1 Widget is going away",)
    (no_kind,) = validate_document({"apiVersion": "v1", "metadata": {"name": "x"}}, [widget_bundle])
    assert [str(e) for e in no_kind.errors] == ["kind: required: a non-empty string such as ServiceEntry"]


def test_core_kinds_get_basic_checks_and_say_so() -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "egress", "labels": {"istio-injection": "enabled"}},
    }
    (res,) = validate_document(ns, [])
    assert (res.errors, res.coverage, res.schema_source) == ((), "basic", "built-in core schema")
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "relay"},
        "spec": {"ports": [{"port": "80"}], "sessionAffinity": "None"},
    }
    assert [str(e) for e in validate_document(svc, [])[0].errors] == [
        "spec.ports[0].port: expected integer, got string"
    ]
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1},
    }
    assert [str(e) for e in validate_document(deploy, [])[0].errors] == [
        "spec.selector: required field is missing",
        "spec.template: required field is missing",
    ]
    (pod,) = validate_document({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, [])
    assert [str(e) for e in pod.errors] == ["kind: no CRD defines v1 Pod (searched: no bundles)"]


def test_bundle_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(CrdError, match="no CustomResourceDefinition with a served version in it"):
        load_bundle(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(CrdError, match=r"broken\.yaml: not valid YAML"):
        load_bundle(broken)
    with pytest.raises(CrdError, match="cannot read CRD bundle"):
        load_bundle(tmp_path / "absent.yaml")
    with pytest.raises(CrdError, match="CRD folder does not exist"):
        load_bundle_dir(tmp_path / "nowhere")


def test_a_bundle_is_parsed_once_and_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(WIDGET_CRD)
    first = load_bundle(path)
    assert load_bundle(path) is first
    path.write_text(WIDGET_CRD.replace("minimum: 1", "minimum: 2") + "\n")
    assert load_bundle(path) is not first


def test_an_istio_crd_dir_picks_bundles_by_version(tmp_path: Path) -> None:
    for name in ("1.30.3.yaml", "1.30.10.yaml", "1.31-dev.yaml", "1.29.0.yaml", "notes.yaml"):
        (tmp_path / name).write_text(WIDGET_CRD)
    crds = IstioCrdDir(tmp_path)
    assert crds.versions() == ("1.29.0", "1.30.3", "1.30.10", "1.31-dev")
    assert crds.bundle_path("1.30").name == "1.30.10.yaml"
    assert crds.bundle_path("1.30.3").name == "1.30.3.yaml"
    with pytest.raises(
        CrdError, match=r"no CRD bundle for Istio 1\.28\.0 \(have: 1\.29\.0, 1\.30\.3, 1\.30\.10, 1\.31-dev\)"
    ):
        crds.bundle_path("1.28.0")
    assert IstioCrdDir(tmp_path / "nowhere").versions() == ()


# ------------------------------------------------- Gateway API bundles by the release Istio pins


def test_the_gateway_api_release_each_istio_release_pins() -> None:
    # sigs.k8s.io/gateway-api in istio/istio's go.mod at each release tag (and at the 1.31-dev commit)
    assert gateway_api_pin("1.30.3") == gateway_api_pin("1.30.0") == "v1.5.1"
    assert gateway_api_pin("1.31-dev") == "v1.6.0"
    assert gateway_api_pin("1.29.6") == gateway_api_pin("1.28.10") == "v1.4.1"
    assert gateway_api_pin("1.28.6") == gateway_api_pin("1.29.2") == "v1.4.0"
    assert gateway_api_pin("1.23.0") == "v1.1.0"
    # a bare minor is its newest release
    assert gateway_api_pin("1.28") == "v1.4.1"
    # nobody looked: no guess
    assert gateway_api_pin("1.22.8") is None
    assert gateway_api_pin("1.32.0") is None


def _gateway_api_crd(version: str | None, max_port: int) -> str:
    annotations = f"annotations: {{gateway.networking.k8s.io/bundle-version: {version}}}" if version else ""
    return f"""\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: httproutes.gateway.networking.k8s.io
  {annotations}
spec:
  group: gateway.networking.k8s.io
  names: {{kind: HTTPRoute, plural: httproutes}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                port: {{type: integer, maximum: {max_port}}}
"""


@pytest.fixture
def gateway_api_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "gateway-api"
    folder.mkdir()
    # the release is read from the CRDs' bundle-version annotation, else from a vX.Y.Z file name
    (folder / "one.yaml").write_text(_gateway_api_crd("v1.5.1", 100))
    (folder / "two.yaml").write_text(_gateway_api_crd("v1.6.1", 200))
    (folder / "v1.3.0-standard.yaml").write_text(_gateway_api_crd(None, 300))
    return folder


def test_a_gateway_api_bundle_knows_its_release(gateway_api_dir: Path, widget_bundle: CrdBundle) -> None:
    bundles = load_bundle_dir(gateway_api_dir)
    assert [(b.label, b.gateway_api_version) for b in bundles] == [
        ("one.yaml", "v1.5.1"),
        ("two.yaml", "v1.6.1"),
        ("v1.3.0-standard.yaml", "v1.3.0"),
    ]
    assert widget_bundle.gateway_api_version is None


def test_gateway_api_bundles_are_chosen_by_the_release_istio_pins(gateway_api_dir: Path) -> None:
    bundles = load_bundle_dir(gateway_api_dir)

    def chosen(istio: str) -> tuple[list[str], str | None]:
        choice = choose_gateway_api_bundles(bundles, istio)
        return [b.label for b in choice.bundles], choice.warning

    # the pinned release
    assert chosen("1.30.3") == (["one.yaml"], None)
    assert chosen("1.27.9") == (["v1.3.0-standard.yaml"], None)
    # another patch of the pinned minor: the same API, no warning (the note says which)
    assert chosen("1.31-dev") == (["two.yaml"], None)
    assert choose_gateway_api_bundles(bundles, "1.31-dev").note == "1.31-dev: two.yaml (pins v1.6.0)"
    # no bundle of the pinned minor: the nearest newer release, and a warning that says so
    labels, warning = chosen("1.28.10")
    assert labels == ["one.yaml"]
    assert warning is not None
    assert warning.startswith(
        "Istio 1.28.10 pins Gateway API v1.4.1 and no bundle is of v1.4 (have v1.3.0, v1.5.1, v1.6.1): "
        "its Gateway API objects were checked against one.yaml (v1.5.1), the nearest newer release"
    )
    # a release the harness knows no pin for: every bundle, and a warning
    labels, warning = chosen("1.40.0")
    assert labels == ["one.yaml", "two.yaml", "v1.3.0-standard.yaml"]
    assert warning is not None and "no Gateway API pin is known for Istio 1.40.0" in warning
    # the choice decides the outcome: port 150 is over v1.5.1's maximum, not v1.6.1's
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}}
    route["spec"] = {"port": 150}
    for istio, expected in (("1.30.3", ["spec.port: 150 is more than the maximum 100"]), ("1.31-dev", [])):
        (res,) = validate_document(route, choose_gateway_api_bundles(bundles, istio).bundles)
        assert [str(e) for e in res.errors] == expected


# ------------------------------------------------------------------------ the real Istio bundles

USED_KINDS = {
    ("networking.istio.io", "ServiceEntry"),
    ("networking.istio.io", "Gateway"),
    ("networking.istio.io", "VirtualService"),
    ("networking.istio.io", "DestinationRule"),
    ("networking.istio.io", "Sidecar"),
    ("security.istio.io", "AuthorizationPolicy"),
}


@needs_shared
@pytest.mark.parametrize("version", ISTIO_VERSIONS)
def test_every_istio_bundle_defines_the_kinds_we_use_at_v1(version: str) -> None:
    assert ISTIO_CRDS is not None
    bundle = IstioCrdDir(ISTIO_CRDS).bundle(version)
    assert set(bundle.kinds()) >= USED_KINDS
    for group, kind in USED_KINDS:
        assert "v1" in bundle.served_versions(group, kind), (group, kind)


@needs_shared
def test_the_shared_folder_has_the_releases_the_readme_lists() -> None:
    assert {"1.28.10", "1.29.6", "1.30.3", "1.31-dev"} <= set(ISTIO_VERSIONS)
    assert list(ISTIO_VERSIONS) == sorted(ISTIO_VERSIONS, key=lambda v: IstioVersion.parse(v).sort_key)


def _doc(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _docs(name: str) -> list[dict[str, Any]]:
    """The documents of a data file, parsed as kubectl's YAML parser would: integer keys stay integers,
    an empty value is null."""
    return [d for d in yaml.safe_load_all((DOCS / name).read_text()) if d is not None]


@needs_shared
@pytest.mark.parametrize("version", ISTIO_VERSIONS)
def test_istio_docs_port_level_mtls_with_an_integer_port_key(version: str) -> None:
    assert ISTIO_CRDS is not None
    bundle = IstioCrdDir(ISTIO_CRDS).bundle(version)
    docs = _docs("peer-authentication-port-level-mtls.yaml")
    assert [list(d["spec"]["portLevelMtls"]) for d in docs] == [[8080], [8080]]
    for doc in docs:
        (res,) = validate_document(doc, [bundle])
        assert res.errors == (), [str(e) for e in res.errors]
    typo = copy.deepcopy(docs[0])
    typo["spec"]["portLevelMtls"][8080]["mode"] = "DISABLED"
    (bad,) = validate_document(typo, [bundle])
    assert [str(e) for e in bad.errors] == [
        'spec.portLevelMtls[\'8080\'].mode: "DISABLED" is not one of "UNSET", "DISABLE", "PERMISSIVE", '
        '"STRICT"'
    ]
    assert list(typo["spec"]["portLevelMtls"]) == [8080]  # the caller's document is left as it was


@needs_shared
@pytest.mark.parametrize("version", ISTIO_VERSIONS)
def test_istio_envoy_filters_with_an_empty_match(version: str) -> None:
    assert ISTIO_CRDS is not None
    bundle = IstioCrdDir(ISTIO_CRDS).bundle(version)
    docs = _docs("envoy-filter-empty-match.yaml")
    patches = [d["spec"]["configPatches"][0] for d in docs]
    assert [(p["match"], p["patch"]) for p in patches] == [(None, None), (None, {"operation": "REMOVE"})]
    for doc in docs:
        (res,) = validate_document(doc, [bundle])
        assert res.errors == (), [str(e) for e in res.errors]
    # a null where a value is required is dropped too, and then the field is missing (as on apply)
    entry = _doc(ISTIO_BROKEN["ServiceEntry"][0])
    entry["spec"]["hosts"] = None
    (missing,) = validate_document(entry, [bundle])
    assert [str(e) for e in missing.errors] == ["spec.hosts: required field is missing"]
    # a null list item stays: the API server rejects it
    entry["spec"]["hosts"] = ["external.test", None]
    (item,) = validate_document(entry, [bundle])
    assert [str(e) for e in item.errors] == ["spec.hosts[1]: expected string, got null"]


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


_DELETE = object()

ISTIO_BROKEN = {
    "ServiceEntry": (
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: external, namespace: egress}
        spec:
          hosts: [external.test]
          resolution: DNS
          ports: [{name: http, number: 80, protocol: HTTP}]
        """,
        ("spec", "ports", 0, "number"),
        "80",
        "spec.ports[0].number: expected integer, got string",
    ),
    "Gateway": (
        """
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: egress-gateway}
        spec:
          selector: {istio: egressgateway}
          servers:
            - port: {number: 80, name: http, protocol: HTTP}
              hosts: [external.test]
        """,
        ("spec", "servers", 0, "port", "number"),
        "80",
        "spec.servers[0].port.number: expected integer, got string",
    ),
    "VirtualService": (
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: via-gateway}
        spec:
          hosts: [external.test]
          gateways: [mesh, egress-gateway]
          http:
            - match: [{gateways: [mesh], port: 80}]
              route:
                - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: external}
        """,
        ("spec", "http", 0, "route", 0, "destination", "subnet"),
        "external",
        "spec.http[0].route[0].destination.subnet: unknown field (did you mean 'subset'?)",
    ),
    "DestinationRule": (
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: egress-gateway-external}
        spec:
          host: istio-egressgateway.istio-system.svc.cluster.local
          subsets: [{name: external}]
        """,
        ("spec", "subsets", 0, "name"),
        _DELETE,
        "spec.subsets[0].name: required field is missing",
    ),
    "AuthorizationPolicy": (
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: only-relay, namespace: istio-system}
        spec:
          selector: {matchLabels: {istio: egressgateway}}
          action: ALLOW
          rules: [{from: [{source: {namespaces: [egress]}}]}]
        """,
        ("spec", "action"),
        "PERMIT",
        'spec.action: "PERMIT" is not one of "ALLOW", "DENY", "AUDIT", "CUSTOM"',
    ),
    "Sidecar": (
        """
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {name: default, namespace: egress}
        spec:
          outboundTrafficPolicy: {mode: REGISTRY_ONLY}
        """,
        ("spec", "outboundTrafficPolicy", "mode"),
        "BLOCK",
        'spec.outboundTrafficPolicy.mode: "BLOCK" is not one of "REGISTRY_ONLY", "ALLOW_ANY"',
    ),
}


@needs_shared
@pytest.mark.parametrize("version", ISTIO_VERSIONS)
@pytest.mark.parametrize("kind", sorted(ISTIO_BROKEN))
def test_a_broken_istio_manifest_is_rejected_at_its_path(kind: str, version: str) -> None:
    assert ISTIO_CRDS is not None
    bundle = IstioCrdDir(ISTIO_CRDS).bundle(version)
    text, path, value, expected = ISTIO_BROKEN[kind]
    good = _doc(text)
    (ok,) = validate_document(good, [bundle])
    assert ok.errors == (), [str(e) for e in ok.errors]
    assert (ok.kind, ok.schema_source) == (kind, f"{version}.yaml")
    (bad,) = validate_document(_set(good, path, value), [bundle])
    assert [str(e) for e in bad.errors] == [expected]


GATEWAY_API_BROKEN = {
    "Gateway": (
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: egress}
        spec:
          gatewayClassName: istio
          listeners: [{name: http, port: 80, protocol: HTTP, hostname: external.test}]
        """,
        ("spec", "listeners", 0, "protocol"),
        _DELETE,
        "spec.listeners[0].protocol: required field is missing",
    ),
    "HTTPRoute": (
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: to-external}
        spec:
          parentRefs: [{name: egress}]
          hostnames: [external.test]
          rules: [{backendRefs: [{name: external, kind: Hostname, group: networking.istio.io, port: 80}]}]
        """,
        ("spec", "rules", 0, "backendRefs", 0, "port"),
        70000,
        "spec.rules[0].backendRefs[0].port: 70000 is more than the maximum 65535",
    ),
}


@needs_shared
@pytest.mark.parametrize("bundle_file", GATEWAY_API_FILES)
@pytest.mark.parametrize("kind", sorted(GATEWAY_API_BROKEN))
def test_a_broken_gateway_api_manifest_is_rejected_at_its_path(kind: str, bundle_file: str) -> None:
    assert GATEWAY_API_CRDS is not None
    bundle = load_bundle(GATEWAY_API_CRDS / bundle_file)
    text, path, value, expected = GATEWAY_API_BROKEN[kind]
    good = _doc(text)
    (ok,) = validate_document(good, [bundle])
    assert ok.errors == (), [str(e) for e in ok.errors]
    assert ok.result.unchecked, "Gateway API schemas carry CEL rules; they must be reported as not checked"
    (bad,) = validate_document(_set(good, path, value), [bundle])
    assert [str(e) for e in bad.errors] == [expected]


@needs_shared
def test_the_shared_gateway_api_bundles_know_their_releases() -> None:
    assert GATEWAY_API_CRDS is not None
    assert {b.label: b.gateway_api_version for b in load_bundle_dir(GATEWAY_API_CRDS)} == {
        "v1.5.1-experimental.yaml": "v1.5.1",
        "v1.6.1-experimental.yaml": "v1.6.1",
    }


@needs_shared
def test_istio_docs_routes_against_the_gateway_api_their_istio_pins() -> None:
    assert ISTIO_CRDS is not None and GATEWAY_API_CRDS is not None
    bundles = load_bundle_dir(GATEWAY_API_CRDS)
    plain, persistent = _docs("egress-gateway-httproutes-session-persistence.yaml")
    for istio, source, idle_timeout in (
        ("1.30.3", "v1.5.1-experimental.yaml", []),
        (
            "1.31-dev",
            "v1.6.1-experimental.yaml",
            ["spec.rules[0].sessionPersistence.idleTimeout: unknown field (did you mean 'absoluteTimeout'?)"],
        ),
    ):
        choice = choose_gateway_api_bundles(bundles, istio)
        assert [b.label for b in choice.bundles] == [source]
        assert choice.warning is None
        istio_bundle = IstioCrdDir(ISTIO_CRDS).bundle(istio)
        (res,) = validate_document(plain, [istio_bundle, *choice.bundles])
        assert (res.schema_source, res.errors) == (source, ())
        (res,) = validate_document(persistent, [istio_bundle, *choice.bundles])
        assert [str(e) for e in res.errors] == idle_timeout


@needs_shared
def test_a_gateway_api_object_is_checked_against_every_gateway_api_bundle() -> None:
    assert ISTIO_CRDS is not None and GATEWAY_API_CRDS is not None
    bundles = [IstioCrdDir(ISTIO_CRDS).bundle("1.30.3"), *load_bundle_dir(GATEWAY_API_CRDS)]
    results = validate_document(_doc(GATEWAY_API_BROKEN["HTTPRoute"][0]), bundles)
    assert [r.schema_source for r in results] == list(GATEWAY_API_FILES)
    # Istio's own Gateway and the Gateway API's are told apart by group
    (istio_gateway,) = validate_document(_doc(ISTIO_BROKEN["Gateway"][0]), bundles)
    assert istio_gateway.schema_source == "1.30.3.yaml"


# ------------------------------------------------------------------------------- the whole catalog


@needs_shared
def test_the_catalog_is_valid_for_every_istio_release_in_shared() -> None:
    assert ISTIO_CRDS is not None
    report = validate_catalog(CATALOG, None, ISTIO_CRDS, GATEWAY_API_CRDS)
    assert report.issues == [], report.format()
    assert report.ok
    assert report.istio_versions == ISTIO_VERSIONS
    # Every (scenario, version) pair outside the scenario's range is listed as skipped, the rest checked.
    out_of_range = [
        (s.name, v) for s in CATALOG.scenarios for v in ISTIO_VERSIONS if not s.istio.applies_to(v)[0]
    ]
    assert sorted((name, v) for name, v, _ in report.skipped) == sorted(out_of_range)
    # Each document of an in-range pair is checked (a Gateway API one against the bundle of the release
    # its Istio pins, the nearest when the folder has none of that minor).
    covered = Counter((c.scenario, c.istio_version) for c in report.checks)
    for scenario in CATALOG.scenarios:
        documents = len(render_scenario(scenario, offline_context()).documents)
        for version in ISTIO_VERSIONS:
            expected = documents if scenario.istio.applies_to(version)[0] else 0
            assert covered[(scenario.name, version)] >= expected, (scenario.name, version)
            assert expected or not covered[(scenario.name, version)]
    assert {c.coverage for c in report.checks} == {"crd"}
    summary = report.format()
    assert summary.endswith("OK")
    assert "x-kubernetes-validations (CEL) rules reached by" in summary


def _copy_scenario(tmp_path: Path, name: str = "http-via-egress-gateway") -> Path:
    target = tmp_path / "catalog" / name
    shutil.copytree(DEFAULT_SCENARIOS_DIR / name, target)
    return target


@needs_shared
def test_a_broken_scenario_manifest_is_reported_with_file_line_document_and_path(tmp_path: Path) -> None:
    assert ISTIO_CRDS is not None
    folder = _copy_scenario(tmp_path)
    gateway = folder / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("number: 80", 'number: "80"'))
    vs = folder / "virtual-service.yaml"
    vs.write_text(
        vs.read_text() + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: second}\nspec: {hosts: [a.test], tcp: [{route: [{destination: {}}]}]}\n"
    )
    gateway_line = gateway.read_text().splitlines().index('        number: "80"') + 1
    vs_line = len(vs.read_text().splitlines())  # the flow-style spec of the second document
    catalog = load_catalog(tmp_path / "catalog")
    report = validate_catalog(catalog, ["1.30.3", "1.28.10"], ISTIO_CRDS, None)
    assert not report.ok
    lines = [str(i) for i in report.issues]
    assert lines == [
        f"{gateway}:{gateway_line}: document 0 (Gateway/egress-gateway): spec.servers[0].port.number: expected integer, "
        "got string [scenario http-via-egress-gateway, Istio 1.30.3, schema 1.30.3.yaml]",
        f"{vs}:{vs_line}: document 1 (VirtualService/second): spec.tcp[0].route[0].destination.host: required field "
        "is missing [scenario http-via-egress-gateway, Istio 1.30.3, schema 1.30.3.yaml]",
        f"{gateway}:{gateway_line}: document 0 (Gateway/egress-gateway): spec.servers[0].port.number: expected integer, "
        "got string [scenario http-via-egress-gateway, Istio 1.28.10, schema 1.28.10.yaml]",
        f"{vs}:{vs_line}: document 1 (VirtualService/second): spec.tcp[0].route[0].destination.host: required field "
        "is missing [scenario http-via-egress-gateway, Istio 1.28.10, schema 1.28.10.yaml]",
    ]
    assert report.format().endswith("FAILED: 4 errors")


@needs_shared
def test_versions_out_of_a_scenarios_range_are_listed_not_hidden(tmp_path: Path) -> None:
    assert ISTIO_CRDS is not None
    folder = _copy_scenario(tmp_path, "sidecar-only-egress")
    spec = folder / "scenario.yaml"
    spec.write_text(spec.read_text().replace('min: "1.23"', 'min: "1.30"\n  max: "1.30"'))
    report = validate_catalog(load_catalog(tmp_path / "catalog"), None, ISTIO_CRDS, None)
    assert report.ok
    assert {c.istio_version for c in report.checks} == {"1.30.3"}
    assert report.skipped == [
        ("sidecar-only-egress", "1.28.10", "Istio 1.28.10 is older than the scenario's minimum 1.30"),
        ("sidecar-only-egress", "1.29.6", "Istio 1.29.6 is older than the scenario's minimum 1.30"),
        ("sidecar-only-egress", "1.31-dev", "Istio 1.31-dev is newer than the scenario's maximum 1.30"),
    ]
    assert "skipped: sidecar-only-egress @ Istio 1.28.10: Istio 1.28.10 is older" in report.format()


@needs_shared
def test_gateway_api_objects_need_the_requirement_and_the_crds(tmp_path: Path) -> None:
    assert ISTIO_CRDS is not None
    folder = _copy_scenario(tmp_path, "sidecar-only-egress")
    (folder / "route.yaml").write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n"
    )
    spec = folder / "scenario.yaml"
    spec.write_text(
        spec.read_text().replace("  - service-entry.yaml", "  - service-entry.yaml\n  - route.yaml")
    )
    catalog = load_catalog(tmp_path / "catalog")
    report = validate_catalog(catalog, ["1.30.3"], ISTIO_CRDS, None)
    assert [i.message for i in report.issues] == [
        f"a Gateway API object in a scenario without requires.gateway_api: true (set it in {spec})",
        "no CRD defines gateway.networking.k8s.io/v1 HTTPRoute (searched: 1.30.3.yaml) "
        "(pass the Gateway API CRDs: --gateway-api-crd-dir)",
    ]
    spec.write_text(spec.read_text().replace('min: "1.23"', 'min: "1.23"\nrequires: {gateway_api: true}'))
    report = validate_catalog(load_catalog(tmp_path / "catalog"), ["1.30.3"], ISTIO_CRDS, GATEWAY_API_CRDS)
    assert report.ok, report.format()
    # Istio 1.30 pins Gateway API v1.5.1
    assert {c.schema_source for c in report.checks if c.object == "HTTPRoute/r"} == {
        "v1.5.1-experimental.yaml"
    }


@needs_shared
def test_a_gateway_api_manifest_is_checked_against_the_release_its_istio_pins(tmp_path: Path) -> None:
    assert ISTIO_CRDS is not None and GATEWAY_API_CRDS is not None
    folder = _copy_scenario(tmp_path, "gateway-api-http-via-egress-gateway")
    routes = folder / "http-routes.yaml"
    # GEP-1619 session persistence with an idleTimeout: Gateway API v1.5.1 has it, v1.6.0 removed it
    routes.write_text(
        routes.read_text()
        + "      sessionPersistence:\n        sessionName: egress\n        type: Cookie\n        idleTimeout: 30m\n"
    )
    line = routes.read_text().splitlines().index("        idleTimeout: 30m") + 1
    catalog = load_catalog(tmp_path / "catalog")
    report = validate_catalog(catalog, ["1.28.10", "1.30.3", "1.31-dev"], ISTIO_CRDS, GATEWAY_API_CRDS)
    assert [str(i) for i in report.issues] == [
        f"{routes}:{line}: document 1 (HTTPRoute/egress-gw-to-external): spec.rules[0].sessionPersistence."
        "idleTimeout: unknown field (did you mean 'absoluteTimeout'?) [scenario gateway-api-http-via-egress-gateway, "
        "Istio 1.31-dev, schema v1.6.1-experimental.yaml]"
    ]
    routes_checked = {
        (c.istio_version, c.schema_source) for c in report.checks if c.object.startswith("HTTPRoute/")
    }
    assert routes_checked == {
        ("1.28.10", "v1.5.1-experimental.yaml"),
        ("1.30.3", "v1.5.1-experimental.yaml"),
        ("1.31-dev", "v1.6.1-experimental.yaml"),
    }
    summary = report.format()
    assert (
        "Gateway API CRDs by Istio release: 1.28.10: v1.5.1-experimental.yaml (pins v1.4.1); "
        "1.30.3: v1.5.1-experimental.yaml (pins v1.5.1); 1.31-dev: v1.6.1-experimental.yaml (pins v1.6.0)"
    ) in summary
    # Istio 1.28 pins v1.4.1, which the shared folder does not have: said, not hidden
    assert "warning: Istio 1.28.10 pins Gateway API v1.4.1 and no bundle is of v1.4" in summary


def test_no_crds_is_an_error_not_a_pass(tmp_path: Path) -> None:
    report = validate_catalog(CATALOG, None, tmp_path, None)
    assert not report.ok
    assert report.checks == []
    (issue,) = report.issues
    assert issue.message.startswith(f"no Istio CRD bundles in {tmp_path}: nothing to validate against")


def test_a_requested_version_without_a_bundle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "1.30.3.yaml").write_text(WIDGET_CRD)
    report = validate_catalog(CATALOG, ["1.27.0", "not-a-version"], tmp_path, None)
    assert [i.istio_version for i in report.issues] == ["1.27.0", "not-a-version"]
    assert "no CRD bundle for Istio 1.27.0 (have: 1.30.3)" in report.issues[0].message
    assert "not an Istio version" in report.issues[1].message
    assert not report.ok


def test_a_catalog_validated_against_the_wrong_crds_fails(tmp_path: Path) -> None:
    # a bundle without Istio's kinds: every Istio document of the catalog is an unknown kind
    (tmp_path / "1.30.3.yaml").write_text(WIDGET_CRD)
    report = validate_catalog(CATALOG, None, tmp_path, None)
    documents = sum(len(render_scenario(s, offline_context()).documents) for s in CATALOG.scenarios)
    assert len(report.issues) == documents
    assert all(i.field == "kind" and "no CRD defines " in i.message for i in report.issues)
    assert any("no CRD defines networking.istio.io/v1" in i.message for i in report.issues)


def test_a_catalog_with_a_deliberately_failing_render_reports_it(tmp_path: Path) -> None:
    folder = _copy_scenario(tmp_path, "sidecar-only-egress")
    catalog = load_catalog(tmp_path / "catalog")
    (folder / "service-entry.yaml").write_text("spec: {{ nope }}\n")  # broken after loading
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "1.30.3.yaml").write_text(WIDGET_CRD)
    report = validate_catalog(catalog, None, tmp_path / "crds", None)
    (issue,) = report.issues
    assert issue.message.startswith(f"{folder / 'service-entry.yaml'}:1: unknown template variable 'nope'")
    assert issue.scenario == "sidecar-only-egress"


# ------------------------------------------------------------------------------------ the download


class _Routes(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes, float]]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        status, body, delay = self.routes.get(self.path, (404, b"not found", 0.0))
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@pytest.fixture
def crd_server() -> Iterator[tuple[str, dict[str, tuple[int, bytes, float]], list[str]]]:
    routes: dict[str, tuple[int, bytes, float]] = {}
    seen: list[str] = []
    handler = type("Handler", (_Routes,), {"routes": routes, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/istio", routes, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_crd_urls() -> None:
    assert istio_crd_url("1.30.3") == (
        "https://raw.githubusercontent.com/istio/istio/1.30.3/manifests/charts/base/files/crd-all.gen.yaml"
    )
    assert istio_crd_url("1.23.4", "http://h/x/").endswith(
        "/x/1.23.4/manifests/charts/base/crds/crd-all.gen.yaml"
    )
    assert istio_crd_url("1.31-dev", "http://h").startswith("http://h/master/manifests/charts/base/files/")
    assert "/1.31.0-alpha.0/" in istio_crd_url("1.31.0-alpha.0")


def test_download_writes_the_bundle_atomically(
    tmp_path: Path, crd_server: tuple[str, dict[str, tuple[int, bytes, float]], list[str]]
) -> None:
    base, routes, seen = crd_server
    routes["/istio/1.30.3/manifests/charts/base/files/crd-all.gen.yaml"] = (200, WIDGET_CRD.encode(), 0.0)
    dest = tmp_path / "cache"
    path = download_istio_crds("1.30.3", dest, base_url=base, timeout=5)
    assert path == dest / "1.30.3.yaml"
    assert path.read_text() == WIDGET_CRD
    assert [p.name for p in dest.iterdir()] == ["1.30.3.yaml"]
    assert IstioCrdDir(dest).versions() == ("1.30.3",)
    assert seen == ["/istio/1.30.3/manifests/charts/base/files/crd-all.gen.yaml"]


def test_a_failed_download_leaves_nothing_behind(
    tmp_path: Path, crd_server: tuple[str, dict[str, tuple[int, bytes, float]], list[str]]
) -> None:
    base, routes, _ = crd_server
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "1.29.6.yaml").write_text(WIDGET_CRD)
    with pytest.raises(CrdError, match=r"crd-all\.gen\.yaml failed: HTTP 404"):
        download_istio_crds("1.29.6", dest, base_url=base, timeout=5)
    routes["/istio/1.29.6/manifests/charts/base/files/crd-all.gen.yaml"] = (
        200,
        b"<html>rate limited</html>",
        0.0,
    )
    with pytest.raises(CrdError, match="no CustomResourceDefinition"):
        download_istio_crds("1.29.6", dest, base_url=base, timeout=5)
    # the good file that was there is untouched and no temp file is left
    assert [p.name for p in dest.iterdir()] == ["1.29.6.yaml"]
    assert (dest / "1.29.6.yaml").read_text() == WIDGET_CRD


def test_a_download_times_out(
    tmp_path: Path, crd_server: tuple[str, dict[str, tuple[int, bytes, float]], list[str]]
) -> None:
    base, routes, _ = crd_server
    routes["/istio/1.28.10/manifests/charts/base/files/crd-all.gen.yaml"] = (200, WIDGET_CRD.encode(), 1.5)
    started = time.monotonic()
    with pytest.raises(CrdError, match="failed"):
        download_istio_crds("1.28.10", tmp_path, base_url=base, timeout=0.2)
    assert time.monotonic() - started < 1.4
    assert list(tmp_path.iterdir()) == []


def test_fetch_crds_command(
    tmp_path: Path,
    crd_server: tuple[str, dict[str, tuple[int, bytes, float]], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from harness.scenarios import cli

    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    base, routes, _ = crd_server
    routes["/istio/master/manifests/charts/base/files/crd-all.gen.yaml"] = (200, WIDGET_CRD.encode(), 0.0)

    def run(*argv: str) -> int:
        args = parser.parse_args(
            ["scenarios", "fetch-crds", *argv, "--dest", str(tmp_path), "--base-url", base]
        )
        code: int = args.handler(args)
        return code

    assert run("1.31-dev") == 0
    assert (tmp_path / "1.31-dev.yaml").read_text() == WIDGET_CRD
    assert "Istio 1.31-dev:" in capsys.readouterr().out
    assert run("1.31-dev", "1.27.0") == 1
    assert "1.27.0: download of" in capsys.readouterr().err
    assert run("latest") == 2
    assert "not an Istio version: 'latest'" in capsys.readouterr().err
