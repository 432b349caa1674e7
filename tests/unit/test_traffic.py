"""harness.common.traffic: chain URL nesting (with property tests) and the httpx client against loopback servers."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, unquote_plus, urlsplit

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from recorder import Recorder

from harness.common.traffic import (
    DEFAULT_TIMEOUT,
    Hop,
    Traffic,
    TrafficError,
    chain_url,
    new_request_id,
    parse_hops,
    send,
    unwrap_chain,
)

EXAMPLE_HOPS = ["http://ingress:80/proxy", "http://target.ns.svc:8080/proxy"]
EXAMPLE_TARGET = "http://external.example/path?q=1"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_chain_url_encodes_one_level_per_hop() -> None:
    url = chain_url(EXAMPLE_HOPS, EXAMPLE_TARGET)
    assert url == (
        "http://ingress:80/proxy?url=http%3A%2F%2Ftarget.ns.svc%3A8080%2Fproxy%3Furl%3D"
        "http%253A%252F%252Fexternal.example%252Fpath%253Fq%253D1"
    )
    assert unwrap_chain(url) == [*EXAMPLE_HOPS, EXAMPLE_TARGET]
    assert chain_url([], EXAMPLE_TARGET) == EXAMPLE_TARGET
    assert unwrap_chain(EXAMPLE_TARGET) == [EXAMPLE_TARGET]


def test_hop_with_its_own_query_gets_the_parameter_appended() -> None:
    url = chain_url(["http://gw/proxy?mode=a%20b"], "http://x/?y=1")
    assert url == "http://gw/proxy?mode=a%20b&url=http%3A%2F%2Fx%2F%3Fy%3D1"
    assert unwrap_chain(url) == ["http://gw/proxy?mode=a%20b", "http://x/?y=1"]
    for odd in ("http://gw/proxy?", "http://gw/proxy?a=1&"):
        assert unwrap_chain(chain_url([odd, odd], "http://x/")) == [odd, odd, "http://x/"]


def test_target_with_its_own_url_parameter_needs_levels() -> None:
    target = "http://ext/redirect?url=http%3A%2F%2Felsewhere%2F"
    url = chain_url(EXAMPLE_HOPS, target)
    assert unwrap_chain(url, levels=2) == [*EXAMPLE_HOPS, target]
    assert unwrap_chain(url) == [*EXAMPLE_HOPS, "http://ext/redirect", "http://elsewhere/"]
    with pytest.raises(ValueError, match="level 4 of 5"):
        unwrap_chain(url, levels=5)


@pytest.mark.parametrize(
    "hop",
    [
        "ingress/proxy",
        "ftp://x/proxy",
        "http://x/proxy#frag",
        "http://x/p?url=1",
        "http://x/p?a=1&u%72l=1",
    ],
)
def test_unusable_hops_are_refused(hop: str) -> None:
    with pytest.raises(ValueError, match="hop"):
        chain_url([hop], "http://ext/")


# --- property tests -------------------------------------------------------------------------------

_host = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)
_port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_path = st.text(st.characters(exclude_characters="?#", exclude_categories=["Cs", "Cc"]), max_size=20)
_key = st.text(
    st.characters(exclude_characters="&=#", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=6
).filter(lambda k: unquote_plus(k) != "url")
_value = st.text(st.characters(exclude_characters="&#", exclude_categories=["Cs", "Cc"]), max_size=8)
_query = st.lists(st.tuples(_key, _value).map("=".join), max_size=3).map("&".join)
hops = st.builds(
    lambda scheme, host, port, path, query: (
        f"{scheme}://{host}{port}/{path.lstrip('/')}" + (f"?{query}" if query else "")
    ),
    st.sampled_from(["http", "https"]),
    _host,
    _port,
    _path,
    _query,
)
_nasty = st.sampled_from(
    [" ", "&", "=", "%", "%25", "%2F", "#", "?", "+", "/", "é", "✓", "\u00a0", "url=", "%zz"]
)
nasty_targets = st.one_of(
    st.text(),
    st.builds(
        lambda host, path, query: f"http://{host}/{path}?{query}",
        _host,
        st.lists(st.one_of(_nasty, st.text(max_size=3)), max_size=6).map("".join),
        st.lists(st.one_of(_nasty, st.text(max_size=3)), max_size=10).map("".join),
    ),
)


@settings(deadline=None)
@given(hops=st.lists(hops, min_size=1, max_size=5), target=nasty_targets)
def test_unwrap_inverts_chain_url(hops: list[str], target: str) -> None:
    url = chain_url(hops, target)
    assert unwrap_chain(url, levels=len(hops)) == [*hops, target]


@given(hops=st.lists(hops, min_size=3, max_size=5), target=nasty_targets)
def test_each_hop_decodes_exactly_one_level_as_the_relay_does(hops: list[str], target: str) -> None:
    """What a relay does with its request: parse_qs of the query, take the single `url` value."""
    current = chain_url(hops, target)
    for level in range(1, len(hops) + 1):
        query = urlsplit(current).query
        nested = query.rsplit("url=", 1)[1]
        assert re.fullmatch(r"[A-Za-z0-9_.~%-]*", nested), "the nested URL is fully percent-encoded"
        [current] = parse_qs(query, keep_blank_values=True)["url"]
        assert current == chain_url(hops[level:], target)
    assert current == target


@given(st.lists(hops, min_size=1, max_size=3), nasty_targets)
def test_unwrap_without_levels_is_exact_when_the_target_has_no_url_parameter(
    hop_list: list[str], target: str
) -> None:
    assume(unwrap_chain(target) == [target])  # the target itself does not look like a hop
    assert unwrap_chain(chain_url(hop_list, target)) == [*hop_list, target]


# --- the client -----------------------------------------------------------------------------------


def test_send_sets_a_fresh_request_id(recorder_app: Recorder) -> None:
    first = send(f"{recorder_app.url}/one")
    second = send(f"{recorder_app.url}/two")
    assert UUID4.match(first.request_id)
    assert first.request_id != second.request_id
    assert first.status == 200
    assert first.ok
    assert first.json == {"recorded": 1, "host": f"127.0.0.1:{recorder_app.port}", "path": "/one"}
    assert first.hops == ()
    assert first.elapsed > 0
    assert first.headers["content-type"] == "application/json"
    assert [r["headers"]["x-request-id"] for r in recorder_app.records()] == [
        first.request_id,
        second.request_id,
    ]


def test_send_uses_a_given_request_id(recorder_app: Recorder) -> None:
    given_id = send(f"{recorder_app.url}/a", request_id="rid-given", headers={"x-request-id": "ignored"})
    from_headers = send(f"{recorder_app.url}/b", headers={"X-Request-Id": "rid-header", "x-extra": "1"})
    assert given_id.request_id == "rid-given"
    assert from_headers.request_id == "rid-header"
    a, b = recorder_app.records()
    assert a["headers"]["x-request-id"] == "rid-given"
    assert (b["headers"]["x-request-id"], b["headers"]["x-extra"]) == ("rid-header", "1")


def test_traffic_reuses_one_client_and_closes_it(recorder_app: Recorder) -> None:
    with Traffic(headers={"x-suite": "unit"}, timeout=5) as traffic:
        ids = [traffic.send(f"{recorder_app.url}/n/{i}").request_id for i in range(3)]
        assert not traffic.client.is_closed
    assert traffic.client.is_closed
    assert traffic.timeout == 5
    records = recorder_app.records()
    assert [r["headers"]["x-request-id"] for r in records] == ids
    assert len(set(ids)) == 3
    assert {r["headers"]["x-suite"] for r in records} == {"unit"}
    assert len({r["client_port"] for r in records}) == 1  # one kept-alive connection


def test_non_json_answers_have_no_json_and_no_hops(recorder_app: Recorder) -> None:
    response = send(f"{recorder_app.url}/__recorder/healthz")
    assert (response.status, response.text.strip(), response.json, response.hops) == (200, "ok", None, ())
    assert response.failed_hop is None
    assert response.error is None


def test_connection_refused_raises_traffic_error_naming_url_and_request_id(refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}/proxy?url=x"
    with pytest.raises(TrafficError) as caught:
        send(url, request_id="rid-refused", timeout=2)
    error = caught.value
    assert url in str(error)
    assert "rid-refused" in str(error)
    assert (error.url, error.request_id) == (url, "rid-refused")
    assert isinstance(error.cause, httpx.ConnectError)
    assert not error.timed_out


def test_timeout_raises_traffic_error(silent_port: int) -> None:
    with Traffic(timeout=0.3) as traffic, pytest.raises(TrafficError) as caught:
        traffic.send(f"http://127.0.0.1:{silent_port}/hang")
    assert caught.value.timed_out
    assert UUID4.match(caught.value.request_id)


def test_proxy_variables_are_ignored_unless_trusted(
    monkeypatch: pytest.MonkeyPatch, recorder_app: Recorder
) -> None:
    with Recorder() as forward_proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
        direct = send(f"{recorder_app.url}/direct")
        proxied = send(f"{recorder_app.url}/proxied", trust_env=True)
        assert [r["target"] for r in recorder_app.records()] == ["/direct"]
        assert [r["target"] for r in forward_proxy.records()] == [f"{recorder_app.url}/proxied"]
    assert (direct.status, proxied.status) == (200, 200)


def test_parse_hops_skips_malformed_entries() -> None:
    body = {
        "hops": [
            {"service": "proxy", "url": "u1", "status": 502, "elapsed_ms": 3},
            "junk",
            {"url": "no service"},
            {
                "service": "target",
                "url": "u2",
                "status": None,
                "elapsed_ms": "x",
                "error": "connection refused",
            },
        ]
    }
    assert parse_hops(body) == (
        Hop(service="proxy", url="u1", status=502, elapsed_ms=3.0),
        Hop(service="target", url="u2", status=None, elapsed_ms=None, error="connection refused"),
    )
    assert parse_hops({"hops": "nope"}) == ()
    assert parse_hops(["hops"]) == ()


def test_new_request_id_is_a_uuid4() -> None:
    rid = new_request_id()
    assert uuid.UUID(rid).version == 4
    assert rid != new_request_id()
    assert DEFAULT_TIMEOUT == 30.0


def _answering(body: bytes, content_type: str) -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": content_type})
    )


def test_the_mesh_request_id_is_the_one_the_first_relay_reports() -> None:
    """Istio's ingress gateway gives a request from outside the mesh a fresh x-request-id (seen on the
    netns cluster with real istiod 1.31-dev): the hops' access logs carry the relay's, not the client's."""
    from harness.common.traffic import Traffic

    body = b'{"service": "proxy", "status": 200, "request_id": "from-the-gateway", "hops": []}'
    with Traffic() as traffic:
        traffic._client = httpx.Client(transport=_answering(body, "application/json"))
        answer = traffic.send("http://ingress.test/proxy", request_id="from-the-client")
    assert answer.request_id == "from-the-gateway"
    assert answer.sent_request_id == "from-the-client" and answer.replaced_request_id


def test_without_a_relay_report_the_sent_request_id_stands() -> None:
    from harness.common.traffic import Traffic

    with Traffic() as traffic:
        traffic._client = httpx.Client(transport=_answering(b"no route", "text/plain"))
        answer = traffic.send("http://ingress.test/proxy", request_id="from-the-client")
    assert answer.request_id == "from-the-client" and not answer.replaced_request_id
