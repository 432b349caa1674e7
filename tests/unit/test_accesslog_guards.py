"""The access-log parsers, each rule pinned by what it is for (issue 20: mutation testing).

The format compiler is exercised by compiling Istio's format afresh (``TextFormat``, not the cached
``ISTIO_TEXT``) and reading the recorded lines of ``accesslog_samples`` with it; each field a line
holds is written out here as Envoy printed it.
"""

from __future__ import annotations

import json

import pytest

from harness.accesslog import (
    ISTIO_TEXT_FORMAT,
    ISTIO_TEXT_FORMAT_1_11,
    AccessLogEntry,
    FormatError,
    LogParser,
    TextFormat,
    parse_json_line,
    parse_lines,
)
from harness.accesslog.format import Operator, operator_key, tokenize
from harness.accesslog.model import clean_value
from tests.unit import accesslog_samples as s

HOST = "external.egress-harness.test"

#: SIDECAR_TO_GATEWAY, field by field.
SIDECAR_TO_GATEWAY = {
    "start_time": "2026-11-28T07:00:00.123Z",
    "method": "GET",
    "path": "/path?q=1",
    "protocol": "HTTP/1.1",
    "response_code": 200,
    "response_flags": None,
    "response_code_details": "via_upstream",
    "connection_termination_details": None,
    "upstream_transport_failure_reason": None,
    "bytes_received": 0,
    "bytes_sent": 615,
    "duration": 21,
    "upstream_service_time": 20,
    "x_forwarded_for": None,
    "user_agent": "python-urllib/3.11",
    "request_id": "rid-1",
    "authority": HOST,
    "upstream_host": "10.244.0.7:8080",
    "upstream_cluster": "outbound|80|external|istio-egressgateway.istio-system.svc.cluster.local",
    "upstream_local_address": "10.244.0.12:41234",
    "downstream_local_address": "10.96.10.20:80",
    "downstream_remote_address": "10.244.0.12:41230",
    "requested_server_name": None,
    "route_name": None,
}
#: TLS_GATEWAY_TO_EXTERNAL (a TCP entry, recorded from real Envoy), field by field.
TLS_GATEWAY = {
    "start_time": "2026-12-07T04:40:27.868Z",
    "method": None,
    "path": None,
    "protocol": None,
    "response_code": 0,
    "response_flags": None,
    "response_code_details": None,
    "connection_termination_details": None,
    "upstream_transport_failure_reason": None,
    "bytes_received": 766,
    "bytes_sent": 1597,
    "duration": 7,
    "upstream_service_time": None,
    "x_forwarded_for": None,
    "user_agent": None,
    "request_id": None,
    "authority": None,
    "upstream_host": "127.0.0.20:35951",
    "upstream_cluster": f"outbound|8443||{HOST}",
    "upstream_local_address": "127.0.0.7:45502",
    "downstream_local_address": "127.0.0.7:42433",
    "downstream_remote_address": "127.0.0.12:50068",
    "requested_server_name": HOST,
    "route_name": None,
}


@pytest.mark.parametrize("fmt", [ISTIO_TEXT_FORMAT, ISTIO_TEXT_FORMAT_1_11])
def test_istios_format_compiled_afresh_reads_every_field(fmt: str) -> None:
    parser = TextFormat(fmt)
    http = parser.parse(s.SIDECAR_TO_GATEWAY, source="target sidecar")
    assert http is not None and http.to_dict() == SIDECAR_TO_GATEWAY and http.source == "target sidecar"
    tcp = parser.parse(s.TLS_GATEWAY_TO_EXTERNAL)
    assert tcp is not None and tcp.to_dict() == TLS_GATEWAY and tcp.source is None
    assert tcp.extra == {} and tcp.is_tcp and not http.is_tcp
    # every recorded line reads the same as its JSON-encoded twin
    for line in (
        s.GATEWAY_TO_EXTERNAL,
        s.SIDECAR_INBOUND,
        s.SIDECAR_BLOCKED,
        s.GATEWAY_NO_ROUTE,
        s.SIDECAR_BLACKHOLE,
        s.RBAC_GATEWAY_DENIED,
        s.CANARY_GATEWAY,
        s.IPV6_H2,
        s.SIDECAR_INBOUND_CHAIN,
    ):
        entry = parser.parse(line)
        assert entry is not None, line
        assert parse_json_line(json.dumps(entry.to_dict())) == entry
    assert parser.keys == tuple(op.key for op in parser.operators)
    assert len(parser.keys) == 24 and set(parser.keys) == set(SIDECAR_TO_GATEWAY)
    assert parser.format == fmt and repr(parser) == f"TextFormat({fmt!r})"
    assert parser.parse(s.NOISE[0]) is None and parser.parse(s.NOISE[4]) is None


