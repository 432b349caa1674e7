"""The whole scenario catalog (issue 5): it loads, renders byte for byte the same every time, its
manifests and expectations agree with each other, each scenario validates against the CRDs of every
Istio release in its range (and the Gateway API CRDs), a deliberately broken copy of each kind of
manifest the egress scenarios use is rejected at the right field and line, and the offline
pre-flight with ``istioctl analyze`` (``harness.scenarios.preflight``) against a fake istioctl.

The CRD checks need ``../shared`` (or ``EGRESS_HARNESS_SHARED``); without it they skip and say so.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.scenarios import Catalog, RenderContext, Scenario, load_catalog, render_request, render_scenario
from harness.scenarios.crds import (
    IstioCrdDir,
    choose_gateway_api_bundles,
    load_bundle_dir,
    shared_dir,
    validate_catalog,
)
from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR
from harness.scenarios.preflight import (
    AnalyzeError,
    AnalyzeMessage,
    PreflightError,
    analyze_command,
    analyze_offline,
    parse_analyze_output,
)
from harness.scenarios.render import RenderedScenario, offline_context, render_text

SHARED = shared_dir()
ISTIO_CRDS = SHARED / "istio" / "crds" if SHARED else None
GATEWAY_API_CRDS = SHARED / "gateway-api" / "crds" if SHARED else None
HAVE_SHARED = bool(ISTIO_CRDS and ISTIO_CRDS.is_dir() and GATEWAY_API_CRDS and GATEWAY_API_CRDS.is_dir())
SHARED_REASON = (
    "the Istio and Gateway API CRD bundles are absent: no ../shared/istio/crds and ../shared/gateway-api/crds "
    "beside the repository (set EGRESS_HARNESS_SHARED=/path/to/shared to run these checks)"
)
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=SHARED_REASON)
ISTIO_VERSIONS: tuple[str, ...] = IstioCrdDir(ISTIO_CRDS).versions() if HAVE_SHARED and ISTIO_CRDS else ()
GATEWAY_API_FILES: tuple[str, ...] = (
    tuple(p.name for p in sorted(GATEWAY_API_CRDS.glob("*.yaml"))) if HAVE_SHARED and GATEWAY_API_CRDS else ()
)
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_BUNDLES = load_bundle_dir(GATEWAY_API_CRDS) if HAVE_SHARED and GATEWAY_API_CRDS else ()

CATALOG = load_catalog(DEFAULT_SCENARIOS_DIR)

#: every scenario the catalog must hold, with its Istio minimum (no scenario has a maximum) and the
#: tags it must carry; the minimums are the researched facts (see each scenario's description).
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "http-via-egress-gateway": ("1.23", {"egress-gateway", "http"}),
    "registry-only-blocked": ("1.23", {"negative-control", "http"}),
    "sidecar-only-egress": ("1.23", {"negative-control", "http"}),
    "https-passthrough-via-egress-gateway": ("1.23", {"egress-gateway", "tls"}),
    "tls-origination-at-egress-gateway": ("1.23", {"egress-gateway", "tls", "http"}),
    "mtls-origination-at-egress-gateway": ("1.23", {"egress-gateway", "tls", "http"}),
    "registry-only-blocked-tls": ("1.23", {"negative-control", "tls"}),
    "authz-policy-on-egress-gateway": ("1.23", {"egress-gateway", "authz", "http"}),
    "wildcard-host-via-egress-gateway": ("1.23", {"egress-gateway", "wildcard", "http"}),
    "gateway-api-http-via-egress-gateway": ("1.23", {"gateway-api", "http"}),
    # TLSRoute v1 and TLS listeners without PILOT_ENABLE_ALPHA_GATEWAY_API: Istio 1.30.0
    "gateway-api-tls-passthrough-via-egress-gateway": ("1.30", {"gateway-api", "tls"}),
    "tls-origination-refused-untrusted-ca": ("1.23", {"negative-control", "tls-origination", "tls"}),
    "tls-origination-at-sidecar": ("1.23", {"sidecar", "tls-origination", "tls"}),
    "tcp-via-egress-gateway": ("1.23", {"egress-gateway", "tcp"}),
    "timeouts-and-retries-at-egress-gateway": ("1.23", {"egress-gateway", "timeouts-retries", "http"}),
    "identity-authz-on-egress-gateway": ("1.23", {"egress-gateway", "authz", "http", "negative-control"}),
    "one-host-two-ports": ("1.23", {"egress-gateway", "sidecar", "http", "tls"}),
    "bypass-without-sidecar": ("1.23", {"egress-gateway", "bypass", "http"}),
    "bypass-sidecar-excludes-external": ("1.23", {"egress-gateway", "bypass", "http"}),
    "wildcard-tls-passthrough-via-egress-gateway": (
        "1.23",
        {"egress-gateway", "wildcard", "tls", "passthrough"},
    ),
}
#: the tags a scenario may carry; a new one must be added here on purpose
TAG_VOCABULARY = {
    "egress-gateway",
    "sidecar",
    "http",
    "tls",
    "passthrough",
    "tls-origination",
    "mtls",
    "authz",
    "wildcard",
    "gateway-api",
    "registry-only",
    "negative-control",
    "timeouts-retries",
    "bypass",
    "tcp",
}
#: a context that differs from the offline one in every value
OTHER_CONTEXT = RenderContext(
    istio_version="1.30.3",
    namespace="run-ns",
    external_host="api.partner.example",
    external_port=8080,
    external_tls_port=8443,
    external_tcp_port=9100,
    egress_gateway_tcp_port=7878,
    unregistered_host="other.partner.example",
    gateway_namespace="gw-system",
    egress_gateway_service="egress.gw-system.svc.cluster.local",
    egress_gateway_selector="app: egress",
    run_id="r42",
)


def in_range(scenario: Scenario) -> list[str]:
    return [v for v in ISTIO_VERSIONS if scenario.istio.applies_to(v)[0]]


def render(scenario: Scenario, context: RenderContext | None = None) -> RenderedScenario:
    return render_scenario(scenario, context or offline_context(str(scenario.istio.min)))


def docs_of(
    rendered: RenderedScenario, kind: str, group: str = "networking.istio.io"
) -> list[Mapping[str, Any]]:
    return [d.body for d in rendered.documents if d.kind == kind and d.api_version.startswith(group + "/")]


# ------------------------------------------------------------------------------------------ loading


def test_the_whole_catalog_loads_with_every_scenario() -> None:
    catalog = load_catalog(DEFAULT_SCENARIOS_DIR)
    missing = sorted(set(EXPECTED) - set(catalog.names()))
    assert not missing, f"scenarios missing from {DEFAULT_SCENARIOS_DIR}: {missing}"
    unknown = sorted(set(catalog.names()) - set(EXPECTED))
    assert not unknown, f"scenarios this test does not know (add them to EXPECTED): {unknown}"
    assert list(catalog.names()) == sorted(catalog.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_version_range_and_tags(name: str) -> None:
    scenario = CATALOG.get(name)
    minimum, tags = EXPECTED[name]
    assert (str(scenario.istio.min), scenario.istio.max) == (minimum, None)
    assert tags <= set(scenario.tags), (
        f"{name}: tags {scenario.tags} lack {sorted(tags - set(scenario.tags))}"
    )
    assert set(scenario.tags) <= TAG_VOCABULARY, (
        f"{name}: unknown tags {sorted(set(scenario.tags) - TAG_VOCABULARY)}"
    )
    assert scenario.requires.gateway_api == ("gateway-api" in scenario.tags)
    # a scenario whose caller goes around its sidecar is a bypass scenario, and only such a one
    assert scenario.caller.captured == ("bypass" not in scenario.tags)


def test_gateway_api_tls_passthrough_excludes_releases_before_1_30() -> None:
    scenario = CATALOG.get("gateway-api-tls-passthrough-via-egress-gateway")
    assert scenario.istio.applies_to("1.29.6") == (
        False,
        "Istio 1.29.6 is older than the scenario's minimum 1.30",
    )
    assert scenario.istio.applies_to("1.30.0")[0]
    assert scenario.istio.applies_to("1.31-dev")[0]


# ---------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_scenario_renders_byte_identically(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = CATALOG.get(name)
    first = render(scenario).text
    monkeypatch.chdir(tmp_path)
    again = load_catalog(DEFAULT_SCENARIOS_DIR).get(name)
    assert render(again).text.encode() == first.encode()
    assert render(again, OTHER_CONTEXT).text == render(scenario, OTHER_CONTEXT).text
    assert "{{" not in first and "}}" not in first
    sources = [line for line in first.splitlines() if line.startswith("# Source: ")]
    assert sources == [f"# Source: {name}/{m.name}" for m in scenario.manifests]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_value_comes_from_the_context(name: str) -> None:
    """Rendered with other values, no default host, namespace or selector is left in the manifests."""
    scenario = CATALOG.get(name)
    rendered = render(scenario, OTHER_CONTEXT)
    defaults = offline_context()
    text = rendered.text
    for value in (
        defaults.external_host,
        defaults.unregistered_host,
        defaults.egress_gateway_service,
        defaults.external_host_domain,
        defaults.client_credential_name,
        defaults.ca_credential_name,
    ):
        assert value not in text, f"{name}: {value!r} is written out instead of templated"
    assert defaults.egress_gateway_selector not in text
    for doc in rendered.documents:
        namespace = doc.body["metadata"].get("namespace")
        assert namespace in (OTHER_CONTEXT.namespace, OTHER_CONTEXT.gateway_namespace), doc.describe()
    for request in scenario.requests:
        resolved = render_request(request, OTHER_CONTEXT, source=scenario.file)
        expected_port = {
            "https": OTHER_CONTEXT.external_tls_port,
            "tcp": OTHER_CONTEXT.external_tcp_port,
        }.get(request.scheme, OTHER_CONTEXT.external_port)
        assert resolved.port == expected_port
        assert resolved.host in (OTHER_CONTEXT.external_host, OTHER_CONTEXT.unregistered_host)
        for values in (resolved.expect.sidecar, resolved.expect.gateway):
            assert not any(isinstance(v, str) and "{{" in v for v in values.values())


def test_the_wildcard_is_the_external_host_domain_and_covers_the_request_host() -> None:
    """The wildcard scenario's domain is ``external_host_domain`` (no literal domain is left), and it
    covers the host the request goes to, with the defaults and with another context alike."""
    scenario = CATALOG.get("wildcard-host-via-egress-gateway")
    (request,) = scenario.requests
    assert request.host == "{{ unregistered_host }}"  # a host only the wildcard registers
    for context in (offline_context(), OTHER_CONTEXT):
        rendered = render(scenario, context)
        wildcard = f"*.{context.external_host_domain}"
        (wildcard_se, backend_se) = docs_of(rendered, "ServiceEntry")
        assert wildcard_se["spec"]["hosts"] == [wildcard]
        assert wildcard_se["spec"]["resolution"] == "NONE"
        assert backend_se["spec"]["hosts"] == [context.external_host]
        assert backend_se["spec"]["resolution"] == "DNS"
        (gateway,) = docs_of(rendered, "Gateway")
        assert gateway["spec"]["servers"][0]["hosts"] == [wildcard]
        (vs,) = docs_of(rendered, "VirtualService")
        assert vs["spec"]["hosts"] == [wildcard]
        host = render_request(request, context, source=scenario.file).host
        assert host.endswith("." + context.external_host_domain), (host, wildcard)
    assert offline_context().external_host_domain == "egress-harness.test"
    assert OTHER_CONTEXT.external_host_domain == "partner.example"


def _tls_settings(rendered: RenderedScenario, host: str) -> dict[str, Any]:
    (rule,) = [dr for dr in docs_of(rendered, "DestinationRule") if dr["spec"]["host"] == host]
    (port,) = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    settings: dict[str, Any] = port["tls"]
    return settings


def test_tls_origination_verifies_the_server_with_the_run_ca_secret() -> None:
    """No insecureSkipVerify: the gateway verifies the external host's certificate with the CA in the
    Secret the run creates (``ca_credential_name``) and checks the host's name in it."""
    scenario = CATALOG.get("tls-origination-at-egress-gateway")
    assert scenario.requires.server_ca_credential and not scenario.requires.client_credential
    rendered = render(scenario, OTHER_CONTEXT)
    assert "insecureSkipVerify" not in rendered.text
    tls = _tls_settings(rendered, OTHER_CONTEXT.external_host)
    assert tls == {
        "mode": "SIMPLE",
        "credentialName": "egress-harness-server-ca-r42",
        "sni": OTHER_CONTEXT.external_host,
        "subjectAltNames": [OTHER_CONTEXT.external_host],
    }
    assert tls["credentialName"] == OTHER_CONTEXT.ca_credential_name


