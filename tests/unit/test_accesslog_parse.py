"""The access-log parsers: Istio's TEXT formats, JSON, custom formats, mixed streams."""

from __future__ import annotations

import json

import pytest

from harness.accesslog import (
    FIELDS,
    ISTIO_JSON_LABELS,
    ISTIO_TEXT,
    ISTIO_TEXT_1_11,
    ISTIO_TEXT_FORMAT,
    ISTIO_TEXT_FORMAT_1_11,
    AccessLogEntry,
    FormatError,
    LogParser,
    compile_format,
    parse_json_line,
    parse_lines,
)
from tests.unit import accesslog_samples as s


def test_istio_formats_are_the_documented_strings() -> None:
    # The two generations differ only in the upstream-cluster operator.
    assert "%UPSTREAM_CLUSTER_RAW%" in ISTIO_TEXT_FORMAT
    assert "%UPSTREAM_CLUSTER% " in ISTIO_TEXT_FORMAT_1_11
    assert ISTIO_TEXT_FORMAT_1_11.replace("%UPSTREAM_CLUSTER%", "%UPSTREAM_CLUSTER_RAW%") == ISTIO_TEXT_FORMAT
    assert ISTIO_TEXT.keys == ISTIO_TEXT_1_11.keys
    # Every Istio key is printed by the TEXT format, and the JSON labels name the same operators.
    assert set(ISTIO_TEXT.keys) == set(FIELDS) == set(ISTIO_JSON_LABELS)
    for op in ISTIO_TEXT.operators:
        assert ISTIO_JSON_LABELS[op.key] == op.text


def test_http_entry_fields_and_types() -> None:
    e = ISTIO_TEXT.parse(s.GATEWAY_TO_EXTERNAL)
    assert e is not None
    assert e.start_time == "2026-11-28T07:00:00.125Z"
    assert (e.method, e.path, e.protocol) == ("GET", "/path?q=1", "HTTP/1.1")
    assert e.response_code == 200 and isinstance(e.response_code, int)
    assert e.response_flags is None and e.connection_termination_details is None
    assert e.response_code_details == "via_upstream"
    assert (e.bytes_received, e.bytes_sent, e.duration, e.upstream_service_time) == (0, 615, 18, 17)
    assert e.x_forwarded_for == "10.244.0.12"
    assert e.request_id == "rid-1"
    assert e.authority == "external.egress-harness.test"
    assert e.upstream_host == "172.18.0.5:80"
    assert e.upstream_cluster == "outbound|80||external.egress-harness.test"
    assert e.downstream_remote_address == "10.244.0.12:41234"
    assert e.requested_server_name is None and e.route_name is None
    assert not e.is_tcp


def test_tcp_entry() -> None:
    e = ISTIO_TEXT.parse(s.GATEWAY_TLS)
    assert e is not None and e.is_tcp
    assert (e.method, e.path, e.protocol, e.response_code) == (None, None, None, 0)
    assert (e.bytes_received, e.bytes_sent, e.duration, e.upstream_service_time) == (839, 4321, 120, None)
    assert e.request_id is None and e.authority is None
    assert e.requested_server_name == "external.egress-harness.test"
    assert e.upstream_cluster == "outbound|443||external.egress-harness.test"


def test_blackhole_and_direct_response() -> None:
    bh = ISTIO_TEXT.parse(s.SIDECAR_BLACKHOLE)
    assert bh is not None and bh.flags == {"UH"} and bh.upstream_cluster == "BlackHoleCluster"
    assert bh.upstream_host is None and bh.upstream_local_address is None
    blocked = ISTIO_TEXT.parse(s.SIDECAR_BLOCKED)
    assert blocked is not None
    assert (blocked.response_code, blocked.response_code_details, blocked.route_name) == (
        502,
        "direct_response",
        "block_all",
    )
    assert blocked.upstream_service_time is None and blocked.upstream_cluster is None


def test_ipv6_http2_quotes_in_user_agent_and_empty_authority() -> None:
    e = ISTIO_TEXT.parse(s.IPV6_H2)
    assert e is not None
    assert e.protocol == "HTTP/2" and e.method == "POST" and e.response_code == 201
    assert e.user_agent == 'Mozilla/5.0 (X11; "quoted" agent)'
    assert e.authority is None
    assert e.upstream_host == "[fd00::5]:8080"
    assert e.downstream_local_address == "[fd00::2]:8080"
    assert e.downstream_remote_address == "[fd00::3]:1234"


def test_trailing_semicolon_of_upstream_cluster_is_stripped_in_both_generations() -> None:
    old = ISTIO_TEXT_1_11.parse(s.GATEWAY_SEMICOLON)
    new = ISTIO_TEXT.parse(s.GATEWAY_TO_EXTERNAL)
    assert old is not None and new is not None
    assert old.upstream_cluster == "outbound|80||external.egress-harness.test"
    assert old == new


