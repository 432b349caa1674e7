"""recorder: the stand-in for an external host. It answers every request and remembers what it saw.

For each request it records the peer address (client ip and port), method, raw request target,
path, Host header, all request headers, a sequence number and a timestamp, and answers 200 with
`{"recorded": seq, "host": ..., "path": ...}`. A request whose target is an absolute URI (the way a
client talks to a forward proxy: `GET http://example.com/x HTTP/1.1`) is recorded too, with
`target` holding that absolute URI and `path` its path and query, so a recorder can stand in for an
HTTP proxy. CONNECT is recorded and refused with 405 (the recorder does not tunnel).

Reserved paths (origin-form targets only):

    GET    /__recorder/healthz            -> "ok"
    GET    /__recorder/requests           -> JSON list of records, oldest first; filters:
           ?request_id=ID                    x-request-id equals ID
           ?path_contains=S                  S occurs in the recorded path
           ?since=SEQ                        seq greater than SEQ
    DELETE /__recorder/requests           -> {"cleared": n}; sequence numbers keep counting

    GET    /__recorder/handshake-failures -> JSON list of failed TLS handshakes, oldest first:
           {time, client_ip, client_port, sni, error} (the last 1000)

    GET    /__recorder/connections        -> JSON list of TCP echo connections, oldest first; filters:
           ?path_contains=S                  S occurs in the connection's head (its first line)
           ?since=SEQ                        seq greater than SEQ
    DELETE /__recorder/connections        -> {"cleared": n}

How it answers, asked in the query string of any recorded request (the record is written first):

    egh-delay=SECONDS   answer after SECONDS (0 to 30, fractions allowed): a slow external host
    egh-status=CODE     answer with status CODE (200 to 599) instead of 200: a failing one

A malformed value is answered 400 (and recorded). A caller that gave up meanwhile (a proxy's
timeout) finds the connection answered into the void; the record stays.

Only the last `max_records` records are kept (default 10000). Request bodies are read and counted,
and their first 4 KiB are kept.

HTTPS: with a TLS port the recorder also serves HTTPS there, with the given certificate and key;
with a client CA it requires a client certificate signed by that CA (mutual TLS): a client without
one fails the handshake, and a failed handshake is no request, so it makes no record (it is listed
under /__recorder/handshake-failures instead). Every record has `tls`: null for plain HTTP, else

    {"sni": "external.egress-harness.test" (null if the client sent none), "version": "TLSv1.3",
     "cipher": "TLS_AES_256_GCM_SHA384", "client_cert_subject": "CN=...,O=..." (null if none)}

The control paths are served on the HTTP port only: on the TLS port every request is recorded.

TCP echo: with a TCP port the recorder also echoes plain TCP there (no HTTP): every chunk a client
sends is written back at once. The connection ends when the client closes (the recorder closes too),
after 60 s without data, or once 1 MiB was received (that much is echoed, then it closes). Each
connection is a record, made when it is accepted and updated as bytes flow:

    {"seq", "time" (accepted, epoch seconds), "closed" (epoch seconds; null while open),
     "client_ip", "client_port", "bytes_received", "bytes_sent",
     "head": the first line without its "\n" (at most 1024 bytes, UTF-8 with replacement); "" until
             a newline, 1024 bytes or the end of the connection came, then whatever came,
     "path", "target": the same as head (a token in the first line is found like one in a path),
     "tls": null}

Connection records share the sequence numbers of the HTTP records (one order across both, so a
`since` taken from either applies to both) and are bounded by `max_records` on their own.

As a process (same conventions as the relay; flags override variables):

    --bind BIND (default 0.0.0.0)   --port PORT (default 8080; 0 picks one)
    --max-records RECORDER_MAX_RECORDS (default 10000)
    --tls-port TLS_PORT (0 picks one) --cert TLS_CERT --key TLS_KEY [--client-ca TLS_CLIENT_CA]
    --tcp-port TCP_PORT (0 picks one; unset: no TCP echo)

The first stdout line is `listening on HOST:PORT`, followed with a TLS port by `listening tls on
HOST:PORT` and then with a TCP port by `listening tcp on HOST:PORT`; SIGTERM/SIGINT stop it cleanly
(open TCP connections are cut and their threads joined). A certificate or key that cannot be loaded ends it
with exit code 2 and a message naming the files, before any `listening` line. In a test:

    with Recorder(bind="127.0.0.1", port=0) as rec:
        ...  # send requests to rec.url
        rec.records(request_id="...")

    with Recorder(port=0, tls_port=0, cert=CRT, key=KEY, client_ca=CA) as rec:
        ...  # HTTPS to rec.tls_url; rec.handshake_failures()

    with Recorder(port=0, tcp_port=0) as rec:
        ...  # socket.create_connection(rec.tcp_address) (or rec.tcp_url for a relay); rec.connections()

Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypedDict

CONTROL_PREFIX = "/__recorder/"
#: query parameters that shape the answer (see the module docstring) and their bounds
DELAY_PARAM, STATUS_PARAM = "egh-delay", "egh-status"
MAX_DELAY_S = 30.0
DEFAULT_MAX_RECORDS = 10000
BODY_EXCERPT_BYTES = 4096
MAX_BODY_BYTES = 1 << 20
MAX_HANDSHAKE_FAILURES = 1000
HANDSHAKE_TIMEOUT_S = 10.0
#: the TCP echo: a connection ends after this long without data, or after this many bytes received
TCP_IDLE_TIMEOUT_S = 60.0
MAX_TCP_BYTES = 1 << 20
#: a connection's `head` is its first line, at most this many bytes of it
HEAD_BYTES = 1024
TCP_CHUNK_BYTES = 65536
_SNI_ATTRIBUTE = "_recorder_sni"
#: short names of subject attributes, as in RFC 4514 (others keep the name Python's ssl gives them)
_SUBJECT_KEYS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "userId": "UID",
}


class TlsInfo(TypedDict):
    sni: str | None  # the server name the client asked for (SNI)
    version: str | None  # e.g. TLSv1.3
    cipher: str | None  # e.g. TLS_AES_256_GCM_SHA384
    client_cert_subject: str | None  # "CN=...,O=..." of a verified client certificate


class HandshakeFailure(TypedDict):
    time: float
    client_ip: str
    client_port: int
    sni: str | None
    error: str


class Record(TypedDict):
    seq: int
    time: float  # wall clock, seconds since the epoch
    client_ip: str
    client_port: int
    method: str
    target: str  # the request target exactly as in the request line
    path: str  # path and query; for an absolute-form target, those of the absolute URI
    host: str | None  # the Host header
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]]  # as received, in order
    body_bytes: int
    body: str  # first BODY_EXCERPT_BYTES, decoded as UTF-8 with replacement
    tls: TlsInfo | None  # None for plain HTTP


class ConnectionRecord(TypedDict):
    """One connection to the TCP echo port; updated as bytes flow, ``closed`` set when it ends."""

    seq: int  # shared with the HTTP records: one order across both
    time: float  # when it was accepted, seconds since the epoch
    closed: float | None  # when it ended (None while open)
    client_ip: str
    client_port: int
    bytes_received: int
    bytes_sent: int
    head: str  # the first line without its "\n" (at most HEAD_BYTES); "" until it is complete
    path: str  # the same as head: a token in the first line is found like one in an HTTP path
    target: str  # the same as head
    tls: None


def request_path(target: str) -> str:
    """The path and query of a request target, which may be origin-form or absolute-form."""
    if target.startswith("/") or "://" not in target:
        return target
    parts = urllib.parse.urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def answer_shape(path: str) -> tuple[float, int]:
    """The delay (seconds) and status the query of ``path`` asks for: ``egh-delay``, ``egh-status``
    (default 0 and 200). ValueError naming the parameter for a malformed or out-of-range value."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    delay, status = 0.0, 200
    if DELAY_PARAM in query:
        text = query[DELAY_PARAM][-1]
        try:
            delay = float(text)
        except ValueError:
            raise ValueError(f"{DELAY_PARAM}={text!r}: not a number of seconds") from None
        if not 0.0 <= delay <= MAX_DELAY_S:
            raise ValueError(f"{DELAY_PARAM}={text!r}: must be 0 to {MAX_DELAY_S:g} seconds")
    if STATUS_PARAM in query:
        text = query[STATUS_PARAM][-1]
        if not text.isdigit() or not 200 <= int(text) <= 599:
            raise ValueError(f"{STATUS_PARAM}={text!r}: must be an HTTP status 200 to 599")
        status = int(text)
    return delay, status