def test_mtls_origination_names_the_client_secret_of_the_run() -> None:
    scenario = CATALOG.get("mtls-origination-at-egress-gateway")
    assert scenario.requires.external == "mtls"
    assert scenario.requires.client_credential and not scenario.requires.server_ca_credential
    rendered = render(scenario, OTHER_CONTEXT)
    (rule,) = [
        dr for dr in docs_of(rendered, "DestinationRule") if dr["spec"]["host"] == OTHER_CONTEXT.external_host
    ]
    # the gateway reads the Secret from its own namespace; the rule sits beside it
    assert rule["metadata"]["namespace"] == OTHER_CONTEXT.gateway_namespace
    tls = _tls_settings(rendered, OTHER_CONTEXT.external_host)
    assert tls["mode"] == "MUTUAL"
    assert tls["credentialName"] == OTHER_CONTEXT.client_credential_name == "egress-harness-client-r42"
    assert tls["subjectAltNames"] == [OTHER_CONTEXT.external_host]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tls_scenarios_declare_the_external_host_they_need(name: str) -> None:
    scenario = CATALOG.get(name)
    https = any(r.scheme == "https" for r in scenario.requests)
    originates = "tls-origination" in scenario.tags
    assert scenario.requires.external_tls == (https or originates), scenario.requires
    assert (scenario.requires.external == "mtls") == ("mtls" in scenario.tags)
    text = render(scenario).text
    for variable, key in (
        ("client_credential_name", "client_credential"),
        ("ca_credential_name", "server_ca_credential"),
        ("untrusted_ca_credential_name", "untrusted_ca_credential"),
    ):
        assert (getattr(offline_context(), variable) in text) == getattr(scenario.requires, key), (
            name,
            variable,
        )