def test_the_gateway_line_with_a_semicolon_cluster_and_quotes_in_the_user_agent() -> None:
    parser = TextFormat(ISTIO_TEXT_FORMAT_1_11)
    semi = parser.parse(s.GATEWAY_SEMICOLON)
    assert semi is not None and semi.upstream_cluster == f"outbound|80||{HOST}"
    ipv6 = parser.parse(s.IPV6_H2)
    assert ipv6 is not None
    assert (ipv6.user_agent, ipv6.authority, ipv6.request_id) == (
        'Mozilla/5.0 (X11; "quoted" agent)',
        None,
        "rid-6",
    )
    assert (ipv6.upstream_host, ipv6.downstream_remote_address) == ("[fd00::5]:8080", "[fd00::3]:1234")
    forged = TextFormat(ISTIO_TEXT_FORMAT).parse(
        s.GATEWAY_TO_EXTERNAL.replace('"python-urllib/3.11"', '"evil" "forged-id" "forged.example"')
    )
    assert forged is not None and (forged.request_id, forged.authority) == ("rid-1", HOST)


def test_operator_keys() -> None:
    assert operator_key("RESPONSE_CODE", None) == "response_code"
    assert operator_key("UPSTREAM_CLUSTER_RAW", None) == "upstream_cluster"
    assert operator_key("START_TIME", "%s") == "start_time"  # a plain key keeps its name whatever the args
    assert operator_key("REQ", ":AUTHORITY") == "authority"
    assert operator_key("REQ", "x-request-id") == "request_id"  # header names are case-insensitive
    assert operator_key("REQ", ":path") == "path"
    assert operator_key("REQ", "TRACEPARENT") == "req_traceparent"
    assert operator_key("RESP", "X-Envoy-Upstream-Service-Time") == "upstream_service_time"
    assert operator_key("REQ", "X-REQUEST-ID") == "request_id"
    assert operator_key("RESP", "X-REQUEST-ID") == "resp_x_request_id"  # a response header is not the id
    assert operator_key("DYNAMIC_METADATA", "istio.mixer:status") == "dynamic_metadata_istio_mixer_status"
    assert operator_key("FILTER_STATE", "--a..b--") == "filter_state_a_b"
    assert operator_key("HOSTNAME", None) == "hostname"
    assert operator_key("REQ", "") == "req"


def test_tokenize_splits_literals_and_operators() -> None:
    assert tokenize("a%%b %REQ(:PATH):10% c%PROTOCOL%") == [
        "a%b ",
        Operator("REQ", ":PATH", 10, "path"),
        " c",
        Operator("PROTOCOL", None, None, "protocol"),
    ]
    assert tokenize("%%%%") == ["%%"]
    assert tokenize("%START_TIME(%s)%x") == [Operator("START_TIME", "%s", None, "start_time"), "x"]
    assert tokenize("100%%") == ["100%"]
    assert Operator("REQ", ":PATH", 10, "path").text == "%REQ(:PATH):10%"
    assert Operator("PROTOCOL", None, None, "protocol").text == "%PROTOCOL%"
    assert Operator("REQ", "", None, "req").text == "%REQ()%"
    with pytest.raises(FormatError) as caught:
        tokenize("%PROTOCOL% and 50% of it")
    assert str(caught.value) == "format string: unmatched '%' at column 18: '% of it'"
    with pytest.raises(FormatError, match=r"column 12: '%ab'$"):
        tokenize("%PROTOCOL% %ab")
    long = "%PROTOCOL% %" + "x" * 40
    with pytest.raises(FormatError) as caught:
        tokenize(long)
    assert str(caught.value).endswith(repr("%" + "x" * 29))


