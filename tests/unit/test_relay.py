"""The relay app as processes on loopback: chains, header propagation, failures, proxies, timeouts."""

from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import relay
from recorder import Recorder

from harness.common.traffic import ChainResponse, Traffic, chain_url

RELAY_PY = Path(relay.__file__).resolve()

TRACE_HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
    "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid": "e457b5a2e4d86bd1",
    "x-b3-parentspanid": "05e3ac9a4f6e3b90",
    "x-b3-sampled": "1",
    "x-b3-flags": "0",
}
NOT_PROPAGATED = {"x-secret": "nope", "authorization": "Bearer nope", "cookie": "session=nope"}


START_DEADLINE = 10.0
STOP_DEADLINE = 5.0
# Configuration a developer's shell may carry that must not leak into the apps under test.
_APP_ENV = (
    "SERVICE_NAME",
    "PORT",
    "BIND",
    "UPSTREAM_TIMEOUT",
    "RECORDER_MAX_RECORDS",
    "REQUEST_METHOD",
    "ALLOWED_UPSTREAMS",
    "ALLOWED_ADDRESSES",
    "REQUIRED_TOKEN",
)
#: what these tests' relays may fetch unless a test says otherwise: every port of 127.0.0.1 (where the
#: recorders and the other relays listen, on ports picked at start), explicitly allowed as loopback
LOOPBACK_ALLOWED = {
    "ALLOWED_UPSTREAMS": "127.0.0.1:*,external.example:80",
    "ALLOWED_ADDRESSES": "127.0.0.0/8",
}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy settings and app configuration, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k not in _APP_ENV}
    env.update(extra or {})
    return env


@dataclass
class AppProcess:
    """A relay process started with `--port 0`: the process, its bound port and its stderr log."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_url(self) -> str:
        """The relay's /proxy endpoint (a hop for harness.common.traffic.chain_url)."""
        return f"{self.url}/proxy"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_DEADLINE; the exit code of the SIGTERM attempt (or -9)."""
        code = self.proc.poll()
        if code is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_DEADLINE)
                code = -9
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def _first_line(stream: IO[str], deadline: float) -> str:
    """The first line of `stream`, read on a helper thread so that waiting has a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        try:
            for line in stream:  # keeps draining so the child never blocks on a full pipe
                lines.put(line)
        except (OSError, ValueError):  # closed by AppProcess.stop
            pass

    threading.Thread(target=pump, daemon=True).start()
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return ""


def start_relay(name: str, args: list[str], env: Mapping[str, str], log: Path) -> AppProcess:
    """`relay.py --port 0 --bind 127.0.0.1 --name NAME ARGS`; waits for its `listening on` line."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(RELAY_PY), "--port", "0", "--bind", "127.0.0.1", "--name", name, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=clean_env({**LOOPBACK_ALLOWED, **env}),
        )
    assert proc.stdout is not None
    line = _first_line(proc.stdout, time.monotonic() + START_DEADLINE)
    app = AppProcess(name=name, proc=proc, port=0, log=log)
    prefix = "listening on 127.0.0.1:"
    if not line.startswith(prefix):
        code = app.stop()
        pytest.fail(f"{name} did not start (exit {code}, first line {line!r}); stderr:\n{app.stderr()}")
    app.port = int(line[len(prefix) :].strip())
    return app


class RelayPool:
    """Starts relay processes; `stop_all` stops them together and asserts that none is left running."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[AppProcess] = []

    def __call__(
        self, name: str, *, env: Mapping[str, str] | None = None, upstream_timeout: float | None = None
    ) -> AppProcess:
        args = [] if upstream_timeout is None else ["--upstream-timeout", str(upstream_timeout)]
        app = start_relay(name, args, env or {}, self.logs / f"relay-{name}-{len(self.started)}.log")
        self.started.append(app)
        return app

    def stop_all(self) -> None:
        for app in self.started:  # SIGTERM to all first, so they shut down in parallel
            if app.proc.poll() is None:
                app.proc.terminate()
        for app in self.started:
            app.stop()
        assert [app.name for app in self.started if app.proc.poll() is None] == []


@pytest.fixture
def relay_app(tmp_path: Path) -> Iterator[RelayPool]:
    """Start relay processes for one test: `relay_app("proxy", env={...}, upstream_timeout=1.0)`."""
    pool = RelayPool(tmp_path)
    yield pool
    pool.stop_all()


