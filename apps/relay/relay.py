"""relay: one small HTTP service, deployed twice (as `proxy` and as `target`) to build a request chain.

`GET /proxy?url=U` fetches U with a GET and answers JSON that names every hop the request took:

    {"service": "proxy", "url": U, "status": 200, "elapsed_ms": 12.3, "request_id": "...",
     "hops": [{"service": "proxy", "url": U, "status": 200, "elapsed_ms": 12.3}, ...deeper hops]}

When the upstream is another relay its `hops` are appended after this service's own record; otherwise
its body (first 4 KiB) is included as `body`. The answer's HTTP status is the upstream's status, so a
404 or 502 from a deeper hop comes back unchanged. When the call itself fails (connection refused,
DNS failure, timeout, unusable URL) the answer is 502 with `error` and `failed_hop` naming this
service; a relay that receives such a 502 from its upstream keeps the deeper `failed_hop`.

`GET /proxy?url=tcp://HOST:PORT/PATH?QUERY` makes the last leg plain TCP, to an echo server (the
recorder's TCP port): the relay connects, sends a payload whose first line is PATH plus `?QUERY` as in
the URL, then `\n` (the harness's `egh-token=...` rides in the query), padded with `.` to exactly N
bytes when the query has `egh-bytes=N` (1 to 1048576, not less than the line; else 400), reads until
as many bytes came back, EOF or the upstream timeout, and closes. The port is required (400 without).
The answer is 200 when exactly the payload came back, with a `tcp` block beside the hops:

    {..., "hops": [{"service": "target", "url": U, "status": 200, "elapsed_ms": 3.1}],
     "tcp": {"sent": 4096, "received": 4096, "local": "10.0.0.5:41234", "peer": "10.0.0.9:9000"}}

`local` is the relay's own socket address (what the echo server sees as its caller), `peer` the
address it connected to (`[v6]:port` for IPv6). A short or different echo, or a reset or timeout after
connecting, is 502 with `error` ("the upstream echoed 12 of 4096 bytes"), `failed_hop` and the `tcp`
block; failing to connect (refused, DNS, timeout) is 502 as for http, without it. A relay whose
upstream is another relay passes that relay's `tcp` block up, so the client's answer carries the
block of the hop that made the TCP leg. HTTP_PROXY/NO_PROXY do not apply to tcp:// URLs; the checks
below and REQUIRED_TOKEN do.

What it fetches is limited (the relay must not be an open proxy for whoever reaches it):

- only the upstreams in ALLOWED_UPSTREAMS, comma-separated `host:port` entries (`[v6]:port` for an
  IPv6 address; `host:*` for any port of a host); the port of a URL without one is 80 (http) or 443
  (https); a tcp:// URL names its port. Unset or empty, nothing is fetched. Any other upstream is answered **403** with
  `refused_host` naming it and `error`/`hint` saying how to allow it;
- never an address that is loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10, e.g.
  the cloud metadata address 169.254.169.254) or unspecified (0.0.0.0/8, ::), also when a name on the
  list resolves to one (the name is resolved, every address checked, and the connection is made to a
  checked address: no second lookup), unless ALLOWED_ADDRESSES (comma-separated CIDR blocks) allows
  it. Through a forward proxy (HTTP_PROXY) the proxy resolves names: then only an address written as
  the URL's host is checked.
- with REQUIRED_TOKEN set, a `/proxy` request without the header `x-egress-harness-token: <token>` is
  answered 404 (what an ingress route matching on that header answers; for a relay that clients reach
  directly, without an ingress in front). The token is never passed on.

Only the tracing headers in PROPAGATED_HEADERS are passed on. Redirects are not followed: a 3xx is
reported as it came. Upstream calls honour HTTP_PROXY / HTTPS_PROXY / NO_PROXY (either case).
NO_PROXY takes comma-separated entries: `*`, host names (`example.com` also covers its subdomains),
`host:port`, IP addresses and CIDR blocks such as `127.0.0.0/8`.

Configuration (a command-line flag overrides its variable):

    --name   SERVICE_NAME      service name in hop records and logs (default "relay")
    --bind   BIND              address to listen on (default 0.0.0.0; `::` for IPv6)
    --port   PORT              port (default 8080; 0 picks a free one)
    --upstream-timeout UPSTREAM_TIMEOUT   seconds for each upstream call or tcp exchange (default 10)
    --allow  ALLOWED_UPSTREAMS host:port entries it may fetch (default: none)
    --allow-addresses ALLOWED_ADDRESSES   CIDR blocks of otherwise refused addresses it may reach
    (REQUIRED_TOKEN only as a variable: a command line is visible to every user of the machine)

The first line on stdout is `listening on HOST:PORT` with the bound port. One line per request goes to
stderr. SIGTERM or SIGINT stops accepting, lets requests in flight finish and exits 0.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import http.client
import ipaddress
import json
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

PROPAGATED_HEADERS = (
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
)
BODY_EXCERPT_BYTES = 4096
MAX_UPSTREAM_BYTES = 1 << 20
_BODYLESS = {HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED}
# Characters left alone when re-quoting a URL: reserved ones and "%" so existing escapes stay as sent.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
#: the header a client sends the relay's token in (REQUIRED_TOKEN), and an ingress route matches on
TOKEN_HEADER = "x-egress-harness-token"  # noqa: S105 (a header name, not a secret)
#: what is refused unless ALLOWED_ADDRESSES allows it: loopback, link-local, unspecified
REFUSED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
)

#: the query parameter of a tcp:// URL that pads its payload to that many bytes, and its bounds
PAYLOAD_BYTES_PARAM = "egh-bytes"
MAX_PAYLOAD_BYTES = 1 << 20
PAYLOAD_PADDING = b"."

Json = dict[str, Any]
T = TypeVar("T")


def proxy_bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """True when NO_PROXY (`no_proxy`, comma separated) says `host[:port]` is reached directly."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, entry_port = entry, None
        if entry.startswith("["):  # [v6]:port or [v6]
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, entry_port = entry.split(":")
        if entry_port is not None and entry_port != str(port):
            continue
        name = name.lstrip(".").rstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_REFUSED = tuple((ipaddress.ip_network(net), why) for net, why in REFUSED_NETWORKS)


