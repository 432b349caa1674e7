"""``egress-harness scenarios ...``: exit codes 0 (ok), 1 (failures listed), 2 (usage)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from harness.scenarios import RenderContext, load_catalog, render_scenario
from harness.scenarios import cli as scenarios_cli
from harness.scenarios.crds import IstioCrdDir, shared_dir, validate_catalog
from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR, PROJECT_ROOT

BAD = Path(__file__).parent / "data" / "scenarios_bad" / "catalog"
SHARED = shared_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None or not (SHARED / "istio" / "crds").is_dir(),
    reason="the Istio CRD bundles are absent: no ../shared/istio/crds beside the repository; set "
    "EGRESS_HARNESS_SHARED=/path/to/shared to run the offline validation through the CLI",
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="egress-harness")
    scenarios_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["scenarios", *argv])
    code: int = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    catalog = load_catalog(DEFAULT_SCENARIOS_DIR)
    assert names == sorted(names) == list(catalog.names())
    assert {"http-via-egress-gateway", "registry-only-blocked", "sidecar-only-egress"} <= set(names)
    assert "registry-only-blocked  istio >=1.23  needs REGISTRY_ONLY, TEXT/JSON" in out
    assert err == f"{len(catalog)} scenarios\n"


def test_list_a_bad_catalog_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--scenarios-dir", str(BAD))
    assert code == 1
    assert out == ""
    assert err.startswith("8 problems in the scenario catalog:")
    assert "wrong-type/scenario.yaml:10: requests[0].expect.status: expected int, got str" in err


def test_list_several_catalogs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_SCENARIOS_DIR / "sidecar-only-egress", tmp_path / "extra" / "sidecar-only-egress")
    code, _, err = run(
        capsys,
        "list",
        "--scenarios-dir",
        str(DEFAULT_SCENARIOS_DIR),
        "--scenarios-dir",
        str(tmp_path / "extra"),
    )
    assert code == 1
    assert "duplicate scenario name 'sidecar-only-egress'" in err


def test_render_prints_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "render", "http-via-egress-gateway", "--istio-version", "1.30.3")
    assert code == 0
    expected = render_scenario(
        load_catalog(DEFAULT_SCENARIOS_DIR).get("http-via-egress-gateway"),
        RenderContext(istio_version="1.30.3"),
    )
    assert out == expected.text


def test_render_with_values(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "render",
        "sidecar-only-egress",
        "--set",
        "external_host=httpbin.org",
        "--set",
        "external_port=8080",
    )
    assert code == 0
    assert "    - httpbin.org\n" in out
    assert "      number: 8080\n" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "nope"], "no scenario named 'nope'; the catalog has: "),
        (
            ["render", "sidecar-only-egress", "--istio-version", "1.22.0"],
            "older than the scenario's minimum 1.23",
        ),
        (
            ["render", "sidecar-only-egress", "--istio-version", "one"],
            "--istio-version: not an Istio version",
        ),
        (
            ["render", "sidecar-only-egress", "--set", "externalhost=x"],
            "--set 'externalhost=x': expected VAR=VALUE",
        ),
        (
            ["render", "sidecar-only-egress", "--set", "namespace=Bad"],
            "RenderContext.namespace: not a DNS label",
        ),
        (["validate", "--istio-version", "one"], "--istio-version: not an Istio version"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err


def test_argparse_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(capsys, "render")
    assert info.value.code == 2


@needs_shared
def test_validate_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert SHARED is not None
    versions = IstioCrdDir(SHARED / "istio" / "crds").versions()
    catalog = load_catalog(DEFAULT_SCENARIOS_DIR)
    report = validate_catalog(catalog, None, SHARED / "istio" / "crds", SHARED / "gateway-api" / "crds")
    code, out, err = run(capsys, "validate")
    assert code == 0, err
    assert (
        f"checked {len(report.checks)} documents of {len(catalog)} scenarios against Istio {', '.join(versions)} CRDs"
    ) in out
    for name, version, _ in report.skipped:
        assert f"skipped: {name} @ Istio {version}:" in out
    assert out.rstrip().endswith("OK")


@needs_shared
def test_validate_verbose_lists_documents_and_cel_rules(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PROJECT_ROOT)
    code, out, _ = run(capsys, "validate", "--istio-version", "1.30.3", "-v")
    assert code == 0
    assert (
        "  http-via-egress-gateway @ 1.30.3: scenarios/http-via-egress-gateway/gateway.yaml document 0 "
        "Gateway/egress-gateway: 1.30.3.yaml\n"
    ) in out
    assert (
        "  scenarios/sidecar-only-egress/service-entry.yaml document 0 ServiceEntry/external-http: "
        "spec.ports[0].number: 'port must be between 1-65535' (rule: 0 < self && self <= 65535)\n"
    ) in out


@needs_shared
def test_validate_a_broken_manifest_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "sidecar-only-egress"
    shutil.copytree(DEFAULT_SCENARIOS_DIR / "sidecar-only-egress", folder)
    manifest = folder / "service-entry.yaml"
    manifest.write_text(manifest.read_text().replace("resolution: DNS", "resolution: DNZ"))
    code, out, err = run(capsys, "validate", "--scenarios-dir", str(tmp_path), "--istio-version", "1.31-dev")
    assert code == 1
    assert out == ""
    assert f"error: {manifest}:" in err
    assert 'spec.resolution: "DNZ" is not one of "NONE", "STATIC", "DNS"' in err
    assert err.rstrip().endswith("FAILED: 1 error")


def test_validate_without_crds_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", "--crd-dir", str(tmp_path))
    assert code == 1
    assert f"no Istio CRD bundles in {tmp_path}" in err
    assert "FAILED" in err


def test_validate_a_bad_catalog_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", "--scenarios-dir", str(BAD), "--crd-dir", str(tmp_path))
    assert code == 1
    assert "8 problems in the scenario catalog:" in err


def test_validate_uses_the_crd_dir_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EGRESS_HARNESS_CRD_DIR", str(tmp_path / "from-env"))
    code, _, err = run(capsys, "validate")
    assert code == 1
    assert f"no Istio CRD bundles in {tmp_path / 'from-env'}" in err
