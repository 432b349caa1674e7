"""Reading access-log lines of either encoding, and streams that mix them with other output.

An istio-proxy container's log holds access-log entries (TEXT or JSON), pilot-agent's and Envoy's
own log lines, and perhaps a line cut off by a restart. ``LogParser`` keeps the entries, skips the
rest and counts what it skipped; it never raises on input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Literal

from harness.accesslog.format import ISTIO_TEXT, TextFormat, compile_format
from harness.accesslog.model import EMPTY, FIELDS, AccessLogEntry, clean_value

Encoding = Literal["text", "json", "auto"]
ENCODINGS: tuple[Encoding, ...] = ("text", "json", "auto")

_ISTIO_KEYS = frozenset(FIELDS)
# A JSON object is taken for an access-log entry when it carries at least this many of Istio's keys;
# pilot-agent's JSON log lines ({"level", "time", "msg", ...}) carry none.
_MIN_JSON_KEYS = 2


def parse_json_line(line: str, source: str | None = None) -> AccessLogEntry | None:
    """The entry of one JSON-encoded line (keys in any order, extra keys kept), else ``None``."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if sum(1 for key in obj if key in _ISTIO_KEYS) < _MIN_JSON_KEYS:
        return None
    values = [clean_value(key, obj.get(key)) for key in FIELDS]
    extra = {k: v for k, v in obj.items() if k not in _ISTIO_KEYS}
    return AccessLogEntry(*values, extra or EMPTY, source)  # type: ignore[arg-type, call-arg]


class LogParser:
    """Parses lines of one encoding (or detects it per line) and counts the lines it skipped."""

    def __init__(self, encoding: Encoding = "auto", text_format: str | TextFormat | None = None) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        self.encoding: Encoding = encoding
        if text_format is None:
            self.text_format = ISTIO_TEXT
        elif isinstance(text_format, TextFormat):
            self.text_format = text_format
        else:
            self.text_format = compile_format(text_format)
        self.parsed = 0
        self.skipped = 0

    def parse_line(self, line: str, source: str | None = None) -> AccessLogEntry | None:
        """The entry of one line, or ``None`` (counted as skipped) when it is not an entry."""
        entry: AccessLogEntry | None = None
        text = line.rstrip("\r\n")
        if text.strip():
            if self.encoding == "json" or (self.encoding == "auto" and text.lstrip().startswith("{")):
                entry = parse_json_line(text, source)
            else:
                entry = self.text_format.parse(text, source)
        if entry is None:
            self.skipped += 1
        else:
            self.parsed += 1
        return entry

    def parse_lines(self, lines: Iterable[str], source: str | None = None) -> Iterator[AccessLogEntry]:
        """The entries among ``lines``, in order."""
        for line in lines:
            entry = self.parse_line(line, source)
            if entry is not None:
                yield entry


def parse_lines(
    lines: Iterable[str],
    encoding: Encoding = "auto",
    text_format: str | TextFormat | None = None,
    source: str | None = None,
) -> list[AccessLogEntry]:
    """All entries among ``lines`` (a convenience over ``LogParser``)."""
    return list(LogParser(encoding, text_format).parse_lines(lines, source))