def test_a_format_without_operators_or_with_one_unmatched_is_refused() -> None:
    with pytest.raises(FormatError, match=r"^format string has no %OPERATOR%: 'just text\\n'$"):
        TextFormat("just text\n")
    with pytest.raises(FormatError, match="unmatched"):
        TextFormat("%RESPONSE_CODE")


def test_a_custom_format_converts_and_keeps_extra_keys() -> None:
    fmt = TextFormat('%RESPONSE_CODE% %DURATION% "%REQ(TRACEPARENT)%" %UPSTREAM_CLUSTER% %BYTES_SENT%\n')
    e = fmt.parse('404 - "00-1-2-01" outbound|80||x; 12\n')
    assert e is not None
    assert (e.response_code, e.duration, e.upstream_cluster, e.bytes_sent) == (
        404,
        None,
        "outbound|80||x",
        12,
    )
    assert e.extra == {"req_traceparent": "00-1-2-01"}
    e = fmt.parse('abc 5 "" ; -')
    assert e is not None
    assert (e.response_code, e.duration, e.upstream_cluster, e.bytes_sent) == ("abc", 5, None, None)
    assert e.extra == {"req_traceparent": None}
    e = fmt.parse('200 1 "-" - 0')
    assert e is not None and e.upstream_cluster is None and e.extra == {"req_traceparent": None}
    assert e.bytes_sent == 0
    e = fmt.parse('200 1 "t" plain 0')
    assert e is not None and e.upstream_cluster == "plain"
    # an unquoted value ends at the next literal; the last one at white space
    tail = TextFormat("%RESPONSE_CODE%/%ROUTE_NAME%")
    e = tail.parse("200/default  \n")
    assert e is not None and (e.response_code, e.route_name) == (200, "default")
    assert tail.parse("200/default extra") is None
    assert tail.parse("200/a/b") is not None


def test_a_key_printed_twice_keeps_its_first_non_empty_value() -> None:
    fmt = TextFormat("%REQ(X-REQUEST-ID)% %REQ(x-request-id)% %REQ(X-REQUEST-ID)%")
    for line, want in (("- b c", "b"), ("a b c", "a"), ("- - c", "c"), ("- - -", None)):
        e = fmt.parse(line)
        assert e is not None and e.request_id == want, line
    counted = TextFormat("%BYTES_SENT%|%BYTES_SENT%")
    e = counted.parse("-|7")
    assert e is not None and e.bytes_sent == 7


def test_quoted_and_unquoted_values() -> None:
    fmt = TextFormat('"%REQ(USER-AGENT)%" "%REQ(:AUTHORITY)%" %RESPONSE_FLAGS% "%UPSTREAM_HOST%"')
    e = fmt.parse('"a "b" c" "h.example" UF,URX "10.0.0.1:80"')
    assert e is not None
    assert (e.user_agent, e.authority, e.response_flags, e.upstream_host) == (
        'a "b" c',
        "h.example",
        "UF,URX",
        "10.0.0.1:80",
    )
    assert fmt.parse('"a" "h "x"" UF "h"') is None  # no quote in an authority
    # a value between quotes holds spaces; an unquoted one stops at the next literal's first character
    spaced = TextFormat("%RESPONSE_CODE_DETAILS%;%ROUTE_NAME%")
    e = spaced.parse("a b;c")
    assert e is not None and (e.response_code_details, e.route_name) == ("a b", "c")
    assert spaced.parse('a"b;c') is None
    # a multi-line value (DOTALL) in a free-form header
    free = TextFormat('"%REQ(USER-AGENT)%" %RESPONSE_CODE%')
    e = free.parse('"a\nb" 200')
    assert e is not None and e.user_agent == "a\nb"


def test_the_json_parser() -> None:
    line = json.dumps({"response_code": "200", "upstream_cluster": "c;", "extra_key": 1, "duration": 3.0})
    e = parse_json_line(line, source="gw")
    assert e is not None
    assert (e.response_code, e.upstream_cluster, e.duration, e.source) == (200, "c", 3, "gw")
    assert e.extra == {"extra_key": 1}
    assert parse_json_line(json.dumps({"response_code": 200, "route_name": "r"})) == AccessLogEntry(
        response_code=200, route_name="r"
    )
    assert (
        parse_json_line(json.dumps({"response_code": 200, "level": "info"})) is None
    )  # one key: not an entry
    assert parse_json_line("[1, 2]") is None and parse_json_line("{not json") is None
    assert parse_json_line(json.dumps({"response_code": 200, "route_name": "r"})).extra == {}  # type: ignore[union-attr]