@dataclass
class Chain:
    proxy: AppProcess
    target: AppProcess


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Relays named `proxy` and `target` with default settings, shared by the tests of this module
    that only send requests through them."""
    pool = RelayPool(tmp_path_factory.mktemp("relays"))
    try:
        yield Chain(proxy=pool("proxy"), target=pool("target"))
    finally:
        pool.stop_all()


@pytest.fixture
def traffic() -> Iterator[Traffic]:
    with Traffic(timeout=10.0) as client:
        yield client


@pytest.fixture
def proxy_recorder() -> Iterator[Recorder]:
    """A second recorder playing a forward HTTP proxy (it records absolute-form request targets)."""
    with Recorder(bind="127.0.0.1", port=0) as rec:
        yield rec


def test_healthz_and_unknown_path(chain: Chain, traffic: Traffic) -> None:
    health = traffic.client.get(f"{chain.proxy.url}/healthz")
    assert (health.status_code, health.text.strip()) == (200, "ok")
    missing = traffic.send(f"{chain.proxy.url}/nope")
    assert missing.status == 404
    assert missing.json["service"] == "proxy"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("", "exactly one url"),
        ("?url=a&url=b", "exactly one url"),
        ("?url=file%3A%2F%2F%2Fetc%2Fpasswd", "http"),
        ("?url=http%3A%2F%2F%2Fno-host", "no host"),
        ("?url=http%3A%2F%2Fhost%3Aport%2F", "invalid url"),
    ],
)
def test_bad_url_parameter_is_400(chain: Chain, traffic: Traffic, query: str, error: str) -> None:
    response = traffic.send(f"{chain.proxy.proxy_url}{query}")
    assert response.status == 400
    assert error in (response.error or ""), response.json


def test_chain_reaches_the_external_host_with_hops_headers_and_path_intact(
    chain: Chain, recorder_app: Recorder, traffic: Traffic
) -> None:
    path = "/ext/a%20b/c%2Fd?q=x%26y%3Dz&sp=a+b&u=%E2%9C%93&pct=100%25&hash=%23f&empty="
    url = chain_url([chain.proxy.proxy_url, chain.target.proxy_url], recorder_app.url + path)

    response = traffic.send(url, headers={**TRACE_HEADERS, **NOT_PROPAGATED})

    assert response.status == 200, response.text
    assert response.services == ["proxy", "target"]
    assert [h.status for h in response.hops] == [200, 200]
    assert response.hops[0].url == chain_url([chain.target.proxy_url], recorder_app.url + path)
    assert response.hops[1].url == recorder_app.url + path
    assert response.json["request_id"] == response.request_id
    assert response.hops[1].body is not None
    assert '"recorded"' in response.hops[1].body
    assert "failed_hop" not in response.json

    [seen] = recorder_app.records(request_id=response.request_id)
    assert seen["path"] == path
    assert seen["target"] == path
    assert seen["host"] == f"127.0.0.1:{recorder_app.port}"
    for name, value in TRACE_HEADERS.items():
        assert seen["headers"].get(name) == value, name
    for name in NOT_PROPAGATED:
        assert name not in seen["headers"]
    assert len(recorder_app.records()) == 1


def test_raw_spaces_and_unicode_are_percent_encoded_once(
    chain: Chain, recorder_app: Recorder, traffic: Traffic
) -> None:
    url = chain_url([chain.proxy.proxy_url], f"{recorder_app.url}/raw path/é?q=a b&k=%41")
    response = traffic.send(url)
    assert response.status == 200, response.text
    [seen] = recorder_app.records(request_id=response.request_id)
    assert seen["path"] == "/raw%20path/%C3%A9?q=a%20b&k=%41"


def test_upstream_status_propagates(chain: Chain, traffic: Traffic) -> None:
    response = traffic.send(chain_url([chain.proxy.proxy_url], f"{chain.target.url}/nowhere"))
    assert response.status == 404
    assert response.services == ["proxy"]
    assert response.hops[0].status == 404
    assert response.hops[0].body is not None
    assert "no route" in response.hops[0].body


def test_failing_middle_hop_is_named_through_the_chain(
    chain: Chain, traffic: Traffic, refused_port: int
) -> None:
    hops = [chain.proxy.proxy_url, chain.target.proxy_url]
    response = traffic.send(chain_url(hops, f"http://127.0.0.1:{refused_port}/x"))

    assert response.status == 502, response.text
    assert response.failed_hop == "target"
    assert response.services == ["proxy", "target"]
    assert [h.status for h in response.hops] == [502, None]
    assert response.hops[1].error == "connection refused"
    assert response.error == "connection refused"
    assert response.json["service"] == "proxy"


def test_failing_first_hop_names_itself(chain: Chain, traffic: Traffic, refused_port: int) -> None:
    response = traffic.send(chain_url([chain.proxy.proxy_url], f"http://127.0.0.1:{refused_port}/x"))
    assert response.status == 502
    assert response.failed_hop == "proxy"
    assert response.services == ["proxy"]
    assert response.hops[0].error == "connection refused"


def test_upstream_that_never_answers_is_502_within_the_timeout(
    relay_app: RelayPool, traffic: Traffic, silent_port: int
) -> None:
    proxy = relay_app("proxy", env={"UPSTREAM_TIMEOUT": "1"})
    started = time.monotonic()
    response = traffic.send(chain_url([proxy.proxy_url], f"http://127.0.0.1:{silent_port}/hang"))
    took = time.monotonic() - started
    assert response.status == 502, response.text
    assert response.failed_hop == "proxy"
    assert response.error is not None
    assert "timeout" in response.error
    assert 0.9 <= took < 3.0


def _via(response: ChainResponse, direct: Recorder, proxy: Recorder) -> str:
    """Which recorder saw the request: "direct", "proxy", or a description of anything else."""
    at_direct = direct.records(request_id=response.request_id)
    at_proxy = proxy.records(request_id=response.request_id)
    if len(at_direct) == 1 and not at_proxy:
        return "direct"
    if len(at_proxy) == 1 and not at_direct:
        return "proxy"
    return f"direct={len(at_direct)} proxy={len(at_proxy)} ({response.status} {response.text[:200]})"


def test_http_proxy_carries_upstream_calls_even_to_loopback(
    relay_app: RelayPool, recorder_app: Recorder, proxy_recorder: Recorder, traffic: Traffic
) -> None:
    proxy = relay_app("proxy", env={"HTTP_PROXY": proxy_recorder.url})

    external = traffic.send(chain_url([proxy.proxy_url], "http://external.example/egress?x=%2F1"))
    assert external.status == 200, external.text
    [seen] = proxy_recorder.records(request_id=external.request_id)
    assert seen["target"] == "http://external.example/egress?x=%2F1"
    assert seen["host"] == "external.example"
    assert seen["path"] == "/egress?x=%2F1"

    loopback = traffic.send(chain_url([proxy.proxy_url], f"{recorder_app.url}/local"))
    assert _via(loopback, recorder_app, proxy_recorder) == "proxy"
    [seen] = proxy_recorder.records(request_id=loopback.request_id)
    assert seen["target"] == f"{recorder_app.url}/local"


@pytest.mark.parametrize(
    "variables",
    [
        ("HTTP_PROXY", "NO_PROXY", "127.0.0.1"),
        ("http_proxy", "no_proxy", "127.0.0.0/8"),
        ("HTTP_PROXY", "NO_PROXY", " localhost , 127.0.0.1:{port} "),
    ],
)
def test_no_proxy_sends_matching_hosts_direct(
    relay_app: RelayPool,
    recorder_app: Recorder,
    proxy_recorder: Recorder,
    traffic: Traffic,
    variables: tuple[str, str, str],
) -> None:
    proxy_var, no_proxy_var, no_proxy = variables
    env = {proxy_var: proxy_recorder.url, no_proxy_var: no_proxy.format(port=recorder_app.port)}
    proxy = relay_app("proxy", env=env)

    local = traffic.send(chain_url([proxy.proxy_url], f"{recorder_app.url}/direct"))
    assert local.status == 200, local.text
    assert _via(local, recorder_app, proxy_recorder) == "direct"

    external = traffic.send(chain_url([proxy.proxy_url], "http://external.example/still-proxied"))
    assert external.status == 200, external.text
    assert _via(external, recorder_app, proxy_recorder) == "proxy"


def test_sigterm_stops_the_relay_cleanly(relay_app: RelayPool) -> None:
    app = relay_app("proxy")
    assert app.proc.poll() is None
    assert app.stop() == 0
    assert "SIGTERM" in app.stderr()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", app.port), timeout=1):
        pass


def test_one_log_line_per_request(relay_app: RelayPool, traffic: Traffic) -> None:
    app = relay_app("target")
    response = traffic.send(f"{app.url}/healthz", request_id="rid-log-1")
    assert response.status == 200
    app.stop()
    lines = [line for line in app.stderr().splitlines() if "rid-log-1" in line]
    assert len(lines) == 1
    assert lines[0].startswith("relay[target] 127.0.0.1")
    assert '"GET /healthz HTTP/1.1" 200' in lines[0]


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("127.0.0.1", 80, "127.0.0.1", True),
        ("127.0.0.1", 80, "127.0.0.0/8", True),
        ("127.0.0.2", 80, "127.0.0.1", False),
        ("10.1.2.3", 80, "127.0.0.0/8,10.0.0.0/8", True),
        ("::1", 80, "::1", True),
        ("::1", 8080, "[::1]:8080", True),
        ("::1", 8081, "[::1]:8080", False),
        ("api.example.com", 443, "example.com", True),
        ("api.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("example.com", 8080, "example.com:8080", True),
        ("example.com", 9090, "example.com:8080", False),
        ("EXAMPLE.com", None, "example.COM", True),
        ("anything", None, "*", True),
        ("anything", None, "", False),
        ("anything", None, "not/a/cidr, ,", False),
        ("localhost", 80, "127.0.0.1", False),
    ],
)
def test_proxy_bypassed(host: str, port: int | None, no_proxy: str, bypassed: bool) -> None:
    assert relay.proxy_bypassed(host, port, no_proxy) is bypassed


def test_describe_error_names_the_cause() -> None:
    assert relay.describe_error(socket.gaierror(-2, "Name or service not known"), 1) == (
        "dns failure: Name or service not known"
    )
    assert relay.describe_error(TimeoutError(), 2.5) == "timeout: no answer within 2.5s"
    assert relay.describe_error(ValueError("unknown url type"), 1) == "invalid url: unknown url type"


# --- tcp:// upstreams: the relay's echo exchange, against an echo server in this process -------------

ECHO_DEADLINE = 10.0


@dataclass
class EchoConnection:
    """What the test echo server saw of one connection: the caller's address and every byte it sent."""

    peer: str
    data: bytearray
    closed: threading.Event


