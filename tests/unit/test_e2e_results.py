"""The pytest plugin's side of the cluster tier: result recording and files (one per xdist worker),
attaching to a run state or failing fast under xdist without one, the access-log encoding known at
collection, the upgrade options, and the new run options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import pytest_plugin
from harness.cluster import E2EOptions, RunState, recorder_aliases
from harness.pytest_plugin import (
    XDIST_WITHOUT_RUN_STATE,
    E2EResults,
    options_from,
    run_encoding,
    session_state_or_stop,
    upgrade_plan_from,
    xdist_worker,
)
from harness.report.results import ScenarioResult, load_results
from harness.scenarios import load_catalog
from tests.unit.test_e2e_cli import state_of

REPO = Path(__file__).resolve().parents[2]


class FakeConfig:
    """What the plugin reads of a pytest config: options, the root, the stash, xdist's worker input."""

    def __init__(self, root: Path, *, worker: str | None = None, **given: Any) -> None:
        self.rootpath = root
        self.given = {f"--{k.replace('_', '-')}": v for k, v in given.items()}
        self.stash = pytest.Stash()
        if worker is not None:
            self.workerinput = {"workerid": worker}

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.given.get(name, default)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "EGRESS_HARNESS_RUN_STATE",
        "EGRESS_HARNESS_RESULTS_DIR",
        "EGRESS_HARNESS_ACCESS_LOG_ENCODING",
        "EGRESS_HARNESS_GATEWAY_API",
        "EGRESS_HARNESS_OUTBOUND_POLICY",
        "EGRESS_HARNESS_UPGRADE_FROM",
        "EGRESS_HARNESS_UPGRADE_TO",
        "EGRESS_HARNESS_UPGRADE_MODE",
        "PYTEST_XDIST_WORKER",
    ):
        monkeypatch.delenv(var, raising=False)


# --- results -----------------------------------------------------------------------------------------


def test_a_recording_turns_the_outcome_of_its_body_into_a_result() -> None:
    results = E2EResults()
    results.bind("abc123", "1.30.3")
    with results.recording("mission/a") as note:
        note.convergence_s = 1.5
        note.proxy_versions = ["1.30.3"]
        note.message = "through the egress gateway"
    with pytest.raises(pytest.skip.Exception), results.recording("mission/b"):
        pytest.skip("--external internet: the external host keeps no record")

    class HopError(AssertionError):
        hop = "egress gateway"

    with pytest.raises(HopError), results.recording("mission/c"):
        raise HopError("hop 'egress gateway': no entry")
    with pytest.raises(pytest.fail.Exception), results.recording("mission/d"):
        pytest.fail("the client got HTTP 502", pytrace=False)
    with pytest.raises(OSError, match="disk full"), results.recording("mission/e"):
        raise OSError("disk full")
    with pytest.raises(KeyboardInterrupt), results.recording("mission/f"):
        raise KeyboardInterrupt
    got = [
        (r.scenario, r.outcome, r.message, r.hop, r.convergence_s, r.proxy_versions) for r in results.results
    ]
    assert got == [
        ("mission/a", "passed", "through the egress gateway", None, 1.5, ["1.30.3"]),
        ("mission/b", "skipped", "--external internet: the external host keeps no record", None, None, []),
        ("mission/c", "failed", "hop 'egress gateway': no entry", "egress gateway", None, []),
        ("mission/d", "failed", "the client got HTTP 502", None, None, []),
        ("mission/e", "error", "OSError: disk full", None, None, []),
    ]
    assert all(r.phase == "single" and r.istio_version == "1.30.3" for r in results.results)


def test_nothing_is_recorded_or_written_without_a_run(tmp_path: Path) -> None:
    results = E2EResults(tmp_path)
    with results.recording("mission/a"):
        pass
    assert results.results == [] and results.write() is None