class UpstreamRefused(Exception):
    """The relay does not fetch this upstream: ``host`` (``host:port`` or an address) and why."""

    def __init__(self, host: str, reason: str, hint: str) -> None:
        super().__init__(f"refused: {host}: {reason}")
        self.host = host
        self.reason = reason
        self.hint = hint


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def parse_allowed(text: str) -> dict[str, set[int] | None]:
    """ALLOWED_UPSTREAMS: host -> its allowed ports (None: any, from `host:*`). ValueError names a bad entry."""
    allowed: dict[str, set[int] | None] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = entry.rpartition(":")
        if not host or not port or (":" in host and not entry.startswith("[")):
            raise ValueError(
                f"{entry!r} is not host:port ([v6]:port for an IPv6 address, host:* for any port)"
            )
        key = _host_key(host)
        if port == "*":
            allowed[key] = None
            continue
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r}: {port!r} is not a port number (1-65535) or *")
        ports = allowed.setdefault(key, set())
        if ports is not None:
            ports.add(int(port))
    return allowed


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """ALLOWED_ADDRESSES: comma-separated CIDR blocks (an address alone is its /32 or /128)."""
    networks = []
    for raw in text.split(","):
        entry = raw.strip()
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as err:
                raise ValueError(f"{entry!r} is not an address or CIDR block: {err}") from err
    return tuple(networks)