class EchoServer:
    """A TCP echo server on 127.0.0.1 (port 0) that can misbehave. Modes:

    - "echo": writes every chunk back as it arrives (what the recorder does);
    - "close": reads the whole payload, then closes without writing;
    - "short": reads the whole payload, writes it back without its last 5 bytes, closes;
    - "alter": reads the whole payload, writes it back with byte 1 changed, waits for the caller's EOF;
    - "silent": reads the whole payload, never writes, waits for the caller's EOF;
    - "reset": reads the whole payload, then resets the connection (SO_LINGER 0).

    "The whole payload" is as long as the first line's egh-bytes says, else the first line itself.
    """

    def __init__(self, mode: str = "echo", host: str = "127.0.0.1") -> None:
        self.mode = mode
        self.host = host
        self.connections: list[EchoConnection] = []
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"tcp://{self.address}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            shown = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            record = EchoConnection(f"{shown}:{peer[1]}", bytearray(), threading.Event())
            self.connections.append(record)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    @staticmethod
    def _expected(data: bytes) -> int | None:
        line, newline, _ = bytes(data).partition(b"\n")
        if not newline:
            return None
        query = line.partition(b"?")[2].decode()
        sizes = [v for k, _, v in (f.partition("=") for f in query.split("&")) if k == "egh-bytes"]
        return int(sizes[0]) if sizes else len(line) + 1

    def _serve(self, conn: socket.socket, record: EchoConnection) -> None:
        conn.settimeout(ECHO_DEADLINE)
        try:
            with conn:
                expected: int | None = None
                while expected is None or len(record.data) < expected:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    record.data += chunk
                    if self.mode == "echo":
                        conn.sendall(chunk)
                    expected = self._expected(record.data)
                if self.mode == "short":
                    conn.sendall(bytes(record.data[:-5]))
                elif self.mode == "alter":
                    altered = bytearray(record.data)
                    altered[1] ^= 0x20
                    conn.sendall(bytes(altered))
                elif self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if self.mode in ("echo", "alter", "silent"):  # until the caller closes
                    while chunk := conn.recv(65536):
                        record.data += chunk
        except OSError:
            pass
        finally:
            record.closed.set()

    def only_connection(self) -> EchoConnection:
        """The one connection the server had, once the caller closed it (waited for with a deadline)."""
        deadline = time.monotonic() + ECHO_DEADLINE
        while not self.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.connections) == 1, [c.peer for c in self.connections]
        assert self.connections[0].closed.wait(max(0.0, deadline - time.monotonic())), "never closed"
        return self.connections[0]

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for thread in self._threads:
            thread.join(ECHO_DEADLINE)
        assert [t.name for t in self._threads if t.is_alive()] == []


