"""The catalog on the local Envoy tier: every scenario it can emulate, from its own scenario.yaml."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.evidence import CANARY_MISSING, EntryLog, EvidenceError, FileLogSource, Wait, expect_entry
from harness.localmesh import (
    LOCAL_ISTIO_VERSION,
    LocalMesh,
    LocalMeshError,
    LocalStage,
    LocalTier,
    NotEmulable,
    run_locally,
)
from harness.runner import run_catalog, run_scenario
from harness.scenarios import load_catalog
from harness.scenarios.model import Scenario
from harness.tier import HopLogs, Tier
from tests.envoy.test_localmesh import _alive

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
    # through the one scenario runner, as every tier runs the catalog
    with LocalTier(encoding=encoding, flush_interval_ms=FLUSH_MS) as tier:  # type: ignore[arg-type]
        run = run_scenario(tier, scenario)
    result = run.result
    if result.outcome == "skipped":
        assert result.message.startswith("the local tier cannot emulate it: ")
        pytest.skip(f"{scenario.name}: {result.message}")
    assert [o.request.name for o in run.requests] == [r.name for r in scenario.requests]
    failures = [f"{o.request.name}: {o.error}" for o in run.requests if o.error]
    assert not failures, "\n".join(failures)
    assert result.outcome == "passed", result.message
    assert (result.scenario, result.phase, result.istio_version) == (
        scenario.name,
        "single",
        LOCAL_ISTIO_VERSION,
    )
    assert result.convergence_s is not None and result.convergence_s > 0
    assert [line.split(":")[0] for line in result.message.split("; ")] == [r.name for r in scenario.requests]


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


def test_the_local_tier_is_a_tier_and_says_what_it_runs() -> None:
    tier: Tier = LocalTier()
    versions = tier.versions()
    assert versions.emulated and versions.istio == LOCAL_ISTIO_VERSION and versions.envoy
    assert versions.header().startswith(f"Istio {LOCAL_ISTIO_VERSION} (emulated), Envoy ")


class WatchedTier(LocalTier):
    """The local tier, keeping each stage's mesh once applied (to check it is gone afterwards)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.meshes: list[LocalMesh] = []

    def stage(self, scenario: Scenario) -> LocalStage:
        stage = super().stage(scenario)
        apply = stage.apply

        def watched() -> float:
            try:
                return apply()
            finally:
                assert stage.mesh is not None
                self.meshes.append(stage.mesh)

        stage.apply = watched  # type: ignore[method-assign]
        return stage


def test_a_failed_scenario_names_the_hop_and_its_mesh_is_stopped() -> None:
    via = _flip(CATALOG.get("http-via-egress-gateway"), via_gateway=False, sidecar={}, gateway={})
    with WatchedTier(flush_interval_ms=FLUSH_MS) as tier:
        run = run_scenario(tier, via)
    assert (run.result.outcome, run.result.hop) == ("failed", "target sidecar")
    assert isinstance(run.error, EvidenceError) and run.diagnostics is None and not run.kept
    [mesh] = tier.meshes
    pids = [pid for _, pid in mesh.processes()]
    assert pids and not any(_alive(pid) for pid in pids), "a local mesh process outlived the failed scenario"
    assert mesh.workdir is not None and not mesh.workdir.exists()
    [line, *detail] = run.lines()
    assert line.startswith("FAIL  http-via-egress-gateway/via-gateway  status 200  id ")
    assert detail and "target sidecar" in detail[0]


