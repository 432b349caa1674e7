"""The GitHub workflows: they parse, run the Makefile's targets, and pin what harness/common/versions.py pins."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.common import versions
from harness.report import render as report

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict), found
    return found


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def runs(job: dict[str, Any]) -> list[str]:
    return [" ".join(str(s["run"]).split()) for s in steps(job) if "run" in s]


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    matching = [s for s in steps(job) if s.get("name") == name]
    assert len(matching) == 1, f"one step named {name!r} in {[s.get('name') for s in steps(job)]}"
    return matching[0]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z0-9-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("name", ["ci.yml", "nightly.yml"])
def test_every_job_and_step_is_named_bounded_and_pinned(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {}  # nothing by default: each job says what it needs
    text = (WORKFLOWS / name).read_text()
    for job_id, job in workflow["jobs"].items():
        assert job.get("name"), f"{name}: job {job_id} has no name"
        assert isinstance(job.get("timeout-minutes"), int), f"{name}: job {job_id} has no timeout"
        assert job.get("permissions") == {"contents": "read"}, f"{name}: job {job_id}'s permissions"
        for s in steps(job):
            assert s.get("name"), f"{name}: a step of {job_id} has no name"
            if "uses" in s:
                # a full commit, with the version it is in a comment (Dependabot keeps both current)
                assert re.fullmatch(r"actions/[a-z-]+@[0-9a-f]{40}", s["uses"]), s["uses"]
                assert re.search(rf"uses: {re.escape(s['uses'])} # v\d+\.\d+\.\d+\n", text), s["uses"]
            if str(s.get("uses", "")).startswith("actions/checkout@"):
                assert s.get("with", {}).get("persist-credentials") is False, (
                    f"{name}: {s['name']} keeps the token"
                )


@pytest.mark.parametrize("name", ["ci.yml", "nightly.yml"])
def test_every_make_call_names_a_makefile_target(name: str) -> None:
    targets = make_targets()
    for job in load(name)["jobs"].values():
        for command in runs(job):
            for target in re.findall(r"\bmake ([a-z0-9-]+)", command):
                assert target in targets, f"{name}: `make {target}` is not a Makefile target"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to syntax-check the run blocks")
@pytest.mark.parametrize("name", ["ci.yml", "nightly.yml"])
def test_run_blocks_are_valid_bash(name: str) -> None:
    for job in load(name)["jobs"].values():
        for s in steps(job):
            if "run" not in s:
                continue
            script = EXPRESSION.sub("EXPR", str(s["run"]))
            done = subprocess.run(
                ["bash", "-n"], check=False, input=script, text=True, capture_output=True, timeout=30
            )
            assert done.returncode == 0, f"{name}: step {s['name']!r}: {done.stderr}"


def _venv_cache_ok(job: dict[str, Any]) -> None:
    python = step(job, "Set up Python 3.11")
    assert python["uses"].startswith("actions/setup-python@")
    assert python["with"]["python-version"] == "3.11"
    cache = step(job, "Cache .venv")
    assert cache["with"]["path"] == ".venv"
    key = cache["with"]["key"]
    assert "hashFiles('pyproject.toml')" in key
    assert "steps.python.outputs.python-version" in key  # a venv is tied to its interpreter


def test_ci_runs_lint_and_test_on_push_and_pull_request() -> None:
    ci = load("ci.yml")
    assert set(triggers(ci)) == {"push", "pull_request"}
    jobs = ci["jobs"]
    assert set(jobs) == {"lint", "test"}
    for job in jobs.values():
        _venv_cache_ok(job)
    assert step(jobs["lint"], "make lint")["run"].split()[:2] == ["make", "lint"]
    assert step(jobs["test"], "make test")["run"].split()[:2] == ["make", "test"]
    upload = step(jobs["test"], "Upload test results")
    assert upload["if"] == "always()"


def test_nightly_matrix_matches_the_pinned_versions() -> None:
    nightly = load("nightly.yml")
    assert "schedule" in triggers(nightly)
    assert triggers(nightly)["schedule"][0]["cron"].count(" ") == 4
    e2e = nightly["jobs"]["e2e"]
    matrix = e2e["strategy"]["matrix"]
    assert matrix["istio"] == list(versions.SUPPORTED_ISTIO_VERSIONS)
    assert matrix["node-image"] == [versions.KIND_NODE_IMAGE]
    assert matrix["kubernetes"] == [versions.KUBERNETES_VERSION]
    assert e2e["strategy"]["fail-fast"] is False
    assert e2e["env"]["EGRESS_HARNESS_KIND_NODE_IMAGE"] == "${{ matrix.node-image }}"
    _venv_cache_ok(e2e)
    assert "make e2e PYTHON=python3.11 ISTIO_VERSION=${{ matrix.istio }}" in runs(e2e)[0]


def test_nightly_upgrade_goes_from_the_previous_minor_to_the_latest() -> None:
    upgrade = load("nightly.yml")["jobs"]["upgrade"]
    supported = versions.SUPPORTED_ISTIO_VERSIONS
    previous, latest = supported[-2], supported[-1]
    assert latest == versions.DEFAULT_ISTIO_VERSION
    assert upgrade["strategy"]["matrix"]["mode"] == ["canary", "in-place"]
    assert upgrade["strategy"]["matrix"]["node-image"] == [versions.KIND_NODE_IMAGE]
    command = shlex.split(step(upgrade, "make e2e (upgrade)")["run"])
    assert command[:2] == ["make", "e2e"]
    assert f"UPGRADE_FROM={previous}" in command
    assert f"UPGRADE_TO={latest}" in command
    assert "UPGRADE_MODE=${{ matrix.mode }}" in " ".join(command)
    assert upgrade["name"] == f"upgrade {previous} -> {latest} (${{{{ matrix.mode }}}})"


def _report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress-harness", exit_on_error=False)
    report.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_nightly_reports_go_to_the_step_summary_and_artifacts_are_uploaded() -> None:
    nightly = load("nightly.yml")
    jobs = nightly["jobs"]
    assert jobs["report"]["needs"] == ["e2e", "upgrade", "upgrade-istiod"]
    assert jobs["report"]["if"] == "always()"
    parser = _report_parser()
    for job_id in ("e2e", "upgrade", "report"):
        job = jobs[job_id]
        uploads = [s for s in steps(job) if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
        assert len(uploads) == 1, job_id
        assert uploads[0]["with"]["path"] == "artifacts/"
        assert uploads[0]["if"] == "always()"
        scripts = [str(s["run"]) for s in steps(job) if "run" in s]
        assert any('>> "$GITHUB_STEP_SUMMARY"' in script for script in scripts), job_id
        calls = [
            line.strip()
            for script in scripts
            for line in script.splitlines()
            if "egress-harness report" in line
        ]
        assert calls, f"{job_id} renders no report"
        for call in calls:
            argv = shlex.split(call.replace('"$EGRESS_HARNESS_RESULTS_DIR"', "artifacts/results"))
            args = parser.parse_args(argv[1:])  # the report CLI accepts exactly these arguments
            assert args.markdown == "artifacts/report.md"
            assert args.junit_dir == "artifacts/junit"
    for job_id in ("e2e", "upgrade"):
        assert step(jobs[job_id], "Report")["if"] == "always()"


def test_make_lint_checks_the_workflows_offline_with_pinned_tools() -> None:
    """The workflows' schema and zizmor's audits run in `make lint`, from the dev dependencies' pins."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml" in recipe
    assert "zizmor --offline --min-severity medium .github" in recipe
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"zizmor==\d+\.\d+\.\d+"', pyproject) and re.search(
        r'"check-jsonschema==[\d.]+"', pyproject
    )
    dependabot = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert [u["package-ecosystem"] for u in dependabot["updates"]] == ["github-actions"]


def test_nightly_runs_the_netns_upgrade_pair_in_both_modes_as_root_and_the_merge_finds_its_results() -> None:
    job = load("nightly.yml")["jobs"]["upgrade-istiod"]
    assert sorted(job["strategy"]["matrix"]["mode"]) == ["canary", "in-place"]
    script = " ".join(str(s["run"]) for s in steps(job) if "make e2e" in str(s.get("run", "")))
    assert script.startswith("sudo -E ")
    old, new = sorted(versions.ISTIO_BUILDABLE_LABELS)
    assert f"TIER=istiod UPGRADE_FROM={old} UPGRADE_TO={new} UPGRADE_MODE=${{{{ matrix.mode }}}}" in script
    assert any(str(s.get("uses", "")).startswith("actions/setup-go@") for s in steps(job))
    # the Makefile writes the run's results.json where the merged report's job collects them
    makefile = (ROOT / "Makefile").read_text()
    assert "upgrade run --tier istiod" in makefile
    assert "--results-dir artifacts/results" in makefile