def matches(record: Record, request_id: str | None, path_contains: str | None, since: int | None) -> bool:
    return (
        (request_id is None or record["headers"].get("x-request-id") == request_id)
        and (path_contains is None or path_contains in record["path"])
        and (since is None or record["seq"] > since)
    )


class Store:
    """The last `max_records` records, thread safe."""

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._lock = threading.Lock()
        self._records: deque[Record] = deque(maxlen=max_records)
        self._failures: deque[HandshakeFailure] = deque(maxlen=MAX_HANDSHAKE_FAILURES)
        self._connections: deque[ConnectionRecord] = deque(maxlen=max_records)
        self._seq = 0

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def add(self, record: Record) -> None:
        with self._lock:
            self._records.append(record)

    def select(
        self, *, request_id: str | None = None, path_contains: str | None = None, since: int | None = None
    ) -> list[Record]:
        with self._lock:
            records = list(self._records)
        return sorted(
            (r for r in records if matches(r, request_id, path_contains, since)), key=lambda r: r["seq"]
        )

    def clear(self) -> int:
        with self._lock:
            count = len(self._records)
            self._records.clear()
            return count

    def open_connection(self, client_ip: str, client_port: int) -> ConnectionRecord:
        """A new connection record (seq, accept time), kept; update it with :meth:`update_connection`."""
        with self._lock:
            self._seq += 1
            record = ConnectionRecord(
                seq=self._seq,
                time=time.time(),
                closed=None,
                client_ip=client_ip,
                client_port=client_port,
                bytes_received=0,
                bytes_sent=0,
                head="",
                path="",
                target="",
                tls=None,
            )
            self._connections.append(record)
            return record

    def update_connection(
        self,
        record: ConnectionRecord,
        *,
        received: int = 0,
        sent: int = 0,
        head: str | None = None,
        closed: float | None = None,
    ) -> None:
        """Count bytes, set the head (once) or the close time, under the lock readers take."""
        with self._lock:
            record["bytes_received"] += received
            record["bytes_sent"] += sent
            if head is not None:
                record["head"] = record["path"] = record["target"] = head
            if closed is not None:
                record["closed"] = closed

    def select_connections(
        self, *, path_contains: str | None = None, since: int | None = None
    ) -> list[ConnectionRecord]:
        """Copies of the connection records (``path_contains`` in the head, seq after ``since``)."""
        with self._lock:
            records = [ConnectionRecord(**r) for r in self._connections]
        return [
            r
            for r in records
            if (path_contains is None or path_contains in r["head"]) and (since is None or r["seq"] > since)
        ]

    def clear_connections(self) -> int:
        with self._lock:
            count = len(self._connections)
            self._connections.clear()
            return count

    def add_failure(self, failure: HandshakeFailure) -> None:
        with self._lock:
            self._failures.append(failure)

    def failures(self) -> list[HandshakeFailure]:
        with self._lock:
            return list(self._failures)


