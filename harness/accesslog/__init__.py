"""Envoy access logs as Istio writes them: one entry model, TEXT and JSON parsers, format compiler."""

from harness.accesslog.format import (
    ISTIO_JSON_LABELS,
    ISTIO_TEXT,
    ISTIO_TEXT_1_11,
    ISTIO_TEXT_FORMAT,
    ISTIO_TEXT_FORMAT_1_11,
    FormatError,
    TextFormat,
    compile_format,
)
from harness.accesslog.model import FIELDS, INT_FIELDS, AccessLogEntry
from harness.accesslog.parse import ENCODINGS, Encoding, LogParser, parse_json_line, parse_lines

__all__ = [
    "ENCODINGS",
    "FIELDS",
    "INT_FIELDS",
    "ISTIO_JSON_LABELS",
    "ISTIO_TEXT",
    "ISTIO_TEXT_1_11",
    "ISTIO_TEXT_FORMAT",
    "ISTIO_TEXT_FORMAT_1_11",
    "AccessLogEntry",
    "Encoding",
    "FormatError",
    "LogParser",
    "TextFormat",
    "compile_format",
    "parse_json_line",
    "parse_lines",
]
