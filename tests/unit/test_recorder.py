"""The recorder: what it records, its control endpoints, its bound on memory, and its process mode."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import recorder
from recorder import Recorder

from harness.common.certs import TestPKI, generate_pki, openssl_unavailable_reason
from harness.common.traffic import Traffic, chain_url
from tests.unit.test_relay import RelayPool


def _get(rec: Recorder, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, int]:
    """GET over a fresh connection: (status, body, the client's own port)."""
    conn = http.client.HTTPConnection(rec.host, rec.port, timeout=5)
    try:
        conn.connect()
        assert conn.sock is not None
        local_port = int(conn.sock.getsockname()[1])
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(), local_port
    finally:
        conn.close()


def _raw(rec: Recorder, request: bytes) -> bytes:
    """Send raw bytes and read the answer until the server closes or 1 s passes quietly."""
    with socket.create_connection((rec.host, rec.port), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(1)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and data.endswith(b"}\n"):
                    break
        except TimeoutError:
            pass
        return data


def _control(rec: Recorder, query: str = "") -> list[dict[str, Any]]:
    response = httpx.get(f"{rec.url}/__recorder/requests{query}", timeout=5)
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()
    return found


def test_records_peer_method_path_host_and_headers(recorder_app: Recorder) -> None:
    status, body, local_port = _get(
        recorder_app, "/some/path?a=1&b=%20", {"X-Request-Id": "rid-1", "X-Custom": "v"}
    )
    assert status == 200
    answer = json.loads(body)
    [rec] = recorder_app.records()
    assert answer == {"recorded": rec["seq"], "host": f"127.0.0.1:{recorder_app.port}", "path": rec["path"]}
    assert (rec["client_ip"], rec["client_port"]) == ("127.0.0.1", local_port)
    assert (rec["method"], rec["target"], rec["path"]) == (
        "GET",
        "/some/path?a=1&b=%20",
        "/some/path?a=1&b=%20",
    )
    assert rec["host"] == f"127.0.0.1:{recorder_app.port}"
    assert rec["version"] == "HTTP/1.1"
    assert rec["headers"]["x-request-id"] == "rid-1"
    assert rec["headers"]["x-custom"] == "v"
    assert ("X-Custom", "v") in rec["raw_headers"]
    assert abs(rec["time"] - time.time()) < 60


def test_the_query_can_ask_for_a_status_and_a_bad_value_is_refused_but_recorded(
    recorder_app: Recorder,
) -> None:
    status, body, _ = _get(recorder_app, "/fail?egh-status=502&egh-token=t1")
    assert status == 502 and json.loads(body)["path"] == "/fail?egh-status=502&egh-token=t1"
    for query, message in [
        ("egh-status=99", "egh-status='99': must be an HTTP status 200 to 599"),
        ("egh-delay=soon", "egh-delay='soon': not a number of seconds"),
        ("egh-delay=31", "egh-delay='31': must be 0 to 30 seconds"),
    ]:
        status, body, _ = _get(recorder_app, f"/bad?{query}")
        assert (status, json.loads(body)["error"]) == (400, message)
    assert [r["path"] for r in recorder_app.records()] == [
        "/fail?egh-status=502&egh-token=t1",
        "/bad?egh-status=99",
        "/bad?egh-delay=soon",
        "/bad?egh-delay=31",
    ]


def test_a_slow_answer_outlasts_a_callers_timeout_and_the_record_stays(recorder_app: Recorder) -> None:
    conn = http.client.HTTPConnection(recorder_app.host, recorder_app.port, timeout=0.2)
    try:
        conn.request("GET", "/slow?egh-delay=2&egh-token=t2")
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()  # the caller gives up, as a proxy's route timeout does
    [rec] = recorder_app.records()
    assert rec["path"] == "/slow?egh-delay=2&egh-token=t2"
    # the recorder still answers others meanwhile, and without a delay at once
    status, _, _ = _get(recorder_app, "/fast")
    assert status == 200


def test_absolute_form_target_is_recorded_as_a_proxy_would_see_it(recorder_app: Recorder) -> None:
    answer = _raw(
        recorder_app,
        b"GET http://external.example/egress?q=%2F HTTP/1.1\r\nHost: external.example\r\n"
        b"X-Request-Id: rid-proxy\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200")
    [rec] = recorder_app.records(request_id="rid-proxy")
    assert rec["target"] == "http://external.example/egress?q=%2F"
    assert rec["path"] == "/egress?q=%2F"
    assert rec["host"] == "external.example"


def test_connect_is_recorded_and_refused(recorder_app: Recorder) -> None:
    answer = _raw(
        recorder_app, b"CONNECT external.example:443 HTTP/1.1\r\nHost: external.example:443\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 405")
    [rec] = recorder_app.records()
    assert (rec["method"], rec["target"]) == ("CONNECT", "external.example:443")


def test_repeated_headers_and_bodies(recorder_app: Recorder) -> None:
    _raw(
        recorder_app,
        b"POST /upload HTTP/1.1\r\nHost: h\r\nX-Dup: a\r\nX-Dup: b\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello",
    )
    [rec] = recorder_app.records()
    assert rec["method"] == "POST"
    assert rec["headers"]["x-dup"] == "a, b"
    assert (rec["body_bytes"], rec["body"]) == (5, "hello")


def test_filters_and_clear_over_http(recorder_app: Recorder) -> None:
    with httpx.Client(timeout=5) as client:
        for rid, path in [("r1", "/alpha"), ("r2", "/beta"), ("r1", "/alpha/again")]:
            assert client.get(f"{recorder_app.url}{path}", headers={"x-request-id": rid}).status_code == 200
        assert client.get(f"{recorder_app.url}/__recorder/healthz").text.strip() == "ok"

    everything = _control(recorder_app)
    assert [r["path"] for r in everything] == ["/alpha", "/beta", "/alpha/again"]
    assert [r["path"] for r in _control(recorder_app, "?request_id=r1")] == ["/alpha", "/alpha/again"]
    assert [r["path"] for r in _control(recorder_app, "?path_contains=beta")] == ["/beta"]
    assert [r["path"] for r in _control(recorder_app, "?request_id=r1&path_contains=again")] == [
        "/alpha/again"
    ]
    assert [r["path"] for r in _control(recorder_app, f"?since={everything[0]['seq']}")] == [
        "/beta",
        "/alpha/again",
    ]
    assert _control(recorder_app, "?request_id=none") == []
    assert httpx.get(f"{recorder_app.url}/__recorder/requests?since=x", timeout=5).status_code == 400
    assert httpx.get(f"{recorder_app.url}/__recorder/nope", timeout=5).status_code == 404

    cleared = httpx.delete(f"{recorder_app.url}/__recorder/requests", timeout=5)
    assert cleared.json() == {"cleared": 3}
    assert _control(recorder_app) == []
    assert recorder_app.records() == []

    httpx.get(f"{recorder_app.url}/after", timeout=5)
    [after] = recorder_app.records()
    assert after["seq"] == everything[-1]["seq"] + 1  # the sequence keeps counting across a clear


def test_in_process_filters_and_wait_for(recorder_app: Recorder) -> None:
    httpx.get(f"{recorder_app.url}/x/one", headers={"x-request-id": "a"}, timeout=5)
    httpx.get(f"{recorder_app.url}/x/two", headers={"x-request-id": "b"}, timeout=5)
    assert [r["path"] for r in recorder_app.records(request_id="b")] == ["/x/two"]
    assert [r["path"] for r in recorder_app.records(path_contains="/x/")] == ["/x/one", "/x/two"]
    assert len(recorder_app.wait_for(lambda r: r["path"].startswith("/x/"), count=2, timeout=1)) == 2
    with pytest.raises(TimeoutError, match="1 of 3 matching"):
        recorder_app.wait_for(lambda r: r["path"] == "/x/one", count=3, timeout=0.2)
    assert recorder_app.clear() == 2


def test_memory_is_bounded_to_the_last_records() -> None:
    with Recorder(max_records=5) as rec, httpx.Client(timeout=5) as client:
        for i in range(8):
            client.get(f"{rec.url}/n/{i}")
        kept = rec.records()
    assert [r["path"] for r in kept] == [f"/n/{i}" for i in range(3, 8)]
    assert [r["seq"] for r in kept] == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="at least 1"):
        Recorder(max_records=0)


def test_keep_alive_connection_reuse_is_visible(recorder_app: Recorder) -> None:
    with httpx.Client(timeout=5) as client:
        client.get(f"{recorder_app.url}/k/1")
        client.get(f"{recorder_app.url}/k/2")
    first, second = recorder_app.records()
    assert first["client_port"] == second["client_port"]


def test_stop_cuts_open_keep_alive_connections() -> None:
    rec = Recorder().start()
    with socket.create_connection((rec.host, rec.port), timeout=5) as sock:
        sock.sendall(b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = b""
        while not answer.endswith(b'"/held"}\n'):  # headers and body may come in separate segments
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        rec.stop()
        assert sock.recv(65536) == b""  # the server side was shut down, not left waiting 60 s
    assert [r["path"] for r in rec.records()] == ["/held"]


def test_request_path_of_either_target_form() -> None:
    assert recorder.request_path("/a?b=c") == "/a?b=c"
    assert recorder.request_path("http://h:1/a/b?c=%2F") == "/a/b?c=%2F"
    assert recorder.request_path("http://h") == "/"
    assert recorder.request_path("h:443") == "h:443"


def test_runs_as_a_process(tmp_path: Path) -> None:
    script = Path(recorder.__file__).resolve()
    with (tmp_path / "recorder.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--port", "0", "--bind", "127.0.0.1", "--max-records", "2"],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=10), "no `listening on` line within 10 s"
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        url = f"http://{line.split()[-1]}"
        with httpx.Client(timeout=5) as client:
            for i in range(3):
                client.get(f"{url}/p/{i}", headers={"x-request-id": f"p{i}"})
            records = client.get(f"{url}/__recorder/requests").json()
        assert [r["path"] for r in records] == ["/p/1", "/p/2"]
        proc.terminate()
        assert proc.wait(5) == 0
        assert "SIGTERM" in (tmp_path / "recorder.log").read_text()
        assert '"GET /p/0 HTTP/1.1" 200' in (tmp_path / "recorder.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.poll() is not None


# ------------------------------------------------------------------------------------------ TLS

TLS_HOST = "external.egress-harness.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    reason = openssl_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs the openssl tool: {reason}")
    return generate_pki(tmp_path_factory.mktemp("pki"), [TLS_HOST, "*.egress-harness.test", "127.0.0.1"])


def _client_context(pki: TestPKI, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if with_cert:
        context.load_cert_chain(pki.client.cert_path, pki.client.key_path)
    return context


def _https_get(
    rec: Recorder, path: str, context: ssl.SSLContext, *, sni: str = TLS_HOST, request_id: str = "tls-1"
) -> tuple[int, bytes]:
    """GET over TLS to the recorder's loopback TLS port, with `sni` as the server name (and Host)."""
    assert rec.tls_port is not None
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nx-request-id: {request_id}\r\nConnection: close\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((rec.host, rec.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _wait_for_failures(rec: Recorder, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found: list[dict[str, Any]] = [dict(f) for f in rec.handshake_failures()]
        if len(found) >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def test_https_is_recorded_with_sni_version_and_cipher(pki: TestPKI) -> None:
    with Recorder(tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path) as rec:
        assert rec.tls_url == f"https://127.0.0.1:{rec.tls_port}"
        status, body = _https_get(rec, "/secure?x=1", _client_context(pki), sni="a.egress-harness.test")
        assert status == 200
        assert json.loads(body)["path"] == "/secure?x=1"
        (record,) = rec.records(request_id="tls-1")
        assert record["path"] == "/secure?x=1"
        assert record["host"] == "a.egress-harness.test"
        assert record["client_ip"] == "127.0.0.1"
        tls = record["tls"]
        assert tls is not None
        assert tls["sni"] == "a.egress-harness.test"
        assert tls["version"] in ("TLSv1.2", "TLSv1.3")
        assert tls["cipher"]
        assert tls["client_cert_subject"] is None  # no client certificate asked for
        # plain HTTP on the other port: no tls block; the control API is there
        status, _, _ = _get(rec, "/plain", {"X-Request-Id": "plain-1"})
        assert status == 200
        (plain,) = _control(rec, "?request_id=plain-1")
        assert plain["tls"] is None
        assert {r["path"] for r in _control(rec)} == {"/secure?x=1", "/plain"}


def test_control_paths_on_the_tls_port_are_just_requests(pki: TestPKI) -> None:
    with Recorder(tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path) as rec:
        status, body = _https_get(rec, "/__recorder/requests", _client_context(pki), request_id="c1")
        assert status == 200
        assert json.loads(body)["path"] == "/__recorder/requests"
        (record,) = rec.records(request_id="c1")
        assert record["tls"] is not None


def test_a_client_that_does_not_trust_the_ca_is_no_record(pki: TestPKI) -> None:
    with Recorder(tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path) as rec:
        stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        with pytest.raises(ssl.SSLCertVerificationError):
            _https_get(rec, "/x", stranger)
        (failure,) = _wait_for_failures(rec)
        assert failure["sni"] == TLS_HOST
        assert failure["client_ip"] == "127.0.0.1"
        assert rec.records() == []
        failures = httpx.get(f"{rec.url}/__recorder/handshake-failures", timeout=5).json()
        assert [f["sni"] for f in failures] == [TLS_HOST]


def test_mutual_tls_without_a_client_certificate_fails_and_records_nothing(pki: TestPKI) -> None:
    with Recorder(
        tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path, client_ca=pki.ca.cert_path
    ) as rec:
        assert rec.mutual_tls
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _https_get(rec, "/no-cert", _client_context(pki))
        (failure,) = _wait_for_failures(rec)
        assert "certificate" in failure["error"].lower(), failure
        assert failure["sni"] == TLS_HOST
        assert rec.records() == []


def test_mutual_tls_with_the_client_certificate_records_its_subject(pki: TestPKI) -> None:
    with Recorder(
        tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path, client_ca=pki.ca.cert_path
    ) as rec:
        status, _ = _https_get(rec, "/with-cert", _client_context(pki, with_cert=True), request_id="m1")
        assert status == 200
        (record,) = rec.records(request_id="m1")
        assert record["tls"] is not None
        assert record["tls"]["client_cert_subject"] == pki.client.subject
        assert record["tls"]["client_cert_subject"] == "CN=egress-harness-client,O=istio-egress-harness"
        assert record["tls"]["sni"] == TLS_HOST
        assert rec.handshake_failures() == []


def test_mutual_tls_refuses_a_client_certificate_of_another_ca(pki: TestPKI, tmp_path: Path) -> None:
    other = generate_pki(tmp_path / "other", [TLS_HOST])
    context = _client_context(pki)
    context.load_cert_chain(other.client.cert_path, other.client.key_path)
    with Recorder(
        tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path, client_ca=pki.ca.cert_path
    ) as rec:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _https_get(rec, "/other-ca", context)
        (failure,) = _wait_for_failures(rec)
        assert "certificate verify failed" in failure["error"]
        assert rec.records() == []


def test_tls_options_are_checked(pki: TestPKI, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a TLS port needs cert and key"):
        Recorder(tls_port=0, cert=pki.server.cert_path)
    with pytest.raises(ValueError, match="cert, key and client_ca need a tls_port"):
        Recorder(cert=pki.server.cert_path, key=pki.server.key_path)
    with pytest.raises(ssl.SSLError):  # the key does not match the certificate
        Recorder(tls_port=0, cert=pki.server.cert_path, key=pki.client.key_path)
    with Recorder() as rec, pytest.raises(ValueError, match="no TLS port"):
        rec.tls_url  # noqa: B018


def test_relays_trust_the_run_ca_through_ssl_cert_file(pki: TestPKI, tmp_path: Path) -> None:
    """The contract for the cluster tier: a relay whose SSL_CERT_FILE is the run's CA reaches the TLS
    external host (as in the passthrough scenarios); without it the relay refuses the certificate."""
    with (
        Recorder(tls_port=0, cert=pki.server.cert_path, key=pki.server.key_path) as rec,
        Traffic(timeout=10.0) as traffic,
    ):
        pool = RelayPool(tmp_path)
        try:
            trusting = pool("target", env={"SSL_CERT_FILE": str(pki.ca.cert_path)})
            plain = pool("plain")
            url = f"{rec.tls_url}/via-relay"
            answer = traffic.send(chain_url([trusting.proxy_url], url))
            assert answer.status == 200, answer
            (record,) = rec.records(path_contains="/via-relay")
            assert record["tls"] is not None and record["tls"]["sni"] is None  # an IP address: no SNI
            refused = traffic.send(chain_url([plain.proxy_url], url))
            assert refused.status == 502
            assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or ""), refused
            assert len(rec.records(path_contains="/via-relay")) == 1
        finally:
            pool.stop_all()


def _start(args: list[str], tmp_path: Path, count: int = 2) -> tuple[subprocess.Popen[str], list[str]]:
    """The recorder as a process; its first ``count`` stdout lines (fewer if it exits first)."""
    script = Path(recorder.__file__).resolve()
    log = (tmp_path / "recorder.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--bind", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    log.close()
    assert proc.stdout is not None
    stream = proc.stdout
    queued: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps draining, so the child never blocks on a full pipe
        try:
            for line in stream:
                queued.put(line.rstrip("\n"))
        except (OSError, ValueError):  # closed by _end
            pass
        queued.put(None)

    threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while len(lines) < count:
        try:
            line = queued.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
    return proc, lines


def _end(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_runs_as_a_process_with_mutual_tls(pki: TestPKI, tmp_path: Path) -> None:
    args = ["--tls-port", "0", "--cert", str(pki.server.cert_path), "--key", str(pki.server.key_path)]
    proc, lines = _start([*args, "--client-ca", str(pki.ca.cert_path)], tmp_path)
    try:
        assert len(lines) == 2, lines
        assert lines[0].startswith("listening on 127.0.0.1:"), lines
        assert lines[1].startswith("listening tls on 127.0.0.1:"), lines
        http_port, tls_port = (int(line.rsplit(":", 1)[1]) for line in lines)
        assert http_port != tls_port
        context = _client_context(pki, with_cert=True)
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=TLS_HOST) as tls,
        ):
            tls.sendall(b"GET /p HTTP/1.1\r\nHost: x\r\nx-request-id: proc-1\r\nConnection: close\r\n\r\n")
            assert tls.recv(12).startswith(b"HTTP/1.1 200")
        records = httpx.get(f"http://127.0.0.1:{http_port}/__recorder/requests", timeout=5).json()
        assert [(r["path"], r["tls"]["client_cert_subject"]) for r in records] == [("/p", pki.client.subject)]
        assert _end(proc) == 0
        log = (tmp_path / "recorder.log").read_text()
        assert "tls requires client certificates signed by" in log
        assert "SIGTERM" in log
    finally:
        _end(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-port", "0"], "--tls-port needs --cert and --key"),
        (["--cert", "c.pem"], "--cert, --key and --client-ca need --tls-port"),
    ],
)
def test_tls_flags_are_checked(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        recorder.parse_args(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unloadable_tls_files_end_the_process_before_it_listens(pki: TestPKI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    proc, lines = _start(
        ["--tls-port", "0", "--cert", str(missing), "--key", str(pki.server.key_path)], tmp_path
    )
    assert _end(proc) == 2
    assert lines == []
    log = (tmp_path / "recorder.log").read_text()
    assert f"recorder: cannot load the TLS files (--cert {missing} --key {pki.server.key_path})" in log


# ------------------------------------------------------------------------------------ TCP echo


@pytest.fixture
def tcp_rec() -> Iterator[Recorder]:
    with Recorder(bind="127.0.0.1", port=0, tcp_port=0) as rec:
        yield rec


def _wait_connections(
    rec: Recorder, done: Callable[[list[recorder.ConnectionRecord]], bool], timeout: float = 5.0
) -> list[recorder.ConnectionRecord]:
    """Poll ``rec.connections()`` until ``done`` holds for them; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = rec.connections()
        if done(found):
            return found
        assert time.monotonic() < deadline, f"connections after {timeout:g}s: {found}"
        time.sleep(0.01)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return data


def _connections_over_http(rec: Recorder, query: str = "") -> list[dict[str, Any]]:
    response = httpx.get(f"{rec.url}/__recorder/connections{query}", timeout=5)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def test_tcp_echo_is_byte_identical_and_the_connection_is_recorded(tcp_rec: Recorder) -> None:
    payload = b"/echo/x?egh-token=tok-1\n" + os.urandom(200_000)
    before = time.time()
    with socket.create_connection(tcp_rec.tcp_address, timeout=5) as sock:
        client_ip, client_port = sock.getsockname()[:2]
        sender = threading.Thread(target=sock.sendall, args=(payload,))  # the echo flows meanwhile
        sender.start()
        echoed = _read_exactly(sock, len(payload))
        sender.join()
        assert echoed == payload
        [open_record] = _wait_connections(tcp_rec, lambda c: bool(c) and c[0]["bytes_sent"] == len(payload))
        assert open_record["closed"] is None  # still open: the client has not closed
    [record] = _wait_connections(tcp_rec, lambda c: bool(c) and c[0]["closed"] is not None)
    assert (record["client_ip"], record["client_port"]) == (client_ip, client_port)
    assert (record["bytes_received"], record["bytes_sent"]) == (len(payload), len(payload))
    assert (record["head"], record["path"], record["target"]) == ("/echo/x?egh-token=tok-1",) * 3
    assert record["tls"] is None
    assert record["closed"] is not None and before <= record["time"] <= record["closed"] <= time.time()
    assert _connections_over_http(tcp_rec) == [record]


def test_tcp_head_is_empty_until_the_line_ends_then_whatever_came_at_eof(tcp_rec: Recorder) -> None:
    with socket.create_connection(tcp_rec.tcp_address, timeout=5) as sock:
        sock.sendall(b"no newline yet")
        assert _read_exactly(sock, 14) == b"no newline yet"
        [record] = tcp_rec.connections()
        assert (record["head"], record["bytes_received"]) == ("", 14)
        sock.shutdown(socket.SHUT_WR)  # EOF: the recorder closes too
        assert sock.recv(10) == b""
    [record] = _wait_connections(tcp_rec, lambda c: c[0]["closed"] is not None)
    assert (record["head"], record["path"]) == ("no newline yet", "no newline yet")


def test_tcp_head_is_at_most_1024_bytes_of_a_long_first_line(tcp_rec: Recorder) -> None:
    line = ("é" * 600).encode()  # 1200 bytes; the 1024th byte ends the 512th character
    with socket.create_connection(tcp_rec.tcp_address, timeout=5) as sock:
        sock.sendall(line)
        assert _read_exactly(sock, len(line)) == line
        [record] = tcp_rec.connections()  # known before a newline or EOF: 1024 bytes came
        assert record["head"] == "é" * 512
        assert record["closed"] is None


def test_tcp_connections_filters_and_delete(tcp_rec: Recorder) -> None:
    for token in ("aaa", "bbb", "aaa-2"):
        with socket.create_connection(tcp_rec.tcp_address, timeout=5) as sock:
            sock.sendall(f"/p?egh-token={token}\n".encode())
            _read_exactly(sock, len(f"/p?egh-token={token}\n"))
    first, second, third = _wait_connections(
        tcp_rec, lambda c: len(c) == 3 and all(r["closed"] is not None for r in c)
    )
    assert first["seq"] < second["seq"] < third["seq"]
    assert [r["head"] for r in tcp_rec.connections(path_contains="aaa")] == [
        "/p?egh-token=aaa",
        "/p?egh-token=aaa-2",
    ]
    assert _connections_over_http(tcp_rec, "?path_contains=token%3Dbbb") == [second]
    assert tcp_rec.connections(since=first["seq"]) == [second, third]
    assert _connections_over_http(tcp_rec, f"?since={second['seq']}") == [third]
    assert httpx.get(f"{tcp_rec.url}/__recorder/connections?since=x", timeout=5).status_code == 400
    assert tcp_rec.records() == []  # TCP connections are no HTTP requests
    response = httpx.delete(f"{tcp_rec.url}/__recorder/connections", timeout=5)
    assert response.json() == {"cleared": 3}
    assert tcp_rec.connections() == []
    # the sequence numbers are shared with the HTTP records and keep counting
    httpx.get(f"{tcp_rec.url}/after", timeout=5)
    [after] = tcp_rec.records()
    assert after["seq"] == third["seq"] + 1


def test_tcp_connections_are_bounded_to_the_last_records() -> None:
    with Recorder(max_records=2, tcp_port=0) as rec:
        for i in range(4):
            with socket.create_connection(rec.tcp_address, timeout=5) as sock:
                sock.sendall(f"/n/{i}\n".encode())
                _read_exactly(sock, len(f"/n/{i}\n"))
            _wait_connections(rec, lambda c, i=i: c[-1]["head"] == f"/n/{i}" and c[-1]["closed"] is not None)
        assert [c["head"] for c in rec.connections()] == ["/n/2", "/n/3"]


def test_tcp_connection_is_closed_after_1_mib(tcp_rec: Recorder) -> None:
    payload = b"/big\n" + b"." * (recorder.MAX_TCP_BYTES + 100_000)
    echoed = bytearray()
    with socket.create_connection(tcp_rec.tcp_address, timeout=10) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the recorder closes before the last bytes
                sock.sendall(payload)

        sender = threading.Thread(target=send)
        sender.start()
        with contextlib.suppress(ConnectionResetError):  # it closes with our surplus unread
            while chunk := sock.recv(65536):
                echoed += chunk
        with contextlib.suppress(OSError):  # after a reset: not connected any more
            sock.shutdown(socket.SHUT_RDWR)  # ends a sender still blocked
        sender.join(10)
        assert not sender.is_alive()
    [record] = _wait_connections(tcp_rec, lambda c: c[0]["closed"] is not None)
    assert record["bytes_received"] == recorder.MAX_TCP_BYTES
    assert record["bytes_sent"] == recorder.MAX_TCP_BYTES
    assert len(echoed) <= recorder.MAX_TCP_BYTES and payload.startswith(echoed)


def test_tcp_exactly_1_mib_is_echoed_in_full() -> None:
    payload = b"/max\n" + b"." * (recorder.MAX_TCP_BYTES - 5)  # the most a relay sends (egh-bytes)
    with Recorder(tcp_port=0) as rec, socket.create_connection(rec.tcp_address, timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert _read_exactly(sock, len(payload)) == payload
        sender.join()


def test_tcp_idle_connection_is_closed() -> None:
    with Recorder(tcp_port=0, tcp_idle_timeout=0.2) as rec:
        with socket.create_connection(rec.tcp_address, timeout=5) as sock:
            sock.sendall(b"half a line")
            assert _read_exactly(sock, 11) == b"half a line"
            assert sock.recv(10) == b""  # the recorder closed it: idle
        [record] = _wait_connections(rec, lambda c: c[0]["closed"] is not None)
        assert record["head"] == "half a line"


def test_tcp_stop_cuts_open_connections_and_waits_for_their_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    update = recorder.Store.update_connection

    def slow_to_close(self: recorder.Store, record: recorder.ConnectionRecord, **changes: Any) -> None:
        if changes.get("closed") is not None:
            time.sleep(0.3)  # a connection thread slow to finish: stop() must still wait for it
        update(self, record, **changes)

    monkeypatch.setattr(recorder.Store, "update_connection", slow_to_close)
    threads_before = set(threading.enumerate())
    rec = Recorder(tcp_port=0).start()
    with socket.create_connection(rec.tcp_address, timeout=5) as sock:
        sock.sendall(b"/held\n")
        assert _read_exactly(sock, 6) == b"/held\n"
        rec.stop()
        [record] = rec.connections()  # its thread finished before stop() returned
        assert record["closed"] is not None and record["head"] == "/held"
        assert set(threading.enumerate()) <= threads_before
        assert sock.recv(10) == b""  # cut by the recorder, not left waiting for the idle timeout
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(rec.tcp_address, timeout=2).close()


def test_no_tcp_port_unless_asked(recorder_app: Recorder) -> None:
    assert recorder_app.tcp_port is None
    with pytest.raises(ValueError, match="no TCP port"):
        recorder_app.tcp_address  # noqa: B018
    with Recorder(tcp_port=0) as rec:
        assert rec.tcp_port is not None and rec.tcp_port not in (0, rec.port)
        assert rec.tcp_url == f"tcp://127.0.0.1:{rec.tcp_port}"
    assert recorder.parse_args([]).tcp_port is None
    assert recorder.parse_args(["--tcp-port", "9000"]).tcp_port == 9000


def test_tcp_port_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCP_PORT", "9001")
    assert recorder.parse_args([]).tcp_port == 9001
    assert recorder.parse_args(["--tcp-port", "9002"]).tcp_port == 9002


def test_runs_as_a_process_with_a_tcp_port(pki: TestPKI, tmp_path: Path) -> None:
    args = ["--tls-port", "0", "--cert", str(pki.server.cert_path), "--key", str(pki.server.key_path)]
    proc, lines = _start([*args, "--tcp-port", "0"], tmp_path, count=3)
    try:
        assert len(lines) == 3, lines
        assert lines[0].startswith("listening on 127.0.0.1:"), lines
        assert lines[1].startswith("listening tls on 127.0.0.1:"), lines
        assert lines[2].startswith("listening tcp on 127.0.0.1:"), lines
        http_port, _, tcp_port = (int(line.rsplit(":", 1)[1]) for line in lines)
        held = socket.create_connection(("127.0.0.1", tcp_port), timeout=5)
        with held:
            held.sendall(b"/proc?egh-token=p1\n")
            assert _read_exactly(held, 19) == b"/proc?egh-token=p1\n"
            [record] = httpx.get(f"http://127.0.0.1:{http_port}/__recorder/connections", timeout=5).json()
            assert (record["head"], record["bytes_sent"], record["closed"]) == (
                "/proc?egh-token=p1",
                19,
                None,
            )
            assert _end(proc) == 0  # SIGTERM with a connection open: it is cut, the process ends
            assert held.recv(10) == b""
        log = (tmp_path / "recorder.log").read_text()
        assert "SIGTERM" in log
        assert "closed (the recorder stopped): received 19, sent 19, head '/proc?egh-token=p1'" in log
    finally:
        _end(proc)
