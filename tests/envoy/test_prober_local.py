"""harness.upgrade.prober against real traffic: a loopback HTTP server stopped and started again on its port, and
the local mesh's egress gateway Envoy replaced while requests keep going through the whole chain.

Every wait here is bounded and polls what it waits for; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from harness.common.traffic import Traffic
from harness.localmesh.mesh import LocalMesh, Topology
from harness.upgrade.prober import (
    DEFAULT_THRESHOLD,
    ProbeBelowThresholdError,
    Prober,
    ProberError,
    judge,
    outages,
)

WAIT_S = 20.0


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        pause.wait(0.02)


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackServer:
    """An HTTP server on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Ok)  # allow_reuse_address is on
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            assert not self._thread.is_alive()
            self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # No keep-alive: each probe opens a connection, as a client would see a server go away.
    with httpx.Client(timeout=2.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        yield c


def test_server_outage_is_counted_and_recovery_seen(server: LoopbackServer, client: httpx.Client) -> None:
    prober = Prober(lambda: client.get(server.url).status_code, interval_s=0.02, target=server.url)
    with prober:
        wait_for("20 successes", lambda: prober.successes >= 20)
        server.stop()
        down_at = prober.elapsed_s
        wait_for("5 failures while the server is down", lambda: prober.total - prober.successes >= 5)
        server.start()
        up_at = prober.elapsed_s
        before = prober.successes
        wait_for("20 successes after the restart", lambda: prober.successes >= before + 20)
    stats = prober.stats()
    assert not prober.running
    assert stats.total == stats.successes + stats.failures
    assert stats.failures >= 5
    assert stats.ratio is not None
    assert 0 < stats.ratio < 1
    # One outage, inside the window the server was down (probes in flight may straddle its edges).
    [outage] = stats.outages
    assert outage.failures == stats.failures
    assert down_at - 0.1 <= outage.start_s <= outage.end_s <= up_at + 2.0
    # Refused connections (and a request in flight reset as the server went away): no HTTP status.
    shown = [f for f in stats.failure_samples if not f.startswith("...")]
    assert any("ConnectError" in f for f in shown), shown
    assert not any("HTTP" in f for f in shown), shown
    samples = prober.samples
    assert samples[0].ok
    assert samples[-1].ok
    assert stats.passed == (stats.ratio >= DEFAULT_THRESHOLD)


def test_nothing_listening_fails_the_threshold(client: httpx.Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        with Prober(lambda: client.get(url), interval_s=0.02, target=url) as prober:
            wait_for("5 probes", lambda: prober.total >= 5)
    with pytest.raises(ProbeBelowThresholdError, match=r"FAILED: 0/\d+ succeeded \(0\.0%; threshold 95%\)"):
        prober.check()


def test_http_statuses_decide_success(server: LoopbackServer) -> None:
    statuses = iter([200, 503, 302, 404] * 100)
    with Prober(lambda: next(statuses), interval_s=0.005) as prober:
        wait_for("8 probes", lambda: prober.total >= 8)
    samples = prober.samples
    assert [s.ok for s in samples[:4]] == [True, False, True, False]
    assert samples[1].detail == "HTTP 503"


def test_no_probe_is_a_failure_and_misuse_is_refused() -> None:
    prober = Prober(lambda: True, interval_s=1.0)
    assert prober.ratio is None
    assert not prober.passed
    with pytest.raises(ProberError, match="never started"):
        prober.stop()
    with pytest.raises(ProbeBelowThresholdError, match="no probe completed"):
        prober.check()
    with pytest.raises(ValueError, match="threshold"):
        Prober(lambda: True, threshold=1.5)
    with pytest.raises(ValueError, match="interval_s"):
        Prober(lambda: True, interval_s=0)
    with prober, pytest.raises(ProberError, match="already started"):
        prober.start()


def test_a_hung_probe_is_reported_at_stop() -> None:
    release = threading.Event()
    prober = Prober(lambda: release.wait(10), interval_s=0.01, join_timeout_s=0.2)
    prober.start()
    wait_for("the probe to be in flight", lambda: prober.elapsed_s > 0.05)
    try:
        with pytest.raises(ProberError, match=r"did not return within 0\.2s of stop"):
            prober.stop()
    finally:
        release.set()
    wait_for("the prober thread to end", lambda: prober._thread is not None and not prober._thread.is_alive())


def test_a_result_it_cannot_judge_is_an_error() -> None:
    with pytest.raises(ProberError, match="cannot judge a probe result of type str"):
        judge("fine")
    prober = Prober(lambda: "fine", interval_s=0.01)
    prober.start()
    wait_for("the prober thread to end", lambda: prober._thread is not None and not prober._thread.is_alive())
    with pytest.raises(ProberError, match="thread failed"):
        prober.stop()


def test_outages_group_consecutive_failures() -> None:
    from harness.upgrade.prober import Sample

    def s(at: float, ok: bool) -> Sample:
        return Sample(at, ok, "", 0.01)

    found = outages([s(0, True), s(1, False), s(2, False), s(3, True), s(4, False)])
    assert [(o.start_s, o.end_s, o.failures) for o in found] == [(1, 2.01, 2), (4, 4.01, 1)]


@pytest.mark.skipif(
    not hasattr(LocalMesh, "restart_gateway"),
    reason="LocalMesh.restart_gateway() (stop the gateway Envoy, start a new one on the same port) is not there yet",
)
def test_prober_through_the_mesh_while_the_gateway_restarts() -> None:
    with (
        LocalMesh(Topology(flush_interval_ms=200)) as mesh,
        Traffic(timeout=5.0, headers=mesh.headers) as traffic,
    ):
        url = mesh.chain_url("/probe")
        prober = Prober(lambda: traffic.send(url), interval_s=0.05, target=url)
        assert mesh.gateway is not None
        old_pid = mesh.gateway.pid
        with prober:
            wait_for("10 requests through the chain", lambda: prober.successes >= 10)
            assert prober.successes == prober.total, prober.stats().failure_samples
            restart_began = prober.elapsed_s
            mesh.restart_gateway()
            restart_ended = prober.elapsed_s
            before = prober.successes
            wait_for("10 requests through the new gateway", lambda: prober.successes >= before + 10)
        stats = prober.stats()
        assert mesh.gateway.pid != old_pid, "the gateway Envoy was not replaced"
        records = mesh.external_records()
    # Traffic went through before and after the restart; every failure falls in the restart window
    # (a probe sent just before it may fail as the old Envoy goes away).
    assert stats.successes >= 20
    assert prober.samples[-1].ok
    for outage in stats.outages:
        assert restart_began - 5.0 <= outage.start_s and outage.end_s <= restart_ended + 5.0, stats.outages
    assert len(stats.outages) <= 1, stats.failure_samples
    # Every probe that got through reached the external host from the gateway's address.
    probes = [r for r in records if str(r.get("path", "")).startswith("/probe")]
    assert len(probes) >= stats.successes
    assert {r["client_ip"] for r in probes} == {Topology().gateway_ip}
