"""harness.report.render: Markdown and JUnit rendered from the recorded result files in data/results."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.report import render as report
from harness.report.results import RunResult, ScenarioResult, load_results

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "results"
MATRIX = [DATA / f"single-{v}.json" for v in ("1.28.10", "1.29.6", "1.30.3")]
CANARY = DATA / "upgrade-canary-1.29.6-1.30.3.json"
FAILED = DATA / "upgrade-in-place-failed.json"


def _section(markdown: str, title: str) -> str:
    start = markdown.index(f"## {title}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


def _table_rows(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]


def test_regressions_come_first() -> None:
    markdown = report.render_markdown(load_results([CANARY]))
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Regressions (passed before the upgrade, failed after)"
    rows = _table_rows(_section(markdown, "Regressions"))
    assert rows[0] == ["scenario", "upgrade", "before", "after", "hop", "message"]
    assert rows[2] == [
        "https-passthrough-via-egress-gateway",
        "1.29.6 -> 1.30.3 (canary)",
        "pass (1.29.6)",
        "**FAIL** (1.30.3)",
        "egress gateway",
        # the pipe in the message is escaped, not a new column
        "hop 'egress gateway': no entry of the request \\| within 10s",
    ]
    # In the results table too, the regressed scenario is the first row.
    results = _table_rows(_section(markdown, "Results"))
    assert results[0] == ["scenario", "before 1.29.6", "after 1.30.3"]
    assert results[2][0] == "https-passthrough-via-egress-gateway"
    assert results[2][1:] == ["pass", "**FAIL**"]


def test_convergence_and_prober_side_by_side() -> None:
    markdown = report.render_markdown(load_results([CANARY]))
    convergence = _table_rows(_section(markdown, "Convergence (seconds)"))
    assert convergence[0] == ["scenario", "before 1.29.6", "after 1.30.3"]
    assert ["http-via-egress-gateway", "1.0", "1.3"] in convergence
    prober = _table_rows(_section(markdown, "Traffic during the upgrade (prober)"))
    assert prober[2][2:] == ["800", "788", "98.5%", "95%", "2.4s", "pass"]


def test_failed_upgrade_names_phase_and_step() -> None:
    markdown = report.render_markdown(load_results([FAILED]))
    steps = _section(markdown, "Failed upgrade steps")
    assert (
        "phase **upgrade**, step **restart workloads** failed: rollout of egress-harness-upgrade/target"
        in steps
    )
    assert "None: every scenario that passed before" in _section(markdown, "Regressions")
    results = _table_rows(_section(markdown, "Results"))
    assert {row[2] for row in results[2:]} == {"skip"}
    prober = _table_rows(_section(markdown, "Traffic during the upgrade (prober)"))
    assert prober[2][-1] == "**FAIL**"
    assert "**NOT all passed**" in markdown.splitlines()[2]


def test_matrix_of_single_runs_is_one_table_with_a_column_per_version() -> None:
    markdown = report.render_markdown(load_results(MATRIX))
    assert "No upgrade run among these results." in markdown
    rows = _table_rows(_section(markdown, "Results"))
    assert rows[0] == ["scenario", "1.28.10", "1.29.6", "1.30.3"]
    # the failing scenario first, then the rest alphabetically
    assert rows[2] == ["https-passthrough-via-egress-gateway", "pass", "pass", "**FAIL**"]
    assert rows[3] == ["http-via-egress-gateway", "pass", "pass", "pass"]
    assert rows[4] == ["registry-only-blocks-unregistered", "skip", "pass", "pass"]
    failures = _section(markdown, "Failures")
    assert (
        "### https-passthrough-via-egress-gateway -- FAIL, single run, Istio 1.30.3 (`single-1.30.3`)"
        in failures
    )
    assert "Diverged at hop: **target sidecar**" in failures
    assert "```text\nhop 'target sidecar'" in failures


def test_merging_modes_labels_columns_with_the_mode() -> None:
    markdown = report.render_markdown(load_results([*MATRIX, CANARY, FAILED]))
    header = _table_rows(_section(markdown, "Results"))[0]
    assert header == [
        "scenario",
        "1.28.10 (single)",
        "1.29.6 (single)",
        "1.30.3 (single)",
        "before 1.29.6 (canary)",
        "after 1.30.3 (canary)",
        "before 1.29.6 (in-place)",
        "after 1.30.3 (in-place)",
    ]


def test_repeated_column_shows_every_result() -> None:
    first = RunResult(
        "a", "", ["1.30.3"], "single", scenarios=[ScenarioResult("s", "single", "1.30.3", "passed")]
    )
    second = RunResult(
        "b", "", ["1.30.3"], "single", scenarios=[ScenarioResult("s", "single", "1.30.3", "failed")]
    )
    rows = _table_rows(_section(report.render_markdown([first, second]), "Results"))
    assert rows[2] == ["s", "pass / **FAIL**"]


def test_message_with_backticks_gets_a_longer_fence() -> None:
    run = RunResult(
        "a",
        "",
        ["1.30.3"],
        "single",
        scenarios=[ScenarioResult("s", "single", "1.30.3", "error", "got ```x```")],
    )
    assert "````text\ngot ```x```\n````" in report.render_markdown([run])


def test_junit_per_phase_with_failures_and_skips(tmp_path: Path) -> None:
    written = report.write_junit(load_results([CANARY, FAILED]), tmp_path)
    assert sorted(p.name for p in written) == ["junit-after.xml", "junit-before.xml", "junit-upgrade.xml"]
    after = ET.parse(tmp_path / "junit-after.xml").getroot()
    suites = after.findall("testsuite")
    assert len(suites) == 2
    canary, in_place = suites
    assert (
        canary.get("name") == "after: Istio 1.30.3 [1.29.6 -> 1.30.3 (canary)] upgrade-canary-1.29.6-1.30.3"
    )
    assert (canary.get("tests"), canary.get("failures"), canary.get("skipped")) == ("3", "1", "0")
    failing = canary.find("testcase[@name='https-passthrough-via-egress-gateway']")
    assert failing is not None
    assert failing.get("classname") == "egress-harness.after.istio-1.30.3"
    failure = failing.find("failure")
    assert failure is not None
    assert failure.get("message") == "hop 'egress gateway': no entry of the request | within 10s"
    assert "diverged at hop: egress gateway" in (failure.text or "")
    assert in_place.get("skipped") == "3"
    skipped = in_place.find("testcase/skipped")
    assert skipped is not None
    assert "failed in phase 'upgrade' at step 'restart workloads'" in (skipped.get("message") or "")

    upgrade = ET.parse(tmp_path / "junit-upgrade.xml").getroot()
    in_place_steps = upgrade.findall("testsuite")[1]
    assert in_place_steps.get("failures") == "2"  # the step and the prober
    step = in_place_steps.find("testcase[@name='restart workloads']/failure")
    assert step is not None
    # The classnames are the ones the report has always written (CI dashboards group by them).
    step_case = in_place_steps.find("testcase[@name='restart workloads']")
    assert step_case is not None
    assert step_case.get("classname") == "egress-harness.upgrade.upgrade"
    assert {case.get("classname") for case in in_place_steps.findall("testcase")} == {
        "egress-harness.upgrade.install",
        "egress-harness.upgrade.before",
        "egress-harness.upgrade.upgrade",
        "egress-harness.upgrade.cleanup",
        "egress-harness.upgrade.traffic",
    }
    assert (step.get("message") or "").startswith("phase upgrade, step restart workloads: rollout of")
    prober = in_place_steps.find("testcase[@name='prober']/failure")
    assert prober is not None
    assert prober.get("type") == "below-threshold"


def test_junit_single_runs() -> None:
    documents = report.junit_documents(load_results(MATRIX))
    assert list(documents) == ["junit-single.xml"]
    root = ET.fromstring(documents["junit-single.xml"])
    assert [s.get("name") for s in root.findall("testsuite")] == [
        "single: Istio 1.28.10 [1.28.10] single-1.28.10",
        "single: Istio 1.29.6 [1.29.6] single-1.29.6",
        "single: Istio 1.30.3 [1.30.3] single-1.30.3",
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress-harness")
    report.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _cli(*argv: str) -> int:
    args = _parser().parse_args(["report", *argv])
    code: int = args.handler(args)
    return code


def test_cli_merges_files_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    for path in MATRIX:
        shutil.copy(path, folder)
    out = tmp_path / "report.md"
    code = _cli(str(folder), str(CANARY), "--markdown", str(out), "--junit-dir", str(tmp_path / "junit"))
    assert code == 0
    text = out.read_text()
    assert "## Regressions" in text
    assert "before 1.29.6 (canary)" in text
    assert sorted(p.name for p in (tmp_path / "junit").iterdir()) == [
        "junit-after.xml",
        "junit-before.xml",
        "junit-single.xml",
        "junit-upgrade.xml",
    ]
    assert capsys.readouterr().out == ""


def test_cli_prints_to_stdout_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(str(MATRIX[1])) == 0
    assert capsys.readouterr().out.startswith("# Egress harness report")
    assert _cli(str(MATRIX[1]), "--strict") == 0
    assert _cli(str(MATRIX[2]), "--strict") == 1
    assert _cli(str(MATRIX[2]), "--fail-on-regression") == 0
    assert _cli(str(CANARY), "--fail-on-regression") == 1
    assert _cli(str(FAILED), "--fail-on-regression") == 1


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "x"}')
    assert _cli(str(bad)) == 2
    assert f"{bad}: schema is 'x'" in capsys.readouterr().err
    assert _cli(str(tmp_path / "missing.json")) == 2


def test_the_package_exports_results_and_reports() -> None:
    import harness.report as package

    assert sorted(package.__all__) == sorted(set(package.__all__))
    for name in package.__all__:
        assert hasattr(package, name), name
    assert package.render_markdown is report.render_markdown
    assert package.write_junit is report.write_junit
    assert package.load_results is load_results
    assert package.RunResult is RunResult


def test_python_dash_m_harness_report(tmp_path: Path) -> None:
    """``python -m harness.report`` is the ``report`` command (exit codes included)."""

    def report_module(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness.report", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=False,
        )

    passed = report_module(str(MATRIX[1]), "--strict")
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("# Egress harness report")
    failed = report_module(str(MATRIX[2]), "--strict")
    assert failed.returncode == 1, failed.stderr


def test_a_regression_shows_the_evidence_of_both_runs_side_by_side() -> None:
    markdown = report.render_markdown(load_results([CANARY]))
    section = _section(markdown, "Regressions")
    assert "### https-passthrough-via-egress-gateway: before and after (1.29.6 -> 1.30.3 (canary))" in section
    rows = _table_rows(section.split("before and after", 1)[1])
    table = {row[0]: row[1:] for row in rows[2:]}
    assert table["outcome"] == ["pass", "**FAIL**"]
    assert table["istiod"] == ["1.29.6", "1.30.3"]
    assert table["hop"] == ["-", "egress gateway"]
    assert table["message"][1] == "hop 'egress gateway': no entry of the request \\| within 10s"
    assert set(table) == {"outcome", "istiod", "proxies", "converged", "hop", "message"}
