"""Access-log lines as Istio's proxies print them, shared by the parser and evidence tests."""

from __future__ import annotations

import re

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