def test_clean_value() -> None:
    assert clean_value("response_code", None) is None
    assert clean_value("response_code", "-") is None and clean_value("path", "") is None
    assert clean_value("response_code", True) is None
    assert clean_value("response_code", 404) == 404
    assert clean_value("duration", 3.0) == 3 and isinstance(clean_value("duration", 3.0), int)
    assert clean_value("duration", 3.5) is None
    assert clean_value("duration", "12") == 12 and clean_value("duration", "12ms") == "12ms"
    assert clean_value("duration", [1]) is None
    assert clean_value("route_name", ["a"]) == "['a']"
    assert clean_value("upstream_cluster", "outbound|80||h;") == "outbound|80||h"
    assert clean_value("upstream_cluster", ";") is None
    assert clean_value("route_name", "r;") == "r;"  # only the cluster drops the ';'
    assert clean_value("route_name", 5) == 5 and clean_value("route_name", True) is True
    assert clean_value("route_name", 1.5) == 1.5
    assert clean_value("route_name", {"a": 1}) == "{'a': 1}"


def test_a_json_line_whose_values_are_lists_or_objects_is_read_not_raised() -> None:
    # The parser never raises on input: a JSON value may be any JSON (a misconfigured label)
    line = json.dumps({"response_code": [200], "route_name": {"a": 1}, "path": ["/x"]})
    parser = LogParser()
    [entry] = parser.parse_lines([line])
    assert (entry.response_code, entry.route_name, entry.path) == (None, "{'a': 1}", "['/x']")
    assert (parser.parsed, parser.skipped) == (1, 0)


def test_the_log_parser_detects_counts_and_refuses_bad_settings() -> None:
    parser = LogParser()
    lines = [s.NOISE[0], " " + json.dumps(SIDECAR_TO_GATEWAY), s.GATEWAY_TO_EXTERNAL + "\r\n", "   ", ""]
    entries = list(parser.parse_lines(lines, source="x"))
    assert [e.request_id for e in entries] == ["rid-1", "rid-1"]
    assert [e.source for e in entries] == ["x", "x"]
    assert (parser.parsed, parser.skipped) == (2, 3)
    as_json = LogParser("json")
    assert as_json.parse_line(s.GATEWAY_TO_EXTERNAL) is None
    assert as_json.parse_line(json.dumps(SIDECAR_TO_GATEWAY)) is not None
    assert (as_json.parsed, as_json.skipped) == (1, 1)
    as_text = LogParser("text")
    assert as_text.parse_line(json.dumps(SIDECAR_TO_GATEWAY)) is None
    assert as_text.parse_line(s.GATEWAY_TO_EXTERNAL) is not None
    custom = "%RESPONSE_CODE% %ROUTE_NAME%"
    assert LogParser(text_format=custom).parse_line("200 r") == AccessLogEntry(
        response_code=200, route_name="r"
    )
    compiled = TextFormat(custom)
    assert LogParser(text_format=compiled).text_format is compiled
    assert parse_lines(["200 r", "x"], "text", custom, source="s") == [
        AccessLogEntry(response_code=200, route_name="r", source="s")
    ]
    assert parse_lines([json.dumps(SIDECAR_TO_GATEWAY)], "text") == []
    with pytest.raises(ValueError, match=r"^encoding must be one of text, json, auto, not 'xml'$"):
        LogParser("xml")  # type: ignore[arg-type]