class Policy:
    """What the relay may fetch: the allowed upstreams, and which refused addresses are allowed anyway."""

    def __init__(self, allowed: str = "", addresses: str = "") -> None:
        self.allowed = parse_allowed(allowed)
        self.addresses = parse_networks(addresses)

    def describe(self) -> str:
        entries = sorted(
            f"{h}:*" if ports is None else ",".join(f"{h}:{p}" for p in sorted(ports))
            for h, ports in self.allowed.items()
        )
        return f"allowed={','.join(entries) or '-'} allowed_addresses={','.join(map(str, self.addresses)) or '-'}"

    def check_upstream(self, host: str, port: int) -> None:
        """UpstreamRefused unless ``host:port`` is allowed and, for an address, not a refused one."""
        key = _host_key(host)
        ports = self.allowed.get(key, set())
        shown = f"[{key}]:{port}" if ":" in key else f"{key}:{port}"
        if ports is not None and port not in ports:
            raise UpstreamRefused(
                shown,
                "not an upstream this relay is allowed to fetch",
                f"allow it by adding {shown} to ALLOWED_UPSTREAMS (--allow) when the relay starts",
            )
        try:
            address = ipaddress.ip_address(key)
        except ValueError:
            return
        self.check_address(shown, address, resolved=False)

    def check_address(self, host: str, address: IPAddress, *, resolved: bool) -> None:
        """UpstreamRefused when ``address`` (what ``host`` names) is loopback, link-local or unspecified
        and no ALLOWED_ADDRESSES block holds it."""
        mapped = getattr(address, "ipv4_mapped", None)
        checked: IPAddress = mapped if mapped is not None else address
        for network, why in _REFUSED:
            if checked.version == network.version and checked in network:
                if any(checked.version == n.version and checked in n for n in self.addresses):
                    return
                raise UpstreamRefused(
                    host,
                    f"it resolves to {checked}, a {why} address" if resolved else f"a {why} address",
                    f"allow it by adding {network} (or {checked}) to ALLOWED_ADDRESSES (--allow-addresses) "
                    "when the relay starts, for a test only",
                )

    def connect(
        self, address: tuple[str, int], timeout: float | None, source_address: tuple[str, int] | None
    ) -> socket.socket:
        """Resolve ``address``'s host, check every address it has (any refused one refuses the upstream),
        then connect to the checked addresses in turn: the connection goes where the check looked."""
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        shown = f"{host}:{port}"
        for *_, sockaddr in infos:
            self.check_address(shown, ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), resolved=True)
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address is not None:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                sock.close()
                last = err
        raise last if last is not None else OSError(f"{host} resolved to no address")


def _checked_connection(
    base: type[http.client.HTTPConnection], policy: Policy
) -> type[http.client.HTTPConnection]:
    class Checked(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = policy.connect

    return Checked


class _CheckedHTTP(urllib.request.HTTPHandler):
    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self._connection = _checked_connection(http.client.HTTPConnection, policy)

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._connection, req, **kwargs)


class _CheckedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self._connection = _checked_connection(http.client.HTTPSConnection, policy)

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._connection, req, **kwargs)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # report the 3xx as it came