def subject_text(subject: Any) -> str:
    """``CN=name,O=org`` from the ``subject`` of :meth:`ssl.SSLSocket.getpeercert` (certificate order)."""
    return ",".join(f"{_SUBJECT_KEYS.get(key, key)}={value}" for rdn in subject for key, value in rdn)


def _remember_sni(sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
    setattr(sock, _SNI_ATTRIBUTE, server_name)


def make_tls_context(
    cert: str | os.PathLike[str], key: str | os.PathLike[str], client_ca: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A server context with ``cert``/``key``; with ``client_ca``, client certificates are required
    and verified against it. The SNI each client sends is kept on its socket."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    context.sni_callback = _remember_sni
    return context


def tls_info(conn: ssl.SSLSocket) -> TlsInfo:
    """What a finished handshake on ``conn`` agreed on, and the verified client certificate's subject."""
    cipher = conn.cipher()
    cert = conn.getpeercert()
    return TlsInfo(
        sni=getattr(conn, _SNI_ATTRIBUTE, None),
        version=conn.version(),
        cipher=cipher[0] if cipher else None,
        client_cert_subject=subject_text(cert["subject"]) if cert and "subject" in cert else None,
    )


class Server(ThreadingHTTPServer):
    """Threaded server that can also cut the keep-alive connections it holds open.

    With ``tls`` it serves HTTPS: each accepted connection is wrapped, and its handshake runs on the
    connection's own thread (a slow client does not hold up the others); a failed handshake is
    reported to ``handshake_failed`` and the connection closed.
    """

    def __init__(
        self,
        bind: str,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        *,
        tls: ssl.SSLContext | None = None,
        handshake_failed: Callable[[HandshakeFailure], None] | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.tls = tls
        self.handshake_failed = handshake_failed
        super().__init__((bind, port), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        try:
            return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address
        except BaseException:
            sock.close()
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(HANDSHAKE_TIMEOUT_S)
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError included; a timeout too
                if self.handshake_failed is not None:
                    self.handshake_failed(
                        HandshakeFailure(
                            time=time.time(),
                            client_ip=str(client_address[0]),
                            client_port=int(client_address[1]),
                            sni=getattr(request, _SNI_ATTRIBUTE, None),
                            error=str(exc) or type(exc).__name__,
                        )
                    )
                return
        super().finish_request(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        cut(connections)


def cut(connections: Sequence[socket.socket]) -> None:
    """Shut both directions of each connection (one the peer already closed is left as it is)."""
    for conn in connections:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


class TcpEchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The TCP echo port: every chunk a client sends is written back at once, and each connection is
    a :class:`ConnectionRecord` in ``store``. A connection ends when the client closes (EOF), after
    ``idle_timeout`` seconds without data, or once ``max_bytes`` were received (and echoed).

    Each connection has its own (non-daemon) thread; :meth:`server_close` cuts the open connections
    and joins those threads, so nothing outlives the server.
    """

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        store: Store,
        bind: str,
        port: int,
        *,
        log: bool = True,
        idle_timeout: float = TCP_IDLE_TIMEOUT_S,
        max_bytes: int = MAX_TCP_BYTES,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.store = store
        self.log = log
        self.idle_timeout = idle_timeout
        self.max_bytes = max_bytes
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.closing = False
        super().__init__((bind, port), _TcpEchoHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        # registered on the accepting thread: once serve_forever returned, every connection is known
        sock, address = super().get_request()
        with self.connections_lock:
            self.connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            self.closing = True
            connections = list(self.connections)
        cut(connections)

    def server_close(self) -> None:
        """Close the listening socket, cut the open connections and wait for their threads."""
        self.close_connections()
        super().server_close()


class _TcpEchoHandler(socketserver.BaseRequestHandler):
    server: TcpEchoServer

    def handle(self) -> None:
        server, store, conn = self.server, self.server.store, self.request
        record = store.open_connection(str(self.client_address[0]), int(self.client_address[1]))
        first = b""  # the data up to the first newline (or HEAD_BYTES), until the head is known
        head_known = False
        received = 0
        ending = "the client closed"
        conn.settimeout(server.idle_timeout)
        try:
            while received < server.max_bytes:
                chunk = conn.recv(min(TCP_CHUNK_BYTES, server.max_bytes - received))
                if not chunk:
                    ending = "the recorder stopped" if server.closing else ending
                    break
                received += len(chunk)
                head: str | None = None
                if not head_known:
                    first += chunk[: HEAD_BYTES - len(first)]
                    line, newline, _ = first.partition(b"\n")
                    if newline or len(first) >= HEAD_BYTES:
                        head_known = True
                        head = line.decode("utf-8", errors="replace")
                store.update_connection(record, received=len(chunk), head=head)
                conn.sendall(chunk)
                store.update_connection(record, sent=len(chunk))
            else:
                ending = f"{server.max_bytes} bytes received"
        except TimeoutError:
            ending = f"idle for {server.idle_timeout:g}s"
        except OSError as exc:  # reset by the client, or cut by the server's close
            ending = str(exc) or type(exc).__name__
        finally:
            if not head_known:
                store.update_connection(record, head=first[:HEAD_BYTES].decode("utf-8", errors="replace"))
            store.update_connection(record, closed=time.time())
        if server.log:
            sys.stderr.write(
                f"recorder tcp {record['client_ip']}:{record['client_port']} closed ({ending}): "
                f"received {record['bytes_received']}, sent {record['bytes_sent']}, head {record['head']!r}\n"
            )


def make_handler(store: Store, *, log: bool = True, control: bool = True) -> type[BaseHTTPRequestHandler]:
    """The request handler; ``control``: serve the /__recorder/ paths (else they are recorded too)."""

    class RecorderHandler(BaseHTTPRequestHandler):
        server_version = "recorder/1"
        disable_nagle_algorithm = True  # headers and body go out in two writes
        protocol_version = "HTTP/1.1"  # keep-alive, so a client's connection reuse is visible too
        timeout = 60  # an idle connection does not hold a thread forever
        server: Server

        def setup(self) -> None:
            super().setup()
            with self.server.connections_lock:
                self.server.connections.add(self.connection)

        def finish(self) -> None:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)
            super().finish()

        def _handle(self) -> None:
            if control and self.path.startswith(CONTROL_PREFIX):
                self._control()
                return
            seq = store.next_seq()
            body = self._read_body()
            raw = [(k, v) for k, v in self.headers.items()]
            headers: dict[str, str] = {}
            for key, value in raw:
                name = key.lower()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            record = Record(
                seq=seq,
                time=time.time(),
                client_ip=str(self.client_address[0]),
                client_port=int(self.client_address[1]),
                method=self.command,
                target=self.path,
                path=request_path(self.path),
                host=self.headers.get("Host"),
                version=self.request_version,
                headers=headers,
                raw_headers=raw,
                body_bytes=len(body),
                body=body[:BODY_EXCERPT_BYTES].decode("utf-8", errors="replace"),
                tls=tls_info(self.connection) if isinstance(self.connection, ssl.SSLSocket) else None,
            )
            store.add(record)
            if self.command == "CONNECT":
                self._json(405, {"recorded": seq, "error": "the recorder does not tunnel"}, close=True)
                return
            try:
                delay, status = answer_shape(record["path"])
            except ValueError as exc:
                self._json(400, {"recorded": seq, "error": str(exc)})
                return
            if delay:
                time.sleep(delay)  # the record is written: a slow host, as a caller's timeout meets it
            try:
                self._json(status, {"recorded": seq, "host": record["host"], "path": record["path"]})
            except OSError:
                self.close_connection = True  # the caller gave up while it waited (its timeout)

        def _control(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            self._read_body()
            query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
            listing = parts.path in (CONTROL_PREFIX + "requests", CONTROL_PREFIX + "connections")
            since = None
            if listing and self.command == "GET" and "since" in query:
                try:
                    since = int(query["since"])
                except ValueError:
                    self._json(400, {"error": "since must be an integer"})
                    return
            if parts.path == CONTROL_PREFIX + "healthz" and self.command in ("GET", "HEAD"):
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif parts.path == CONTROL_PREFIX + "requests" and self.command == "GET":
                found = store.select(
                    request_id=query.get("request_id"), path_contains=query.get("path_contains"), since=since
                )
                self._json(200, found)
            elif parts.path == CONTROL_PREFIX + "requests" and self.command == "DELETE":
                self._json(200, {"cleared": store.clear()})
            elif parts.path == CONTROL_PREFIX + "connections" and self.command == "GET":
                self._json(
                    200, store.select_connections(path_contains=query.get("path_contains"), since=since)
                )
            elif parts.path == CONTROL_PREFIX + "connections" and self.command == "DELETE":
                self._json(200, {"cleared": store.clear_connections()})
            elif parts.path == CONTROL_PREFIX + "handshake-failures" and self.command == "GET":
                self._json(200, store.failures())
            else:
                self._json(404, {"error": f"no control route {self.command} {parts.path}"})

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self.close_connection = True  # not decoded: end the connection instead of misreading it
                return b""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            if length <= 0:
                return b""
            body = self.rfile.read(min(length, MAX_BODY_BYTES))
            if length > MAX_BODY_BYTES:
                self.close_connection = True  # the rest is left unread
            return body

        def _json(self, status: int, payload: object, *, close: bool = False) -> None:
            self._send(status, json.dumps(payload).encode() + b"\n", "application/json", close=close)

        def _send(self, status: int, body: bytes, content_type: str, *, close: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_CONNECT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            if log:
                sys.stderr.write(f"recorder {self.address_string()} {format % args}\n")

    return RecorderHandler


def _failure_sink(store: Store, *, log: bool) -> Callable[[HandshakeFailure], None]:
    def failed(failure: HandshakeFailure) -> None:
        store.add_failure(failure)
        if log:
            sni = failure["sni"] or "-"
            sys.stderr.write(
                f"recorder {failure['client_ip']}:{failure['client_port']} tls handshake failed "
                f"(sni {sni}): {failure['error']}\n"
            )

    return failed


def make_servers(
    store: Store,
    bind: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    tls_port: int = 0,
    log: bool = True,
) -> tuple[Server, Server | None]:
    """The HTTP server and, with ``tls``, the HTTPS one, both bound (none left open on a failure)."""
    http_server = Server(bind, port, make_handler(store, log=log))
    if tls is None:
        return http_server, None
    try:
        tls_server = Server(
            bind,
            tls_port,
            make_handler(store, log=log, control=False),
            tls=tls,
            handshake_failed=_failure_sink(store, log=log),
        )
    except BaseException:
        http_server.server_close()
        raise
    return http_server, tls_server


def _hostport(server: socketserver.TCPServer) -> str:
    host, port = str(server.server_address[0]), int(server.server_address[1])
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def make_tcp_server(
    store: Store,
    bind: str,
    port: int | None,
    *,
    opened: Sequence[Server] = (),
    log: bool = True,
    idle_timeout: float = TCP_IDLE_TIMEOUT_S,
) -> TcpEchoServer | None:
    """The TCP echo server on ``port`` (None: no server); if it cannot bind, the ``opened`` servers
    are closed before the error goes on."""
    if port is None:
        return None
    try:
        return TcpEchoServer(store, bind, port, log=log, idle_timeout=idle_timeout)
    except BaseException:
        for server in opened:
            server.server_close()
        raise


class Recorder:
    """A recorder running in this process on background threads; a context manager.

    With ``tls_port`` (0 picks one) it also serves HTTPS with ``cert``/``key``; with ``client_ca``
    it requires client certificates signed by that CA.
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        quiet: bool = True,
        tls_port: int | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        client_ca: str | os.PathLike[str] | None = None,
        tcp_port: int | None = None,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT_S,
    ) -> None:
        tls: ssl.SSLContext | None = None
        if tls_port is not None:
            if cert is None or key is None:
                raise ValueError("a TLS port needs cert and key")
            tls = make_tls_context(cert, key, client_ca)
        elif cert is not None or key is not None or client_ca is not None:
            raise ValueError("cert, key and client_ca need a tls_port")
        self.store = Store(max_records)
        self._server, self._tls_server = make_servers(
            self.store, bind, port, tls=tls, tls_port=tls_port or 0, log=not quiet
        )
        self._tcp_server = make_tcp_server(
            self.store, bind, tcp_port, opened=self._servers(), log=not quiet, idle_timeout=tcp_idle_timeout
        )
        self._threads: list[threading.Thread] = []
        self.host = str(self._server.server_address[0])
        self.port = int(self._server.server_address[1])
        self.tls_port = int(self._tls_server.server_address[1]) if self._tls_server is not None else None
        self.tcp_port = int(self._tcp_server.server_address[1]) if self._tcp_server is not None else None
        self.mutual_tls = client_ca is not None

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        return f"http://{_hostport(self._server)}"

    @property
    def tls_url(self) -> str:
        """The HTTPS base URL, e.g. https://127.0.0.1:PORT; ValueError without a TLS port."""
        if self._tls_server is None:
            raise ValueError("this recorder has no TLS port")
        return f"https://{_hostport(self._tls_server)}"

    @property
    def tcp_address(self) -> tuple[str, int]:
        """(host, port) of the TCP echo port, for ``socket.create_connection``; ValueError without one."""
        if self._tcp_server is None:
            raise ValueError("this recorder has no TCP port")
        return str(self._tcp_server.server_address[0]), int(self._tcp_server.server_address[1])

    @property
    def tcp_url(self) -> str:
        """``tcp://HOST:PORT`` of the TCP echo port (as a relay's ``/proxy?url=`` takes it)."""
        host, port = self.tcp_address
        return f"tcp://{f'[{host}]' if ':' in host else host}:{port}"

    def _servers(self) -> list[Server]:
        return [s for s in (self._server, self._tls_server) if s is not None]

    def _all_servers(self) -> list[socketserver.BaseServer]:
        return [*self._servers(), *([self._tcp_server] if self._tcp_server is not None else [])]

    def start(self) -> Recorder:
        if not self._threads:
            for server in self._all_servers():
                thread = threading.Thread(
                    target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive and TCP connections and close the listening sockets
        (the TCP connections' threads are joined)."""
        if self._threads:
            for server in self._all_servers():
                server.shutdown()
            for thread in self._threads:
                thread.join()
            self._threads = []
        for server in self._servers():
            server.server_close()
            server.close_connections()
        if self._tcp_server is not None:
            self._tcp_server.server_close()

    def handshake_failures(self) -> list[HandshakeFailure]:
        """The TLS handshakes that failed, oldest first."""
        return self.store.failures()

    def records(
        self, *, request_id: str | None = None, path_contains: str | None = None, since: int | None = None
    ) -> list[Record]:
        return self.store.select(request_id=request_id, path_contains=path_contains, since=since)

    def clear(self) -> int:
        return self.store.clear()

    def connections(
        self, *, path_contains: str | None = None, since: int | None = None
    ) -> list[ConnectionRecord]:
        """The TCP echo port's connections, oldest first (copies: poll again to see them change)."""
        return self.store.select_connections(path_contains=path_contains, since=since)

    def clear_connections(self) -> int:
        return self.store.clear_connections()

    def wait_for(
        self,
        predicate: Callable[[Record], bool] = lambda _r: True,
        *,
        count: int = 1,
        timeout: float = 5.0,
        interval: float = 0.02,
    ) -> list[Record]:
        """Poll until at least `count` records satisfy `predicate`; TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if predicate(r)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(found)} of {count} matching records after {timeout:g}s at {self.url}"
                )
            time.sleep(interval)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Record every HTTP request; see /__recorder/requests.")
    parser.add_argument("--bind", default=env.get("BIND", "0.0.0.0"), help="env BIND")
    parser.add_argument("--port", type=int, default=env.get("PORT", "8080"), help="env PORT; 0: any")
    parser.add_argument(
        "--max-records", type=int, default=env.get("RECORDER_MAX_RECORDS", str(DEFAULT_MAX_RECORDS))
    )
    parser.add_argument(
        "--tls-port", type=int, default=env.get("TLS_PORT"), help="env TLS_PORT; also serve HTTPS here"
    )
    parser.add_argument("--cert", default=env.get("TLS_CERT"), help="env TLS_CERT; PEM certificate (chain)")
    parser.add_argument("--key", default=env.get("TLS_KEY"), help="env TLS_KEY; PEM private key")
    parser.add_argument(
        "--client-ca",
        default=env.get("TLS_CLIENT_CA"),
        help="env TLS_CLIENT_CA; PEM CA(s): require client certificates they signed (mutual TLS)",
    )
    parser.add_argument(
        "--tcp-port",
        type=int,
        default=env.get("TCP_PORT"),
        help="env TCP_PORT; also serve a TCP echo here (0: any), see /__recorder/connections",
    )
    args = parser.parse_args(argv)
    if args.tls_port is not None and (not args.cert or not args.key):
        parser.error("--tls-port needs --cert and --key")
    if args.tls_port is None and (args.cert or args.key or args.client_ca):
        parser.error("--cert, --key and --client-ca need --tls-port")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tls: ssl.SSLContext | None = None
    if args.tls_port is not None:
        try:
            tls = make_tls_context(args.cert, args.key, args.client_ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            files = f"--cert {args.cert} --key {args.key}" + (
                f" --client-ca {args.client_ca}" if args.client_ca else ""
            )
            sys.stderr.write(f"recorder: cannot load the TLS files ({files}): {exc}\n")
            return 2
    store = Store(args.max_records)
    server, tls_server = make_servers(store, args.bind, args.port, tls=tls, tls_port=args.tls_port or 0)
    servers = [s for s in (server, tls_server) if s is not None]
    tcp_server = make_tcp_server(store, args.bind, args.tcp_port, opened=servers)
    others: list[socketserver.BaseServer] = [s for s in (tls_server, tcp_server) if s is not None]

    def stop(signum: int, _frame: object) -> None:
        sys.stderr.write(f"recorder {signal.Signals(signum).name}: shutting down\n")
        for s in [server, *others]:
            threading.Thread(target=s.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {_hostport(server)}", flush=True)
    if tls_server is not None:
        print(f"listening tls on {_hostport(tls_server)}", flush=True)
        if args.client_ca:
            sys.stderr.write(f"recorder: tls requires client certificates signed by {args.client_ca}\n")
    if tcp_server is not None:
        print(f"listening tcp on {_hostport(tcp_server)}", flush=True)
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in others
    ]
    for thread in threads:
        thread.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        for s in others:
            s.shutdown()
        for thread in threads:
            thread.join()
        for s in servers:
            s.server_close()
            s.close_connections()
        if tcp_server is not None:
            tcp_server.server_close()  # cuts its open connections and joins their threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
