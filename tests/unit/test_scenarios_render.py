"""The renderer: plain ``{{ var }}`` substitution, deterministic, with file:line errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cluster import kube
from harness.cluster.istio import ACCESS_LOG_ENCODINGS, OUTBOUND_POLICIES, OVERLAY_TEMPLATE, render_overlay
from harness.cluster.providers.kind import INGRESS_NODE_PORT
from harness.scenarios import (
    RenderContext,
    RequestSpec,
    ScenarioError,
    TemplateError,
    load_catalog,
    render_request,
    render_scenario,
    render_template,
)
from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR, PROJECT_ROOT, parse_yaml_documents
from harness.scenarios.model import TEMPLATE_VARIABLES, Expectation
from harness.scenarios.render import render_text

CATALOG = load_catalog(DEFAULT_SCENARIOS_DIR)
MISSION = CATALOG.get("http-via-egress-gateway")


def ctx(**overrides: object) -> RenderContext:
    values: dict[str, object] = {"istio_version": "1.30.3", **overrides}
    return RenderContext(**values)  # type: ignore[arg-type]


def test_rendering_is_byte_identical_every_time_and_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = render_scenario(MISSION, ctx()).text
    monkeypatch.chdir(tmp_path)
    again = load_catalog(DEFAULT_SCENARIOS_DIR).get(MISSION.name)
    assert render_scenario(again, ctx()).text.encode() == first.encode()


def test_the_stream_holds_every_template_in_order_with_its_source() -> None:
    rendered = render_scenario(MISSION, ctx())
    sources = [line for line in rendered.text.splitlines() if line.startswith("# Source: ")]
    assert sources == [f"# Source: http-via-egress-gateway/{m.name}" for m in MISSION.manifests]
    assert "{{" not in rendered.text
    parsed = [d for d in yaml.safe_load_all(rendered.text) if d is not None]
    assert parsed == [dict(d.body) for d in rendered.documents]
    assert [d.describe() for d in rendered.documents] == [
        "ServiceEntry/external-http",
        "Gateway/egress-gateway",
        "DestinationRule/egress-gateway-external",
        "VirtualService/external-via-egress-gateway",
    ]


def test_values_land_with_their_yaml_types() -> None:
    rendered = render_scenario(
        MISSION, ctx(namespace="run-7", external_host="httpbin.example.org", external_port=8080)
    )
    se, gw, dr, vs = (d.body for d in rendered.documents)
    assert se["metadata"]["namespace"] == "run-7"
    assert se["spec"]["hosts"] == ["httpbin.example.org"]
    assert se["spec"]["ports"][0]["number"] == 8080
    assert gw["spec"]["selector"] == {"istio": "egressgateway"}
    assert dr["spec"]["host"] == "istio-egressgateway.istio-system.svc.cluster.local"
    mesh_leg, gateway_leg = vs["spec"]["http"]
    assert mesh_leg["match"][0] == {"gateways": ["mesh"], "port": 8080}
    assert mesh_leg["route"][0]["destination"]["subset"] == "external"
    assert gateway_leg["route"][0]["destination"] == {"host": "httpbin.example.org", "port": {"number": 8080}}


def test_documents_keep_the_template_line_numbers() -> None:
    rendered = render_scenario(MISSION, ctx())
    vs = rendered.documents[3]
    template_lines = vs.template.read_text().splitlines()
    line = vs.line_of(("spec", "http", 1, "route", 0, "destination", "port", "number"))
    assert template_lines[line - 1].strip() == "number: {{ external_port }}"
    assert vs.index == 0


def test_an_unknown_variable_names_file_line_and_variable(tmp_path: Path) -> None:
    template = tmp_path / "gateway.yaml"
    with pytest.raises(ScenarioError) as info:
        render_text("a: 1\nb: {{ namespace }}\nc: {{ egress_gateway }}\n", ctx(), source=template)
    (issue,) = info.value.issues
    assert (issue.path, issue.line) == (template, 3)
    assert issue.message.startswith("unknown template variable 'egress_gateway'")


def test_every_unknown_variable_of_a_scenario_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in MISSION.manifests:
        (folder / name.name).write_text(name.read_text())
    (folder / "gateway.yaml").write_text("kind: Gateway\nname: {{ nope }}\n")
    (folder / "destination-rule.yaml").write_text("kind: DestinationRule\n\nhost: {{ also_nope }}\n")
    broken = replace(
        MISSION, file=folder / "scenario.yaml", manifests=tuple(folder / m.name for m in MISSION.manifests)
    )
    with pytest.raises(ScenarioError) as info:
        render_scenario(broken, ctx())
    assert [(i.path.name, i.line, i.message.split(" (")[0]) for i in info.value.issues] == [
        ("gateway.yaml", 2, "unknown template variable 'nope'"),
        ("destination-rule.yaml", 3, "unknown template variable 'also_nope'"),
    ]


def test_placeholder_spacing_is_free_but_names_are_not() -> None:
    out = render_text(
        "a: {{namespace}} {{   run_id }}\n", ctx(namespace="ns", run_id="r1"), source=Path("x.yaml")
    )
    assert out == "a: ns r1\n"
    with pytest.raises(ScenarioError, match="malformed placeholder"):
        render_text("a: {{ run-id }}\n", ctx(), source=Path("x.yaml"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("namespace", "Bad_NS", "RenderContext.namespace: not a DNS label"),
        ("external_host", "two\nlines", "RenderContext.external_host: must be one non-empty line"),
        ("external_host", "{{ namespace }}", "RenderContext.external_host: must be one non-empty line"),
        ("external_port", 0, "RenderContext.external_port: not a port number"),
        ("external_tls_port", "443", "RenderContext.external_tls_port: not a port number"),
        ("egress_gateway_selector", "istio=egressgateway", "RenderContext.egress_gateway_selector"),
        ("istio_version", "latest", "not an Istio version"),
    ],
)
def test_a_bad_context_value_is_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ctx(**{field: value})


def test_variables_cover_every_field() -> None:
    assert set(ctx().variables()) == TEMPLATE_VARIABLES
    assert ctx(external_port=8080).variables()["external_port"] == "8080"


def test_derived_variables_follow_the_host_and_the_run() -> None:
    variables = ctx(external_host="api.partner.example", run_id="r7").variables()
    assert variables["external_host_domain"] == "partner.example"
    assert variables["client_credential_name"] == "egress-harness-client-r7"
    assert variables["ca_credential_name"] == "egress-harness-server-ca-r7"
    offline = ctx().variables()
    assert offline["external_host_domain"] == "egress-harness.test"
    assert offline["client_credential_name"] == "egress-harness-client-offline"
    assert offline["ca_credential_name"] == "egress-harness-server-ca-offline"


def test_derived_variables_can_be_set_and_are_derived_again_on_replace() -> None:
    given = ctx(external_host_domain="other.test", client_credential_name="my-client", run_id="a")
    assert (given.external_host_domain, given.client_credential_name) == ("other.test", "my-client")
    assert given.ca_credential_name == "egress-harness-server-ca-a"
    moved = replace(given, run_id="b", external_host="x.y.example")
    # what was set stays set; what was derived follows the new values
    assert (moved.external_host_domain, moved.client_credential_name) == ("other.test", "my-client")
    assert moved.ca_credential_name == "egress-harness-server-ca-b"
    derived = replace(ctx(run_id="a"), run_id="b", external_host="x.y.example")
    assert (derived.external_host_domain, derived.client_credential_name) == (
        "y.example",
        "egress-harness-client-b",
    )


def test_the_new_variables_render_in_templates() -> None:
    text = (
        "hosts: ['*.{{ external_host_domain }}']\n"
        "mtls: {{ client_credential_name }}\n"
        "ca: {{ ca_credential_name }}\n"
    )
    out = render_text(text, ctx(external_host="h.corp.example", run_id="r9"), source=Path("x.yaml"))
    assert yaml.safe_load(out) == {
        "hosts": ["*.corp.example"],
        "mtls": "egress-harness-client-r9",
        "ca": "egress-harness-server-ca-r9",
    }


def test_a_single_label_host_has_no_domain_and_a_wildcard_of_it_is_an_error() -> None:
    context = ctx(external_host="localhost")
    assert context.variables()["external_host_domain"] == ""
    assert render_text("host: {{ external_host }}\n", context, source=Path("x.yaml")) == "host: localhost\n"
    with pytest.raises(ScenarioError) as info:
        render_text("a: 1\nhosts: ['*.{{ external_host_domain }}']\n", context, source=Path("gw.yaml"))
    (issue,) = info.value.issues
    assert (issue.path, issue.line) == (Path("gw.yaml"), 2)
    assert issue.message == (
        "{{ external_host_domain }} has no value in this run: external_host 'localhost' has no domain "
        "(one label); set external_host_domain"
    )
    wildcard = CATALOG.get("wildcard-host-via-egress-gateway")
    with pytest.raises(ScenarioError) as whole:
        render_scenario(wildcard, context)
    assert {(i.path.name, i.message.split(" has")[0]) for i in whole.value.issues} == {
        (name, "{{ external_host_domain }}")
        for name in ("service-entries.yaml", "gateway.yaml", "virtual-service.yaml")
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("external_host_domain", "*.test", "RenderContext.external_host_domain: not a DNS name"),
        ("client_credential_name", "Client_Cred", "RenderContext.client_credential_name: not a Kubernetes"),
        (
            "ca_credential_name",
            "istio-ca",
            "RenderContext.ca_credential_name: Istio does not take 'istio-ca'",
        ),
        ("client_credential_name", "prometheus-x", "RenderContext.client_credential_name: Istio does not"),
        ("ca_credential_name", "run-ca-cacert", "RenderContext.ca_credential_name: Istio does not take"),
    ],
)
def test_a_bad_derived_value_is_refused(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        ctx(**{field: value})


def test_requests_render_with_ports_and_log_expectations() -> None:
    (request,) = MISSION.requests
    resolved = render_request(
        request, ctx(external_host="h.example", external_port=8080), source=MISSION.file
    )
    assert resolved.url == "http://h.example:8080/get"
    assert resolved.expect.gateway["upstream_cluster"] == "outbound|8080||h.example"
    assert (
        resolved.expect.sidecar["upstream_cluster"]
        == "outbound|80|external|istio-egressgateway.istio-system.svc.cluster.local"
    )
    assert resolved.expect.gateway["response_flags"] is None
    assert resolved.chain == ("ingress", "proxy", "target")


def test_a_rendered_request_keeps_every_field_of_its_expectation() -> None:
    """Rendering fills the templates of the log fields and keeps the rest as written: a field it
    dropped would judge the request by another expectation than its scenario's."""
    expect = Expectation(
        200,
        False,
        sidecar={"upstream_cluster": "outbound|80||{{ external_host }}"},
        external_caller="workload",
        external_attempts=2,
        sidecar_absent=True,
    )
    resolved = render_request(
        RequestSpec(name="r", host="{{ external_host }}", expect=expect),
        ctx(external_host="h.example"),
        source=Path("s.yaml"),
    )
    assert resolved.expect == replace(expect, sidecar={"upstream_cluster": "outbound|80||h.example"})