class Upstream:
    """Makes the upstream calls: GET with a timeout, proxies from the environment, no redirects."""

    def __init__(self, timeout: float, policy: Policy | None = None) -> None:
        self.timeout = timeout
        self.policy = policy if policy is not None else Policy()
        proxies = urllib.request.getproxies_environment()  # lower case wins over upper case
        self.no_proxy = proxies.pop("no", "")
        self.proxies = proxies
        self._direct = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _NoRedirect,
            _CheckedHTTP(self.policy),
            _CheckedHTTPS(self.policy),
        )
        self._proxied = urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _NoRedirect)

    def opener_for(self, url: str) -> urllib.request.OpenerDirector:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in self.proxies or proxy_bypassed(
            parts.hostname or "", parts.port, self.no_proxy
        ):
            return self._direct
        return self._proxied

    def check(self, url: str) -> None:
        """UpstreamRefused unless the policy allows `url`'s host and port (before any network call).
        A tcp:// URL has its own port (check_url makes sure); http(s) ones default to 80 or 443."""
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.policy.check_upstream(parts.hostname or "", port)

    def _bounded(self, call: Callable[[], T]) -> T:
        """`call()`, the whole of it, name resolution included (which socket timeouts do not cover),
        bounded by `timeout`: it runs on a worker thread and a call still running then raises
        TimeoutError. The worker's own socket timeouts and deadlines make it end soon after."""
        outcome: list[T | BaseException] = []

        def work() -> None:
            try:
                outcome.append(call())
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)

        worker = threading.Thread(target=work, name="upstream", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if not outcome:
            raise TimeoutError(f"no answer within {self.timeout:g}s")
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, bool]:
        """GET `url`: (status, first MAX_UPSTREAM_BYTES of the body, whether the body was cut), within
        `timeout` (see _bounded)."""
        return self._bounded(lambda: self._fetch(url, headers))

    def echo(self, url: str, payload: bytes) -> Echo:
        """Send `payload` over TCP to the host and port of the tcp:// `url` (the policy's checked
        connection: HTTP_PROXY does not apply) and read until as many bytes came back, EOF, or
        `timeout` (for the whole exchange, connecting included). Failing to connect (refused, DNS,
        timeout) raises as for get; once connected, what came back is returned, with `error` saying
        why the exchange ended early (a timeout, a reset)."""
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", int(parts.port or 0)
        deadline = time.monotonic() + self.timeout
        progress = _EchoProgress(payload)
        try:
            self._bounded(lambda: self._exchange((host, port), payload, deadline, progress))
        except TimeoutError:
            if progress.local is None:  # not connected yet: the upstream did not answer at all
                raise
            return progress.snapshot(f"timeout: no full echo within {self.timeout:g}s")
        return progress.snapshot(progress.error)

    def _exchange(
        self, address: tuple[str, int], payload: bytes, deadline: float, progress: _EchoProgress
    ) -> None:
        """Connect (checked), send `payload` and read its echo at the same time (a large payload would
        otherwise fill both directions' buffers), recording progress; close the socket at the end."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer within {self.timeout:g}s")
        with self.policy.connect(address, remaining, None) as sock:
            progress.local = _endpoint(sock.getsockname())
            progress.peer = _endpoint(sock.getpeername())
            try:
                _pump(sock, payload, deadline, progress)
            except TimeoutError:
                progress.error = f"timeout: no full echo within {self.timeout:g}s"
            except OSError as exc:  # reset, broken pipe
                progress.error = describe_error(exc, self.timeout)

    def _fetch(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, bool]:
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            response = self.opener_for(url).open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:  # 4xx/5xx/3xx: still an answer
            response = err
        except urllib.error.URLError as err:
            if isinstance(err.reason, UpstreamRefused):  # the connection's own check refused it
                raise err.reason from err
            raise
        with response:
            status = int(response.status if response.status is not None else response.code)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_UPSTREAM_BYTES:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out after {self.timeout:g}s reading the body")
                chunk = response.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        body = b"".join(chunks)
        return status, body[:MAX_UPSTREAM_BYTES], size > MAX_UPSTREAM_BYTES


@dataclass(frozen=True)
class Echo:
    """What a tcp:// exchange did: bytes sent, bytes read back, the relay's own socket address and
    the upstream's (`IP:PORT`, `[v6]:PORT`), and why it ended early (None: it did not)."""

    payload: bytes
    sent: int
    received: bytes
    local: str
    peer: str
    error: str | None = None

    def problem(self) -> str | None:
        """None when exactly the payload came back, else what went wrong (for the answer's `error`)."""
        wanted, got = len(self.payload), len(self.received)
        if self.received == self.payload:  # all came back (a timeout or reset after that changes nothing)
            return None
        if got < wanted:
            differ = "" if self.payload.startswith(self.received) else ", and they differ from what was sent"
            problem = f"the upstream echoed {got} of {wanted} bytes{differ}"
        else:
            first = next(
                i for i, (a, b) in enumerate(zip(self.payload, self.received, strict=True)) if a != b
            )
            problem = (
                f"the upstream echoed {got} bytes but they differ from what was sent (from byte {first})"
            )
        return f"{self.error}: {problem}" if self.error else problem

    def block(self) -> Json:
        """The answer's `tcp` block."""
        return {"sent": self.sent, "received": len(self.received), "local": self.local, "peer": self.peer}


@dataclass
class _EchoProgress:
    """An exchange in progress, written by its worker thread, read by the caller (also after a timeout)."""

    payload: bytes = b""
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    local: str | None = None
    peer: str | None = None
    error: str | None = None

    def snapshot(self, error: str | None) -> Echo:
        return Echo(self.payload, self.sent, bytes(self.received), self.local or "", self.peer or "", error)