# ------------------------------------------------------------- manifests and expectations agree


def _cluster(value: object) -> tuple[int, str, str] | None:
    """``outbound|PORT|SUBSET|HOST`` -> (port, subset, host)."""
    if not isinstance(value, str) or not value.startswith("outbound|"):
        return None
    _, port, subset, host = value.split("|")
    return int(port), subset, host


def _service_entry_ports(rendered: RenderedScenario) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for se in docs_of(rendered, "ServiceEntry"):
        for host in se["spec"]["hosts"]:
            out.setdefault(host, set()).update(p["number"] for p in se["spec"]["ports"])
    return out


def _subsets(rendered: RenderedScenario) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for dr in docs_of(rendered, "DestinationRule"):
        out.setdefault(dr["spec"]["host"], set()).update(s["name"] for s in dr["spec"].get("subsets", []))
    return out


def _routed_destinations(rendered: RenderedScenario) -> set[tuple[str, str | None, int]]:
    """(host, subset, port) of every VirtualService route destination (http and tls)."""
    out = set()
    for vs in docs_of(rendered, "VirtualService"):
        for section in ("http", "tls", "tcp"):
            for rule in vs["spec"].get(section, []):
                for route in rule["route"]:
                    dest = route["destination"]
                    out.add((dest["host"], dest.get("subset"), dest["port"]["number"]))
    return out


