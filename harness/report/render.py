"""Reports from result files: JUnit XML per phase and one Markdown report, for one run or many merged.

The Markdown report opens with the regressions (a scenario that passed before an upgrade and failed
after it), then any upgrade step that failed, then the table of scenarios against columns, one per
(phase, Istio version) -- and per mode when runs of several modes are merged, so a matrix of single
runs and an in-place and a canary upgrade share one table. Convergence times follow side by side,
then the prober's success ratio, then the message of every failure.

JUnit: ``junit-<phase>.xml`` per phase, a ``testsuite`` per run in that phase and a ``testcase`` per
scenario (a ``failure``, ``error`` or ``skipped`` element as the outcome says); upgrade runs add
``junit-upgrade.xml`` with a testcase per step and one for the prober.

``egress-harness report RESULTS... [--markdown OUT] [--junit-dir DIR]``; ``add_commands`` registers it.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from harness.report.results import PHASES, Phase, ResultsError, RunResult, ScenarioResult, load_results

CELL: Final = {"passed": "pass", "failed": "**FAIL**", "skipped": "skip", "error": "**ERROR**"}
NO_RESULT: Final = "-"
PHASE_ORDER: Final = {phase: i for i, phase in enumerate(("before", "after", "single"))}


@dataclass(frozen=True)
class Column:
    """One column of the results table: a phase on an Istio version, in a mode."""

    mode: str
    phase: str
    version: str

    def label(self, *, with_mode: bool) -> str:
        text = self.version if self.phase == "single" else f"{self.phase} {self.version}"
        return f"{text} ({self.mode})" if with_mode else text


@dataclass
class Matrix:
    """Scenario x column, each cell the results that landed there (several when runs repeat a column).

    Columns come in the order the runs are given; within a run ``before`` comes before ``after``.
    """

    columns: list[Column]
    cells: dict[tuple[str, Column], list[ScenarioResult]]
    with_mode: bool

    @classmethod
    def of(cls, runs: Sequence[RunResult]) -> Matrix:
        columns: list[Column] = []
        cells: dict[tuple[str, Column], list[ScenarioResult]] = {}
        for run in runs:
            for result in sorted(run.scenarios, key=lambda r: PHASE_ORDER[r.phase]):
                column = Column(run.mode, result.phase, result.istio_version)
                if column not in columns:
                    columns.append(column)
                cells.setdefault((result.scenario, column), []).append(result)
        return cls(columns, cells, with_mode=len({c.mode for c in columns}) > 1)

    def scenarios(self) -> list[str]:
        return sorted({scenario for scenario, _ in self.cells})

    def results(self, scenario: str, column: Column) -> list[ScenarioResult]:
        return self.cells.get((scenario, column), [])


# --- Markdown ---------------------------------------------------------------------------------------


def _cell_text(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _fence(text: str) -> str:
    """A fenced code block around ``text``, its fence longer than any run of backticks inside."""
    ticks = 3
    count = 0
    for char in text:
        count = count + 1 if char == "`" else 0
        ticks = max(ticks, count + 1)
    fence = "`" * ticks
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _row_rank(runs: Sequence[RunResult], matrix: Matrix) -> dict[str, int]:
    """0 for scenarios with a regression, 1 for those with any failure or error, 2 for the rest."""
    regressed = {after.scenario for run in runs for _, after in run.regressions()}
    rank: dict[str, int] = {}
    for scenario in matrix.scenarios():
        bad = any(not r.ok for column in matrix.columns for r in matrix.results(scenario, column))
        rank[scenario] = 0 if scenario in regressed else 1 if bad else 2
    return rank


def _header(runs: Sequence[RunResult], title: str) -> list[str]:
    verdict = "all passed" if all(r.ok for r in runs) else "**NOT all passed**"
    listed = ", ".join(f"`{r.run_id}` {r.label()}" for r in runs)
    return [f"# {title}", "", f"{len(runs)} run{'s' if len(runs) != 1 else ''}: {listed} -- {verdict}.", ""]


def _regressions(runs: Sequence[RunResult]) -> list[str]:
    out = ["## Regressions (passed before the upgrade, failed after)", ""]
    regressions = [(run, before, after) for run in runs for before, after in run.regressions()]
    if regressions:
        out += [
            "| scenario | upgrade | before | after | hop | message |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for run, before, after in regressions:
            out.append(
                f"| {_cell_text(after.scenario)} | {_cell_text(run.label())} "
                f"| {CELL[before.outcome]} ({before.istio_version}) "
                f"| {CELL[after.outcome]} ({after.istio_version}) "
                f"| {_cell_text(after.hop or NO_RESULT)} | {_cell_text(_first_line(after.message)) or NO_RESULT} |"
            )
        for run, before, after in regressions:
            out += ["", *_side_by_side(run, before, after)]
    elif any(r.mode != "single" for r in runs):
        out.append("None: every scenario that passed before the upgrade also passed after it.")
    else:
        out.append("No upgrade run among these results.")
    return [*out, ""]


def _side_by_side(run: RunResult, before: ScenarioResult, after: ScenarioResult) -> list[str]:
    """One regression's evidence of both runs in two columns: outcome, Istio and proxy versions,
    convergence, the hop where the path diverged, the message."""

    def seconds(value: float | None) -> str:
        return NO_RESULT if value is None else f"{value:.1f} s"

    rows = [
        ("outcome", CELL[before.outcome], CELL[after.outcome]),
        ("istiod", before.istio_version, after.istio_version),
        (
            "proxies",
            ", ".join(before.proxy_versions) or NO_RESULT,
            ", ".join(after.proxy_versions) or NO_RESULT,
        ),
        ("converged", seconds(before.convergence_s), seconds(after.convergence_s)),
        ("hop", before.hop or NO_RESULT, after.hop or NO_RESULT),
        ("message", _first_line(before.message) or NO_RESULT, _first_line(after.message) or NO_RESULT),
    ]
    return [
        f"### {_cell_text(after.scenario)}: before and after ({_cell_text(run.label())})",
        "",
        "| | before | after |",
        "| --- | --- | --- |",
        *(f"| {name} | {_cell_text(b)} | {_cell_text(a)} |" for name, b, a in rows),
    ]


def _failed_steps(runs: Sequence[RunResult]) -> list[str]:
    lines = []
    for run in runs:
        step = run.failed_step
        if step is not None:
            lines.append(
                f"- `{run.run_id}` {run.label()}: phase **{step.phase}**, step **{step.step}** failed: "
                f"{_cell_text(_first_line(step.message)) or 'no message'}"
            )
    return ["## Failed upgrade steps", "", *lines, ""] if lines else []


def _table(matrix: Matrix, rows: Iterable[str], cell: Callable[[list[ScenarioResult]], str]) -> list[str]:
    labels = [c.label(with_mode=matrix.with_mode) for c in matrix.columns]
    out = ["| scenario | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for scenario in rows:
        cells = [cell(matrix.results(scenario, column)) for column in matrix.columns]
        out.append(f"| {_cell_text(scenario)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _outcome_cell(results: list[ScenarioResult]) -> str:
    return " / ".join(CELL[r.outcome] for r in results) if results else NO_RESULT


def _convergence_cell(results: list[ScenarioResult]) -> str:
    shown = [f"{r.convergence_s:.1f}" for r in results if r.convergence_s is not None]
    return " / ".join(shown) if shown else NO_RESULT


def _results(runs: Sequence[RunResult], matrix: Matrix) -> list[str]:
    if not matrix.columns:
        return ["## Results", "", "No scenario results.", ""]
    rank = _row_rank(runs, matrix)
    out = [
        "## Results",
        "",
        *_table(matrix, sorted(matrix.scenarios(), key=lambda s: (rank[s], s)), _outcome_cell),
    ]
    if any(r.convergence_s is not None for run in runs for r in run.scenarios):
        out += ["## Convergence (seconds)", "", *_table(matrix, matrix.scenarios(), _convergence_cell)]
    return out


def _prober(runs: Sequence[RunResult]) -> list[str]:
    probed = [(r, r.prober) for r in runs if r.prober is not None]
    if not probed:
        return []
    out = [
        "## Traffic during the upgrade (prober)",
        "",
        "| run | target | probes | succeeded | ratio | threshold | longest outage | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run, stats in probed:
        assert stats is not None
        ratio = f"{stats.ratio:.1%}" if stats.ratio is not None else NO_RESULT
        out.append(
            f"| `{run.run_id}` {_cell_text(run.label())} | {_cell_text(stats.target) or NO_RESULT} "
            f"| {stats.total} | {stats.successes} | {ratio} | {stats.threshold:.0%} "
            f"| {stats.longest_outage_s:.1f}s | {'pass' if stats.passed else '**FAIL**'} |"
        )
    return [*out, ""]


def _failures(runs: Sequence[RunResult]) -> list[str]:
    failures = [(run, r) for run in runs for r in run.scenarios if not r.ok]
    if not failures:
        return []
    out = ["## Failures", ""]
    for run, result in failures:
        where = f"phase {result.phase}" if result.phase != "single" else "single run"
        out += [
            f"### {result.scenario} -- {CELL[result.outcome].strip('*')}, {where}, Istio "
            f"{result.istio_version} (`{run.run_id}`)",
            "",
        ]
        if result.hop:
            out += [f"Diverged at hop: **{result.hop}**", ""]
        if result.proxy_versions:
            out += [f"Proxy versions: {', '.join(result.proxy_versions)}", ""]
        out += [_fence(result.message or "(no message)"), ""]
    return out


def render_markdown(runs: Sequence[RunResult], *, title: str = "Egress harness report") -> str:
    """The Markdown report of ``runs`` (one run, or several merged into one table); regressions first."""
    matrix = Matrix.of(runs)
    out = [
        *_header(runs, title),
        *_regressions(runs),
        *_failed_steps(runs),
        *_results(runs, matrix),
        *_prober(runs),
        *_failures(runs),
    ]
    return "\n".join(out).rstrip("\n") + "\n"


# --- JUnit XML --------------------------------------------------------------------------------------


def _testcase(suite: ET.Element, classname: str, name: str, seconds: float) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")


def _scenario_case(suite: ET.Element, result: ScenarioResult) -> None:
    case = _testcase(
        suite,
        f"egress-harness.{result.phase}.istio-{result.istio_version}",
        result.scenario,
        result.duration_s,
    )
    details = []
    if result.hop:
        details.append(f"diverged at hop: {result.hop}")
    if result.proxy_versions:
        details.append(f"proxy versions: {', '.join(result.proxy_versions)}")
    if result.convergence_s is not None:
        details.append(f"convergence: {result.convergence_s:.3f}s")
    body = "\n".join([result.message, *details]).strip()
    if result.outcome in ("failed", "error"):
        tag = "failure" if result.outcome == "failed" else "error"
        element = ET.SubElement(
            case, tag, message=_first_line(result.message) or result.outcome, type=result.outcome
        )
        element.text = body
    elif result.outcome == "skipped":
        ET.SubElement(case, "skipped", message=_first_line(result.message) or "skipped")
    elif details:
        ET.SubElement(case, "system-out").text = "\n".join(details)


def _suite(
    root: ET.Element, name: str, *, run: RunResult, outcomes: Sequence[str], seconds: float
) -> ET.Element:
    return ET.SubElement(
        root,
        "testsuite",
        name=name,
        tests=str(len(outcomes)),
        failures=str(sum(1 for o in outcomes if o == "failed")),
        errors=str(sum(1 for o in outcomes if o == "error")),
        skipped=str(sum(1 for o in outcomes if o == "skipped")),
        time=f"{seconds:.3f}",
        timestamp=run.started,
    )


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _phase_document(runs: Sequence[RunResult], phase: Phase) -> str | None:
    in_phase = [(run, run.phase_results(phase)) for run in runs if run.phase_results(phase)]
    if not in_phase:
        return None
    root = ET.Element("testsuites", name=f"egress-harness {phase}")
    for run, results in in_phase:
        versions = ", ".join(sorted({r.istio_version for r in results}))
        suite = _suite(
            root,
            f"{phase}: Istio {versions} [{run.label()}] {run.run_id}",
            run=run,
            outcomes=[r.outcome for r in results],
            seconds=sum(r.duration_s for r in results),
        )
        for result in results:
            _scenario_case(suite, result)
    return _xml(root)


def _upgrade_document(runs: Sequence[RunResult]) -> str | None:
    upgrades = [r for r in runs if r.steps or r.prober is not None]
    if not upgrades:
        return None
    root = ET.Element("testsuites", name="egress-harness upgrade")
    for run in upgrades:
        outcomes: list[str] = [step.outcome for step in run.steps]
        if run.prober is not None:
            outcomes.append("passed" if run.prober.passed else "failed")
        suite = _suite(
            root,
            f"upgrade [{run.label()}] {run.run_id}",
            run=run,
            outcomes=outcomes,
            seconds=sum(s.duration_s for s in run.steps),
        )
        for step in run.steps:
            case = _testcase(suite, f"egress-harness.upgrade.{step.phase}", step.step, step.duration_s)
            if step.outcome == "failed":
                ET.SubElement(
                    case,
                    "failure",
                    message=f"phase {step.phase}, step {step.step}: {_first_line(step.message)}",
                    type="step-failed",
                ).text = step.message
            elif step.outcome == "skipped":
                ET.SubElement(case, "skipped", message=_first_line(step.message) or "skipped")
        if run.prober is not None:
            stats = run.prober
            case = _testcase(suite, "egress-harness.upgrade.traffic", "prober", stats.duration_s)
            text = "\n".join([stats.verdict(), *stats.failure_samples])
            if stats.passed:
                ET.SubElement(case, "system-out").text = text
            else:
                ET.SubElement(case, "failure", message=stats.verdict(), type="below-threshold").text = text
    return _xml(root)


def junit_documents(runs: Sequence[RunResult]) -> dict[str, str]:
    """File name -> JUnit XML text: ``junit-<phase>.xml`` per phase present, ``junit-upgrade.xml``."""
    documents: dict[str, str] = {}
    for phase in PHASES:
        text = _phase_document(runs, phase)
        if text is not None:
            documents[f"junit-{phase}.xml"] = text
    upgrade = _upgrade_document(runs)
    if upgrade is not None:
        documents["junit-upgrade.xml"] = upgrade
    return documents


def write_junit(runs: Sequence[RunResult], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in junit_documents(runs).items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# --- the CLI ----------------------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        runs = load_results(args.results)
    except ResultsError as exc:
        print(f"egress-harness report: {exc}", file=sys.stderr)
        return 2
    markdown = render_markdown(runs)
    if args.markdown in (None, "-"):
        sys.stdout.write(markdown)
    else:
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown, encoding="utf-8")
        print(f"report: {out}", file=sys.stderr)
    if args.junit_dir:
        for path in write_junit(runs, Path(args.junit_dir)):
            print(f"junit: {path}", file=sys.stderr)
    if args.fail_on_regression and any(run.regressions() or run.failed_step for run in runs):
        return 1
    if args.strict and not all(run.ok for run in runs):
        return 1
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``report``: merge result files into a Markdown report and JUnit XML."""
    parser = subparsers.add_parser(
        "report",
        help="merge result files of one or more runs into a Markdown report and JUnit XML",
        description="Merge result files (JSON written by the e2e and upgrade runs) into one Markdown "
        "report -- regressions first, then a scenario x phase x Istio version table -- and JUnit XML "
        "per phase.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="result files, or folders of *.json")
    parser.add_argument(
        "--markdown", metavar="OUT", default=None, help="write the report here (default stdout)"
    )
    parser.add_argument("--junit-dir", metavar="DIR", default=None, help="write junit-<phase>.xml files here")
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 when a scenario regressed across an upgrade or an upgrade step failed",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 unless every run passed (scenarios, upgrade steps and prober)",
    )
    parser.set_defaults(handler=_cmd_report)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m harness.report RESULTS...`` (the same as ``egress-harness report``)."""
    parser = argparse.ArgumentParser(prog="egress-harness")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