@pytest.fixture
def echo_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    """An EchoServer; `@pytest.mark.parametrize("echo_server", ["short"], indirect=True)` picks its mode."""
    with EchoServer(getattr(request, "param", "echo")) as server:
        yield server


def test_tcp_payload_is_the_line_padded_to_egh_bytes_and_comes_back_with_the_tcp_block(
    chain: Chain, echo_server: EchoServer, traffic: Traffic
) -> None:
    path = "/scenario/tcp?egh-token=t0k&egh-bytes=300"
    url = chain_url([chain.target.proxy_url], echo_server.url(path))

    response = traffic.send(url)

    assert response.status == 200, response.text
    seen = echo_server.only_connection()
    line = f"{path}\n".encode()
    assert bytes(seen.data) == line + b"." * (300 - len(line))
    tcp = response.json["tcp"]
    assert tcp == {"sent": 300, "received": 300, "local": seen.peer, "peer": echo_server.address}
    assert response.services == ["target"]
    assert response.hops[0].status == 200
    assert response.hops[0].url == echo_server.url(path)
    assert "failed_hop" not in response.json


def test_tcp_payload_without_egh_bytes_is_the_line_alone(
    chain: Chain, echo_server: EchoServer, traffic: Traffic
) -> None:
    response = traffic.send(chain_url([chain.target.proxy_url], echo_server.url("/p/a%20b?egh-token=x&k=")))
    assert response.status == 200, response.text
    assert bytes(echo_server.only_connection().data) == b"/p/a%20b?egh-token=x&k=\n"
    assert (response.json["tcp"]["sent"], response.json["tcp"]["received"]) == (24, 24)