def _endpoint(sockaddr: Any) -> str:
    host, port = str(sockaddr[0]), int(sockaddr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pump(sock: socket.socket, payload: bytes, deadline: float, progress: _EchoProgress) -> None:
    """Write `payload` and read up to as many bytes back, whichever the socket is ready for, until all
    came back, EOF or `deadline` (TimeoutError)."""
    sock.setblocking(False)
    view = memoryview(payload)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if payload else 0))
        while len(progress.received) < len(payload):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline")
            for _, events in selector.select(remaining):
                if events & selectors.EVENT_WRITE:
                    with contextlib.suppress(BlockingIOError):  # writable, yet full after all
                        progress.sent += sock.send(view[progress.sent : progress.sent + 65536])
                    if progress.sent == len(payload):
                        selector.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(min(65536, len(payload) - len(progress.received)))
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return  # EOF: the upstream closed before echoing everything
                    progress.received += chunk


def tcp_payload(url: str) -> bytes:
    """The payload for a tcp:// `url`: its path and `?query` as a line, padded with "." to exactly the
    `egh-bytes` given in the query, if any. ValueError says what is wrong with `egh-bytes`."""
    parts = urllib.parse.urlsplit(url)
    line = (parts.path + (f"?{parts.query}" if parts.query else "")).encode() + b"\n"
    values = urllib.parse.parse_qs(parts.query, keep_blank_values=True).get(PAYLOAD_BYTES_PARAM, [])
    if not values:
        return line
    if len(values) > 1:
        raise ValueError(f"{PAYLOAD_BYTES_PARAM} is given {len(values)} times")
    value = values[0]
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"{PAYLOAD_BYTES_PARAM}={value!r} is not a number of bytes from 1 to {MAX_PAYLOAD_BYTES}"
        )
    size = int(value)
    if size < len(line):
        raise ValueError(
            f"{PAYLOAD_BYTES_PARAM}={size} is smaller than the payload's first line ({len(line)} bytes)"
        )
    return line + PAYLOAD_PADDING * (size - len(line))


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short, greppable reason for a failed upstream call."""
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timeout: no answer within {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"dns failure: {reason.strerror or reason}"
    if isinstance(reason, ConnectionError | http.client.HTTPException):
        return f"connection error: {type(reason).__name__}: {reason}"
    if isinstance(reason, ValueError):
        return f"invalid url: {reason}"
    return f"{type(reason).__name__}: {reason}"


def requote(url: str) -> str:
    """Percent-encode what may not appear raw in a request line (spaces, non-ASCII); keep escapes."""
    return urllib.parse.quote(url, safe=_URL_SAFE)


def check_url(url: str) -> str | None:
    """None when `url` is an absolute http(s) URL with a host, or a tcp:// one with a host and a port,
    else what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        return f"invalid url: {err}"
    if parts.scheme not in ("http", "https", "tcp"):
        return "url must be an absolute http://, https:// or tcp:// URL"
    if not parts.hostname:
        return "url has no host"
    if parts.scheme == "tcp" and not port:
        return f"a tcp url needs a port (tcp://HOST:PORT/...): {url}"
    return None


def relay_answer(service: str, url: str, status: int, body: bytes, *, cut: bool, elapsed_ms: float) -> Json:
    """The JSON answer for an upstream that answered `status` with `body`."""
    hop: Json = {"service": service, "url": url, "status": status, "elapsed_ms": elapsed_ms}
    answer: Json = {"service": service, "url": url, "status": status, "elapsed_ms": elapsed_ms}
    upstream: object = None
    if not cut:
        try:
            upstream = json.loads(body)
        except ValueError:
            upstream = None
    if (  # another relay: it names its service and lists its hops
        isinstance(upstream, dict)
        and isinstance(upstream.get("service"), str)
        and isinstance(upstream.get("hops"), list)
    ):
        answer["hops"] = [hop, *upstream["hops"]]
        if "failed_hop" in upstream:
            answer["failed_hop"] = upstream["failed_hop"]
            answer["error"] = upstream.get("error")
        # a deeper relay refused its upstream (say which, and how), or made the tcp:// leg (its block)
        for key in ("refused_host", "hint", "tcp"):
            if key in upstream:
                answer[key] = upstream[key]
    else:
        excerpt = body[:BODY_EXCERPT_BYTES]
        hop["body"] = excerpt.decode("utf-8", errors="replace")
        hop["body_truncated"] = cut or len(body) > len(excerpt)
        answer["hops"] = [hop]
    return answer


