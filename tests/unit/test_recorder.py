"""The recorder: what it records, its control endpoints, its bound on memory, and its process mode."""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import recorder
from recorder import Recorder


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