def _gateway_api_services(rendered: RenderedScenario) -> dict[str, set[int]]:
    """Istio deploys ``<name>-istio`` for each Gateway of class istio, with the listeners' ports."""
    return {
        f"{gw['metadata']['name']}-istio.{gw['metadata']['namespace']}.svc.cluster.local": {
            listener["port"] for listener in gw["spec"]["listeners"]
        }
        for gw in docs_of(rendered, "Gateway", GATEWAY_API_GROUP)
        if gw["spec"]["gatewayClassName"] == "istio"
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_clusters_exist_in_the_manifests(name: str) -> None:
    """Each expected upstream cluster is one the manifests make: a ServiceEntry host and port at the
    far end, a DestinationRule subset the VirtualService routes to (or a Gateway API gateway's
    Service) at the sidecar. A typo in either file fails here, not in a cluster an hour later."""
    scenario = CATALOG.get(name)
    rendered = render(scenario, OTHER_CONTEXT)
    entries = _service_entry_ports(rendered)
    subsets = _subsets(rendered)
    routed = _routed_destinations(rendered)
    gateway_api = _gateway_api_services(rendered)
    for spec in scenario.requests:
        request = render_request(spec, OTHER_CONTEXT, source=scenario.file)
        where = f"{name}/{request.name}"
        sidecar = _cluster(request.expect.sidecar.get("upstream_cluster"))
        gateway = _cluster(request.expect.gateway.get("upstream_cluster"))
        if request.expect.via_gateway and request.expect.blocked is None:
            assert gateway is not None, f"{where}: a request via the gateway must name the gateway's upstream"
        if gateway is not None:
            port, subset, host = gateway
            assert subset == "" and port in entries.get(host, set()), (
                f"{where}: no ServiceEntry {host}:{port}"
            )
        if sidecar is None:
            continue
        port, subset, host = sidecar
        if not request.expect.via_gateway:
            assert port in entries.get(host, set()), f"{where}: no ServiceEntry for {host}:{port}"
        elif host in gateway_api:
            assert subset == "" and port in gateway_api[host], (
                f"{where}: no Gateway listener for {host}:{port}"
            )
        else:
            assert host == OTHER_CONTEXT.egress_gateway_service, where
            assert subset in subsets.get(host, set()), (
                f"{where}: no DestinationRule subset {subset!r} for {host}"
            )
            assert (host, subset, port) in routed, (
                f"{where}: no VirtualService route to {host}/{subset}:{port}"
            )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_log_response_codes_fit_the_protocol(name: str) -> None:
    """An https request is TLS the proxies pass along (none of these scenarios terminates the
    client's TLS): their entries are TCP ones, response_code 0, with the host as SNI. For plain HTTP
    the calling sidecar logs the status the client gets."""
    scenario = CATALOG.get(name)
    for spec in scenario.requests:
        if spec.scheme != "https":
            assert spec.expect.sidecar.get("response_code", spec.expect.status) == spec.expect.status
            continue
        for hop, values in (("sidecar", spec.expect.sidecar), ("gateway", spec.expect.gateway)):
            if "response_code" in values:
                assert values["response_code"] == 0, f"{name}/{spec.name}: {hop} of TLS logs response_code 0"
            if "requested_server_name" in values:
                assert values["requested_server_name"] == spec.host, f"{name}/{spec.name}: {hop} SNI"


# ------------------------------------------------------------------------ validation against CRDs


def _pairs() -> list[Any]:
    if not HAVE_SHARED:
        return [pytest.param("-", "-", marks=pytest.mark.skip(reason=SHARED_REASON), id="no-shared-crds")]
    return [
        pytest.param(s.name, v, id=f"{s.name}@{v}")
        for s in CATALOG.scenarios
        for v in ISTIO_VERSIONS
        if s.istio.applies_to(v)[0]
    ]


@pytest.mark.parametrize(("name", "version"), _pairs())
def test_each_scenario_validates_for_each_istio_release_in_its_range(name: str, version: str) -> None:
    assert ISTIO_CRDS is not None
    scenario = CATALOG.get(name)
    report = validate_catalog(Catalog((scenario,)), [version], ISTIO_CRDS, GATEWAY_API_CRDS)
    assert report.issues == [], report.format()
    assert report.ok and report.skipped == []
    rendered = render(scenario, offline_context(version))
    checked = {(c.template, c.document, c.schema_source) for c in report.checks}
    for doc in rendered.documents:
        group = doc.api_version.rpartition("/")[0]
        sources = (
            {f"{version}.yaml"}
            if group != GATEWAY_API_GROUP
            # the bundle of the Gateway API release this Istio release pins (issue 10 item 19)
            else {b.label for b in choose_gateway_api_bundles(GATEWAY_API_BUNDLES, version).bundles}
        )
        for source in sources:
            assert (doc.template, doc.index, source) in checked, (
                f"{doc.describe()} not checked against {source}"
            )
    assert {c.coverage for c in report.checks} == {"crd"}
    warnings = sorted({w for c in report.checks for w in c.warnings})
    assert warnings == [], f"{name} uses deprecated API versions: {warnings}"


@needs_shared
def test_releases_out_of_a_range_are_reported_as_skipped_not_passed() -> None:
    assert ISTIO_CRDS is not None
    report = validate_catalog(CATALOG, None, ISTIO_CRDS, GATEWAY_API_CRDS)
    assert report.ok, report.format()
    expected = sorted(
        (s.name, v) for s in CATALOG.scenarios for v in ISTIO_VERSIONS if not s.istio.applies_to(v)[0]
    )
    assert sorted((name, version) for name, version, _ in report.skipped) == expected
    if "1.29.6" in ISTIO_VERSIONS:
        assert ("gateway-api-tls-passthrough-via-egress-gateway", "1.29.6") in expected
    assert all(
        c.istio_version not in ("1.28.10", "1.29.6")
        for c in report.checks
        if c.scenario == "gateway-api-tls-passthrough-via-egress-gateway"
    )


#: (scenario, template, text to replace (first occurrence), replacement, {field: (message or
#: message prefix, text whose line the issue must point at)}, schema bundles per Istio release: one,
#: a Gateway API object is checked against the Gateway API release its Istio release pins)
BROKEN: dict[str, tuple[str, str, str, str, dict[str, tuple[str, str]], int]] = {
    "VirtualService-tls-route-without-sniHosts": (
        "https-passthrough-via-egress-gateway",
        "virtual-service.yaml",
        "sniHosts:",
        "sniHost:",
        {
            "spec.tls[0].match[0].sniHost": ("unknown field (did you mean 'sniHosts'?)", "sniHost:"),
            "spec.tls[0].match[0].sniHosts": ("required field is missing", "- gateways: [mesh]"),
        },
        1,
    ),
    "VirtualService-tls-route-subset-as-a-list": (
        "https-passthrough-via-egress-gateway",
        "virtual-service.yaml",
        "subset: external-tls",
        "subset: [external-tls]",
        {"spec.tls[0].route[0].destination.subset": ("expected string, got array", "subset: [external-tls]")},
        1,
    ),
    "Gateway-tls-mode": (
        "https-passthrough-via-egress-gateway",
        "gateway.yaml",
        "mode: PASSTHROUGH",
        "mode: PASS_THROUGH",
        {
            "spec.servers[0].tls.mode": (
                '"PASS_THROUGH" is not one of "PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", '
                '"ISTIO_MUTUAL", "OPTIONAL_MUTUAL"',
                "mode: PASS_THROUGH",
            )
        },
        1,
    ),
    "DestinationRule-tls-mode": (
        "tls-origination-at-egress-gateway",
        "destination-rules.yaml",
        "mode: SIMPLE",
        "mode: SIMPLE_TLS",
        {
            "spec.trafficPolicy.portLevelSettings[0].tls.mode": (
                '"SIMPLE_TLS" is not one of "DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"',
                "mode: SIMPLE_TLS",
            )
        },
        1,
    ),
    "DestinationRule-tls-subjectAltNames-as-text": (
        "tls-origination-at-egress-gateway",
        "destination-rules.yaml",
        "subjectAltNames:\n            - {{ external_host }}",
        'subjectAltNames: "{{ external_host }}"',
        {
            "spec.trafficPolicy.portLevelSettings[0].tls.subjectAltNames": (
                "expected array, got string",
                'subjectAltNames: "',
            )
        },
        1,
    ),
    "DestinationRule-tls-credentialName-typo": (
        "mtls-origination-at-egress-gateway",
        "destination-rules.yaml",
        "credentialName:",
        "credentialNames:",
        {
            "spec.trafficPolicy.portLevelSettings[0].tls.credentialNames": (
                "unknown field (did you mean 'credentialName'?)",
                "credentialNames:",
            )
        },
        1,
    ),
    "AuthorizationPolicy-operation-path": (
        "authz-policy-on-egress-gateway",
        "authorization-policy.yaml",
        "paths:",
        "path:",
        {"spec.rules[0].to[0].operation.path": ("unknown field (did you mean 'paths'?)", "path:")},
        1,
    ),
    "AuthorizationPolicy-action": (
        "authz-policy-on-egress-gateway",
        "authorization-policy.yaml",
        "action: ALLOW",
        "action: Allow",
        {"spec.action": ('"Allow" is not one of "ALLOW", "DENY", "AUDIT", "CUSTOM"', "action: Allow")},
        1,
    ),
    "ServiceEntry-resolution": (
        "wildcard-host-via-egress-gateway",
        "service-entries.yaml",
        "resolution: NONE",
        "resolution: NOTHING",
        {
            "spec.resolution": (
                '"NOTHING" is not one of "NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"',
                "resolution: NOTHING",
            )
        },
        1,
    ),
    "GatewayAPI-Gateway-tls-mode": (
        "gateway-api-tls-passthrough-via-egress-gateway",
        "gateway.yaml",
        "mode: Passthrough",
        "mode: PassThrough",
        {
            "spec.listeners[0].tls.mode": (
                '"PassThrough" is not one of "Terminate", "Passthrough"',
                "mode: PassThrough",
            )
        },
        1,
    ),
    "GatewayAPI-TLSRoute-hostname-pattern": (
        "gateway-api-tls-passthrough-via-egress-gateway",
        "tls-routes.yaml",
        "    - {{ external_host }}",
        "    - Upper.Case.test",
        {"spec.hostnames[0]": ('"Upper.Case.test" does not match the pattern ', "- Upper.Case.test")},
        1,
    ),
    "GatewayAPI-TLSRoute-without-hostnames": (
        "gateway-api-tls-passthrough-via-egress-gateway",
        "tls-routes.yaml",
        "hostnames:",
        "hostname:",
        {
            "spec.hostname": ("unknown field (did you mean 'hostnames'?)", "hostname:"),
            "spec.hostnames": ("required field is missing", "spec:"),
        },
        1,
    ),
    "GatewayAPI-HTTPRoute-backend-kind": (
        "gateway-api-http-via-egress-gateway",
        "http-routes.yaml",
        "kind: Hostname",
        "kind: Host_name",
        {"spec.rules[0].backendRefs[0].kind": ('"Host_name" does not match the pattern ', "kind: Host_name")},
        1,
    ),
    "GatewayAPI-HTTPRoute-backend-port": (
        "gateway-api-http-via-egress-gateway",
        "http-routes.yaml",
        "port: {{ external_port }}",
        "port: 0",
        {"spec.rules[0].backendRefs[0].port": ("0 is less than the minimum 1", "port: 0")},
        1,
    ),
}


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} is not in the file")


