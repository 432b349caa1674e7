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

Only the last `max_records` records are kept (default 10000). Request bodies are read and counted,
and their first 4 KiB are kept.

As a process (same conventions as the relay; flags override variables):

    --bind BIND (default 0.0.0.0)   --port PORT (default 8080; 0 picks one)
    --max-records RECORDER_MAX_RECORDS (default 10000)

The first stdout line is `listening on HOST:PORT`; SIGTERM/SIGINT stop it cleanly. In a test:

    with Recorder(bind="127.0.0.1", port=0) as rec:
        ...  # send requests to rec.url
        rec.records(request_id="...")

Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
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
DEFAULT_MAX_RECORDS = 10000
BODY_EXCERPT_BYTES = 4096
MAX_BODY_BYTES = 1 << 20


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


def request_path(target: str) -> str:
    """The path and query of a request target, which may be origin-form or absolute-form."""
    if target.startswith("/") or "://" not in target:
        return target
    parts = urllib.parse.urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


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


class Server(ThreadingHTTPServer):
    """Threaded server that can also cut the keep-alive connections it holds open."""

    def __init__(self, bind: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((bind, port), handler)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)


def make_handler(store: Store, *, log: bool = True) -> type[BaseHTTPRequestHandler]:
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
            if self.path.startswith(CONTROL_PREFIX):
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
            )
            store.add(record)
            if self.command == "CONNECT":
                self._json(405, {"recorded": seq, "error": "the recorder does not tunnel"}, close=True)
                return
            self._json(200, {"recorded": seq, "host": record["host"], "path": record["path"]})

        def _control(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            self._read_body()
            if parts.path == CONTROL_PREFIX + "healthz" and self.command in ("GET", "HEAD"):
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif parts.path == CONTROL_PREFIX + "requests" and self.command == "GET":
                query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
                try:
                    since = int(query["since"]) if "since" in query else None
                except ValueError:
                    self._json(400, {"error": "since must be an integer"})
                    return
                found = store.select(
                    request_id=query.get("request_id"), path_contains=query.get("path_contains"), since=since
                )
                self._json(200, found)
            elif parts.path == CONTROL_PREFIX + "requests" and self.command == "DELETE":
                self._json(200, {"cleared": store.clear()})
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


class Recorder:
    """A recorder running in this process on a background thread; a context manager."""

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        quiet: bool = True,
    ) -> None:
        self.store = Store(max_records)
        self._server = Server(bind, port, make_handler(self.store, log=not quiet))
        self._thread: threading.Thread | None = None
        self.host = str(self._server.server_address[0])
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Recorder:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections and close the listening socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.close_connections()

    def records(
        self, *, request_id: str | None = None, path_contains: str | None = None, since: int | None = None
    ) -> list[Record]:
        return self.store.select(request_id=request_id, path_contains=path_contains, since=since)

    def clear(self) -> int:
        return self.store.clear()

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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server(args.bind, args.port, make_handler(Store(args.max_records)))
    host, port = str(server.server_address[0]), int(server.server_address[1])

    def stop(signum: int, _frame: object) -> None:
        sys.stderr.write(f"recorder {signal.Signals(signum).name}: shutting down\n")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {f'[{host}]' if ':' in host else host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.close_connections()
    return 0


if __name__ == "__main__":
    sys.exit(main())
