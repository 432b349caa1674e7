"""``egress-harness logs parse`` as a user runs it: a real process, files and stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.accesslog import FIELDS
from tests.unit import accesslog_samples as s


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "logs", "parse", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_parses_a_mixed_file_to_json_lines(tmp_path: Path) -> None:
    log = tmp_path / "istio-proxy.log"
    json_line = json.dumps({"response_code": 404, "authority": "a.test", "route_name": None, "trace": "t"})
    log.write_text("\n".join([s.NOISE[0], s.GATEWAY_TO_EXTERNAL, json_line, s.NOISE[4]]) + "\n")
    out = run(str(log))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2
    assert list(rows[0]) == list(FIELDS)
    assert rows[0]["upstream_cluster"] == "outbound|80||external.egress-harness.test"
    assert rows[0]["response_flags"] is None and rows[0]["bytes_sent"] == 615
    assert rows[1]["response_code"] == 404 and rows[1]["trace"] == "t" and rows[1]["method"] is None
    assert "parsed 2 entries, skipped 2 lines" in out.stderr


def test_stdin_custom_format_and_forced_encoding() -> None:
    out = run("--format", "%RESPONSE_CODE% %REQ(:AUTHORITY)%", "-", stdin="503 example.com\nnoise\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["authority"] == "example.com"
    forced = run("--encoding", "json", stdin=s.GATEWAY_TO_EXTERNAL + "\n")
    assert forced.stdout == "" and "parsed 0 entries, skipped 1 lines" in forced.stderr


def test_errors_name_the_file_or_the_format(tmp_path: Path) -> None:
    missing = run(str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "nope.log: No such file or directory" in missing.stderr
    bad = run("--format", "%RESPONSE_CODE", stdin="")
    assert bad.returncode == 2 and "--format: format string: unmatched '%'" in bad.stderr


def test_a_harness_error_is_one_line_and_exit_1_but_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness import cli
    from harness.accesslog import cli as logs_cli
    from harness.common.tools import DownloadError

    def fails(args: object) -> int:
        raise DownloadError("GET https://example.invalid/x failed: no route")

    monkeypatch.setattr(logs_cli, "run_parse", fails)
    assert cli.main(["logs", "parse", "-"]) == 1
    assert capsys.readouterr().err == "egress-harness logs: GET https://example.invalid/x failed: no route\n"

    def bug(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(logs_cli, "run_parse", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["logs", "parse", "-"])