@needs_shared
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_is_rejected_at_its_field_and_line(case: str, tmp_path: Path) -> None:
    assert ISTIO_CRDS is not None
    name, template, old, new, expected, bundles = BROKEN[case]
    folder = tmp_path / "catalog" / name
    shutil.copytree(DEFAULT_SCENARIOS_DIR / name, folder)
    broken = folder / template
    text = broken.read_text()
    assert old in text, f"{name}/{template} no longer holds {old!r}: update this case"
    broken.write_text(text.replace(old, new, 1))
    catalog = load_catalog(tmp_path / "catalog")
    versions = in_range(catalog.get(name))
    report = validate_catalog(catalog, None, ISTIO_CRDS, GATEWAY_API_CRDS)
    assert not report.ok
    found = {i.field for i in report.issues}
    assert found == set(expected), report.format()
    assert len(report.issues) == len(expected) * len(versions) * bundles, report.format()
    assert {i.istio_version for i in report.issues} == set(versions)
    broken_text = broken.read_text()
    for issue in report.issues:
        message, anchor = expected[issue.field]
        assert issue.message.startswith(message), issue
        assert (issue.template, issue.scenario) == (broken, name)
        # the first line holding the anchor: every case breaks the first document of its file
        assert issue.line == _line_of(broken_text, anchor), f"{issue} (expected the line of {anchor!r})"