def test_the_largest_payload_comes_back_whole(
    chain: Chain, echo_server: EchoServer, traffic: Traffic
) -> None:
    response = traffic.send(chain_url([chain.target.proxy_url], echo_server.url("/big?egh-bytes=1048576")))
    assert response.status == 200, response.text
    assert response.json["tcp"]["received"] == 1048576
    assert len(echo_server.only_connection().data) == 1048576


def test_the_echo_is_read_while_the_payload_is_still_being_sent(echo_server: EchoServer) -> None:
    """With small socket buffers a relay that sent everything before reading would wait for ever: the
    echo server writes back what it got and stops reading while that write waits for the relay."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # inherited by the connection it accepts
        echo_server.sock.setsockopt(socket.SOL_SOCKET, option, 4096)
    payload = relay.tcp_payload(echo_server.url("/both-ways?egh-bytes=1048576"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", echo_server.port))
        progress = relay._EchoProgress(payload)
        relay._pump(sock, payload, time.monotonic() + ECHO_DEADLINE, progress)
    assert (progress.sent, len(progress.received)) == (len(payload), len(payload))
    assert bytes(progress.received) == payload


@pytest.mark.parametrize(
    ("echo_server", "error"),
    [
        ("close", "the upstream echoed 0 of 19 bytes"),
        ("short", "the upstream echoed 14 of 19 bytes"),
        ("alter", "the upstream echoed 19 bytes but they differ from what was sent (from byte 1)"),
        ("reset", "connection error: ConnectionResetError"),
    ],
    indirect=["echo_server"],
)
def test_a_short_or_different_echo_is_502_naming_the_hop_with_the_tcp_block(
    chain: Chain, echo_server: EchoServer, traffic: Traffic, error: str
) -> None:
    response = traffic.send(chain_url([chain.target.proxy_url], echo_server.url("/short?egh-token=t")))
    assert response.status == 502, response.text
    assert response.failed_hop == "target"
    assert error in (response.error or ""), response.json
    assert response.hops[0].error == response.error
    seen = echo_server.only_connection()
    assert response.json["tcp"]["local"] == seen.peer
    assert response.json["tcp"]["sent"] == 19


@pytest.mark.parametrize("echo_server", ["silent"], indirect=True)
def test_an_upstream_that_never_echoes_is_502_timeout_with_the_tcp_block(
    relay_app: RelayPool, echo_server: EchoServer, traffic: Traffic
) -> None:
    target = relay_app("target", upstream_timeout=1.0)
    response = traffic.send(chain_url([target.proxy_url], echo_server.url("/silent")))
    assert response.status == 502, response.text
    assert response.failed_hop == "target"
    assert "timeout" in (response.error or "") and "echoed 0 of 8 bytes" in (response.error or "")
    assert response.json["tcp"]["received"] == 0
    assert response.json["tcp"]["local"] == echo_server.only_connection().peer


def test_a_refused_tcp_connection_is_502_without_a_tcp_block(
    chain: Chain, traffic: Traffic, refused_port: int
) -> None:
    response = traffic.send(chain_url([chain.target.proxy_url], f"tcp://127.0.0.1:{refused_port}/x"))
    assert response.status == 502, response.text
    assert (response.failed_hop, response.error) == ("target", "connection refused")
    assert "tcp" not in response.json


def test_a_tcp_echo_through_the_chain_keeps_the_deepest_hops_tcp_block(
    chain: Chain, echo_server: EchoServer, traffic: Traffic
) -> None:
    url = chain_url([chain.proxy.proxy_url, chain.target.proxy_url], echo_server.url("/deep?egh-bytes=64"))
    response = traffic.send(url)
    assert response.status == 200, response.text
    assert response.services == ["proxy", "target"]
    assert response.json["service"] == "proxy"
    tcp = response.json["tcp"]
    assert tcp == {
        "sent": 64,
        "received": 64,
        "local": echo_server.only_connection().peer,
        "peer": echo_server.address,
    }


@pytest.mark.parametrize("echo_server", ["short"], indirect=True)
def test_a_short_echo_deep_in_the_chain_names_the_target_and_keeps_its_tcp_block(
    chain: Chain, echo_server: EchoServer, traffic: Traffic
) -> None:
    url = chain_url([chain.proxy.proxy_url, chain.target.proxy_url], echo_server.url("/deep"))
    response = traffic.send(url)
    assert response.status == 502, response.text
    assert response.failed_hop == "target"
    assert "echoed 1 of 6 bytes" in (response.error or "")
    assert response.json["tcp"]["local"] == echo_server.only_connection().peer


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("tcp://127.0.0.1/x", "a tcp url needs a port"),
        ("tcp://127.0.0.1:0/x", "a tcp url needs a port"),
        ("tcp://127.0.0.1:9/x?egh-bytes=0", "egh-bytes='0' is not a number of bytes from 1 to 1048576"),
        ("tcp://127.0.0.1:9/x?egh-bytes=1048577", "from 1 to 1048576"),
        ("tcp://127.0.0.1:9/x?egh-bytes=12k", "egh-bytes='12k'"),
        ("tcp://127.0.0.1:9/x?egh-bytes=-5", "egh-bytes='-5'"),
        ("tcp://127.0.0.1:9/x?egh-bytes=4&egh-bytes=4", "egh-bytes is given 2 times"),
        (
            "tcp://127.0.0.1:9/abc?egh-bytes=16",
            "egh-bytes=16 is smaller than the payload's first line (18 bytes)",
        ),
    ],
)
def test_a_bad_tcp_url_is_400_saying_why(chain: Chain, traffic: Traffic, target: str, error: str) -> None:
    response = traffic.send(chain_url([chain.target.proxy_url], target))
    assert response.status == 400, response.text
    assert error in (response.error or "")
    assert response.json["url"] == target


def test_tcp_payload_pads_to_exactly_egh_bytes() -> None:
    assert relay.tcp_payload("tcp://h:1/a?egh-bytes=20") == b"/a?egh-bytes=20\n...."
    assert relay.tcp_payload("tcp://h:1/a?egh-bytes=16") == b"/a?egh-bytes=16\n"
    assert relay.tcp_payload("tcp://h:1/a") == b"/a\n"


def test_an_ipv6_exchange_names_both_ends_in_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with EchoServer(host="::1") as echo:
        upstream = relay.Upstream(ECHO_DEADLINE, relay.Policy(f"[::1]:{echo.port}", "::1/128"))
        payload = relay.tcp_payload(echo.url("/v6?egh-bytes=100"))
        result = upstream.echo(echo.url("/v6?egh-bytes=100"), payload)
        assert result.problem() is None
        assert result.block() == {
            "sent": 100,
            "received": 100,
            "local": echo.only_connection().peer,
            "peer": f"[::1]:{echo.port}",
        }
        assert result.block()["local"].startswith("[::1]:")