@pytest.mark.parametrize(
    ("scheme", "port", "expected"),
    [("http", None, 81), ("https", None, 444), ("http", 9000, 9000), ("https", "{{ external_port }}", 81)],
)
def test_request_ports(scheme: str, port: int | str | None, expected: int) -> None:
    request = RequestSpec(
        name="r", host="{{ external_host }}", expect=Expectation(200, False), scheme=scheme, port=port
    )
    resolved = render_request(request, ctx(external_port=81, external_tls_port=444), source=Path("s.yaml"))
    assert resolved.port == expected


def test_a_port_placeholder_that_is_not_a_number_is_an_error() -> None:
    request = RequestSpec(
        name="r", host="h.test", expect=Expectation(200, False), port="{{ namespace }}", line=9
    )
    with pytest.raises(
        ScenarioError, match=r"s\.yaml:9: port: rendered to 'egress-harness', not a port number"
    ):
        render_request(request, ctx(), source=Path("s.yaml"))


labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(labels, st.lists(labels, min_size=1, max_size=3), st.integers(1, 65535))
def test_render_is_a_function_of_its_context(namespace: str, host_labels: list[str], port: int) -> None:
    host = ".".join(host_labels)
    context = ctx(namespace=namespace, external_host=host, external_port=port)
    a, b = render_scenario(MISSION, context), render_scenario(MISSION, context)
    assert a.text == b.text
    docs, issues = parse_yaml_documents(a.text, Path("stream.yaml"))
    assert not issues
    service_entry = next(d.value for d in docs if d.value and d.value.get("kind") == "ServiceEntry")
    assert service_entry["spec"]["hosts"] == [host]
    assert service_entry["spec"]["ports"][0]["number"] == port
    assert service_entry["metadata"]["namespace"] == namespace


