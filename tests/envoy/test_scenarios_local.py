"""The catalog on the local Envoy tier: every scenario it can emulate, from its own scenario.yaml."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.evidence import EvidenceError
from harness.localmesh.plan import NotEmulable
from harness.localmesh.scenarios import run_locally
from harness.scenarios import load_catalog
from harness.scenarios.model import Scenario

ROOT = Path(__file__).resolve().parents[2]
#: Tests flush access logs faster than Istio (1 s) does; every wait scales with the interval.
FLUSH_MS = 200
CATALOG = load_catalog(ROOT / "scenarios")


def _cases() -> list[object]:
    cases = []
    for scenario in CATALOG.scenarios:
        for encoding in scenario.requires.access_log_encoding:
            cases.append(pytest.param(scenario, encoding.lower(), id=f"{scenario.name}-{encoding.lower()}"))
    return cases


@pytest.mark.parametrize(("scenario", "encoding"), _cases())
def test_catalog_scenario_on_the_local_tier(scenario: Scenario, encoding: str) -> None:
    try:
        outcomes = run_locally(scenario, encoding=encoding, flush_interval_ms=FLUSH_MS)  # type: ignore[arg-type]
    except NotEmulable as exc:
        pytest.skip(f"{scenario.name}: the local tier cannot emulate it: {exc}")
    assert [o.request.name for o in outcomes] == [r.name for r in scenario.requests]
    failures = [f"{o.request.name}: {o.error}" for o in outcomes if o.error]
    assert not failures, "\n".join(failures)


def test_the_emulable_core_of_the_catalog_is_really_run() -> None:
    # The three patterns the local tier must cover: through the gateway, the sidecar-only negative
    # control, REGISTRY_ONLY. A translator that refused them would turn this tier into skips.
    names = {s.name for s in CATALOG.scenarios}
    assert {"http-via-egress-gateway", "sidecar-only-egress", "registry-only-blocked"} <= names


def _flip(scenario: Scenario, **expect: object) -> Scenario:
    request = scenario.requests[0]
    wrong = dataclasses.replace(request, expect=dataclasses.replace(request.expect, **expect))  # type: ignore[arg-type]
    return dataclasses.replace(scenario, requests=(wrong,))


def test_a_wrong_expectation_fails_naming_the_hop() -> None:
    # sidecar-only-egress goes straight out: claiming it went through the gateway must fail at the
    # target's sidecar, and the claim that it went direct on the via-gateway scenario at the gateway.
    direct = _flip(CATALOG.get("sidecar-only-egress"), via_gateway=True, sidecar={})
    [outcome] = run_locally(direct, flush_interval_ms=FLUSH_MS)
    assert isinstance(outcome.error, EvidenceError)
    assert outcome.error.hop == "target sidecar"
    assert "istio-egressgateway" in str(outcome.error)

    via = _flip(CATALOG.get("http-via-egress-gateway"), via_gateway=False, sidecar={}, gateway={})
    [outcome] = run_locally(via, flush_interval_ms=FLUSH_MS)
    assert isinstance(outcome.error, EvidenceError)
    assert outcome.error.hop == "target sidecar"  # it went to the gateway, not straight out

    # A wrong status is caught at the first hop that logged it, before the client's answer is read.
    status = _flip(CATALOG.get("http-via-egress-gateway"), status=201)
    [outcome] = run_locally(status, flush_interval_ms=FLUSH_MS)
    assert isinstance(outcome.error, EvidenceError)
    assert outcome.error.hop == "egress gateway"
    assert "response_code == 201 (got 200)" in str(outcome.error)


def test_a_scenario_outside_the_local_image_is_refused_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "authz-only"
    folder.mkdir()
    (folder / "policy.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\n"
        "  namespace: '{{ namespace }}'\nspec: {}\n"
    )
    (folder / "scenario.yaml").write_text(
        "name: authz-only\ndescription: x\nistio: {min: '1.23'}\nmanifests: [policy.yaml]\n"
        "requests:\n  - name: r\n    host: '{{ external_host }}'\n    expect: {status: 200, via_gateway: false}\n"
    )
    [scenario] = load_catalog(tmp_path).scenarios
    with pytest.raises(NotEmulable, match=r"AuthorizationPolicy \(security.istio.io/v1\) has no local image"):
        run_locally(scenario, flush_interval_ms=FLUSH_MS)


def test_the_catalog_runs_in_parallel_with_xdist() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "catalog_scenario",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed is not None, out.stdout[-2000:]
    assert int(passed.group(1)) >= 3  # at least the three emulable core scenarios, TEXT encoding


def test_scenarios_local_command() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "scenarios",
            "local",
            "sidecar-only-egress",
            "--encoding",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("PASS  sidecar-only-egress/direct-from-sidecar  status 200")
    missing = subprocess.run(
        [sys.executable, "-m", "harness.cli", "scenarios", "local", "no-such-scenario"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert missing.returncode == 2
    assert "no scenario no-such-scenario" in missing.stderr
