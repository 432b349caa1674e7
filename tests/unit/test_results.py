"""harness.report.results: the model, its JSON round trip, and strict loading of recorded result files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.report.results import (
    SCHEMA,
    SCHEMA_VERSION,
    Outage,
    ProberStats,
    ResultsError,
    RunResult,
    ScenarioResult,
    StepResult,
    load_results,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "results"


def _prober(total: int = 100, successes: int = 96, threshold: float = 0.95) -> ProberStats:
    return ProberStats(
        target="http://t/",
        total=total,
        successes=successes,
        threshold=threshold,
        interval_s=0.2,
        started="2026-11-28T07:00:00.000Z",
        duration_s=20.0,
        outages=[Outage(3.0, 3.8, 4)],
        failure_samples=["+3.00s HTTP 503"],
    )


def _run(**changes: object) -> RunResult:
    base: dict[str, object] = {
        "run_id": "r1",
        "started": "2026-11-28T07:00:00.000Z",
        "istio_versions": ["1.29.6", "1.30.3"],
        "mode": "canary",
        "prober": _prober(),
        "scenarios": [
            ScenarioResult("a", "before", "1.29.6", "passed", convergence_s=1.5, proxy_versions=["1.29.6"]),
            ScenarioResult(
                "a", "after", "1.30.3", "failed", "no entry", None, ["1.30.3"], 2.0, "egress gateway"
            ),
        ],
        "steps": [StepResult("upgrade", "precheck", "passed", "", 1.0)],
    }
    base.update(changes)
    return RunResult(**base)  # type: ignore[arg-type]


def test_json_round_trip_keeps_every_field(tmp_path: Path) -> None:
    run = _run()
    path = run.save(tmp_path / "deep" / "run.json")
    assert path.stat().st_mode & 0o777 == 0o644
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert data["schema_version"] == SCHEMA_VERSION
    again = load_results([path])
    assert again == [run]
    assert again[0].scenarios[1].hop == "egress gateway"
    assert again[0].prober is not None
    assert again[0].prober.outages == [Outage(3.0, 3.8, 4)]
    assert not list(tmp_path.joinpath("deep").glob(".run.json.*")), "no temporary file left behind"


def test_regressions_and_ok() -> None:
    run = _run()
    [(before, after)] = run.regressions()
    assert (before.phase, after.phase, after.scenario) == ("before", "after", "a")
    assert not run.ok
    fixed = _run(scenarios=[ScenarioResult("a", "before", "1.29.6", "passed")])
    assert fixed.regressions() == []
    assert fixed.ok
    # failed before and after: not a regression, but not ok
    both = _run(
        scenarios=[
            ScenarioResult("a", "before", "1.29.6", "failed"),
            ScenarioResult("a", "after", "1.30.3", "error"),
        ]
    )
    assert both.regressions() == []
    assert not both.ok


def test_failed_step_and_prober_decide_ok() -> None:
    clean = [ScenarioResult("a", "before", "1.29.6", "passed")]
    failed = _run(
        scenarios=clean,
        steps=[
            StepResult("upgrade", "precheck", "passed"),
            StepResult("upgrade", "restart workloads", "failed", "timeout"),
            StepResult("cleanup", "uninstall Istio", "failed", "boom"),
        ],
    )
    assert failed.failed_step == StepResult("upgrade", "restart workloads", "failed", "timeout")
    assert not failed.ok
    assert not _run(scenarios=clean, prober=_prober(successes=94)).ok
    assert _run(scenarios=clean, prober=_prober(successes=95)).ok


def test_prober_stats_ratio_and_verdict() -> None:
    assert _prober(total=0, successes=0).ratio is None
    assert not _prober(total=0, successes=0).passed
    assert "no probe completed" in _prober(total=0, successes=0).verdict()
    stats = _prober(total=200, successes=189)
    assert stats.failures == 11
    assert stats.ratio == pytest.approx(0.945)
    assert not stats.passed
    assert stats.verdict().startswith("FAILED: 189/200 succeeded (94.5%; threshold 95%)")
    assert stats.longest_outage_s == pytest.approx(0.8)


def test_model_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="phase must be one of before, after, single"):
        ScenarioResult("a", "during", "1.30.3", "passed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outcome must be one of"):
        ScenarioResult("a", "before", "1.30.3", "flaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of single, in-place, canary"):
        _run(mode="blue-green")
    with pytest.raises(ValueError, match="istio_versions"):
        _run(istio_versions=[])


def test_recorded_fixture_files_load() -> None:
    runs = load_results([DATA])
    assert [r.run_id for r in runs] == [
        "single-1.28.10",
        "single-1.29.6",
        "single-1.30.3",
        "upgrade-canary-1.29.6-1.30.3",
        "upgrade-in-place-1.29.6-1.30.3",
    ]
    failed = runs[4]
    assert failed.mode == "in-place"
    assert failed.failed_step is not None
    assert (failed.failed_step.phase, failed.failed_step.step) == ("upgrade", "restart workloads")
    assert {s.outcome for s in failed.phase_results("after")} == {"skipped"}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="something/else"), "schema is 'something/else'"),
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.pop("run_id"), "missing field 'run_id'"),
        (lambda d: d.update(mode="rolling"), "field 'mode' must be one of single, in-place, canary"),
        (lambda d: d["scenarios"][0].update(outcome="ok"), "field 'outcome' must be one of"),
        (lambda d: d["scenarios"][0].update(convergence_s="fast"), "field 'convergence_s' must be a number"),
        (lambda d: d["scenarios"][0].update(proxy_versions="1.30.3"), "must be a list of strings"),
        (lambda d: d.update(prober=[1]), "prober must be an object or null"),
        (lambda d: d["prober"].update(successes=101), "successes (101) must be between 0 and total (100)"),
        (lambda d: d["steps"][0].update(outcome="maybe"), "field 'outcome' must be one of passed"),
    ],
)
def test_load_names_the_file_and_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _run().to_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ResultsError) as err:
        load_results([path])
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_load_refuses_missing_paths_non_json_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no such file or folder"):
        load_results([tmp_path / "nope.json"])
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match="not JSON"):
        load_results([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ResultsError, match="no results files"):
        load_results([empty])
    with pytest.raises(ResultsError, match="one JSON object, not list"):
        load_results([_write(tmp_path, [1, 2])])