@needs_shared
def test_the_unbroken_copy_of_every_case_is_clean(tmp_path: Path) -> None:
    """The cases above fail because of their one change: their scenarios are otherwise valid."""
    assert ISTIO_CRDS is not None
    names = sorted({case[0] for case in BROKEN.values()})
    for name in names:
        shutil.copytree(DEFAULT_SCENARIOS_DIR / name, tmp_path / "catalog" / name)
    report = validate_catalog(load_catalog(tmp_path / "catalog"), None, ISTIO_CRDS, GATEWAY_API_CRDS)
    assert report.ok, report.format()
    kinds = {c.object.split("/")[0] for c in report.checks}
    assert {
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "AuthorizationPolicy",
        "ServiceEntry",
        "TLSRoute",
        "HTTPRoute",
    } <= kinds


# ------------------------------------------------------------------------------------- pre-flight


def test_parse_analyze_output_reads_every_shape_of_message() -> None:
    stdout = "\n".join(
        [
            'Error [IST0101] (VirtualService egress-harness/via-gateway /tmp/r/vs.yaml:12) Referenced host not found: "a.test"',
            "Warning [IST0104] (Gateway egress-harness/egress-gateway) The gateway refers to a port that is not "
            "exposed on the workload (pod selector istio=egressgateway; port 8443)",
            "Info [IST0102] (Namespace default) The namespace is not enabled for Istio injection.",
            "Error [IST0001] Internal error: boom (really)",
            "Warning [IST0134] [cluster-east] (ServiceEntry ns/se my dir/b.yaml:3) text (with parentheses)",
            "\x1b[1;31mError\x1b[0m [IST0145] (Gateway ns/gw c.yaml) Conflict with gateways",
            "",
            "Reading from stdin:",
        ]
    )
    messages, unparsed = parse_analyze_output(stdout)
    assert unparsed == ["Reading from stdin:"]
    vs, gw, ns, internal, se, colored = messages
    assert vs == AnalyzeMessage(
        level="Error",
        code="IST0101",
        text='Referenced host not found: "a.test"',
        kind="VirtualService",
        namespace="egress-harness",
        name="via-gateway",
        file="/tmp/r/vs.yaml",
        line=12,
        raw=vs.raw,
    )
    assert str(vs) == vs.raw
    assert (gw.level, gw.resource, gw.location) == ("Warning", "Gateway egress-harness/egress-gateway", None)
    assert gw.text.endswith("(pod selector istio=egressgateway; port 8443)")
    assert (ns.level, ns.kind, ns.namespace, ns.name, ns.resource) == (
        "Info",
        "Namespace",
        None,
        "default",
        "Namespace default",
    )
    assert (internal.kind, internal.text) == (None, "Internal error: boom (really)")
    assert str(internal) == "Error [IST0001] Internal error: boom (really)"
    assert (se.cluster, se.file, se.line, se.text) == ("east", "my dir/b.yaml", 3, "text (with parentheses)")
    assert (colored.level, colored.code, colored.file, colored.line) == ("Error", "IST0145", "c.yaml", None)
    assert colored.at_least("Warning") and not ns.at_least("Warning") and ns.at_least("Info")


