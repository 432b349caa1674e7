"""An Istio upgrade for real (issue 19): `egress-harness upgrade run --tier istiod` as a user runs it,
on a netns cluster with real istiod and proxies of both versions (1.30-dev and 1.31-dev, built by the
netns provider), the prober sending the mission's chain all through the upgrade.

- canary, the whole catalog: exits 0, every scenario that passed on A passes on B, the prober holds
  0.95, every proxy after the upgrade reports B, and the report is written;
- in place, with an overlay that only B's install gets (``defaultDestinationRuleExportTo: ["."]``,
  which hides the scenario namespaces' DestinationRules from the egress gateway): exactly the
  scenario whose gateway leg needs its DestinationRule (TLS origination) is reported regressed, and
  the run exits 1 saying so -- the check can fail.

Both skip, naming the make target, where either version's binaries are not built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cluster.providers.netns import binaries
from harness.report.results import load_results

REPO = Path(__file__).resolve().parents[2]
FROM, TO = "1.30-dev", "1.31-dev"
REGRESSION_OVERLAY = Path(__file__).parent / "data" / "upgrade-regression-overlay.yaml"
#: the catalog's scenarios the injected regression runs: the mission, a negative control, and the one
#: whose gateway leg depends on a DestinationRule in its own namespace
REGRESSION_SCENARIOS = (
    "http-via-egress-gateway",
    "sidecar-only-egress",
    "tls-origination-at-egress-gateway",
)
REGRESSED = "tls-origination-at-egress-gateway"
PROBER_LINE = re.compile(r"^prober: (\d\.\d{3}) \((\d+)/(\d+)\)$")


@pytest.fixture
def both_versions(netns_ready: None) -> None:
    for label in (FROM, TO):
        try:
            binaries.istio_binaries(label)
        except binaries.BinariesError as exc:
            pytest.skip(f"Istio {label} binaries: {exc} (make istio-bin ISTIO_VERSION={label})")


def upgrade(tmp_path: Path, mode: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    results = tmp_path / "results"
    log = tmp_path / "upgrade.log"
    argv = [
        sys.executable,
        "-m",
        "harness.cli",
        "upgrade",
        "run",
        "--tier",
        "istiod",
        "--from",
        FROM,
        "--to",
        TO,
        "--mode",
        mode,
        "--results-dir",
        str(results),
        "--run-dir",
        str(tmp_path / "run"),
        *extra,
    ]
    with log.open("w") as err:
        done = subprocess.run(
            argv,
            check=False,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=2700,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return done, results


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:])


def prober_ratio(stdout: str) -> float:
    lines = [m for line in stdout.splitlines() if (m := PROBER_LINE.match(line))]
    assert len(lines) == 1, stdout
    ratio, ok, total = lines[0].groups()
    assert int(total) > 0
    assert abs(float(ratio) - int(ok) / int(total)) < 0.0006
    return float(ratio)


@pytest.mark.timeout(2800)
def test_a_canary_upgrade_keeps_every_scenario_and_the_traffic(both_versions: None, tmp_path: Path) -> None:
    done, results = upgrade(tmp_path, "canary")
    where = f"\n{done.stdout}\n--- stderr (last lines) ---\n{_tail(tmp_path / 'upgrade.log')}"
    assert done.returncode == 0, f"exit {done.returncode}{where}"
    lines = done.stdout.splitlines()
    assert lines[-1] == f"PASS {FROM} -> {TO} (canary): no scenario regressed, traffic held", where
    assert prober_ratio(done.stdout) >= 0.95
    [run] = load_results([results / "results.json"])
    assert not run.regressions()
    assert [s.step for s in run.steps if s.outcome == "failed"] == []
    names = {s.step for s in run.steps if s.phase == "upgrade"}
    assert {"restart gateways", "move the default tag to 1-31-dev", "uninstall revision 1-30-dev"} <= names
    before = {s.scenario: s for s in run.phase_results("before")}
    after = {s.scenario: s for s in run.phase_results("after")}
    assert before.keys() == after.keys()
    assert len(after) >= 11
    for name, result in after.items():
        assert result.outcome == before[name].outcome, (name, before[name], result)
        assert result.outcome in ("passed", "skipped"), (name, result.message)
        if result.outcome == "passed":
            assert result.proxy_versions, name
            assert set(result.proxy_versions) == {TO}, (name, result.proxy_versions)
            assert set(before[name].proxy_versions) == {FROM}, (name, before[name].proxy_versions)
    report = (results / "report.md").read_text()
    assert f"{FROM} -> {TO} (canary)" in report
    assert list((results / "junit").glob("*.xml"))
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("**/run-state.json"))


@pytest.mark.timeout(2800)
def test_a_setting_only_b_applies_is_reported_as_exactly_one_regressed_scenario(
    both_versions: None, tmp_path: Path
) -> None:
    done, results = upgrade(
        tmp_path, "in-place", "--to-overlay", str(REGRESSION_OVERLAY), *REGRESSION_SCENARIOS
    )
    where = f"\n{done.stdout}\n--- stderr (last lines) ---\n{_tail(tmp_path / 'upgrade.log')}"
    assert done.returncode == 1, f"exit {done.returncode}{where}"
    [run] = load_results([results / "results.json"])
    assert [s.step for s in run.steps if s.outcome == "failed"] == [], where
    regressed = [after.scenario for _, after in run.regressions()]
    assert regressed == [REGRESSED], where
    before = {s.scenario: s.outcome for s in run.phase_results("before")}
    after = {s.scenario: s.outcome for s in run.phase_results("after")}
    assert before == dict.fromkeys(REGRESSION_SCENARIOS, "passed"), where
    assert after == {**before, REGRESSED: "failed"}, where
    lines = done.stdout.splitlines()
    assert lines[-2] == f"FAIL {FROM} -> {TO} (in-place):", where
    assert lines[-1].startswith(f"  {REGRESSED} regressed: passed on {FROM}, failed on {TO}"), where
    assert prober_ratio(done.stdout) >= 0.95
    report = (results / "report.md").read_text()
    assert report.index(REGRESSED) < report.index("http-via-egress-gateway"), "regressions first"
