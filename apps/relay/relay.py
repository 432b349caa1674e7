"""relay: one small HTTP service, deployed twice (as `proxy` and as `target`) to build a request chain.

`GET /proxy?url=U` fetches U with a GET and answers JSON that names every hop the request took:

    {"service": "proxy", "url": U, "status": 200, "elapsed_ms": 12.3, "request_id": "...",
     "hops": [{"service": "proxy", "url": U, "status": 200, "elapsed_ms": 12.3}, ...deeper hops]}

When the upstream is another relay its `hops` are appended after this service's own record; otherwise
its body (first 4 KiB) is included as `body`. The answer's HTTP status is the upstream's status, so a
404 or 502 from a deeper hop comes back unchanged. When the call itself fails (connection refused,
DNS failure, timeout, unusable URL) the answer is 502 with `error` and `failed_hop` naming this
service; a relay that receives such a 502 from its upstream keeps the deeper `failed_hop`.

Only the tracing headers in PROPAGATED_HEADERS are passed on. Redirects are not followed: a 3xx is
reported as it came. Upstream calls honour HTTP_PROXY / HTTPS_PROXY / NO_PROXY (either case).
NO_PROXY takes comma-separated entries: `*`, host names (`example.com` also covers its subdomains),
`host:port`, IP addresses and CIDR blocks such as `127.0.0.0/8`.

Configuration (a command-line flag overrides its variable):

    --name   SERVICE_NAME      service name in hop records and logs (default "relay")
    --bind   BIND              address to listen on (default 0.0.0.0; `::` for IPv6)
    --port   PORT              port (default 8080; 0 picks a free one)
    --upstream-timeout UPSTREAM_TIMEOUT   seconds for each upstream call (default 10)

The first line on stdout is `listening on HOST:PORT` with the bound port. One line per request goes to
stderr. SIGTERM or SIGINT stops accepting, lets requests in flight finish and exits 0.
Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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

Json = dict[str, Any]


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # report the 3xx as it came


class Upstream:
    """Makes the upstream calls: GET with a timeout, proxies from the environment, no redirects."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        proxies = urllib.request.getproxies_environment()  # lower case wins over upper case
        self.no_proxy = proxies.pop("no", "")
        self.proxies = proxies
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
        self._proxied = urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _NoRedirect)

    def opener_for(self, url: str) -> urllib.request.OpenerDirector:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in self.proxies or proxy_bypassed(
            parts.hostname or "", parts.port, self.no_proxy
        ):
            return self._direct
        return self._proxied

    def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, bool]:
        """GET `url`: (status, first MAX_UPSTREAM_BYTES of the body, whether the body was cut).

        The whole call, name resolution included (which socket timeouts do not cover), is bounded by
        `timeout`: it runs on a worker thread and a call still running then raises TimeoutError. The
        worker's own socket timeouts and body deadline make it end soon after.
        """
        outcome: list[tuple[int, bytes, bool] | BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._fetch(url, headers))
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)

        worker = threading.Thread(target=work, name="upstream", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if not outcome:
            raise TimeoutError(f"no answer within {self.timeout:g}s")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _fetch(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, bool]:
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            response = self.opener_for(url).open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:  # 4xx/5xx/3xx: still an answer
            response = err
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
    """None when `url` is an absolute http(s) URL with a host, else what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError as err:
        return f"invalid url: {err}"
    if parts.scheme not in ("http", "https"):
        return "url must be an absolute http:// or https:// URL"
    if not parts.hostname:
        return "url has no host"
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
    else:
        excerpt = body[:BODY_EXCERPT_BYTES]
        hop["body"] = excerpt.decode("utf-8", errors="replace")
        hop["body_truncated"] = cut or len(body) > len(excerpt)
        answer["hops"] = [hop]
    return answer


def make_handler(service: str, upstream: Upstream) -> type[BaseHTTPRequestHandler]:
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
            headers = {h: v for h in PROPAGATED_HEADERS if (v := self.headers.get(h)) is not None}
            started = time.monotonic()
            try:
                status, body, cut = upstream.get(requote(url), headers)
            except Exception as exc:  # refused, DNS, timeout, bad URL, protocol error: this hop failed
                ms = round((time.monotonic() - started) * 1000, 1)
                error = describe_error(exc, upstream.timeout)
                hop: Json = {"service": service, "url": url, "status": None, "elapsed_ms": ms, "error": error}
                failed: Json = {"service": service, "url": url, "status": 502, "elapsed_ms": ms}
                failed |= {"request_id": request_id, "error": error, "failed_hop": service, "hops": [hop]}
                return self._json(502, failed)
            ms = round((time.monotonic() - started) * 1000, 1)
            answer = relay_answer(service, url, status, body, cut=cut, elapsed_ms=ms)
            answer["request_id"] = request_id
            if status in _BODYLESS:  # no body allowed: the hops cannot be reported
                return self._send(status, b"", None)
            return self._json(status, answer)

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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    name: str = args.name

    def log(message: str) -> None:
        sys.stderr.write(f"relay[{name}] {message}\n")

    upstream = Upstream(args.upstream_timeout)
    server = make_server(args.bind, args.port, make_handler(name, upstream))
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    # Credentials in a proxy URL (user:password@) stay out of the log.
    proxies = ",".join(f"{k}={re.sub(r'//[^/@]*@', '//***@', v)}" for k, v in upstream.proxies.items()) or "-"
    log(f"timeout={upstream.timeout:g}s proxies={proxies} no_proxy={upstream.no_proxy or '-'}")
    serve_until_signalled(server, f"listening on {shown}:{port}", log)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