@pytest.fixture
def manifests(tmp_path: Path) -> list[Path]:
    """The http-via-egress-gateway manifests rendered one file per template, as a run would write them."""
    scenario = CATALOG.get("http-via-egress-gateway")
    context = offline_context(str(scenario.istio.min))
    files = []
    for template in scenario.manifests:
        target = tmp_path / "rendered" / template.name
        target.parent.mkdir(exist_ok=True)
        target.write_text(render_text(template.read_text(), context, source=template))
        files.append(target)
    return files


def _istioctl(fakebin: Any, **rule: Any) -> Path:
    fakebin.rules([{"tool": "istioctl", "args": ["analyze", "--use-kube=false"], **rule}])
    return Path(fakebin.bin_dir) / "istioctl"


CLEAN_STDERR = "\u2714 No validation issues found when analyzing {files}.\n"
FOUND_STDERR = (
    "Error: Analyzers found issues when analyzing all namespaces.\n"
    "See https://istio.io/v1.30/docs/reference/config/analysis for more information about causes and resolutions.\n"
)


def test_a_clean_analysis_returns_an_ok_result(fakebin: Any, manifests: list[Path]) -> None:
    istioctl = _istioctl(fakebin, stdout="\n", stderr=CLEAN_STDERR.format(files=manifests[0]))
    result = analyze_offline(manifests, istioctl, timeout=20)
    assert result.ok and result.messages == () and result.unparsed == ()
    (call,) = fakebin.calls()
    assert call["args"] == [
        "analyze",
        "--use-kube=false",
        "--all-namespaces",
        "--output=log",
        "--color=false",
        "--failure-threshold=Error",
        "--output-threshold=Info",
        *(str(f) for f in manifests),
    ]
    assert (
        result.summary() == "istioctl analyze: 0 error(s), 0 warning(s), 0 info(s) (failure threshold Error)"
    )


def test_warnings_and_infos_below_the_threshold_are_returned(fakebin: Any, manifests: list[Path]) -> None:
    stdout = (
        f"Warning [IST0104] (Gateway egress-harness/egress-gateway {manifests[1]}:4) The gateway refers to a port "
        "that is not exposed on the workload\n"
        "Info [IST0102] (Namespace egress-harness) The namespace is not enabled for Istio injection.\n"
    )
    result = analyze_offline(manifests, _istioctl(fakebin, stdout=stdout), timeout=20)
    assert result.ok
    (warning,) = result.warnings
    assert (warning.code, warning.file, warning.line, warning.name) == (
        "IST0104",
        str(manifests[1]),
        4,
        "egress-gateway",
    )
    assert [m.code for m in result.infos] == ["IST0102"]
    assert result.errors == () and result.failures == ()


def test_errors_raise_with_every_error_named(fakebin: Any, manifests: list[Path]) -> None:
    stdout = (
        f'Error [IST0101] (Gateway egress-harness/egress-gateway {manifests[1]}:7) Referenced selector not found: "istio=egressgateway"\n'
        f'Error [IST0101] (VirtualService egress-harness/x {manifests[0]}:3) Referenced host not found: "y"\n'
        "Warning [IST0134] (ServiceEntry egress-harness/external-http) something\n"
    )
    istioctl = _istioctl(fakebin, stdout=stdout, stderr=FOUND_STDERR, exit=79)
    with pytest.raises(AnalyzeError) as caught:
        analyze_offline(manifests, istioctl, timeout=20)
    text = str(caught.value)
    assert text.startswith("istioctl analyze found 2 message(s) at or above Error (exit code 79): `")
    assert (
        f'  Error [IST0101] (Gateway egress-harness/egress-gateway {manifests[1]}:7) Referenced selector not found: "istio=egressgateway"'
        in text
    )
    assert f"(VirtualService egress-harness/x {manifests[0]}:3)" in text
    assert "(and 1 below the threshold: IST0134)" in text
    result = caught.value.result
    assert len(result.errors) == 2 and len(result.warnings) == 1 and not result.ok


