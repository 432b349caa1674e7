"""``egress-harness logs parse``: access-log lines in, one JSON object per entry out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from harness.accesslog.format import FormatError
from harness.accesslog.parse import ENCODINGS, LogParser


def add_commands(sub: Any) -> None:
    logs = sub.add_parser("logs", help="read Envoy access logs")
    logs_sub = logs.add_subparsers(dest="logs_command", metavar="SUBCOMMAND", required=True)
    parse = logs_sub.add_parser(
        "parse",
        help="print each access-log entry as a JSON line (Istio's JSON keys, null when absent)",
        description="Read access-log lines (TEXT, JSON or both) and print one JSON object per entry. "
        "Lines that are not entries are skipped; their count goes to stderr.",
    )
    parse.add_argument("--encoding", choices=ENCODINGS, default="auto", help="default: detect per line")
    parse.add_argument(
        "--format",
        dest="text_format",
        metavar="FORMAT",
        help="the TEXT format string (meshConfig.accessLogFormat); default: Istio's",
    )
    parse.add_argument("file", nargs="?", default="-", metavar="FILE", help="a log file, or - for stdin")
    parse.set_defaults(handler=run_parse)


def run_parse(args: argparse.Namespace) -> int:
    try:
        parser = LogParser(args.encoding, args.text_format)
    except FormatError as exc:
        print(f"egress-harness logs parse: --format: {exc}", file=sys.stderr)
        return 2
    stream: TextIO
    if args.file == "-":
        stream = sys.stdin
    else:
        try:
            stream = open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            print(f"egress-harness logs parse: {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
    out = sys.stdout
    try:
        for entry in parser.parse_lines(stream):
            out.write(json.dumps(entry.to_dict(), separators=(",", ":")) + "\n")
    finally:
        if stream is not sys.stdin:
            stream.close()
    print(f"parsed {parser.parsed} entries, skipped {parser.skipped} lines", file=sys.stderr)
    return 0
