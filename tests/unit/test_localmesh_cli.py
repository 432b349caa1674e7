"""``egress-harness scenarios local``: the local tier's own command in the catalog's group, without
starting Envoy (unknown names, scenarios it cannot emulate, the report of a run, a tier that cannot
run a scenario). The command's real runs are in ``tests/envoy/test_scenarios_local.py``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from harness import cli
from harness.localmesh import cli as local_cli
from harness.localmesh.mesh import LocalMeshError
from harness.localmesh.tier import LocalTier
from harness.report.results import ScenarioResult
from harness.runner import ScenarioRun
from harness.scenarios import cli as scenarios_cli
from harness.scenarios.model import Scenario

TLS = "tls-origination-at-egress-gateway"


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["scenarios", "local", *argv])


def test_the_local_tier_adds_its_command_to_the_catalogs_group() -> None:
    args = parse("sidecar-only-egress", "--encoding", "json", "--scenarios-dir", "scenarios")
    assert args.handler is local_cli.run_local
    assert (args.names, args.encoding, [str(d) for d in args.scenarios_dir]) == (
        ["sidecar-only-egress"],
        "json",
        ["scenarios"],
    )
    # the catalog alone has no tier's command
    parser = argparse.ArgumentParser(prog="egress-harness")
    scenarios_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["scenarios", "local"])


def test_an_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenarios", "local", "sidecar-only-egress", "no-such-scenario"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "egress-harness scenarios local: no scenario no-such-scenario\n"


def test_a_scenario_the_tier_cannot_emulate_is_skipped_with_the_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_mesh(self: LocalTier, scenario: Scenario) -> Any:
        raise AssertionError("nothing starts for a scenario that is skipped")

    monkeypatch.setattr(LocalTier, "stage", no_mesh)
    assert cli.main(["scenarios", "local", TLS]) == 0
    out, _ = capsys.readouterr()
    header, skip = out.splitlines()
    assert header.startswith("Istio ") and "(emulated)" in header  # labelled an emulation
    assert skip.startswith(f"SKIP  {TLS}: the local tier cannot emulate it: ")


def fake_catalog(runs: list[ScenarioRun], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``run_catalog`` replaced: it hands ``runs`` to the command as they end; the scenarios asked for."""
    asked: list[str] = []

    def run_catalog(
        tier: Any, scenarios: Iterable[Scenario], *, each: Callable[[ScenarioRun], None], **kw: Any
    ) -> list[ScenarioRun]:
        asked.extend(s.name for s in scenarios)
        for run in runs:
            each(run)
        return runs

    monkeypatch.setattr(local_cli, "run_catalog", run_catalog)
    return asked


def test_a_failed_scenario_is_reported_and_fails_the_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    boom = AssertionError("the gateway never saw it")
    failed = ScenarioRun(
        ScenarioResult("sidecar-only-egress", "single", "1.30.3", "failed", str(boom)), error=boom
    )
    skipped = ScenarioRun(ScenarioResult(TLS, "single", "1.30.3", "skipped", "no image"))
    asked = fake_catalog([failed, skipped], monkeypatch)
    assert cli.main(["scenarios", "local", TLS, "sidecar-only-egress"]) == 1
    out, _ = capsys.readouterr()
    assert (
        out.split("\n", 1)[1]
        == f"FAIL  sidecar-only-egress: the gateway never saw it\nSKIP  {TLS}: no image\n"
    )
    assert set(asked) == {TLS, "sidecar-only-egress"} and len(asked) == 2  # in the catalog's order


def test_a_scenario_the_tier_could_not_run_ends_the_command_with_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    error = LocalMeshError("target-sidecar", "exited")
    run = ScenarioRun(
        ScenarioResult("sidecar-only-egress", "single", "1.30.3", "error", f"LocalMeshError: {error}"),
        error=error,
    )
    fake_catalog([run], monkeypatch)
    assert cli.main(["scenarios", "local", "sidecar-only-egress"]) == 1
    out, err = capsys.readouterr()
    assert "(emulated)" in out and out.count("\n") == 1  # the header only
    assert err == "egress-harness scenarios: local mesh: target-sidecar: exited\n"