def test_the_failure_threshold_is_passed_and_honoured(fakebin: Any, manifests: list[Path]) -> None:
    stdout = "Warning [IST0134] (ServiceEntry ns/se) something\n"
    istioctl = _istioctl(fakebin, contains=["--failure-threshold=Warning"], stdout=stdout, exit=79)
    with pytest.raises(AnalyzeError, match=r"found 1 message\(s\) at or above Warning"):
        analyze_offline(manifests, istioctl, timeout=20, failure_threshold="Warning")


def test_extra_options_reach_the_command_line(tmp_path: Path, manifests: list[Path]) -> None:
    mesh = tmp_path / "mesh.yaml"
    argv = analyze_command(
        Path("/x/istioctl"),
        manifests,
        suppress=["IST0101=Gateway egress-gateway.egress-harness"],
        istio_namespace="istio-system",
        mesh_config=mesh,
    )
    assert argv[:2] == ["/x/istioctl", "analyze"]
    assert argv[-len(manifests) - 2 :] == [
        "--suppress",
        "IST0101=Gateway egress-gateway.egress-harness",
        *(str(f) for f in manifests),
    ]
    assert "--istioNamespace=istio-system" in argv and f"--meshConfigFile={mesh}" in argv


@pytest.mark.parametrize(
    ("exit_code", "stderr", "message"),
    [
        (
            79,
            FOUND_STDERR,
            "exited 79 (analyzers found issues at or above Error), but no such message could be read",
        ),
        (
            65,
            "Error(s) adding files: bad.yaml: yaml: line 3: mapping values are not allowed\n",
            "could not parse some of the files (exit 65)",
        ),
        (64, "Error: unknown flag: --output-threshold\n", "rejected the command line (exit 64"),
        (1, "Error: failed to read mesh config\n", "failed with exit code 1"),
    ],
)
def test_failures_of_istioctl_itself_are_clear(
    fakebin: Any, manifests: list[Path], exit_code: int, stderr: str, message: str
) -> None:
    istioctl = _istioctl(fakebin, stdout="garbled output\n", stderr=stderr, exit=exit_code)
    with pytest.raises(PreflightError) as caught:
        analyze_offline(manifests, istioctl, timeout=20)
    assert not isinstance(caught.value, AnalyzeError)
    text = str(caught.value)
    assert message in text
    assert stderr.splitlines()[0] in text
    assert "garbled output" in text  # the stdout that was not a message is shown too


def test_a_hanging_istioctl_is_stopped_at_the_timeout(fakebin: Any, manifests: list[Path]) -> None:
    istioctl = _istioctl(fakebin, stderr="analyzing\n", sleep=30)
    with pytest.raises(PreflightError, match=r"did not finish within 0\.5s and was stopped"):
        analyze_offline(manifests, istioctl, timeout=0.5)


def test_a_missing_istioctl_is_named(tmp_path: Path, manifests: list[Path]) -> None:
    with pytest.raises(
        PreflightError, match=r"could not run: could not start: '.*/nope/istioctl' was not found"
    ):
        analyze_offline(manifests, tmp_path / "nope" / "istioctl", timeout=5)


@pytest.mark.parametrize(
    ("files", "kwargs", "message"),
    [
        ([], {}, "no files to analyze"),
        (["notes.txt"], {}, "reads only .yaml, .yml, .json files"),
        (["missing.yaml"], {}, "missing.yaml: no such file"),
        (["a.yaml"], {"failure_threshold": "Fatal"}, "failure_threshold must be one of Info, Warning, Error"),
        (["a.yaml"], {"suppress": ["IST0101"]}, "is not CODE=RESOURCE"),
        (["a.yaml"], {"timeout": 0}, "timeout must be positive"),
    ],
)
def test_bad_arguments_are_refused_before_istioctl_runs(
    tmp_path: Path, files: list[str], kwargs: dict[str, Any], message: str
) -> None:
    (tmp_path / "a.yaml").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("x\n")
    options: dict[str, Any] = {"timeout": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        analyze_offline([tmp_path / f for f in files], tmp_path / "istioctl", **options)


def test_the_rendered_catalog_goes_to_istioctl_in_one_call(fakebin: Any, tmp_path: Path) -> None:
    files = []
    for scenario in CATALOG.scenarios:
        target = tmp_path / "all" / f"{scenario.name}.yaml"
        target.parent.mkdir(exist_ok=True)
        target.write_text(render(scenario).text)
        files.append(target)
    result = analyze_offline(files, _istioctl(fakebin, stdout="\n"), timeout=20)
    assert result.ok
    (call,) = fakebin.calls()
    assert call["args"][-len(files) :] == [str(f) for f in files]
