"""Property tests: whatever Envoy prints with a format, the parser reads back; it never raises."""

from __future__ import annotations

import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.accesslog import (
    ISTIO_TEXT,
    ISTIO_TEXT_1_11,
    ISTIO_TEXT_FORMAT,
    ISTIO_TEXT_FORMAT_1_11,
    AccessLogEntry,
    LogParser,
    compile_format,
    parse_json_line,
)
from harness.accesslog.model import EMPTY
from tests.unit.accesslog_samples import render

# Values as Envoy prints them: no newline; unquoted fields have no spaces or quotes.
_token = st.text(string.ascii_letters + string.digits + "._:/|[]-,?=&%", min_size=1, max_size=30).filter(
    lambda v: v != "-"
)
_quoted = st.text(
    st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="\n\r"), min_size=1, max_size=40
).filter(lambda v: v != "-" and not v.endswith('"'))
# Envoy writes these itself or refuses a quote in them (see format._QUOTE_FREE).
_quoted_no_dq = _quoted.filter(lambda v: '"' not in v)
_int = st.integers(min_value=0, max_value=10**9)
_maybe = st.none

_entries = st.builds(
    AccessLogEntry,
    start_time=st.one_of(_maybe(), st.just("2026-11-28T07:00:00.123Z")),
    method=st.one_of(_maybe(), st.sampled_from(["GET", "POST", "CONNECT"])),
    path=st.one_of(_maybe(), _token.map(lambda t: "/" + t)),
    protocol=st.one_of(_maybe(), st.sampled_from(["HTTP/1.1", "HTTP/2"])),
    response_code=st.one_of(_maybe(), st.integers(0, 599)),
    response_flags=st.one_of(_maybe(), st.sampled_from(["NR", "UH", "UF,URX", "DC"])),
    response_code_details=st.one_of(_maybe(), _token),
    connection_termination_details=st.one_of(_maybe(), _token),
    upstream_transport_failure_reason=st.one_of(_maybe(), _quoted),
    bytes_received=st.one_of(_maybe(), _int),
    bytes_sent=st.one_of(_maybe(), _int),
    duration=st.one_of(_maybe(), _int),
    upstream_service_time=st.one_of(_maybe(), _int),
    x_forwarded_for=st.one_of(_maybe(), _quoted),
    user_agent=st.one_of(_maybe(), _quoted),
    request_id=st.one_of(_maybe(), _quoted_no_dq),
    authority=st.one_of(_maybe(), _quoted_no_dq),
    upstream_host=st.one_of(_maybe(), _quoted_no_dq),
    upstream_cluster=st.one_of(_maybe(), _token.filter(lambda t: not t.endswith(";"))),
    upstream_local_address=st.one_of(_maybe(), _token),
    downstream_local_address=st.one_of(_maybe(), _token),
    downstream_remote_address=st.one_of(_maybe(), _token),
    requested_server_name=st.one_of(_maybe(), _token),
    route_name=st.one_of(_maybe(), _token),
    extra=st.just(EMPTY),
    source=st.none(),
)


@settings(max_examples=300, deadline=None)
@given(_entries)
def test_text_round_trip_both_generations(entry: AccessLogEntry) -> None:
    assert ISTIO_TEXT.parse(render(ISTIO_TEXT_FORMAT, entry)) == entry
    assert ISTIO_TEXT_1_11.parse(render(ISTIO_TEXT_FORMAT_1_11, entry)) == entry


@settings(max_examples=200, deadline=None)
@given(_entries)
def test_json_round_trip(entry: AccessLogEntry) -> None:
    line = json.dumps({k: v for k, v in entry.to_dict().items()})
    parsed = parse_json_line(line)
    if sum(v is not None for v in entry.to_dict().values()) == 0:
        return  # an all-null object is still an entry (it has the keys)
    assert parsed == entry


# Unquoted operators print values without spaces; a value that may hold spaces is quoted, as in Istio's.
_custom_ops = st.sampled_from(
    [
        "code=%RESPONSE_CODE%",
        'auth="%REQ(:AUTHORITY)%"',
        "route=%ROUTE_NAME%",
        "c=%UPSTREAM_CLUSTER_RAW%",
        "took %DURATION% ms",
        '"%REQ(USER-AGENT)%"',
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_custom_ops, min_size=1, max_size=5, unique=True), _entries)
def test_custom_format_round_trip(parts: list[str], entry: AccessLogEntry) -> None:
    fmt = " ".join(parts)
    parsed = compile_format(fmt).parse(render(fmt, entry))
    assert parsed is not None
    for op in compile_format(fmt).operators:
        assert getattr(parsed, op.key) == getattr(entry, op.key)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=20))
def test_parser_never_raises_and_counts_every_line(lines: list[str]) -> None:
    parser = LogParser("auto")
    entries = list(parser.parse_lines(lines))
    assert parser.parsed == len(entries)
    assert parser.parsed + parser.skipped == len(lines)