def test_a_mesh_that_does_not_start_is_an_error_and_nothing_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.localmesh.mesh as lm

    def broken(topo: lm.Topology, gateway: object, external: object, log: Path) -> dict[str, object]:
        config = lm.proxy_sidecar_config(topo, ("127.0.0.1", 1), log)
        config["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"  # type: ignore[index]
        return config

    monkeypatch.setattr(lm, "target_sidecar_config", broken)
    with WatchedTier(flush_interval_ms=FLUSH_MS) as tier:
        run = run_scenario(tier, CATALOG.get("sidecar-only-egress"))
    assert run.result.outcome == "error" and run.requests == ()
    assert run.result.message.startswith("LocalMeshError: local mesh: target-sidecar: ")
    assert "NOT_A_TYPE" in run.result.message
    [mesh] = tier.meshes
    assert not any(_alive(pid) for _, pid in mesh.processes())
    assert mesh.workdir is not None and not mesh.workdir.exists()
    # the wrapper the command uses raises it, as before the runner
    with pytest.raises(LocalMeshError, match="target-sidecar"):
        run_locally(CATALOG.get("sidecar-only-egress"), flush_interval_ms=FLUSH_MS)


def test_keep_on_failure_keeps_the_meshs_logs_and_names_them() -> None:
    direct = _flip(CATALOG.get("sidecar-only-egress"), via_gateway=True, sidecar={})
    with LocalTier(flush_interval_ms=FLUSH_MS, keep_on_failure=True) as tier:
        failed = run_scenario(tier, direct)
        passed = run_scenario(tier, CATALOG.get("sidecar-only-egress"))
    workdir = failed.diagnostics
    try:
        assert failed.result.outcome == "failed" and failed.kept and workdir is not None
        assert failed.result.message.endswith(f"\ndiagnostics: {workdir}")
        log = (workdir / "logs" / "target-sidecar.log").read_text()
        assert failed.requests[0].request_id in log
        assert passed.result.outcome == "passed" and not passed.kept and passed.diagnostics is None
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def test_run_catalog_on_the_local_tier_runs_and_skips() -> None:
    names = ["sidecar-only-egress", "tls-origination-at-egress-gateway"]
    lines: list[str] = []
    with LocalTier(encoding="json", flush_interval_ms=FLUSH_MS) as tier:
        runs = run_catalog(tier, [CATALOG.get(n) for n in names], each=lambda r: lines.extend(r.lines()))
    assert [r.result.outcome for r in runs] == ["passed", "skipped"]
    assert lines[0].startswith("PASS  sidecar-only-egress/direct-from-sidecar  status 200  id ")
    assert lines[1].startswith("SKIP  tls-origination-at-egress-gateway: the local tier cannot emulate it: ")


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
    header, first = out.stdout.splitlines()[:2]
    assert re.match(r"Istio \S+ \(emulated\), Envoy 1\.\d+\.\d+$", header), header  # labelled an emulation
    assert first.startswith("PASS  sidecar-only-egress/direct-from-sidecar  status 200")
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


class WrongGatewayLogTier(LocalTier):
    """The local tier, judging the gateway by a log file nobody writes (a wrong log source)."""

    def stage(self, scenario: Scenario) -> LocalStage:
        stage = super().stage(scenario)
        hop_logs = stage.hop_logs

        def wrong(sent: Any) -> HopLogs:
            logs = hop_logs(sent)
            assert stage.mesh is not None and stage.mesh.workdir is not None
            nowhere = EntryLog(FileLogSource(stage.mesh.workdir / "no-such.log"), hop="egress gateway")
            return dataclasses.replace(logs, gateway=nowhere)

        stage.hop_logs = wrong  # type: ignore[method-assign]
        return stage


def test_an_absence_in_a_gateway_log_nobody_writes_proves_nothing() -> None:
    with WrongGatewayLogTier(flush_interval_ms=FLUSH_MS) as tier:
        run = run_scenario(tier, CATALOG.get("sidecar-only-egress"))
    assert (run.result.outcome, run.result.hop) == ("failed", "egress gateway")
    assert run.result.message.startswith(f"hop 'egress gateway': {CANARY_MISSING}")
    assert "egh-live-" in run.result.message


def test_the_local_canary_is_logged_by_the_gateway_envoy() -> None:
    with LocalTier(flush_interval_ms=FLUSH_MS) as tier:
        stage = tier.stage(CATALOG.get("sidecar-only-egress"))
        try:
            stage.apply()
            ref = stage.canary()
            entry = expect_entry(
                stage.entry_log("egress-gateway"), ref, wait=Wait(timeout=5.0, interval=0.05)
            )
        finally:
            stage.remove(failed=False)
    assert ref.path_token and ref.path_token.startswith("egh-live-")
    assert (entry.response_code, entry.response_flags, entry.response_code_details) == (
        404,
        "NR",
        "route_not_found",
    )
    assert entry.authority == "istio-egressgateway.istio-system.svc.cluster.local"