def make_handler(service: str, upstream: Upstream, token: str = "") -> type[BaseHTTPRequestHandler]:
    class RelayHandler(BaseHTTPRequestHandler):
        server_version = "relay/1"
        disable_nagle_algorithm = True  # headers and body go out in two writes
        timeout = upstream.timeout + 30  # an idle client connection cannot hold shutdown forever

        def do_GET(self) -> None:
            started = time.monotonic()
            parts = urllib.parse.urlsplit(self.path)
            request_id = self.headers.get("x-request-id")
            if parts.path == "/healthz":
                status = self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif parts.path == "/proxy" and not self._token_ok():
                # what an ingress route matching on the token header answers without it
                status = self._json(404, {"service": service, "error": f"no route for {parts.path}"})
            elif parts.path == "/proxy":
                status = self._proxy(parts.query, request_id)
            else:
                status = self._json(404, {"service": service, "error": f"no route for {parts.path}"})
            ms = (time.monotonic() - started) * 1000
            self.log_message('"%s" %d %.1fms rid=%s', self.requestline, status, ms, request_id or "-")

        def _proxy(self, query: str, request_id: str | None) -> int:
            urls = urllib.parse.parse_qs(query, keep_blank_values=True).get("url", [])
            if len(urls) != 1:
                return self._json(400, {"service": service, "error": "exactly one url parameter is needed"})
            url = urls[0]
            problem = check_url(url)
            if problem is not None:
                return self._json(400, {"service": service, "error": problem, "url": url})
            payload: bytes | None = None  # for a tcp:// url
            if urllib.parse.urlsplit(url).scheme == "tcp":
                try:
                    payload = tcp_payload(url)
                except ValueError as err:
                    return self._json(400, {"service": service, "error": str(err), "url": url})
            headers = {h: v for h in PROPAGATED_HEADERS if (v := self.headers.get(h)) is not None}
            started = time.monotonic()
            echo: Echo | None = None
            try:
                upstream.check(url)
                if payload is not None:
                    echo = upstream.echo(url, payload)
                else:
                    status, body, cut = upstream.get(requote(url), headers)
            except UpstreamRefused as refused:
                ms = round((time.monotonic() - started) * 1000, 1)
                error = str(refused)
                record: Json = {
                    "service": service,
                    "url": url,
                    "status": 403,
                    "elapsed_ms": ms,
                    "error": error,
                }
                answer: Json = {"service": service, "url": url, "status": 403, "elapsed_ms": ms}
                answer |= {"request_id": request_id, "error": error, "failed_hop": service, "hops": [record]}
                answer |= {"refused_host": refused.host, "hint": refused.hint}
                return self._json(403, answer)
            except Exception as exc:  # refused, DNS, timeout, bad URL, protocol error: this hop failed
                return self._failed(url, describe_error(exc, upstream.timeout), started, request_id)
            if echo is not None:
                return self._echoed(url, echo, started, request_id)
            ms = round((time.monotonic() - started) * 1000, 1)
            answer = relay_answer(service, url, status, body, cut=cut, elapsed_ms=ms)
            answer["request_id"] = request_id
            if status in _BODYLESS:  # no body allowed: the hops cannot be reported
                return self._send(status, b"", None)
            return self._json(status, answer)

        def _failed(
            self, url: str, error: str, started: float, request_id: str | None, extra: Json | None = None
        ) -> int:
            """502: this hop's upstream call failed (`error`); `extra` goes into the answer as well."""
            ms = round((time.monotonic() - started) * 1000, 1)
            hop: Json = {"service": service, "url": url, "status": None, "elapsed_ms": ms, "error": error}
            failed: Json = {"service": service, "url": url, "status": 502, "elapsed_ms": ms}
            failed |= {"request_id": request_id, "error": error, "failed_hop": service, "hops": [hop]}
            return self._json(502, failed | (extra or {}))

        def _echoed(self, url: str, echo: Echo, started: float, request_id: str | None) -> int:
            """200 when the tcp:// upstream echoed the payload exactly, else 502; both with the `tcp` block."""
            problem = echo.problem()
            if problem is not None:
                return self._failed(url, problem, started, request_id, {"tcp": echo.block()})
            ms = round((time.monotonic() - started) * 1000, 1)
            hop: Json = {"service": service, "url": url, "status": 200, "elapsed_ms": ms}
            answer: Json = {"service": service, "url": url, "status": 200, "elapsed_ms": ms}
            answer |= {"request_id": request_id, "hops": [hop], "tcp": echo.block()}
            return self._json(200, answer)

        def _token_ok(self) -> bool:
            if not token:
                return True
            sent = self.headers.get(TOKEN_HEADER) or ""
            return hmac.compare_digest(sent.encode(), token.encode())

        def _json(self, status: int, payload: Json) -> int:
            return self._send(status, json.dumps(payload).encode() + b"\n", "application/json")

        def _send(self, status: int, body: bytes, content_type: str | None) -> int:
            self.send_response(status)
            self.send_header("x-relay-service", service)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
            return status

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # do_GET logs one line with the elapsed time instead

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"relay[{service}] {self.address_string()} {format % args}\n")

    return RelayHandler