def test_json_entry_any_key_order_nulls_numbers_and_extra_keys() -> None:
    text = ISTIO_TEXT.parse(s.GATEWAY_TO_EXTERNAL)
    assert text is not None
    obj = {k: v for k, v in reversed(list(text.to_dict().items()))}
    obj["upstream_service_time"] = str(obj["upstream_service_time"])  # Envoy prints a header: a string
    obj["traceparent"] = "00-abc-def-01"
    line = json.dumps(obj)
    e = parse_json_line(line)
    assert e is not None
    assert e.upstream_service_time == 17
    assert e.extra == {"traceparent": "00-abc-def-01"}
    assert e._replace(extra=text.extra) == text


def test_json_nulls_and_dashes_are_none_and_bad_numbers_stay_text() -> None:
    e = parse_json_line('{"response_code": 0, "route_name": null, "authority": "-", "duration": "n/a"}')
    assert e is not None
    assert e.response_code == 0 and e.route_name is None and e.authority is None
    assert e.duration == "n/a"  # kept, not raised on


@pytest.mark.parametrize(
    "line",
    ["[]", '"text"', "{", '{"level":"info","msg":"x"}', '{"response_code": 200}', "null"],
)
def test_json_lines_that_are_not_entries(line: str) -> None:
    assert parse_json_line(line) is None


def test_mixed_stream_auto_detects_and_counts_skipped() -> None:
    text = ISTIO_TEXT.parse(s.SIDECAR_PASSTHROUGH)
    assert text is not None
    lines = [s.NOISE[0], s.SIDECAR_PASSTHROUGH, s.NOISE[1], json.dumps(text.to_dict()), *s.NOISE[2:]]
    parser = LogParser("auto")
    entries = list(parser.parse_lines(lines))
    assert entries == [text, text]
    assert (parser.parsed, parser.skipped) == (2, len(s.NOISE))


def test_forced_encodings_skip_the_other_kind() -> None:
    text = ISTIO_TEXT.parse(s.SIDECAR_PASSTHROUGH)
    assert text is not None
    lines = [s.SIDECAR_PASSTHROUGH, json.dumps(text.to_dict())]
    assert parse_lines(lines, "text") == [text]
    assert parse_lines(lines, "json") == [text]
    with pytest.raises(ValueError, match="encoding must be one of"):
        LogParser("xml")  # type: ignore[arg-type]


def test_crlf_and_trailing_newlines() -> None:
    assert parse_lines([s.SIDECAR_BLOCKED + "\r\n"]) == parse_lines([s.SIDECAR_BLOCKED])
    assert parse_lines([s.SIDECAR_BLOCKED + "\n"])[0].route_name == "block_all"


def test_custom_format_with_header_fallback_max_length_and_literals() -> None:
    fmt = compile_format(
        "%START_TIME(%Y-%m-%dT%H:%M:%S)% 100%% code=%RESPONSE_CODE% "
        'tp="%REQ(TRACEPARENT)%" p=%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):10% %UPSTREAM_CLUSTER%\n'
    )
    assert [op.key for op in fmt.operators] == [
        "start_time",
        "response_code",
        "req_traceparent",
        "path",
        "upstream_cluster",
    ]
    assert fmt.operators[3].max_length == 10
    e = fmt.parse('2026-11-28T07:00:00 100% code=404 tp="00-1-2-01" p=/abc/defgh outbound|80||x;')
    assert e is not None
    assert (e.start_time, e.response_code, e.path, e.upstream_cluster) == (
        "2026-11-28T07:00:00",
        404,
        "/abc/defgh",
        "outbound|80||x",
    )
    assert e.extra == {"req_traceparent": "00-1-2-01"}
    assert fmt.parse("something else entirely") is None


def test_custom_format_adjacent_operators_and_repeated_key() -> None:
    fmt = compile_format("%RESPONSE_CODE%:%RESPONSE_FLAGS%|%REQ(:AUTHORITY)%|%REQ(:authority)%")
    e = fmt.parse("503:UF,URX|-|example.com")
    assert e is not None
    assert e.response_code == 503 and e.flags == {"UF", "URX"}
    assert e.authority == "example.com"  # the first non-empty of the two


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%RESPONSE_CODE", "unmatched '%' at column 1"),
        ("just text", "no %OPERATOR%"),
        ("a %b% c", "unmatched"),
    ],
)
def test_bad_format_strings(fmt: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        compile_format(fmt)


def test_to_dict_has_every_key_in_order() -> None:
    e = AccessLogEntry(response_code=200, extra={"x": 1})
    d = e.to_dict()
    assert list(d)[: len(FIELDS)] == list(FIELDS)
    assert d["response_code"] == 200 and d["method"] is None and d["x"] == 1


def test_short_summary_names_the_important_fields() -> None:
    e = ISTIO_TEXT.parse(s.GATEWAY_NO_ROUTE, source="gw")
    assert e is not None
    short = e.short()
    for part in ("404", "NR", "route_not_found", "id=rid-4", "(gw)"):
        assert part in short


def test_a_user_agent_holding_quotes_cannot_shift_the_request_id_or_authority() -> None:
    forged = 'evil" "forged-id" "forged.example'
    line = s.GATEWAY_TO_EXTERNAL.replace('"python-urllib/3.11"', f'"{forged}"')
    e = ISTIO_TEXT.parse(line)
    assert e is not None
    assert e.user_agent == forged
    assert e.request_id == "rid-1"
    assert e.authority == "external.egress-harness.test"
    assert e.upstream_host == "172.18.0.5:80"
