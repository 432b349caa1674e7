"""The relay is no open proxy (issue 14): on the real relay process, what it is not allowed to fetch
(a host outside its list, a loopback or link-local address, a name resolving to one) is refused with
403 naming the host and how to allow it, and with a token required a request without it gets 404.
The process tests share test_relay.py's helpers; the resolver tests fake only getaddrinfo."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import relay
from recorder import Recorder

from harness.common.traffic import Traffic, chain_url
from tests.unit.test_relay import RELAY_PY, EchoServer, RelayPool, clean_env


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[RelayPool]:
    pool = RelayPool(tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def proxy_recorder() -> Iterator[Recorder]:
    """A recorder playing a forward HTTP proxy: it must see nothing of tcp:// upstreams."""
    with Recorder(bind="127.0.0.1", port=0) as rec:
        yield rec


@pytest.fixture
def traffic() -> Iterator[Traffic]:
    with Traffic(timeout=10.0) as client:
        yield client


def only(allowed: str, addresses: str = "") -> dict[str, str]:
    return {"ALLOWED_UPSTREAMS": allowed, "ALLOWED_ADDRESSES": addresses}


def test_a_host_outside_the_list_is_403_naming_it_and_how_to_allow_it(
    relays: RelayPool, recorder_app: Recorder, traffic: Traffic
) -> None:
    # the recorder's own port is allowed (and loopback too): only the host differs
    proxy = relays("proxy", env=only(f"127.0.0.1:{recorder_app.port}", "127.0.0.0/8"))

    refused = traffic.send(chain_url([proxy.proxy_url], f"http://localhost:{recorder_app.port}/x"))
    other_port = traffic.send(chain_url([proxy.proxy_url], f"http://127.0.0.1:{recorder_app.port + 1}/x"))
    allowed = traffic.send(chain_url([proxy.proxy_url], f"{recorder_app.url}/ok"))

    assert refused.status == 403, refused.text
    assert refused.json["refused_host"] == f"localhost:{recorder_app.port}"
    assert "ALLOWED_UPSTREAMS" in refused.json["hint"]
    assert f"localhost:{recorder_app.port}" in refused.json["hint"]
    assert refused.failed_hop == "proxy"
    assert other_port.status == 403
    assert other_port.json["refused_host"] == f"127.0.0.1:{recorder_app.port + 1}"
    assert allowed.status == 200, allowed.text
    assert [r["path"] for r in recorder_app.records()] == ["/ok"]


def test_without_a_list_nothing_is_fetched(
    relays: RelayPool, recorder_app: Recorder, traffic: Traffic
) -> None:
    proxy = relays("proxy", env=only("", "127.0.0.0/8"))
    response = traffic.send(chain_url([proxy.proxy_url], f"{recorder_app.url}/x"))
    assert response.status == 403
    assert recorder_app.records() == []
    assert "allowed=-" in proxy.stderr()


@pytest.mark.parametrize(
    ("url", "refused_host", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254:80", "link-local"),
        ("http://[fe80::1]:8080/", "[fe80::1]:8080", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "[::ffff:169.254.169.254]:80", "link-local"),
        ("http://0.0.0.0:8080/", "0.0.0.0:8080", "unspecified"),
    ],
)
def test_a_link_local_or_unspecified_address_on_the_list_is_still_refused(
    relays: RelayPool, traffic: Traffic, url: str, refused_host: str, why: str
) -> None:
    proxy = relays("proxy", env=only(refused_host))
    response = traffic.send(chain_url([proxy.proxy_url], url))
    assert response.status == 403, response.text
    assert response.json["refused_host"] == refused_host
    assert why in (response.error or "")
    assert "ALLOWED_ADDRESSES" in response.json["hint"]


def test_loopback_is_refused_unless_allowed_also_by_a_name_that_resolves_to_it(
    relays: RelayPool, recorder_app: Recorder, traffic: Traffic
) -> None:
    listed = f"127.0.0.1:{recorder_app.port},localhost:{recorder_app.port}"
    strict = relays("strict", env=only(listed))
    allowing = relays("allowing", env=only(listed, "127.0.0.1/32"))

    by_address = traffic.send(chain_url([strict.proxy_url], f"{recorder_app.url}/a"))
    by_name = traffic.send(chain_url([strict.proxy_url], f"http://localhost:{recorder_app.port}/b"))
    allowed = traffic.send(chain_url([allowing.proxy_url], f"http://localhost:{recorder_app.port}/c"))

    assert (by_address.status, by_name.status) == (403, 403), (by_address.text, by_name.text)
    assert "loopback" in (by_address.error or "")
    assert "resolves to 127.0.0.1, a loopback address" in (by_name.error or "")
    assert allowed.status == 200, allowed.text
    assert [r["path"] for r in recorder_app.records()] == ["/c"]


def test_a_refusal_deep_in_the_chain_reaches_the_client_with_the_host(
    relays: RelayPool, recorder_app: Recorder, traffic: Traffic
) -> None:
    target = relays("target", env=only("allowed.example:80"))
    proxy = relays("proxy", env=only(f"127.0.0.1:{target.port}", "127.0.0.1/32"))
    response = traffic.send(
        chain_url([proxy.proxy_url, target.proxy_url], "http://169.254.169.254/latest/meta-data/")
    )
    assert response.status == 403, response.text
    assert response.services == ["proxy", "target"]
    assert response.failed_hop == "target"
    assert response.json["refused_host"] == "169.254.169.254:80"