def make_server(bind: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        daemon_threads = False  # server_close() waits for requests in flight

    return Server((bind, port), handler)


def serve_until_signalled(server: ThreadingHTTPServer, banner: str, log: Callable[[str], None]) -> None:
    """Print `banner` on stdout, serve until SIGTERM/SIGINT, then finish requests in flight."""

    def stop(signum: int, _frame: object) -> None:
        log(f"{signal.Signals(signum).name}: shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(banner, flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="HTTP relay: GET /proxy?url=... and report the hops.")
    parser.add_argument("--name", default=env.get("SERVICE_NAME", "relay"), help="env SERVICE_NAME")
    parser.add_argument("--bind", default=env.get("BIND", "0.0.0.0"), help="env BIND")
    parser.add_argument("--port", type=int, default=env.get("PORT", "8080"), help="env PORT; 0: any")
    parser.add_argument(
        "--upstream-timeout", type=_positive, default=env.get("UPSTREAM_TIMEOUT", "10"), help="seconds"
    )
    parser.add_argument(
        "--allow",
        default=env.get("ALLOWED_UPSTREAMS", ""),
        metavar="HOST:PORT,...",
        help="env ALLOWED_UPSTREAMS",
    )
    parser.add_argument(
        "--allow-addresses",
        default=env.get("ALLOWED_ADDRESSES", ""),
        metavar="CIDR,...",
        help="env ALLOWED_ADDRESSES",
    )
    args = parser.parse_args(argv)
    try:
        args.policy = Policy(args.allow, args.allow_addresses)
    except ValueError as err:
        parser.error(f"--allow/ALLOWED_UPSTREAMS or --allow-addresses/ALLOWED_ADDRESSES: {err}")
    args.token = env.get("REQUIRED_TOKEN", "")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    name: str = args.name

    def log(message: str) -> None:
        sys.stderr.write(f"relay[{name}] {message}\n")

    upstream = Upstream(args.upstream_timeout, args.policy)
    server = make_server(args.bind, args.port, make_handler(name, upstream, args.token))
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    # Credentials in a proxy URL (user:password@) stay out of the log.
    proxies = ",".join(f"{k}={re.sub(r'//[^/@]*@', '//***@', v)}" for k, v in upstream.proxies.items()) or "-"
    log(f"timeout={upstream.timeout:g}s proxies={proxies} no_proxy={upstream.no_proxy or '-'}")
    log(f"{upstream.policy.describe()} token={'required' if args.token else 'not required'}")
    serve_until_signalled(server, f"listening on {shown}:{port}", log)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