def test_results_are_written_as_one_run_per_worker(tmp_path: Path) -> None:
    results = E2EResults(tmp_path / "results", "gw1")
    results.bind("abc123", "1.30.3")
    results.record(ScenarioResult("http-via-egress-gateway", "single", "1.30.3", "passed", convergence_s=2.0))
    results.record(ScenarioResult("sidecar-only-egress", "single", "1.30.3", "failed", hop="target sidecar"))
    path = results.write()
    assert path == tmp_path / "results" / "abc123-gw1.json"
    (run,) = load_results([path])
    assert (run.run_id, run.mode, run.istio_versions) == ("abc123", "single", ["1.30.3"])
    assert [(r.scenario, r.outcome, r.hop) for r in run.scenarios] == [
        ("http-via-egress-gateway", "passed", None),
        ("sidecar-only-egress", "failed", "target sidecar"),
    ]
    assert E2EResults(tmp_path).write() is None  # nothing recorded: no file
    single = E2EResults(tmp_path / "one")
    single.bind("abc123", "1.30.3")
    single.record(ScenarioResult("a", "single", "1.30.3", "passed"))
    assert single.write() == tmp_path / "one" / "abc123.json"


def test_the_results_directory_and_worker_come_from_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = FakeConfig(tmp_path, worker="gw3")
    monkeypatch.setenv("EGRESS_HARNESS_RESULTS_DIR", "artifacts/results")
    collector = pytest_plugin.results_for(config)  # type: ignore[arg-type]
    assert (collector.directory, collector.worker) == (tmp_path / "artifacts/results", "gw3")
    assert pytest_plugin.results_for(config) is collector  # type: ignore[arg-type]
    given = pytest_plugin.results_for(FakeConfig(tmp_path, results_dir="out"))  # type: ignore[arg-type]
    assert (given.directory, given.worker) == (tmp_path / "out", None)


# --- attaching, xdist ---------------------------------------------------------------------------------


def test_xdist_workers_are_recognised() -> None:
    assert xdist_worker(FakeConfig(Path("."))) is None  # type: ignore[arg-type]
    assert xdist_worker(FakeConfig(Path("."), worker="gw0")) == "gw0"  # type: ignore[arg-type]


def test_under_xdist_without_a_run_state_the_session_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytest_plugin, "skip_reason", lambda options, state=None: None)
    config = FakeConfig(tmp_path, worker="gw0")
    with pytest.raises(pytest.fail.Exception, match="make e2e"):
        session_state_or_stop(config, E2EOptions(istio_version="1.30.3"))  # type: ignore[arg-type]
    assert "--run-state" in XDIST_WITHOUT_RUN_STATE and "up -> pytest -n auto" in XDIST_WITHOUT_RUN_STATE
    # one process: the session makes its own run
    assert session_state_or_stop(FakeConfig(tmp_path), E2EOptions(istio_version="1.30.3")) is None  # type: ignore[arg-type]


def test_a_machine_that_cannot_run_the_tier_skips_before_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytest_plugin, "skip_reason", lambda options, state=None: "no kind")
    with pytest.raises(pytest.skip.Exception, match="no kind"):
        session_state_or_stop(FakeConfig(tmp_path, worker="gw0"), E2EOptions(istio_version="1.30.3"))  # type: ignore[arg-type]


def test_a_worker_attaches_to_the_run_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakebin: Any
) -> None:
    state = state_of(tmp_path)
    path = state.save()
    monkeypatch.setenv("EGRESS_HARNESS_RUN_STATE", str(path))
    config = FakeConfig(tmp_path, worker="gw1")
    # the kubeconfig is missing and no istioctl 1.30.3 is found: skipped with both named
    with pytest.raises(pytest.skip.Exception) as skipped:
        session_state_or_stop(config, E2EOptions(istio_version="1.30.3"))  # type: ignore[arg-type]
    assert f"the run's kubeconfig {state.kubeconfig} does not exist" in str(skipped.value)
    assert "istioctl 1.30.3: run `make tools`" in str(skipped.value)
    state.kubeconfig.write_text("apiVersion: v1\n")
    monkeypatch.setattr(pytest_plugin.tools, "find_tool", lambda name, version: Path("/bin/istioctl"))
    assert session_state_or_stop(config, E2EOptions(istio_version="1.30.3")) == state  # type: ignore[arg-type]