# --- the one {{ var }} engine: render_template, the cluster tier's manifests too ------------------

_OLD_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def old_cluster_render(text: str, values: Mapping[str, object]) -> str:
    """The cluster tier's own renderer before it used the catalog's engine (``kube.render_template``
    as it was), kept here as the reference the engine must match on every manifest."""
    names = {m.group(1) for m in _OLD_PLACEHOLDER.finditer(text)}
    assert names == set(values), f"the reference needs exactly the template's names: {sorted(names)}"
    return _OLD_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


MANIFESTS = PROJECT_ROOT / "manifests"
#: templates of manifests/ with the values the cluster tier renders them with; any other template is
#: rendered with a made-up value for each of its placeholders
CLUSTER_TEMPLATE_VALUES: dict[str, list[dict[str, object]]] = {
    "kind/cluster.yaml": [
        {
            "cluster_name": "egress-harness",
            "node_image": "kindest/node:v1.33.1@sha256:0123abcd",
            "ingress_node_port": INGRESS_NODE_PORT,
            "ingress_host_port": 18080,
        }
    ],
    "istio/egress.yaml": [
        {
            "access_log_encoding": encoding,
            "outbound_traffic_policy": policy,
            "ingress_node_port": port,
            "default_config": default_config,
            "egress_gateway_node_selector": selector,
            "egress_gateway_tcp_port": 7777,
        }
        for encoding in ACCESS_LOG_ENCODINGS
        for policy in OUTBOUND_POLICIES
        for port in (INGRESS_NODE_PORT, 31000)
        for default_config in ("{}", "{fileFlushInterval: 100ms}")
        for selector in ('{egress-harness.io/egress-gateway: "true"}', "{}")
    ],
    "apps/relay.yaml": [{}],
}


