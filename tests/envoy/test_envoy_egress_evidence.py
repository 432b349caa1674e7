"""What the evidence engine's TLS correlation, gateway refusals and canaries rest on, from real Envoy.

Two Envoys on loopback laid out as Istio lays out a TLS passthrough through the egress gateway: a
"sidecar" that routes TLS by its SNI (TLS inspector) to the gateway, or to ``BlackHoleCluster``
(REGISTRY_ONLY), and a "gateway" that passes the SNI on to a real TLS server, still encrypted. The
gateway's HTTP listener has an RBAC filter built like Istio's ALLOW AuthorizationPolicy (only
``/allowed``), and the sidecar routes the gateway service's own name to a gateway listener that has
no route for it (a canary gets 404 NR). Every listener writes Istio's TEXT format (1.23+) and its
JSON labels.

The lines these tests print are the ones ``tests/unit/accesslog_samples.py`` keeps (``TLS_*``,
``RBAC_*``, ``CANARY_*``): run ``pytest tests/envoy/test_envoy_egress_evidence.py -s -k record`` to
see them again.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from harness.accesslog import ISTIO_JSON_LABELS, ISTIO_TEXT_FORMAT, AccessLogEntry, LogParser
from harness.common.certs import TestPKI, generate_pki, openssl_unavailable_reason
from harness.evidence import (
    EntryLog,
    FileLogSource,
    RequestRef,
    Wait,
    expect_entry,
    gateway_no_route,
    gateway_refused,
)
from harness.localmesh import envoyconfig as ec
from harness.localmesh.envoy import EnvoyProcess
from harness.scenarios import RenderContext, load_catalog, render_request
from harness.scenarios.expect import judge
from harness.tier import Sent

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT / "scenarios")
HOST = "external.egress-harness.test"
UNREGISTERED = "unregistered.egress-harness.test"
GATEWAY_SERVICE = "istio-egressgateway.istio-system.svc.cluster.local"
CONTEXT = RenderContext(istio_version="1.30.3", external_host=HOST, external_tls_port=8443)
TO_GATEWAY = ec.outbound_cluster(GATEWAY_SERVICE, 443, "external-tls")
TO_GATEWAY_HTTP = ec.outbound_cluster(GATEWAY_SERVICE, 80)
FROM_GATEWAY = ec.outbound_cluster(HOST, CONTEXT.external_tls_port)
FROM_GATEWAY_HTTP = ec.outbound_cluster(HOST, 80)
#: the target sidecar's inbound cluster for its relay (Istio: inbound|<port>||)
INBOUND = "inbound|8080||"
WAIT = Wait(timeout=10.0, interval=0.05, settle=0.3)
#: each part on its own loopback address, as the local mesh lays them out (Linux routes 127.0.0.0/8)
GATEWAY_IP, SIDECAR_IP, EXTERNAL_IP = "127.0.0.7", "127.0.0.12", "127.0.0.20"
#: Istio names an AuthorizationPolicy's RBAC policy so: ns[NS]-policy[NAME]-rule[INDEX]
RBAC_POLICY = "ns[istio-system]-policy[egress-allow-only-allowed-path]-rule[0]"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    reason = openssl_unavailable_reason()
    if reason:
        pytest.skip(f"the TLS server needs openssl for its certificate: {reason}")
    return generate_pki(tmp_path_factory.mktemp("pki"), [HOST])


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"hello over TLS\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def tls_server(pki: TestPKI) -> Iterator[int]:
    """An HTTPS server for HOST (the external host's TLS port); its port."""
    server = http.server.ThreadingHTTPServer((EXTERNAL_IP, 0), _Ok)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _bound(name: str, endpoint: tuple[str, int], source_ip: str) -> dict[str, Any]:
    """A cluster whose connections leave from the calling part's own address."""
    cluster = ec.static_cluster(name, [endpoint])
    cluster["upstream_bind_config"] = {"source_address": {"address": source_ip, "port_value": 0}}
    return cluster


def _logs(envoy: EnvoyProcess, name: str) -> list[dict[str, Any]]:
    return [
        ec.file_access_log(envoy.access_log_path(name), text_format=ISTIO_TEXT_FORMAT),
        ec.file_access_log(envoy.access_log_path(f"{name}_json"), json_labels=ISTIO_JSON_LABELS),
    ]


@dataclass
class Mesh:
    sidecar: EnvoyProcess
    gateway: EnvoyProcess


@pytest.fixture(scope="module")
def mesh(tls_server: int, upstreams: Any) -> Iterator[Mesh]:
    def gateway_config(envoy: EnvoyProcess) -> dict[str, Any]:
        tls = ec.sni_listener(
            "gateway_tls", {HOST: FROM_GATEWAY}, address=GATEWAY_IP, access_logs=_logs(envoy, "gateway")
        )
        routes = ec.route_config(
            "http.8080", [ec.virtual_host(f"{HOST}:80", [ec.route(FROM_GATEWAY_HTTP)], [HOST])]
        )
        authz = ec.http_listener(
            "gateway_http",
            routes,
            address=GATEWAY_IP,
            access_logs=_logs(envoy, "gateway"),
            http_filters=[ec.rbac_allow_path_prefixes(RBAC_POLICY, ["/allowed"])],
        )
        # a gateway port whose servers have no route for the gateway service's own name
        canary = ec.http_listener(
            "gateway_http_80",
            ec.route_config(
                "http.8080", [ec.virtual_host(f"{HOST}:80", [ec.route(FROM_GATEWAY_HTTP)], [HOST])]
            ),
            address=GATEWAY_IP,
            access_logs=_logs(envoy, "gateway"),
        )
        return ec.bootstrap(
            listeners=[tls, authz, canary],
            clusters=[
                _bound(FROM_GATEWAY, (EXTERNAL_IP, tls_server), GATEWAY_IP),
                _bound(FROM_GATEWAY_HTTP, ("127.0.0.1", upstreams.http_port), GATEWAY_IP),
            ],
        )

    with EnvoyProcess(gateway_config, "egress-gateway", flush_interval_ms=50) as gateway:

        def sidecar_config(envoy: EnvoyProcess) -> dict[str, Any]:
            tls = ec.sni_listener(
                "sidecar_tls",
                {HOST: TO_GATEWAY},
                default_cluster=ec.BLACKHOLE_CLUSTER,
                address=SIDECAR_IP,
                access_logs=_logs(envoy, "sidecar"),
            )
            http = ec.http_listener(
                "sidecar_http",
                ec.route_config(
                    "80",
                    [
                        ec.virtual_host(
                            f"{GATEWAY_SERVICE}:80", [ec.route(TO_GATEWAY_HTTP)], [GATEWAY_SERVICE]
                        )
                    ],
                ),
                address=SIDECAR_IP,
                access_logs=_logs(envoy, "sidecar"),
            )
            # the relay's own inbound: what the previous relay's request looks like at this sidecar
            inbound = ec.http_listener(
                "sidecar_inbound",
                ec.route_config(
                    "inbound|8080||", [ec.virtual_host("inbound|http|8080", [ec.route(INBOUND)])]
                ),
                address=SIDECAR_IP,
                access_logs=_logs(envoy, "sidecar"),
            )
            return ec.bootstrap(
                listeners=[tls, http, inbound],
                clusters=[
                    _bound(TO_GATEWAY, gateway.address("gateway_tls"), SIDECAR_IP),
                    _bound(TO_GATEWAY_HTTP, gateway.address("gateway_http_80"), SIDECAR_IP),
                    ec.static_cluster(INBOUND, [("127.0.0.1", upstreams.http_port)]),
                    ec.blackhole_cluster(),
                ],
            )

        with EnvoyProcess(sidecar_config, "target-sidecar", flush_interval_ms=50) as sidecar:
            yield Mesh(sidecar, gateway)


def hop_log(envoy: EnvoyProcess, name: str, encoding: str) -> EntryLog:
    file = envoy.access_log_path(name if encoding == "text" else f"{name}_json")
    return EntryLog(FileLogSource(file), hop=envoy.name.replace("-", " "), encoding=encoding)  # type: ignore[arg-type]


def https_get(mesh: Mesh, pki: TestPKI, sni: str, path: str) -> tuple[Sent, str]:
    """An HTTPS GET the client encrypts itself, through the sidecar's TLS listener: what the client
    saw (``Sent``, with when it was sent and when its answer came back) and its own address."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    sent_at = datetime.now(UTC)
    status = 502
    with socket.create_connection((SIDECAR_IP, mesh.sidecar.port("sidecar_tls")), timeout=10) as raw:
        address = "{}:{}".format(*raw.getsockname()[:2])
        try:
            with context.wrap_socket(raw, server_hostname=sni) as conn:
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
                status = int(answer.split(b" ", 2)[1])
        except (ssl.SSLError, ConnectionResetError):
            pass  # the black hole closes the connection during the handshake
    return Sent("-", status, sent_at, answered_at=datetime.now(UTC)), address


def by_client(address: str) -> Callable[[AccessLogEntry], bool]:
    return lambda entry: entry.downstream_remote_address == address


def chain_request_path(token: str) -> str:
    """The path the target relay gets from the proxy relay: the destination URL, with its path token,
    nested in the query (``harness.common.traffic.chain_url``)."""
    return "/proxy?url=" + quote(f"https://{HOST}:443/get?egh-token={token}", safe="")


def test_record_the_lines_the_unit_fakes_keep(mesh: Mesh, pki: TestPKI) -> None:
    """The TLS passthrough, black hole, inbound, RBAC and canary lines, printed for accesslog_samples.py."""
    token = str(uuid.uuid4())
    _, client = https_get(mesh, pki, HOST, f"/get?egh-token={token}")
    _, blocked = https_get(mesh, pki, UNREGISTERED, "/get")
    with httpx.Client(trust_env=False, timeout=10) as http:
        inbound = http.get(
            f"http://{SIDECAR_IP}:{mesh.sidecar.port('sidecar_inbound')}{chain_request_path(token)}",
            headers={"host": "target.egress-harness.svc.cluster.local:8080", "x-request-id": "rid-1"},
        )
        denied = http.get(
            f"http://{GATEWAY_IP}:{mesh.gateway.port('gateway_http')}/denied?egh-token={uuid.uuid4()}",
            headers={"host": HOST, "x-request-id": "rid-x"},
        )
        canary = http.get(
            f"http://{SIDECAR_IP}:{mesh.sidecar.port('sidecar_http')}/egh-live-{uuid.uuid4()}",
            headers={"host": GATEWAY_SERVICE, "x-request-id": "rid-5"},
        )
    assert (inbound.status_code, denied.status_code, canary.status_code) == (200, 403, 404)
    sidecar = mesh.sidecar.wait_for_access_log("sidecar", lambda line: "egh-live-" in line, timeout=10)
    gateway = mesh.gateway.wait_for_access_log("gateway", lambda line: "egh-live-" in line, timeout=10)
    lines = mesh.sidecar.read_access_log("sidecar") + mesh.gateway.read_access_log("gateway")
    print("".join(lines))
    assert sidecar and gateway
    assert any(client in line and HOST in line for line in lines)
    assert any(blocked in line and "BlackHoleCluster" in line for line in lines)


@pytest.mark.parametrize("encoding", ["text", "json"])
def test_tls_passthrough_entries_carry_the_sni_and_nothing_of_the_request(
    mesh: Mesh, pki: TestPKI, encoding: str
) -> None:
    token = str(uuid.uuid4())
    sent, client = https_get(mesh, pki, HOST, f"/get?egh-token={token}")
    assert sent.status == 200
    sidecar = mesh.sidecar.wait_for_access_log("sidecar", lambda line: client in line, timeout=10)
    [line] = sidecar
    parser = LogParser("text", ISTIO_TEXT_FORMAT)
    entry = parser.parse_line(line)
    assert entry is not None and entry.is_tcp
    # what correlation by x-request-id or a path token would need is not there
    assert (entry.request_id, entry.path, entry.authority) == (None, None, None)
    assert token not in line
    assert (entry.response_code, entry.response_flags) == (0, None)
    assert (entry.requested_server_name, entry.upstream_cluster) == (HOST, TO_GATEWAY)
    # start_time is the connection's start, in ms, inside [sent, answered] once truncation is allowed for
    assert entry.start_time is not None
    started = datetime.fromisoformat(entry.start_time)
    assert sent.sent_at - timedelta(milliseconds=1) <= started <= sent.answered_at  # type: ignore[operator]

    # the runner's judgement of the catalog's passthrough request, on these logs
    scenario = CATALOG.get("https-passthrough-via-egress-gateway")
    request = render_request(scenario.requests[0], CONTEXT, source=scenario.file)
    proof = judge(
        request,
        sent.ref(request.host, scheme=request.scheme),
        sidecar=hop_log(mesh.sidecar, "sidecar", encoding),
        gateway=hop_log(mesh.gateway, "gateway", encoding),
        wait=WAIT,
        gateway_service=GATEWAY_SERVICE,
    )
    assert [(h.hop, h.entry.downstream_remote_address) for h in proof][0] == ("target sidecar", client)
    assert proof[1].entry.upstream_cluster == FROM_GATEWAY and proof[1].entry.requested_server_name == HOST


def test_an_inbound_entry_holding_the_token_is_never_the_requests(mesh: Mesh) -> None:
    token = str(uuid.uuid4())
    with httpx.Client(trust_env=False, timeout=10) as http:
        answer = http.get(
            f"http://{SIDECAR_IP}:{mesh.sidecar.port('sidecar_inbound')}{chain_request_path(token)}",
            headers={"host": "target.egress-harness.svc.cluster.local:8080"},
        )
    assert answer.status_code == 200
    [line] = mesh.sidecar.wait_for_access_log("sidecar", lambda line: token in line, timeout=10)
    entry = LogParser("text", ISTIO_TEXT_FORMAT).parse_line(line)
    assert entry is not None and entry.upstream_cluster == INBOUND and token in (entry.path or "")
    assert not RequestRef(path_token=token).predicate()(entry)
    assert not RequestRef(request_id=entry.request_id or "-").predicate()(entry)


def test_a_second_connection_to_the_same_sni_a_moment_later_is_not_the_first(
    mesh: Mesh, pki: TestPKI
) -> None:
    first, first_client = https_get(mesh, pki, HOST, "/get")
    time.sleep(0.6)  # the next request of a scenario, sent after this one was answered (and judged)
    second, second_client = https_get(mesh, pki, HOST, "/get")
    for client in (first_client, second_client):
        mesh.sidecar.wait_for_access_log("sidecar", lambda line, c=client: c in line, timeout=10)  # type: ignore[misc]
    log = hop_log(mesh.sidecar, "sidecar", "text")
    for sent, client in ((first, first_client), (second, second_client)):
        entry = expect_entry(log, sent.ref(HOST, scheme="https"), wait=WAIT)
        assert entry.downstream_remote_address == client
    both = [e for e in log.entries if e.requested_server_name == HOST]
    assert {first_client, second_client} <= {e.downstream_remote_address for e in both}


def test_a_connection_refused_by_registry_only_is_a_black_hole_entry_with_its_sni(
    mesh: Mesh, pki: TestPKI
) -> None:
    sent, client = https_get(mesh, pki, UNREGISTERED, "/get")
    assert sent.status == 502
    mesh.sidecar.wait_for_access_log("sidecar", lambda line: client in line, timeout=10)
    entry = expect_entry(
        hop_log(mesh.sidecar, "sidecar", "json"), sent.ref(UNREGISTERED, scheme="https"), wait=WAIT
    )
    assert (entry.upstream_cluster, entry.response_flags, entry.response_code) == (
        ec.BLACKHOLE_CLUSTER,
        "UH",
        0,
    )
    assert entry.downstream_remote_address == client


@pytest.mark.parametrize("encoding", ["text", "json"])
def test_an_authorization_policy_refusal_is_a_403_the_gateway_refused(mesh: Mesh, encoding: str) -> None:
    denied_token, allowed_token = str(uuid.uuid4()), str(uuid.uuid4())
    base = f"http://{GATEWAY_IP}:{mesh.gateway.port('gateway_http')}"
    with httpx.Client(trust_env=False, timeout=10) as http:
        assert http.get(f"{base}/denied?egh-token={denied_token}", headers={"host": HOST}).status_code == 403
        assert (
            http.get(f"{base}/allowed?egh-token={allowed_token}", headers={"host": HOST}).status_code == 200
        )
    log = hop_log(mesh.gateway, "gateway", encoding)
    denied = expect_entry(log, RequestRef(path_token=denied_token, host=HOST), wait=WAIT)
    assert (denied.response_code, denied.response_code_details) == (
        403,
        "rbac_access_denied_matched_policy[none]",
    )
    assert gateway_refused()(denied) and not gateway_no_route()(denied)
    allowed = expect_entry(log, RequestRef(path_token=allowed_token, host=HOST), wait=WAIT)
    assert allowed.response_code == 200 and not gateway_refused()(allowed)


@pytest.mark.parametrize("encoding", ["text", "json"])
def test_a_canary_to_the_gateway_service_is_logged_by_the_gateway_as_404_nr(
    mesh: Mesh, encoding: str
) -> None:
    token = f"egh-live-{uuid.uuid4()}"
    with httpx.Client(trust_env=False, timeout=10) as http:
        answer = http.get(
            f"http://{SIDECAR_IP}:{mesh.sidecar.port('sidecar_http')}/{token}",
            headers={"host": GATEWAY_SERVICE},
        )
    assert answer.status_code == 404
    ref = RequestRef(path_token=token, host=GATEWAY_SERVICE)
    at_gateway = expect_entry(hop_log(mesh.gateway, "gateway", encoding), ref, wait=WAIT)
    assert (at_gateway.response_code, at_gateway.response_flags) == (404, "NR")
    assert at_gateway.response_code_details == "route_not_found" and gateway_refused()(at_gateway)
    at_sidecar = expect_entry(hop_log(mesh.sidecar, "sidecar", encoding), ref, wait=WAIT)
    assert (at_sidecar.upstream_cluster, at_sidecar.response_code) == (TO_GATEWAY_HTTP, 404)