def test_an_unreadable_run_state_stops_the_session_naming_it(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{}")
    config = FakeConfig(tmp_path, run_state=str(tmp_path / "state.json"))
    with pytest.raises(pytest.UsageError, match=r"--run-state: .*state\.json: field 'schema'"):
        pytest_plugin.pytest_configure(config)  # type: ignore[arg-type]


def test_the_encoding_at_collection_is_the_run_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_encoding(FakeConfig(tmp_path)) == "TEXT"  # type: ignore[arg-type]
    assert run_encoding(FakeConfig(tmp_path, access_log_encoding="json")) == "JSON"  # type: ignore[arg-type]
    path = state_of(tmp_path, access_log_encoding="JSON").save()
    assert run_encoding(FakeConfig(tmp_path, run_state=str(path), access_log_encoding="text")) == "JSON"  # type: ignore[arg-type]


# --- options -------------------------------------------------------------------------------------------


def test_the_new_run_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = options_from(FakeConfig(REPO))  # type: ignore[arg-type]
    assert not options.gateway_api and options.outbound_traffic_policy == "ALLOW_ANY"
    assert list(options.recorder_aliases) == recorder_aliases(load_catalog(REPO / "scenarios").names())
    monkeypatch.setenv("EGRESS_HARNESS_GATEWAY_API", "1")
    monkeypatch.setenv("EGRESS_HARNESS_OUTBOUND_POLICY", "REGISTRY_ONLY")
    options = options_from(FakeConfig(REPO))  # type: ignore[arg-type]
    assert options.gateway_api and options.outbound_traffic_policy == "REGISTRY_ONLY"
    options = options_from(FakeConfig(REPO, outbound_traffic_policy="ALLOW_ANY"))  # type: ignore[arg-type]
    assert options.outbound_traffic_policy == "ALLOW_ANY"
    # a catalog that does not load leaves the default aliases (its own tests say why)
    assert list(options_from(FakeConfig(tmp_path)).recorder_aliases) == recorder_aliases([])  # type: ignore[arg-type]


def test_the_upgrade_plan_comes_from_the_options_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert upgrade_plan_from(FakeConfig(REPO)) is None  # type: ignore[arg-type]
    monkeypatch.setenv("EGRESS_HARNESS_UPGRADE_FROM", "1.29.6")
    monkeypatch.setenv("EGRESS_HARNESS_UPGRADE_TO", "1.30.3")
    monkeypatch.setenv("EGRESS_HARNESS_UPGRADE_MODE", "in-place")
    plan = upgrade_plan_from(FakeConfig(REPO, access_log_encoding="json"))  # type: ignore[arg-type]
    assert plan is not None
    assert (plan.from_version, plan.to_version, plan.mode, plan.access_log_encoding) == (
        "1.29.6",
        "1.30.3",
        "in-place",
        "JSON",
    )
    plan = upgrade_plan_from(FakeConfig(REPO, upgrade_from="1.28.10", upgrade_mode="canary"))  # type: ignore[arg-type]
    assert plan is not None and (plan.from_version, plan.mode) == ("1.28.10", "canary")
    with pytest.raises(pytest.UsageError, match=r"the upgrade options: .*at most 1 minor"):
        upgrade_plan_from(FakeConfig(REPO, upgrade_from="1.28.10", upgrade_mode="in-place"))  # type: ignore[arg-type]
    monkeypatch.delenv("EGRESS_HARNESS_UPGRADE_TO")
    with pytest.raises(pytest.UsageError, match="set both"):
        upgrade_plan_from(FakeConfig(REPO))  # type: ignore[arg-type]


def test_a_state_json_is_what_up_prints(tmp_path: Path) -> None:
    state = state_of(tmp_path)
    assert RunState.from_dict(json.loads(state.to_json())) == state