def _template_cases() -> list[tuple[str, dict[str, object]]]:
    cases = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        name = path.relative_to(MANIFESTS).as_posix()
        made_up = {n: f"value-of-{n}" for n in sorted(set(_OLD_PLACEHOLDER.findall(path.read_text())))}
        cases.extend((name, values) for values in CLUSTER_TEMPLATE_VALUES.get(name, [made_up]))
    return cases


def test_the_templates_with_known_values_exist() -> None:
    assert all((MANIFESTS / name).is_file() for name in CLUSTER_TEMPLATE_VALUES)
    assert {name for name, _ in _template_cases()} >= set(CLUSTER_TEMPLATE_VALUES)


@pytest.mark.parametrize(
    ("name", "values"),
    _template_cases(),
    ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.values())) or "none",
)
def test_the_cluster_manifests_render_as_before(name: str, values: dict[str, object], tmp_path: Path) -> None:
    template = MANIFESTS / name
    expected = old_cluster_render(template.read_text(), values)
    assert render_template(template.read_text(), values, source=template, exact=True) == expected
    assert kube.render_file(template, values, tmp_path / "out.yaml").read_text() == expected
    assert "{{" not in expected


@pytest.mark.parametrize("encoding", ACCESS_LOG_ENCODINGS)
@pytest.mark.parametrize("policy", OUTBOUND_POLICIES)
def test_the_istio_overlay_renders_as_before(encoding: str, policy: str, tmp_path: Path) -> None:
    out = render_overlay(
        tmp_path / "overlay.yaml", access_log_encoding=encoding, outbound_traffic_policy=policy
    )
    values = {
        "access_log_encoding": encoding,
        "outbound_traffic_policy": policy,
        "ingress_node_port": INGRESS_NODE_PORT,
        "default_config": "{}",
        "egress_gateway_node_selector": '{egress-harness.io/egress-gateway: "true"}',
        "egress_gateway_tcp_port": 7777,
    }
    # without an Istio version there is no ProxyConfig of the harness's: its line goes
    expected = old_cluster_render(OVERLAY_TEMPLATE.read_text(), values).replace("    defaultConfig: {}\n", "")
    assert out.read_text() == expected
    mesh_config = yaml.safe_load(out.read_text())["spec"]["meshConfig"]
    assert mesh_config["accessLogEncoding"] == encoding
    assert mesh_config["outboundTrafficPolicy"] == {"mode": policy}