def test_with_a_token_a_request_without_it_gets_404_and_the_token_goes_no_further(
    relays: RelayPool, recorder_app: Recorder, traffic: Traffic
) -> None:
    proxy = relays(
        "proxy", env={**only(f"127.0.0.1:{recorder_app.port}", "127.0.0.1/32"), "REQUIRED_TOKEN": "t0k"}
    )
    url = chain_url([proxy.proxy_url], f"{recorder_app.url}/x")

    missing = traffic.send(url)
    wrong = traffic.send(url, headers={relay.TOKEN_HEADER: "t0"})
    right = traffic.send(url, headers={relay.TOKEN_HEADER: "t0k"})
    health = traffic.client.get(f"{proxy.url}/healthz")

    assert (missing.status, wrong.status) == (404, 404)
    assert right.status == 200, right.text
    assert health.status_code == 200  # the kubelet's probe needs no token
    [seen] = recorder_app.records()
    assert relay.TOKEN_HEADER not in seen["headers"]
    assert "t0k" not in proxy.stderr()


@pytest.mark.parametrize(
    ("allowed", "problem"),
    [("example.com", "not host:port"), ("example.com:http", "not a port"), ("::1:80", "not host:port")],
)
def test_a_bad_list_stops_the_relay_at_start_naming_the_entry(allowed: str, problem: str) -> None:
    done = subprocess.run(
        [sys.executable, str(RELAY_PY), "--port", "0", "--bind", "127.0.0.1"],
        env=clean_env({"ALLOWED_UPSTREAMS": allowed}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "ALLOWED_UPSTREAMS" in done.stderr and problem in done.stderr and repr(allowed) in done.stderr


def test_parse_allowed() -> None:
    assert relay.parse_allowed(" a.example:80, A.example.:8080 ,[::1]:443,b:*,b:80 ") == {
        "a.example": {80, 8080},
        "::1": {443},
        "b": None,
    }


def _fake_resolver(addresses: list[str]) -> Any:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return getaddrinfo


def test_a_name_with_any_refused_address_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, refused_port: int
) -> None:
    """A name resolving to an ordinary address and to the metadata address: refused, nothing connected
    (the refused port would answer "connection refused" if it were tried)."""
    monkeypatch.setattr(socket, "getaddrinfo", _fake_resolver(["127.0.0.1", "169.254.169.254"]))
    policy = relay.Policy("twofaced.example:80", "127.0.0.1/32")
    with pytest.raises(relay.UpstreamRefused, match=r"resolves to 169\.254\.169\.254, a link-local address"):
        policy.connect(("twofaced.example", refused_port), 1.0, None)


def test_the_connection_goes_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, recorder_app: Recorder
) -> None:
    """One lookup: the relay connects to the address it checked, not to whatever a second lookup says."""
    lookups: list[str] = []
    real = _fake_resolver(["127.0.0.1"])

    def counting(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        return real(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    upstream = relay.Upstream(5.0, relay.Policy(f"pinned.example:{recorder_app.port}", "127.0.0.1/32"))
    status, body, _ = upstream.get(f"http://pinned.example:{recorder_app.port}/pinned", {})
    assert status == 200 and b"recorded" in body
    assert lookups == ["pinned.example"]
    [seen] = recorder_app.records()
    assert seen["host"] == f"pinned.example:{recorder_app.port}"


def test_a_tcp_upstream_is_checked_as_an_http_one(relays: RelayPool, traffic: Traffic) -> None:
    """The same list and address checks for tcp:// URLs: a port not on the list, loopback by address
    and by a name resolving to it are 403 before any byte is sent; allowed, the echo comes back."""
    with EchoServer() as echo:
        listed = f"127.0.0.1:{echo.port},localhost:{echo.port}"
        strict = relays("strict", env=only(listed))
        allowing = relays("allowing", env=only(listed, "127.0.0.1/32"))

        other_port = traffic.send(chain_url([allowing.proxy_url], f"tcp://127.0.0.1:{echo.port + 1}/x"))
        by_address = traffic.send(chain_url([strict.proxy_url], echo.url("/a")))
        by_name = traffic.send(chain_url([strict.proxy_url], f"tcp://localhost:{echo.port}/b"))
        allowed = traffic.send(chain_url([allowing.proxy_url], f"tcp://localhost:{echo.port}/c"))

        assert other_port.status == 403, other_port.text
        assert other_port.json["refused_host"] == f"127.0.0.1:{echo.port + 1}"
        assert "ALLOWED_UPSTREAMS" in other_port.json["hint"]
        assert (by_address.status, by_name.status) == (403, 403), (by_address.text, by_name.text)
        assert by_address.failed_hop == "strict"
        assert "loopback" in (by_address.error or "")
        assert "resolves to 127.0.0.1, a loopback address" in (by_name.error or "")
        assert "tcp" not in by_name.json
        assert allowed.status == 200, allowed.text
        assert bytes(echo.only_connection().data) == b"/c\n"  # the refused ones never connected


def test_a_tcp_upstream_needs_the_token_too_and_ignores_http_proxy(
    relays: RelayPool, proxy_recorder: Recorder, traffic: Traffic
) -> None:
    with EchoServer() as echo:
        env = {**only(f"127.0.0.1:{echo.port}", "127.0.0.1/32"), "REQUIRED_TOKEN": "t0k"}
        proxy = relays("proxy", env={**env, "HTTP_PROXY": proxy_recorder.url, "NO_PROXY": ""})
        url = chain_url([proxy.proxy_url], echo.url("/t"))

        missing = traffic.send(url)
        right = traffic.send(url, headers={relay.TOKEN_HEADER: "t0k"})

        assert missing.status == 404
        assert right.status == 200, right.text
        assert bytes(echo.only_connection().data) == b"/t\n"
        assert proxy_recorder.records() == []
