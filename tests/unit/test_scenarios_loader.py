"""The scenario loader: the project's catalog loads, and every kind of bad input is reported with its
file, line and field, all of them at once."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.scenarios import (
    IstioVersion,
    ScenarioError,
    ScenarioIssue,
    VersionRange,
    load_catalog,
    load_scenario,
)
from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR, PROJECT_ROOT

BAD = Path(__file__).parent / "data" / "scenarios_bad"

MANIFEST = textwrap.dedent(
    """\
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata:
      name: external
      namespace: {{ namespace }}
    spec:
      hosts: [{{ external_host }}]
      resolution: DNS
      ports:
        - {name: http, number: 80, protocol: HTTP}
    """
)

GOOD = textwrap.dedent(
    """\
    name: demo
    description: A scenario for the loader's tests.
    istio:
      min: "1.23"
    manifests: [service-entry.yaml]
    requests:
      - name: one
        host: "{{ external_host }}"
        expect:
          status: 200
          via_gateway: true
          gateway:
            upstream_cluster: "outbound|80||{{ external_host }}"
    """
)


def write_scenario(root: Path, text: str, name: str = "demo", files: dict[str, str] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "scenario.yaml").write_text(text)
    for file, body in (files if files is not None else {"service-entry.yaml": MANIFEST}).items():
        (folder / file).write_text(body)
    return folder


def raw_issues(root: Path | list[Path]) -> tuple[ScenarioIssue, ...]:
    with pytest.raises(ScenarioError) as info:
        load_catalog(root)
    return info.value.issues


def issues_of(root: Path | list[Path]) -> list[str]:
    return [str(i) for i in raw_issues(root)]


# ------------------------------------------------------------------------------- the real catalog


def test_the_project_catalog_loads() -> None:
    catalog = load_catalog(DEFAULT_SCENARIOS_DIR)
    assert catalog.names() == tuple(sorted(catalog.names()))
    assert {"http-via-egress-gateway", "registry-only-blocked", "sidecar-only-egress"} <= set(catalog.names())
    mission = catalog.get("http-via-egress-gateway")
    assert [m.name for m in mission.manifests] == [
        "service-entry.yaml",
        "gateway.yaml",
        "destination-rule.yaml",
        "virtual-service.yaml",
    ]
    (request,) = mission.requests
    assert request.chain == ("ingress", "proxy", "target")
    assert request.expect.via_gateway is True
    assert request.expect.status == 200
    assert request.expect.gateway["upstream_cluster"] == "outbound|{{ external_port }}||{{ external_host }}"
    assert request.expect.gateway["response_flags"] is None

    control = catalog.get("sidecar-only-egress")
    assert control.requests[0].expect.via_gateway is False
    assert not control.requests[0].expect.gateway

    blocked = catalog.get("registry-only-blocked")
    assert blocked.requires.outbound_traffic_policy == "REGISTRY_ONLY"
    first, second = blocked.requests
    assert (first.expect.blocked, first.expect.status, first.expect.sidecar["route_name"]) == (
        "sidecar",
        502,
        "block_all",
    )
    assert (second.expect.blocked, second.expect.status) == (None, 200)


def test_get_names_the_catalog_for_an_unknown_scenario() -> None:
    catalog = load_catalog(DEFAULT_SCENARIOS_DIR)
    with pytest.raises(
        KeyError, match=r"no scenario named 'nope'; the catalog has: .*http-via-egress-gateway"
    ):
        catalog.get("nope")


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path, GOOD))
    (request,) = scenario.requests
    assert (request.scheme, request.method, request.port, request.path) == ("http", "GET", None, "/")
    assert scenario.requires.outbound_traffic_policy is None
    assert scenario.requires.gateway_api is False
    assert scenario.requires.access_log_encoding == ("TEXT", "JSON")
    assert scenario.istio.max is None
    assert request.line == 7


# --------------------------------------------------------------------------------- the bad fixtures

#: every defect of tests/unit/data/scenarios_bad/catalog, exactly as reported (paths from the repo root)
EXPECTED_BAD = [
    "tests/unit/data/scenarios_bad/catalog/bad-version-range/scenario.yaml:5: istio.max: "
    "bad version range: min 1.30 is above max 1.28.10",
    "tests/unit/data/scenarios_bad/catalog/bad-version-text/scenario.yaml:4: istio.min: "
    'expected str, got float (quote versions: "1.23")',
    "tests/unit/data/scenarios_bad/catalog/bad-version-text/scenario.yaml:5: istio.max: "
    "not an Istio version: 'one.two' (expected MAJOR.MINOR[.PATCH][-PRERELEASE], e.g. 1.28.10, 1.31-dev)",
    "tests/unit/data/scenarios_bad/catalog/missing-manifest/scenario.yaml:7: manifests[1]: "
    "manifest file 'gateway.yaml' does not exist in tests/unit/data/scenarios_bad/catalog/missing-manifest",
    "tests/unit/data/scenarios_bad/catalog/name-mismatch/scenario.yaml:1: name: "
    "'another-name' must equal the scenario's folder name 'name-mismatch'",
    "tests/unit/data/scenarios_bad/catalog/unknown-key/scenario.yaml:9: requests[0].timeout: "
    "unknown key; allowed: name, host, expect, chain, scheme, method, port, path, bytes",
    "tests/unit/data/scenarios_bad/catalog/unknown-template-var/service-entry.yaml:7: "
    "unknown template variable 'external_hots' (did you mean 'external_host'?)",
    "tests/unit/data/scenarios_bad/catalog/wrong-type/scenario.yaml:10: requests[0].expect.status: "
    "expected int, got str",
]


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT_ROOT)


@pytest.mark.usefixtures("at_repo_root")
def test_a_bad_catalog_reports_every_problem_at_once() -> None:
    assert issues_of(BAD / "catalog") == EXPECTED_BAD


@pytest.mark.usefixtures("at_repo_root")
@pytest.mark.parametrize("expected", EXPECTED_BAD, ids=lambda e: e.split("/")[5])
def test_each_bad_fixture_alone(expected: str, tmp_path: Path) -> None:
    # the same defect, found when its scenario is loaded alone
    folder = BAD / "catalog" / expected.split("/")[5]
    with pytest.raises(ScenarioError) as info:
        load_scenario(folder)
    assert expected in [str(i) for i in info.value.issues]


@pytest.mark.usefixtures("at_repo_root")
def test_a_duplicate_name_across_catalogs_names_both_files() -> None:
    assert issues_of([BAD / "duplicate" / "a", BAD / "duplicate" / "b"]) == [
        "tests/unit/data/scenarios_bad/duplicate/b/twin/scenario.yaml:1: name: duplicate scenario name 'twin'; "
        "also defined in tests/unit/data/scenarios_bad/duplicate/a/twin/scenario.yaml:1"
    ]


def test_the_error_message_lists_every_issue() -> None:
    with pytest.raises(ScenarioError) as info:
        load_catalog(BAD / "catalog")
    message = str(info.value)
    assert message.startswith("8 problems in the scenario catalog:\n")
    assert all(f"{i}" in message for i in info.value.issues)


# ------------------------------------------------------------------------- more error paths, inline


def one_issue(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    write_scenario(tmp_path, text, files=files)
    with pytest.raises(ScenarioError) as info:
        load_catalog(tmp_path)
    assert len(info.value.issues) == 1, info.value
    issue = info.value.issues[0]
    return issue.line, issue.field, issue.message


@pytest.mark.parametrize(
    "case",
    [
        (
            "      status: 200",
            "      status: 200\n      blocked: sidecar",
            12,
            "requests[0].expect.via_gateway",
            "a request blocked at the sidecar never reaches the gateway: use false",
        ),
        (
            "      via_gateway: true",
            "      via_gateway: false",
            12,
            "requests[0].expect.gateway",
            "gateway log fields are expected, but via_gateway is false",
        ),
        (
            "        upstream_cluster:",
            "        upstream_clustr:",
            13,
            "requests[0].expect.gateway.upstream_clustr",
            "unknown key (did you mean 'upstream_cluster'?)",
        ),
        (
            "      gateway:\n",
            '      gateway:\n        response_code: "200"\n',
            13,
            "requests[0].expect.gateway.response_code",
            "expected int, got str (an integer log field; null for absent)",
        ),
        (
            "      status: 200",
            "      status: 200\n      blocked: yes",
            11,
            "requests[0].expect.blocked",
            "expected one of sidecar, gateway or false, got True",
        ),
        (
            "      status: 200",
            "      status: 200\n      external_caller: not-gateway",
            11,
            "requests[0].expect.external_caller",
            "not-gateway: the external host's caller of a request that went via the gateway is the gateway; "
            "use via_gateway: false (or drop external_caller)",
        ),
        (
            "      status: 200",
            "      status: 200\n      external_caller: anyone",
            11,
            "requests[0].expect.external_caller",
            "expected one of not-gateway, workload, got 'anyone'",
        ),
        (
            "      status: 200",
            "      status: 200\n      external_caller: [not-gateway]",
            11,
            "requests[0].expect.external_caller",
            "expected str, got list",
        ),
        (
            "      status: 200\n      via_gateway: true\n      gateway:\n"
            '        upstream_cluster: "outbound|80||{{ external_host }}"\n',
            "      status: 502\n      via_gateway: false\n      blocked: sidecar\n"
            "      external_caller: not-gateway\n",
            13,
            "requests[0].expect.external_caller",
            "a request blocked at the sidecar never reaches the external host: it has no caller there "
            "(drop external_caller)",
        ),
        (
            "      status: 200",
            "      status: 200\n      external_attempts: 0",
            11,
            "requests[0].expect.external_attempts",
            "at least 1, got 0 (a request that must not reach the external host is blocked)",
        ),
        (
            "      status: 200",
            '      status: 200\n      external_attempts: "3"',
            11,
            "requests[0].expect.external_attempts",
            "expected int, got str",
        ),
        (
            "      status: 200\n      via_gateway: true\n      gateway:\n"
            '        upstream_cluster: "outbound|80||{{ external_host }}"\n',
            "      status: 200\n      via_gateway: false\n      external_attempts: 2\n",
            12,
            "requests[0].expect.external_attempts",
            "counts the external host's records of a request it witnesses: one via the gateway, or a "
            "direct one with external_caller (not-gateway or workload)",
        ),
        (
            "      status: 200\n      via_gateway: true\n      gateway:\n"
            '        upstream_cluster: "outbound|80||{{ external_host }}"\n',
            "      status: 404\n      via_gateway: true\n      blocked: gateway\n      external_attempts: 1\n",
            13,
            "requests[0].expect.external_attempts",
            "counts the external host's records of a request it witnesses: one via the gateway, or a "
            "direct one with external_caller (not-gateway or workload) (this one is blocked at the gateway)",
        ),
        (
            "      status: 200",
            "      status: 200\n      external_caller: workload",
            11,
            "requests[0].expect.external_caller",
            "workload: the external host's caller of a request that went via the gateway is the gateway; "
            "use via_gateway: false (or drop external_caller)",
        ),
        (
            "      gateway:\n",
            "      sidecar: absent\n      gateway:\n",
            12,
            "requests[0].expect.sidecar",
            "absent: a request that leaves via the gateway or is blocked on the way passed the calling "
            "sidecar, which logged it",
        ),
        (
            "      gateway:\n",
            "      sidecar: missing\n      gateway:\n",
            12,
            "requests[0].expect.sidecar",
            "expected a mapping of access-log fields (or 'absent': no entry of the request there), got str "
            "'missing'",
        ),
        (
            "      status: 200\n      via_gateway: true\n      gateway:\n"
            '        upstream_cluster: "outbound|80||{{ external_host }}"\n',
            "      status: 200\n      via_gateway: false\n      sidecar: absent\n"
            "      external_caller: workload\n",
            12,
            "requests[0].expect.sidecar",
            "absent: the calling workload's sidecar captures and logs every request it sends; set "
            "caller.sidecar to none or excludes-external",
        ),
        (
            "istio:\n",
            "caller: {sidecar: off}\nistio:\n",
            3,
            "caller.sidecar",
            "expected str, got bool",
        ),
        (
            "istio:\n",
            "caller: {sidecar: absent}\nistio:\n",
            3,
            "caller.sidecar",
            "expected one of injected, none, excludes-external, got 'absent'",
        ),
        (
            "istio:\n",
            "caller: {sidecars: none}\nistio:\n",
            3,
            "caller.sidecars",
            "unknown key (did you mean 'sidecar'?)",
        ),
        (
            "      status: 200",
            "      status: 99",
            10,
            "requests[0].expect.status",
            "not an HTTP status code: 99",
        ),
        ("    host:", "    path: get\n    host:", 8, "requests[0].path", "must start with '/', got 'get'"),
        (
            "    host:",
            "    port: 70000\n    host:",
            8,
            "requests[0].port",
            "port out of range 1-65535: 70000",
        ),
        (
            "    host:",
            "    port: '80'\n    host:",
            8,
            "requests[0].port",
            "expected an int or one placeholder such as '{{ external_port }}', got '80'",
        ),
        (
            "    host:",
            "    chain: [proxy, egress]\n    host:",
            8,
            "requests[0].chain[1]",
            "expected one of ingress, proxy, target, got 'egress'",
        ),
        (
            "    host:",
            "    chain: [proxy, proxy]\n    host:",
            8,
            "requests[0].chain[1]",
            "duplicate entry 'proxy'",
        ),
        (
            "    host:",
            "    scheme: ftp\n    host:",
            8,
            "requests[0].scheme",
            "expected one of http, https, tcp, got 'ftp'",
        ),
        (
            "    host:",
            "    method: get\n    host:",
            8,
            "requests[0].method",
            "expected an upper-case HTTP method such as GET, got 'get'",
        ),
        (
            '"{{ external_host }}"',
            '"{{ externalhost }}"',
            8,
            "requests[0].host",
            "unknown template variable 'externalhost' (did you mean 'external_host'?)",
        ),
        (
            '"{{ external_host }}"',
            '"{{ external host }}"',
            8,
            "requests[0].host",
            "malformed placeholder '{{ external host }}': write {{ variable_name }}",
        ),
        (
            "  - name: one",
            "  - name: One",
            7,
            "requests[0].name",
            "'One' is not a DNS label (lower-case letters, digits and '-')",
        ),
        (
            "istio:\n",
            "requires:\n  access_log_encoding: [JSON, XML]\nistio:\n",
            4,
            "requires.access_log_encoding[1]",
            "expected one of TEXT, JSON, got 'XML'",
        ),
        (
            "istio:\n",
            "requires:\n  outbound_traffic_policy: DENY\nistio:\n",
            4,
            "requires.outbound_traffic_policy",
            "expected one of ALLOW_ANY, REGISTRY_ONLY, got 'DENY'",
        ),
        (
            "istio:\n",
            "requires: {gateway_api: 'yes'}\nistio:\n",
            3,
            "requires.gateway_api",
            "expected bool, got str",
        ),
        ("istio:\n", "tags: egress\nistio:\n", 3, "tags", "expected list, got str"),
        (
            "description: A scenario for the loader's tests.\n",
            "",
            1,
            "",
            "missing required key 'description'",
        ),
        (
            "manifests: [service-entry.yaml]",
            "manifests: [service-entry.yaml, ../x.yaml]",
            5,
            "manifests[1]",
            "'../x.yaml': a manifest is a file name beside scenario.yaml, not a path",
        ),
        (
            "name: demo\n",
            "name: demo\nname: demo\n",
            2,
            "name",
            "duplicate key (first at line 1); YAML keeps only one",
        ),
        ("requests:\n", "requests:\n  - []\n", 7, "requests[0]", "expected mapping, got list"),
        ('  min: "1.23"', "  min: a: b", 4, "", "invalid YAML: mapping values are not allowed"),
    ],
    ids=[
        "blocked-sidecar-via-gateway",
        "gateway-logs-without-gateway",
        "unknown-log-field",
        "int-log-field-as-str",
        "blocked-bad-value",
        "caller-not-gateway-via-gateway",
        "caller-unknown",
        "caller-not-a-string",
        "caller-of-a-blocked-request",
        "attempts-zero",
        "attempts-not-int",
        "attempts-of-an-unwitnessed-direct-request",
        "attempts-of-a-blocked-request",
        "workload-caller-via-gateway",
        "sidecar-absent-via-gateway",
        "sidecar-neither-fields-nor-absent",
        "sidecar-absent-of-a-captured-caller",
        "caller-sidecar-not-a-string",
        "caller-sidecar-unknown",
        "caller-unknown-key",
        "status-out-of-range",
        "relative-path",
        "port-out-of-range",
        "port-literal-string",
        "unknown-hop",
        "duplicate-hop",
        "bad-scheme",
        "lower-case-method",
        "unknown-var-in-host",
        "malformed-placeholder",
        "request-name-not-dns",
        "unknown-encoding",
        "unknown-traffic-policy",
        "gateway-api-not-bool",
        "tags-not-list",
        "missing-description",
        "manifest-path",
        "duplicate-yaml-key",
        "request-not-mapping",
        "yaml-syntax",
    ],
)
def test_field_errors_name_line_and_field(tmp_path: Path, case: tuple[str, str, int, str, str]) -> None:
    old, new, line, field, message = case
    assert old in GOOD
    got_line, got_field, got_message = one_issue(tmp_path, GOOD.replace(old, new, 1))
    assert (got_line, got_field) == (line, field)
    assert got_message.startswith(message)


def test_a_caller_that_bypasses_its_sidecar_needs_a_direct_witnessed_expectation(tmp_path: Path) -> None:
    """A workload whose sidecar does not capture the request goes straight out, whatever the mesh
    routes: each of its requests must say so (via_gateway false, sidecar absent, external_caller
    workload), each missing piece an issue of its own."""
    write_scenario(tmp_path, GOOD.replace("istio:\n", "caller: {sidecar: none}\nistio:\n", 1))
    issues = [(i.line, i.field, i.message) for i in raw_issues(tmp_path)]
    why = "the caller's sidecar is 'none': it does not capture the request, which goes "
    assert issues == [
        (
            12,
            "requests[0].expect.via_gateway",
            why + "straight to the external host (use via_gateway: false, no blocked)",
        ),
        (10, "requests[0].expect.sidecar", why + "past the sidecar's log: expect sidecar: absent"),
        (
            10,
            "requests[0].expect.external_caller",
            why + "direct, and only the external host's record shows it: expect external_caller: workload",
        ),
    ]
    bypass = GOOD.replace("istio:\n", "caller: {sidecar: excludes-external}\nistio:\n", 1).replace(
        '      via_gateway: true\n      gateway:\n        upstream_cluster: "outbound|80||{{ external_host }}"\n',
        "      via_gateway: false\n      sidecar: absent\n      external_caller: workload\n",
    )
    folder = tmp_path / "ok"
    write_scenario(folder, bypass)
    scenario = load_catalog(folder).get("demo")
    assert scenario.caller.sidecar == "excludes-external" and not scenario.caller.captured
    [request] = scenario.requests
    assert request.expect.sidecar_absent and request.expect.external_caller == "workload"
    assert dict(request.expect.sidecar) == {}


# ------------------------------------------------------- the external host and its credentials

#: a TLS origination manifest naming the credential Secrets the run creates
CREDENTIAL_MANIFEST = textwrap.dedent(
    """\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata:
      name: originate
      namespace: {{ gateway_namespace }}
    spec:
      host: {{ external_host }}
      trafficPolicy:
        tls:
          mode: MUTUAL
          credentialName: {{ client_credential_name }}
    """
)


def test_requires_external_and_credentials_default_to_plain_http(tmp_path: Path) -> None:
    write_scenario(tmp_path, GOOD)
    requires = load_scenario(tmp_path / "demo").requires
    assert (requires.external, requires.client_credential, requires.server_ca_credential) == (
        "http",
        False,
        False,
    )
    assert requires.external_tls is False


@pytest.mark.parametrize("external", ["tls", "mtls"])
def test_requires_external_tls_and_a_used_credential_load(tmp_path: Path, external: str) -> None:
    text = GOOD.replace(
        "istio:\n", f"requires:\n  external: {external}\n  client_credential: true\nistio:\n", 1
    ).replace("manifests: [service-entry.yaml]", "manifests: [service-entry.yaml, dr.yaml]")
    write_scenario(tmp_path, text, files={"service-entry.yaml": MANIFEST, "dr.yaml": CREDENTIAL_MANIFEST})
    requires = load_scenario(tmp_path / "demo").requires
    assert (requires.external, requires.client_credential, requires.server_ca_credential) == (
        external,
        True,
        False,
    )
    assert requires.external_tls is True


@pytest.mark.parametrize(
    ("requires", "line", "field", "message"),
    [
        (
            "requires:\n  external: ssl\n",
            4,
            "requires.external",
            "expected one of http, tls, mtls, got 'ssl'",
        ),
        ("requires:\n  external: true\n", 4, "requires.external", "expected str, got bool"),
        (
            "requires: {server_ca_credential: 1}\n",
            3,
            "requires.server_ca_credential",
            "expected bool, got int",
        ),
        (
            "requires:\n  external: http\n  server_ca_credential: true\n",
            5,
            "requires.server_ca_credential",
            "a credential for TLS origination needs an external host that serves TLS: set "
            "requires.external to tls or mtls",
        ),
        (
            "requires:\n  externals: tls\n",
            4,
            "requires.externals",
            "unknown key (did you mean 'external'?)",
        ),
        (
            "requires:\n  external: http\n  untrusted_ca_credential: true\n",
            5,
            "requires.untrusted_ca_credential",
            "a credential for TLS origination needs an external host that serves TLS: set "
            "requires.external to tls or mtls",
        ),
        (
            "requires: {untrusted_ca_credential: yes please}\n",
            3,
            "requires.untrusted_ca_credential",
            "expected bool, got str",
        ),
    ],
    ids=[
        "unknown-kind",
        "not-a-string",
        "flag-not-bool",
        "credential-without-tls",
        "typo",
        "untrusted-ca-without-tls",
        "untrusted-ca-not-bool",
    ],
)
def test_a_bad_requires_external_names_file_line_and_field(
    tmp_path: Path, requires: str, line: int, field: str, message: str
) -> None:
    write_scenario(tmp_path, GOOD.replace("istio:\n", requires + "istio:\n", 1))
    (issue,) = raw_issues(tmp_path)
    assert issue.path == tmp_path / "demo" / "scenario.yaml"
    assert (issue.line, issue.field, issue.message) == (line, field, message)
    assert str(issue).endswith(f"demo/scenario.yaml:{line}: {field}: {message}")


def test_a_credential_variable_needs_the_secret_declared(tmp_path: Path) -> None:
    text = GOOD.replace("istio:\n", "requires: {external: mtls}\nistio:\n", 1).replace(
        "manifests: [service-entry.yaml]", "manifests: [service-entry.yaml, dr.yaml]"
    )
    write_scenario(tmp_path, text, files={"service-entry.yaml": MANIFEST, "dr.yaml": CREDENTIAL_MANIFEST})
    (issue,) = raw_issues(tmp_path)
    assert (issue.path, issue.line, issue.field) == (tmp_path / "demo" / "dr.yaml", 11, "")
    assert issue.message.startswith("uses {{ client_credential_name }}, but ")
    assert issue.message.endswith(
        "does not set requires.client_credential: true, so the run would not create that Secret"
    )


def test_a_declared_secret_must_be_used(tmp_path: Path) -> None:
    text = GOOD.replace("istio:\n", "requires:\n  external: tls\n  server_ca_credential: true\nistio:\n", 1)
    assert one_issue(tmp_path, text) == (
        5,
        "requires.server_ca_credential",
        "true, but no manifest uses {{ ca_credential_name }}: name the Secret (credentialName) or drop it",
    )


def test_the_untrusted_ca_secret_is_checked_both_ways(tmp_path: Path) -> None:
    declared = GOOD.replace(
        "istio:\n", "requires:\n  external: tls\n  untrusted_ca_credential: true\nistio:\n", 1
    )
    assert one_issue(tmp_path / "declared", declared) == (
        5,
        "requires.untrusted_ca_credential",
        "true, but no manifest uses {{ untrusted_ca_credential_name }}: name the Secret (credentialName) "
        "or drop it",
    )
    used = GOOD.replace("istio:\n", "requires: {external: tls}\nistio:\n", 1).replace(
        "manifests: [service-entry.yaml]", "manifests: [service-entry.yaml, dr.yaml]"
    )
    dr = CREDENTIAL_MANIFEST.replace("client_credential_name", "untrusted_ca_credential_name")
    write_scenario(tmp_path / "used", used, files={"service-entry.yaml": MANIFEST, "dr.yaml": dr})
    (issue,) = raw_issues(tmp_path / "used")
    assert issue.path == tmp_path / "used" / "demo" / "dr.yaml"
    assert issue.message.startswith("uses {{ untrusted_ca_credential_name }}, but ")
    assert issue.message.endswith(
        "does not set requires.untrusted_ca_credential: true, so the run would not create that Secret"
    )


def test_an_https_request_needs_an_external_host_that_serves_tls(tmp_path: Path) -> None:
    text = GOOD.replace(
        '    host: "{{ external_host }}"', '    scheme: https\n    host: "{{ external_host }}"'
    )
    assert one_issue(tmp_path, text) == (
        8,
        "requests[0].scheme",
        "an https request needs an external host that serves TLS: set requires.external to tls or mtls "
        "(it is http)",
    )
    for kind in ("tls", "mtls"):
        ok = tmp_path / kind
        write_scenario(ok, text.replace("istio:\n", f"requires: {{external: {kind}}}\nistio:\n", 1))
        assert load_scenario(ok / "demo").requests[0].scheme == "https"


def test_every_tls_scenario_of_the_catalog_declares_what_it_needs() -> None:
    catalog = load_catalog(DEFAULT_SCENARIOS_DIR)
    for scenario in catalog.scenarios:
        if any(r.scheme == "https" for r in scenario.requests):
            assert scenario.requires.external_tls, scenario.name
    mtls = catalog.get("mtls-origination-at-egress-gateway").requires
    assert (mtls.external, mtls.client_credential, mtls.server_ca_credential) == ("mtls", True, False)
    tls = catalog.get("tls-origination-at-egress-gateway").requires
    assert (tls.external, tls.client_credential, tls.server_ca_credential) == ("tls", False, True)
    for name in (
        "https-passthrough-via-egress-gateway",
        "registry-only-blocked-tls",
        "gateway-api-tls-passthrough-via-egress-gateway",
    ):
        assert catalog.get(name).requires.external == "tls", name
    assert catalog.get("http-via-egress-gateway").requires.external == "http"


def test_duplicate_request_names(tmp_path: Path) -> None:
    text = GOOD + "  - name: one\n    host: x.test\n    expect: {status: 200, via_gateway: false}\n"
    assert one_issue(tmp_path, text) == (
        14,
        "requests[1].name",
        "duplicate request name 'one' (first is requests[0])",
    )


def test_a_yaml_file_not_listed_in_manifests_is_an_error(tmp_path: Path) -> None:
    files = {"service-entry.yaml": MANIFEST, "forgotten.yaml": MANIFEST}
    assert one_issue(tmp_path, GOOD, files) == (
        5,
        "manifests",
        "'forgotten.yaml' is in the scenario folder but not listed in manifests",
    )


def test_a_manifest_with_a_yaml_error_is_reported_at_its_line(tmp_path: Path) -> None:
    files = {"service-entry.yaml": MANIFEST.replace("  hosts:", "  hosts: [oops\n  x:")}
    write_scenario(tmp_path, GOOD, files=files)
    with pytest.raises(ScenarioError) as info:
        load_catalog(tmp_path)
    (issue,) = info.value.issues
    assert issue.path == tmp_path / "demo" / "service-entry.yaml"
    assert issue.line == 8
    assert issue.message.startswith("invalid YAML")


def test_a_malformed_placeholder_in_a_manifest(tmp_path: Path) -> None:
    files = {"service-entry.yaml": MANIFEST.replace("{{ namespace }}", "{{ namespace }")}
    write_scenario(tmp_path, GOOD, files=files)
    with pytest.raises(ScenarioError) as info:
        load_catalog(tmp_path)
    (issue,) = info.value.issues
    assert (issue.path.name, issue.line) == ("service-entry.yaml", 5)
    assert issue.message == "malformed placeholder '{{ namespace }': write {{ variable_name }}"


def test_a_folder_without_scenario_yaml(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (issue,) = raw_issues(tmp_path)
    assert issue.path == tmp_path / "empty"
    assert issue.message == "a scenario folder needs a scenario.yaml"


def test_a_missing_catalog_folder(tmp_path: Path) -> None:
    (issue,) = raw_issues(tmp_path / "nowhere")
    assert issue.message == "scenario catalog folder does not exist"


def test_a_scenario_file_with_two_documents(tmp_path: Path) -> None:
    write_scenario(tmp_path, GOOD + "---\n" + GOOD)
    (issue,) = raw_issues(tmp_path)
    assert issue.message == "expected exactly one YAML document, found 2"


# ----------------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("1.28.10", (1, 28, 10, None)),
        ("1.31-dev", (1, 31, None, "dev")),
        ("1.31.0-alpha.0", (1, 31, 0, "alpha.0")),
        ("1.23", (1, 23, None, None)),
    ],
)
def test_parse_versions(text: str, parts: tuple[object, ...]) -> None:
    v = IstioVersion.parse(text)
    assert (v.major, v.minor, v.patch, v.prerelease) == parts
    assert str(v) == text


@pytest.mark.parametrize("text", ["1", "v1.28.0", "1.28.x", "1.28.0-", "latest", ""])
def test_reject_bad_versions(text: str) -> None:
    with pytest.raises(ValueError, match="not an Istio version"):
        IstioVersion.parse(text)


def test_version_order() -> None:
    texts = [
        "1.31.0",
        "1.28.10",
        "1.31-dev",
        "1.29.6",
        "1.31.0-alpha.0",
        "1.31.0-alpha.10",
        "1.28.9",
        "1.31.0-beta",
    ]
    ordered = sorted(texts, key=lambda t: IstioVersion.parse(t).sort_key)
    assert ordered == [
        "1.28.9",
        "1.28.10",
        "1.29.6",
        "1.31.0-alpha.0",
        "1.31.0-alpha.10",
        "1.31.0-beta",
        "1.31-dev",
        "1.31.0",
    ]


@pytest.mark.parametrize(
    ("low", "high", "version", "applies", "reason"),
    [
        ("1.23", None, "1.23.0", True, "Istio 1.23.0 is in range >=1.23"),
        ("1.23", None, "1.23-dev", True, "Istio 1.23-dev is in range >=1.23"),
        ("1.23", None, "1.22.7", False, "Istio 1.22.7 is older than the scenario's minimum 1.23"),
        ("1.28.10", None, "1.28.9", False, "Istio 1.28.9 is older than the scenario's minimum 1.28.10"),
        ("1.28.10", None, "1.28.10", True, "Istio 1.28.10 is in range >=1.28.10"),
        ("1.23", "1.30", "1.30.3", True, "Istio 1.30.3 is in range 1.23..1.30"),
        ("1.23", "1.30", "1.31-dev", False, "Istio 1.31-dev is newer than the scenario's maximum 1.30"),
        ("1.23", "1.31.0", "1.31-dev", True, "Istio 1.31-dev is in range 1.23..1.31.0"),
        (
            "1.31.0",
            None,
            "1.31.0-alpha.0",
            False,
            "Istio 1.31.0-alpha.0 is older than the scenario's minimum 1.31.0",
        ),
    ],
)
def test_applies_to(low: str, high: str | None, version: str, applies: bool, reason: str) -> None:
    vr = VersionRange(IstioVersion.parse(low), IstioVersion.parse(high) if high else None)
    assert vr.applies_to(version) == (applies, reason)


def test_an_inverted_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"min 1\.30\.0 is above max 1\.29"):
        VersionRange(IstioVersion.parse("1.30.0"), IstioVersion.parse("1.29"))


versions = st.builds(
    IstioVersion,
    st.integers(0, 3),
    st.integers(0, 40),
    st.none() | st.integers(0, 20),
    st.none() | st.sampled_from(["dev", "alpha", "alpha.0", "alpha.1", "beta.2", "rc.0"]),
)


@given(versions)
def test_version_text_round_trips(v: IstioVersion) -> None:
    assert IstioVersion.parse(str(v)) == v


@given(versions, versions)
def test_a_range_holds_exactly_what_lies_between_its_exact_bounds(a: IstioVersion, b: IstioVersion) -> None:
    low, high = sorted([a, b], key=lambda v: v.sort_key)
    # exact bounds: give both a patch so that neither is a bare minor
    low = IstioVersion(low.major, low.minor, low.patch or 0, low.prerelease)
    high = IstioVersion(high.major, high.minor, high.patch or 0, high.prerelease)
    if high < low:
        low, high = high, low
    vr = VersionRange(low, high)
    assert vr.applies_to(low)[0]
    assert vr.applies_to(high)[0]
    above = IstioVersion(high.major, high.minor + 1, 0, None)
    assert not vr.applies_to(above)[0]


# --- the package's shape: data flows one way, and the catalog knows no tier ---------------------

PACKAGE = PROJECT_ROOT / "harness" / "scenarios"
TIERS = ("harness.cluster", "harness.localmesh", "harness.upgrade")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, str]]:
    """(enclosing function or "", imported module) of every import in ``path``, nested ones too."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Import):
                found.extend((function, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((function, child.module))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_catalog_imports_no_tier() -> None:
    tier_imports = {
        (module, function, imported)
        for module, imports in MODULES.items()
        for function, imported in imports
        if imported.startswith(TIERS)
    }
    # not even inside a function: a tier adds its own ``scenarios`` commands (``scenarios local``)
    assert tier_imports == set()


def test_the_catalog_modules_import_each_other_without_a_circle() -> None:
    graph = {
        module: {imported for _, imported in imports if imported in MODULES and imported != module}
        for module, imports in MODULES.items()
    }
    assert graph["harness.scenarios.loader"] >= {"harness.scenarios.placeholders"}
    assert "harness.scenarios.render" not in graph["harness.scenarios.loader"]
    done: set[str] = set()

    def walk(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import circle: " + " -> ".join([*path, module])
        if module in done:
            return
        for imported in sorted(graph[module]):
            walk(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        walk(module, ())