def test_render_template_fills_any_values_as_text() -> None:
    out = render_template(
        "a: {{ one }}\nb: {{two}}\nc: {{  one  }}\n", {"one": 1, "two": "x"}, source=Path("t")
    )
    assert out == "a: 1\nb: x\nc: 1\n"
    # without exact, a value no placeholder uses is fine (a context offers more than a template uses)
    assert render_template("a: {{ one }}\n", {"one": 1, "three": 3}, source=Path("t")) == "a: 1\n"


def test_render_template_names_file_and_line_of_every_missing_value(tmp_path: Path) -> None:
    template = tmp_path / "cluster.yaml"
    with pytest.raises(TemplateError) as info:
        render_template("a: {{ one }}\nb: {{ two }}\n\nc: {{ two }}\n", {"one": 1}, source=template)
    err = info.value
    assert isinstance(err, ScenarioError) and isinstance(err, KeyError)
    assert (err.source, err.missing, err.unused) == (template, ("two",), ())
    assert [(i.path, i.line) for i in err.issues] == [(template, 2), (template, 4)]
    assert err.issues[0].message == "unknown template variable 'two' (known: one)"
    lines = str(err).splitlines()
    assert lines[0].endswith("cluster.yaml: cannot render the template: template needs values for: two")
    assert lines[1].strip().endswith("cluster.yaml:2: unknown template variable 'two' (known: one)")


def test_render_template_exact_refuses_unused_values_and_suggests_the_name() -> None:
    with pytest.raises(TemplateError) as info:
        render_template("image: {{ node_image }}\n", {"node_imag": "x"}, source=Path("kind.yaml"), exact=True)
    err = info.value
    assert (err.missing, err.unused) == (("node_image",), ("node_imag",))
    assert [(i.line, i.message) for i in err.issues] == [
        (1, "unknown template variable 'node_image' (did you mean 'node_imag'?)"),
        (None, "no placeholder uses the value of: node_imag"),
    ]
    assert "template needs values for: node_image; template has no placeholder for: node_imag" in str(err)


def test_render_template_refuses_a_malformed_placeholder_at_its_line() -> None:
    with pytest.raises(TemplateError) as info:
        render_template(
            "a: 1\nb: {{ run-id }}\n", {"run": 1}, source=Path("x.yaml"), first_line=10, field="f"
        )
    (issue,) = info.value.issues
    assert (issue.line, issue.field) == (11, "f")
    assert issue.message.startswith("malformed placeholder '{{ run-id }}'")
    assert "cannot render the template: 1 malformed placeholder\n" in str(info.value)
