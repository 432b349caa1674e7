"""A compiler from Envoy access-log format strings to line parsers.

Envoy's TEXT access log is a format string of literal text and command operators: ``%NAME%``,
``%NAME(ARGS)%`` and ``%NAME(ARGS):MAXLEN%``, with ``%%`` for a literal percent sign. ``compile_format``
turns such a string into a ``TextFormat`` whose ``parse`` reads lines printed with it. Istio's default
TEXT formats are two instances of the compiler (``ISTIO_TEXT_FORMAT`` and ``ISTIO_TEXT_FORMAT_1_11``).

Operators that Istio's JSON format also names map to Istio's JSON keys (``%REQ(:AUTHORITY)%`` is
``authority``); any other operator lands in ``AccessLogEntry.extra`` under a key derived from it:
``%REQ(TRACEPARENT)%`` is ``req_traceparent``, ``%START_TIME(%s)%`` stays ``start_time``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from harness.accesslog.model import EMPTY, FIELDS, INT_FIELDS, AccessLogEntry

#: Istio's default TEXT access-log format since 1.23 (``%UPSTREAM_CLUSTER_RAW%``).
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

#: Istio's default TEXT access-log format of 1.11 to 1.22 (``%UPSTREAM_CLUSTER%``).
ISTIO_TEXT_FORMAT_1_11 = ISTIO_TEXT_FORMAT.replace("%UPSTREAM_CLUSTER_RAW%", "%UPSTREAM_CLUSTER%")

#: Istio's JSON access-log labels (``meshConfig.accessLogEncoding: JSON``): key -> operator.
ISTIO_JSON_LABELS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}

# Operators without arguments that are an Istio key of their own.
_PLAIN_KEYS: dict[str, str] = {
    "START_TIME": "start_time",
    "PROTOCOL": "protocol",
    "RESPONSE_CODE": "response_code",
    "RESPONSE_FLAGS": "response_flags",
    "RESPONSE_CODE_DETAILS": "response_code_details",
    "CONNECTION_TERMINATION_DETAILS": "connection_termination_details",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "upstream_transport_failure_reason",
    "BYTES_RECEIVED": "bytes_received",
    "BYTES_SENT": "bytes_sent",
    "DURATION": "duration",
    "UPSTREAM_HOST": "upstream_host",
    "UPSTREAM_CLUSTER": "upstream_cluster",
    "UPSTREAM_CLUSTER_RAW": "upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "upstream_local_address",
    "DOWNSTREAM_LOCAL_ADDRESS": "downstream_local_address",
    "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address",
    "REQUESTED_SERVER_NAME": "requested_server_name",
    "ROUTE_NAME": "route_name",
}

# Header operators (REQ/RESP) that are an Istio key: (operator, upper-cased argument) -> key.
_HEADER_KEYS: dict[tuple[str, str], str] = {
    ("REQ", ":METHOD"): "method",
    ("REQ", "X-ENVOY-ORIGINAL-PATH?:PATH"): "path",
    ("REQ", ":PATH"): "path",
    ("RESP", "X-ENVOY-UPSTREAM-SERVICE-TIME"): "upstream_service_time",
    ("REQ", "X-FORWARDED-FOR"): "x_forwarded_for",
    ("REQ", "USER-AGENT"): "user_agent",
    ("REQ", "X-REQUEST-ID"): "request_id",
    ("REQ", ":AUTHORITY"): "authority",
}

# %%, or %NAME%, %NAME(ARGS)%, %NAME(ARGS):N%. ARGS may hold '%' (START_TIME(%s)), so it ends at ')'
# followed by an optional ':N' and the closing '%'.
_OPERATOR = re.compile(r"%%|%([A-Z][A-Z0-9_]*)(?:\((.*?)\))?(?::(\d+))?%")


class FormatError(ValueError):
    """A format string that is not a valid Envoy access-log format."""


@dataclass(frozen=True, slots=True)
class Operator:
    """One command operator of a format string."""

    name: str
    args: str | None
    max_length: int | None
    key: str

    @property
    def text(self) -> str:
        out = "%" + self.name
        if self.args is not None:
            out += f"({self.args})"
        if self.max_length is not None:
            out += f":{self.max_length}"
        return out + "%"


def operator_key(name: str, args: str | None) -> str:
    """The entry key an operator's value is stored under (Istio's JSON key where there is one)."""
    if name in _PLAIN_KEYS:
        return _PLAIN_KEYS[name]
    if args is not None:
        known = _HEADER_KEYS.get((name, args.upper()))
        if known:
            return known
    derived = name.lower()
    if args:
        derived += "_" + re.sub(r"[^a-z0-9]+", "_", args.lower()).strip("_")
    return derived


def tokenize(fmt: str) -> list[str | Operator]:
    """Split a format string into literal text and operators; adjacent literals are merged."""
    tokens: list[str | Operator] = []
    pos = 0

    def literal(text: str) -> None:
        if not text:
            return
        if tokens and isinstance(tokens[-1], str):
            tokens[-1] += text
        else:
            tokens.append(text)

    for m in _OPERATOR.finditer(fmt):
        literal(fmt[pos : m.start()])
        pos = m.end()
        if m.group(0) == "%%":
            literal("%")
            continue
        name, args, max_len = m.group(1), m.group(2), m.group(3)
        tokens.append(Operator(name, args, int(max_len) if max_len else None, operator_key(name, args)))
    rest = fmt[pos:]
    if "%" in rest:
        col = pos + rest.index("%")
        raise FormatError(f"format string: unmatched '%' at column {col + 1}: {fmt[col : col + 30]!r}")
    literal(rest)
    return tokens


def _to_int(value: str) -> str | int | None:
    if value in {"-", ""}:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _to_cluster(value: str) -> str | None:
    if value in {"-", ""}:
        return None
    return value.rstrip(";") or None if value.endswith(";") else value


_ISTIO_KEYS = frozenset(FIELDS)


class TextFormat:
    """A parser for lines printed with one Envoy TEXT format string."""

    __slots__ = ("_build", "_regex", "format", "operators")

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        tokens = tokenize(fmt.rstrip("\r\n"))
        self.operators: tuple[Operator, ...] = tuple(t for t in tokens if isinstance(t, Operator))
        if not self.operators:
            raise FormatError(f"format string has no %OPERATOR%: {fmt!r}")
        self._regex = re.compile(_build_pattern(tokens), re.DOTALL)
        self._build = _builder(tuple(op.key for op in self.operators))

    def __repr__(self) -> str:
        return f"TextFormat({self.format!r})"

    @property
    def keys(self) -> tuple[str, ...]:
        """The entry key of each operator, in format order."""
        return tuple(op.key for op in self.operators)

    def parse(self, line: str, source: str | None = None) -> AccessLogEntry | None:
        """The entry of one line, or ``None`` when the line was not printed with this format."""
        m = self._regex.match(line)
        if m is None:
            return None
        return self._build(m.groups(), source)


Builder = Callable[[tuple[str, ...], "str | None"], AccessLogEntry]


def _builder(keys: tuple[str, ...]) -> Builder:
    """Generate the function that turns a match's groups into an entry.

    Generated once per format so that the per-line work is one tuple construction with inline
    conversions (the hot path of reading a million-line log), not a loop over operators.
    """
    first: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, []).append(index)

    def expr(key: str) -> str:
        indexes = first.get(key)
        if not indexes:
            return "None"
        conv = "_int" if key in INT_FIELDS else "_cluster" if key == "upstream_cluster" else None
        one = [f"{conv}(g[{i}])" if conv else f"(None if (v := g[{i}]) in _NULL else v)" for i in indexes]
        # A key printed twice keeps its first non-empty value.
        return one[0] if len(one) == 1 else "_first(" + ", ".join(one) + ")"

    extra_keys = [k for k in first if k not in _ISTIO_KEYS]
    extra = "{" + ", ".join(f"{k!r}: {expr(k)}" for k in extra_keys) + "}" if extra_keys else "_EMPTY"
    body = ", ".join([expr(k) for k in FIELDS] + [extra, "source"])
    code = f"def build(g, source):\n    return _new(_Entry, ({body},))\n"
    namespace: dict[str, object] = {
        "_new": tuple.__new__,
        "_Entry": AccessLogEntry,
        "_NULL": frozenset({"-", ""}),
        "_int": _to_int,
        "_cluster": _to_cluster,
        "_first": _first,
        "_EMPTY": EMPTY,
    }
    exec(compile(code, f"<access-log builder {len(keys)} operators>", "exec"), namespace)  # noqa: S102
    build: Builder = namespace["build"]  # type: ignore[assignment]
    return build


def _first(*values: object) -> object:
    return next((v for v in values if v is not None), None)


# Istio keys whose values never hold a double quote: Envoy writes them itself (codes, flags, cluster
# and route names, addresses) or refuses a quote in them (:authority). Only the free-form headers
# (user agent, x-forwarded-for), the path and the TLS failure text may. Matching these without quotes
# keeps a user agent like `a" "b" "c` from shifting the request id and authority that follow it.
_QUOTE_FREE = frozenset(FIELDS) - {
    "user_agent",
    "x_forwarded_for",
    "path",
    "upstream_transport_failure_reason",
}


def _build_pattern(tokens: list[str | Operator]) -> str:
    """A regex with one group per operator.

    A value between quotes may hold spaces (and, for free-form headers, quotes), so it is matched
    lazily up to the literal that follows; an unquoted value ends at the first character of the next
    literal.
    """
    parts: list[str] = []
    for i, tok in enumerate(tokens):
        if isinstance(tok, str):
            parts.append(re.escape(tok))
            continue
        prev = tokens[i - 1] if i > 0 else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        quoted = isinstance(prev, str) and prev.endswith('"') and isinstance(nxt, str) and nxt[:1] == '"'
        no_quote = '"' if tok.key in _QUOTE_FREE else ""
        if quoted:
            parts.append('([^"]*)' if no_quote else "(.*?)")
        elif isinstance(nxt, str):
            stop = re.escape(nxt[0])
            parts.append(f"([^{stop}{no_quote}]*)" if nxt[0] != "\n" else "(.*?)")
        elif nxt is None:
            parts.append(f"([^\\s{no_quote}]*)")
        else:
            parts.append("(.*?)")
    return "".join(parts) + r"[ \t\r\n]*\Z"


@lru_cache(maxsize=64)
def compile_format(fmt: str) -> TextFormat:
    """Compile an Envoy TEXT format string (cached: the same string gives the same parser)."""
    return TextFormat(fmt)


#: The parser of Istio's default TEXT format. Both generations parse with it: they differ only in
#: the upstream-cluster operator, which fills the same key.
ISTIO_TEXT = compile_format(ISTIO_TEXT_FORMAT)
ISTIO_TEXT_1_11 = compile_format(ISTIO_TEXT_FORMAT_1_11)
