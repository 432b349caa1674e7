"""``egress-harness scenarios run``: its usage errors, attaching to a kept run by its kubeconfig,
and scenarios run several at a time on a tier (the memory tier of ``test_runner``), each reported
once, whole, as it ends."""

from __future__ import annotations

import argparse
import dataclasses
import io
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.cluster.catalog_cli import Report, attached_options, find_run_state, run_all
from harness.cluster.errors import E2EError
from harness.runner import ScenarioRun
from harness.scenarios.model import Scenario
from tests.unit.test_e2e_cli import state_of
from tests.unit.test_runner import CATALOG, MISSION, MemoryStage, MemoryTier


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["scenarios", "run", *argv])
    return code, out.getvalue(), err.getvalue()


def test_an_unknown_scenario_or_no_worker_is_a_usage_error() -> None:
    code, _, err = cli("--tier", "istiod", "no-such-scenario")
    assert code == 2 and "no scenario no-such-scenario" in err
    code, _, err = cli("--workers", "0", MISSION)
    assert code == 2 and "--workers" in err


def test_a_kubeconfig_leads_to_the_run_state_of_the_kept_run_it_belongs_to(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    kubeconfig = run_dir / "netns" / "kubeconfig"
    kubeconfig.parent.mkdir(parents=True)
    kubeconfig.write_text("apiVersion: v1\n")
    state = dataclasses.replace(state_of(run_dir), run_dir=run_dir, kubeconfig=kubeconfig, cluster="netns")
    state.save(run_dir / "run-state.json")
    assert find_run_state(kubeconfig) == run_dir / "run-state.json"
    options = attached_options(state, argparse.Namespace(keep=True))
    assert (options.provider, options.keep_on_failure, options.istio_version) == ("netns", True, "1.30.3")
    other = tmp_path / "elsewhere" / "kubeconfig"
    other.parent.mkdir()
    other.write_text("apiVersion: v1\n")
    with pytest.raises(E2EError, match="belongs to no harness run"):
        find_run_state(other)


class SlowStage(MemoryStage):
    """A memory stage whose apply takes a moment, so that scenarios run at once overlap."""

    active = 0
    most = 0
    guard = threading.Lock()

    def apply(self) -> float | None:
        with SlowStage.guard:
            SlowStage.active += 1
            SlowStage.most = max(SlowStage.most, SlowStage.active)
        time.sleep(0.2)  # the stand-in for waiting on proxies: what makes running several at once pay
        with SlowStage.guard:
            SlowStage.active -= 1
        return super().apply()


class SlowTier(MemoryTier):
    def stage(self, scenario: Scenario) -> MemoryStage:
        stage = SlowStage(self, scenario)
        self.stages.append(stage)
        return stage


def test_scenarios_run_several_at_a_time_and_each_is_reported_once_whole() -> None:
    # the mission under three names: the memory tier routes by host, and the mission's host goes out
    scenarios = [dataclasses.replace(CATALOG.get(MISSION), name=f"{MISSION}-{i}") for i in range(3)]
    seen: list[str] = []
    report = Report()

    def each(run: ScenarioRun) -> None:
        seen.append(run.result.scenario)
        report(run)

    SlowStage.most = 0
    out = io.StringIO()
    with SlowTier() as tier, redirect_stdout(out):
        runs = run_all(tier, scenarios, workers=3, each=each)
    assert SlowStage.most >= 2, "the scenarios did not overlap"
    assert sorted(seen) == sorted(s.name for s in scenarios)
    assert [r.result.scenario for r in runs] == [s.name for s in scenarios]  # in the catalog's order
    assert all(r.passed for r in runs), [r.result.message for r in runs]
    assert report.code == 0
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("PASS") for line in lines) == sum(len(s.requests) for s in scenarios)


def test_a_failed_scenario_makes_the_command_fail() -> None:
    out = io.StringIO()
    report = Report()
    tier = MemoryTier(
        paths={"external.egress-harness.test": "direct", "unregistered.egress-harness.test": "blocked"}
    )
    with tier, redirect_stdout(out):
        runs = run_all(tier, [CATALOG.get(MISSION)], workers=2, each=report)
    assert not runs[0].passed and report.code == 1
    assert out.getvalue().startswith("FAIL  http-via-egress-gateway/")


def test_the_istiod_tier_is_entered_and_its_temporary_run_folder_goes_after_a_clean_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's cluster tier is entered (its exit waits for the scenario namespaces it deleted)
    and the temporary run folder it made is removed once e2e down removed the cluster; --keep keeps both."""
    from harness.cluster import catalog_cli
    from harness.cluster import cli as cluster_cli
    from harness.cluster import run as cluster_run
    from harness.cluster import tier as cluster_tier

    events: list[str] = []
    made: list[Path] = []

    def bring_up(options: Any, run_dir: Path) -> Any:
        made.append(run_dir)
        (run_dir / "scenarios").mkdir(parents=True)  # what a run leaves in its folder
        return argparse.Namespace(kubeconfig=run_dir / "kubeconfig")

    class Run:
        def __init__(self, *a: Any, **kw: Any) -> None:
            pass

        def __enter__(self) -> Run:
            return self

        def __exit__(self, *exc: object) -> None:
            events.append("run exit")

    class Tier:
        def __init__(self, run: Any, **kw: Any) -> None:
            pass

        def __enter__(self) -> Tier:
            events.append("tier enter")
            return self

        def __exit__(self, *exc: object) -> None:
            events.append("tier exit")

    monkeypatch.setattr(cluster_cli, "bring_up", bring_up)
    monkeypatch.setattr(cluster_cli, "bring_down", lambda run_dir: events.append("down") or [])
    monkeypatch.setattr(cluster_run, "E2ERun", Run)
    monkeypatch.setattr(cluster_tier, "ClusterTier", Tier)
    monkeypatch.setattr(catalog_cli, "netns_options", lambda args, catalog: object())
    monkeypatch.setattr(catalog_cli.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "tmp-run"))
    args = argparse.Namespace(run_state=None, kubeconfig=None, run_dir=None, keep=False)
    with catalog_cli.istiod_tier(args, []) as tier:
        assert isinstance(tier, Tier)
    assert events == ["tier enter", "tier exit", "run exit", "down"]
    assert not made[0].exists()
    events.clear()
    kept = argparse.Namespace(run_state=None, kubeconfig=None, run_dir=tmp_path / "kept", keep=True)
    with catalog_cli.istiod_tier(kept, []):
        pass
    assert events == ["tier enter", "tier exit", "run exit"] and (tmp_path / "kept").is_dir()
