"""Results and reports: what a run records, and the Markdown and JUnit made from any number of runs.

- ``results``: the model (``RunResult`` of ``ScenarioResult``, ``StepResult``, ``ProberStats``), its
  JSON files and their strict loading (``load_results``);
- ``render``: ``render_markdown`` (regressions first, then scenario x phase x Istio version),
  ``junit_documents``/``write_junit``, and the ``egress-harness report`` command.
"""

from __future__ import annotations

from harness.report.render import add_commands, junit_documents, main, render_markdown, write_junit
from harness.report.results import (
    OUTCOMES,
    PHASES,
    RUN_MODES,
    SCHEMA,
    SCHEMA_VERSION,
    STEP_OUTCOMES,
    Outage,
    Outcome,
    Phase,
    ProberStats,
    ResultsError,
    RunMode,
    RunResult,
    ScenarioResult,
    StepOutcome,
    StepResult,
    expand_paths,
    format_timestamp,
    load_result,
    load_results,
    utc_now,
)

__all__ = [
    "OUTCOMES",
    "PHASES",
    "RUN_MODES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STEP_OUTCOMES",
    "Outage",
    "Outcome",
    "Phase",
    "ProberStats",
    "ResultsError",
    "RunMode",
    "RunResult",
    "ScenarioResult",
    "StepOutcome",
    "StepResult",
    "add_commands",
    "expand_paths",
    "format_timestamp",
    "junit_documents",
    "load_result",
    "load_results",
    "main",
    "render_markdown",
    "utc_now",
    "write_junit",
]
