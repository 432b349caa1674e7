#!/usr/bin/env python3
"""A fake ``kind``/``istioctl``/``kubectl``/``docker`` for unit tests: one script, many names.

Run under one of those names (a symlink), it appends its call to a JSON-lines log ($FAKEBIN_LOG)
and answers from a scenario file ($FAKEBIN_SCENARIO): the first rule that matches the call decides
what it prints, which exit code it returns, and what else it does. A call no rule matches exits 97
and says so, so a test never passes on an unexpected command (the harness never runs kubectl; the fake
``kubectl`` is there so that a call to it fails a test instead of reaching a real one).

A rule (all keys but ``tool`` optional)::

    {"tool": "kind", "args": ["get", "clusters"],      # argv prefix after the tool name
     "contains": ["--kubeconfig"],                     # these args appear somewhere
     "after": ["kind", "create", "cluster"],           # only once such a call was logged before
     "not_after": ["kind", "delete", "cluster"],       # only while no such call was logged before
     "times": 1,                                       # at most this many uses
     "stdout": "...", "stderr": "...", "exit": 0,
     "write_after_flag": {"--kubeconfig": "text"},     # write text to the path given after the flag
     "interrupt_parent": true,                         # send SIGINT to the caller (a user's Ctrl-C)
     "sleep": 30}                                      # then sleep (to be stopped by a timeout)

Imported (not run), it offers ``FakeBin`` to the tests: install the names in a directory, write a
scenario, read the calls.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

SCENARIO_ENV = "FAKEBIN_SCENARIO"
LOG_ENV = "FAKEBIN_LOG"
NAMES = ("kind", "istioctl", "kubectl", "docker")
UNMATCHED_EXIT = 97


def read_calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _is_prefix(prefix: list[str], call: dict[str, Any]) -> bool:
    tool, *args = prefix
    return bool(call["tool"] == tool and call["args"][: len(args)] == args)


def _matches(
    index: int, rule: dict[str, Any], tool: str, args: list[str], history: list[dict[str, Any]]
) -> bool:
    if rule["tool"] != tool:
        return False
    want = rule.get("args", [])
    if args[: len(want)] != want:
        return False
    if any(a not in args for a in rule.get("contains", [])):
        return False
    if "after" in rule and not any(_is_prefix(rule["after"], c) for c in history):
        return False
    if "not_after" in rule and any(_is_prefix(rule["not_after"], c) for c in history):
        return False
    return not ("times" in rule and sum(1 for c in history if c.get("rule") == index) >= rule["times"])


def main(argv: list[str]) -> int:
    tool = Path(argv[0]).name
    args = argv[1:]
    log = Path(os.environ[LOG_ENV])
    rules: list[dict[str, Any]] = json.loads(Path(os.environ[SCENARIO_ENV]).read_text())["rules"]
    history = read_calls(log)
    chosen = next((i for i, r in enumerate(rules) if _matches(i, r, tool, args, history)), None)
    record = {"tool": tool, "args": args, "rule": chosen, "kubeconfig_env": os.environ.get("KUBECONFIG")}
    with log.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    if chosen is None:
        print(f"fakebin: no rule for `{tool} {' '.join(args)}`", file=sys.stderr)
        return UNMATCHED_EXIT
    rule = rules[chosen]
    for flag, text in rule.get("write_after_flag", {}).items():
        if flag in args and args.index(flag) + 1 < len(args):
            Path(args[args.index(flag) + 1]).write_text(text)
    sys.stdout.write(rule.get("stdout", ""))
    sys.stderr.write(rule.get("stderr", ""))
    sys.stdout.flush()
    sys.stderr.flush()
    if rule.get("interrupt_parent"):
        os.kill(os.getppid(), signal.SIGINT)
    if rule.get("sleep"):
        time.sleep(float(rule["sleep"]))
    return int(rule.get("exit", 0))


class FakeBin:
    """The fake tools installed in ``root/bin``, with their scenario and call log under ``root``."""

    def __init__(self, root: Path, names: tuple[str, ...] = NAMES) -> None:
        self.root = root
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.scenario = root / "scenario.json"
        self.log = root / "calls.jsonl"
        # A copy whose first line is this interpreter, so no PATH lookup of python is needed.
        script = self.bin_dir / "_fake.py"
        body = Path(__file__).read_text().split("\n", 1)[1]
        script.write_text(f"#!{sys.executable}\n{body}")
        script.chmod(0o755)
        for name in names:
            (self.bin_dir / name).symlink_to(script.name)
        self.rules([])

    def environ(self, path: str) -> dict[str, str]:
        """Variables that put the fakes first on PATH (``path`` is the PATH to extend)."""
        return {
            "PATH": f"{self.bin_dir}{os.pathsep}{path}",
            SCENARIO_ENV: str(self.scenario),
            LOG_ENV: str(self.log),
        }

    def rules(self, rules: list[dict[str, Any]]) -> FakeBin:
        self.scenario.write_text(json.dumps({"rules": rules}, indent=1))
        return self

    def calls(self) -> list[dict[str, Any]]:
        return read_calls(self.log)

    def commands(self) -> list[str]:
        """Each call as one line, e.g. ``kind get clusters``."""
        return [" ".join([c["tool"], *c["args"]]) for c in self.calls()]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