def test_the_entry_model() -> None:
    e = AccessLogEntry(response_flags="UF,URX", extra={"k": 1}, source="gw")
    assert e.flags == frozenset({"UF", "URX"}) and AccessLogEntry().flags == frozenset()
    assert e.to_dict()["k"] == 1 and "source" not in e.to_dict()
    assert (
        AccessLogEntry(method="GET").is_tcp is False and AccessLogEntry(protocol="HTTP/1.1").is_tcp is False
    )
    assert AccessLogEntry().is_tcp is True
    gateway = TextFormat(ISTIO_TEXT_FORMAT).parse(s.GATEWAY_NO_ROUTE, source="gw")
    assert gateway is not None
    assert gateway.short() == (
        "[2026-11-28T07:00:03.000Z] GET / 404 NR route_not_found authority=external.egress-harness.test "
        "sni=None cluster=None route=None id=rid-4 (gw)"
    )
    tcp = TextFormat(ISTIO_TEXT_FORMAT).parse(s.SIDECAR_BLACKHOLE)
    assert tcp is not None
    assert tcp.short() == (
        "[2026-11-28T07:00:05.000Z] TCP 0 UH - authority=None sni=unregistered.example "
        "cluster=BlackHoleCluster route=None id=None"
    )


def test_compiler_edge_cases_of_formats() -> None:
    # the first unmatched '%' is the one reported
    with pytest.raises(FormatError, match=r"column 13: '% and 6%'$"):
        tokenize("%PROTOCOL% 5% and 6%")
    # a trailing literal (other than the newline) is part of the line
    tail = TextFormat("%PROTOCOL%X\n")
    e = tail.parse("HTTP/1.1X")
    assert e is not None and e.protocol == "HTTP/1.1"
    assert TextFormat("%PROTOCOL% ").parse("HTTP/1.1") is None  # cut off before its last literal
    # only the cluster drops its trailing ';' and only the integer fields are converted
    semi = TextFormat("%ROUTE_NAME% %UPSTREAM_CLUSTER%")
    e = semi.parse("r; c;")
    assert e is not None and (e.route_name, e.upstream_cluster) == ("r;", "c")
    # two extra keys
    extra = TextFormat("%REQ(A)% %REQ(B)% %RESPONSE_CODE%")
    e = extra.parse("1 2 200")
    assert e is not None and e.extra == {"req_a": "1", "req_b": "2"} and e.response_code == 200
    # the first value of a line is not quoted: it ends at the first character of the literal after it
    first = TextFormat('%REQ(USER-AGENT)%" "%ROUTE_NAME%"')
    assert first.parse('a"b" "r"') is None
    e = first.parse('ab" "r"')
    assert e is not None and (e.user_agent, e.route_name) == ("ab", "r")
    # a value after a quote but not before one is not a quoted value
    half = TextFormat('x="%ROUTE_NAME% y')
    assert half.parse('x="a b y') is None
    e = half.parse('x="a y')
    assert e is not None and e.route_name == "a"
    # the value before the last literal ends at that literal's first character
    last = TextFormat("%ROUTE_NAME%;")
    assert last.parse("a;b;") is None
    e = last.parse("a;")
    assert e is not None and e.route_name == "a"
    # adjacent operators still read the line
    adjacent = TextFormat("%REQ(USER-AGENT)%%ROUTE_NAME% %RESPONSE_CODE%")
    e = adjacent.parse("curl r 200")
    assert e is not None and e.response_code == 200
    assert clean_value("upstream_cluster", "outbound|80||boX;") == "outbound|80||boX"


def test_empty_values_and_cluster_names_in_text() -> None:
    fmt = TextFormat("%RESPONSE_CODE%|%BYTES_SENT%|%UPSTREAM_CLUSTER%|")
    e = fmt.parse("|||")
    assert e is not None and (e.response_code, e.bytes_sent, e.upstream_cluster) == (None, None, None)
    named = TextFormat("%UPSTREAM_CLUSTER% %RESPONSE_CODE%")
    e = named.parse("outbound|80||boX; 200")
    assert e is not None and e.upstream_cluster == "outbound|80||boX"
    e = named.parse("outbound|80||plain 200")
    assert e is not None and e.upstream_cluster == "outbound|80||plain"


def test_the_log_parser_keeps_a_formats_trailing_literal() -> None:
    # only the line's end of line is taken off: a format's last literal, even a space or an 'X', stays
    assert LogParser(text_format="%PROTOCOL% ").parse_line("HTTP/1.1 \n") == AccessLogEntry(
        protocol="HTTP/1.1"
    )
    assert LogParser(text_format="%PROTOCOL%X").parse_line("HTTP/1.1X\r\n") == AccessLogEntry(
        protocol="HTTP/1.1"
    )
