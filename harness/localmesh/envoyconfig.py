"""Small builders of Envoy v3 bootstrap dicts shaped like the configs Istio gives its proxies.

Each function returns one plain ``dict`` (JSON-serialisable) for one part of a bootstrap; the caller
composes them::

    bootstrap(
        listeners=[http_listener("http", route_config("80", [
            virtual_host("external.test:80", [route(outbound_cluster("external.test", 80))],
                         domains=["external.test"]),
        ]), access_logs=[file_access_log(path, text_format=ISTIO_TEXT_FORMAT)])],
        clusters=[static_cluster(outbound_cluster("external.test", 80), [("127.0.0.1", 8080)])],
    )

Listeners and the admin bind port 0 by default: ``harness.localmesh.envoy.EnvoyProcess`` reads the bound ports
from the admin API, so two configs never race for a port.

The names are Istio's: clusters ``outbound|PORT|SUBSET|HOST``, ``BlackHoleCluster`` (no endpoints:
TCP gets ``UH``) and ``PassthroughCluster``; route ``default`` for a route to a service, route
``block_all`` answering 502 as a ``REGISTRY_ONLY`` sidecar does, ``allow_any`` for the passthrough.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: A bootstrap part: a JSON-serialisable dict.
Config = dict[str, Any]

BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
#: Istio's route names: a route to a service, the REGISTRY_ONLY catch-all, the ALLOW_ANY catch-all.
ROUTE_DEFAULT = "default"
ROUTE_BLOCK_ALL = "block_all"
ROUTE_ALLOW_ANY = "allow_any"
#: Node id and cluster of an Istio egress gateway (``router~IP~POD.NAMESPACE~NAMESPACE.svc...``).
EGRESS_GATEWAY_NODE_ID = "router~127.0.0.1~istio-egressgateway-0.istio-system~istio-system.svc.cluster.local"
EGRESS_GATEWAY_NODE_CLUSTER = "istio-egressgateway.istio-system"

_TYPES = "type.googleapis.com/envoy."
_HCM = _TYPES + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TCP_PROXY = _TYPES + "extensions.filters.network.tcp_proxy.v3.TcpProxy"
_ROUTER = _TYPES + "extensions.filters.http.router.v3.Router"
_RBAC = _TYPES + "extensions.filters.http.rbac.v3.RBAC"
_TLS_INSPECTOR = _TYPES + "extensions.filters.listener.tls_inspector.v3.TlsInspector"
_FILE_LOG = _TYPES + "extensions.access_loggers.file.v3.FileAccessLog"


def outbound_cluster(host: str, port: int, subset: str = "") -> str:
    """Istio's name of an outbound cluster: ``outbound|80||external.test``."""
    return f"outbound|{port}|{subset}|{host}"


def socket_address(address: str = "127.0.0.1", port: int = 0) -> Config:
    return {"socket_address": {"address": address, "port_value": port}}


def admin(address: str = "127.0.0.1", port: int = 0) -> Config:
    """An admin endpoint (port 0: the bound address is read with ``--admin-address-path``)."""
    return {"address": socket_address(address, port)}


def bootstrap(
    *,
    listeners: Iterable[Config] = (),
    clusters: Iterable[Config] = (),
    admin_config: Config | None = None,
    node_id: str = EGRESS_GATEWAY_NODE_ID,
    node_cluster: str = EGRESS_GATEWAY_NODE_CLUSTER,
) -> Config:
    """A static bootstrap: an admin on 127.0.0.1:0 unless given, the listeners and clusters."""
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": admin_config if admin_config is not None else admin(),
        "static_resources": {"listeners": list(listeners), "clusters": list(clusters)},
    }


def file_access_log(
    path: str | os.PathLike[str],
    *,
    text_format: str | None = None,
    json_labels: Mapping[str, str] | None = None,
) -> Config:
    """A file access logger with one TEXT format string or a JSON label map (exactly one)."""
    if (text_format is None) == (json_labels is None):
        raise ValueError("file_access_log needs exactly one of text_format and json_labels")
    log_format: Config
    if text_format is not None:
        log_format = {"text_format_source": {"inline_string": text_format}}
    else:
        log_format = {"json_format": dict(json_labels or {})}
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": _FILE_LOG, "path": os.fspath(path), "log_format": log_format},
    }


def route(cluster: str, *, name: str = ROUTE_DEFAULT, prefix: str = "/", timeout: str = "0s") -> Config:
    """A route to a cluster; ``name`` is what ``%ROUTE_NAME%`` prints."""
    return {"name": name, "match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": timeout}}


def direct_response(
    status: int = 502, *, name: str = ROUTE_BLOCK_ALL, prefix: str = "/", body: str | None = None
) -> Config:
    """A route that answers itself: Istio's REGISTRY_ONLY ``block_all`` (502) by default."""
    action: Config = {"status": status}
    if body is not None:
        action["body"] = {"inline_string": body}
    return {"name": name, "match": {"prefix": prefix}, "direct_response": action}


def virtual_host(name: str, routes: Iterable[Config], domains: Sequence[str] = ("*",)) -> Config:
    """A virtual host; a request whose authority no virtual host matches gets 404 ``NR``."""
    return {"name": name, "domains": list(domains), "routes": list(routes)}


def route_config(name: str, virtual_hosts: Iterable[Config]) -> Config:
    """An inline route configuration (Istio names an outbound one by port: ``"80"``)."""
    return {"name": name, "virtual_hosts": list(virtual_hosts), "validate_clusters": False}


def http_listener(
    name: str,
    routes: Config,
    *,
    address: str = "127.0.0.1",
    port: int = 0,
    access_logs: Iterable[Config] = (),
    stat_prefix: str | None = None,
    http_filters: Iterable[Config] = (),
) -> Config:
    """A listener with an HTTP connection manager on the given route config: ``http_filters`` (an
    RBAC filter, say), then the router."""
    hcm: Config = {
        "@type": _HCM,
        "stat_prefix": stat_prefix or name,
        "codec_type": "AUTO",
        "route_config": routes,
        "http_filters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
        ],
        "access_log": list(access_logs),
    }
    filters = [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    return _listener(name, address, port, filters)


def tcp_proxy_listener(
    name: str,
    cluster: str,
    *,
    address: str = "127.0.0.1",
    port: int = 0,
    access_logs: Iterable[Config] = (),
    stat_prefix: str | None = None,
) -> Config:
    """A listener proxying TCP to one cluster, logging each connection when it closes."""
    return _listener(name, address, port, [tcp_proxy(cluster, access_logs, stat_prefix=stat_prefix)])


def tcp_proxy(cluster: str, access_logs: Iterable[Config] = (), *, stat_prefix: str | None = None) -> Config:
    """A TCP proxy network filter to one cluster, logging each connection when it closes."""
    proxy: Config = {
        "@type": _TCP_PROXY,
        "stat_prefix": stat_prefix or cluster,
        "cluster": cluster,
        "access_log": list(access_logs),
    }
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}


def sni_listener(
    name: str,
    by_sni: Mapping[str, str],
    *,
    default_cluster: str | None = None,
    address: str = "127.0.0.1",
    port: int = 0,
    access_logs: Sequence[Config] = (),
) -> Config:
    """A listener that reads the TLS SNI (TLS inspector) and proxies the still encrypted connection
    to the cluster of its server name (``by_sni``: SNI -> cluster), as Istio's proxies route TLS
    they pass through; anything else goes to ``default_cluster`` (Istio's ``BlackHoleCluster``
    under REGISTRY_ONLY), or is closed without a filter chain when there is none."""
    chains = [
        {"filter_chain_match": {"server_names": [sni]}, "filters": [tcp_proxy(cluster, access_logs)]}
        for sni, cluster in by_sni.items()
    ]
    listener: Config = {
        "name": name,
        "address": socket_address(address, port),
        "listener_filters": [
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": _TLS_INSPECTOR}}
        ],
        "filter_chains": chains,
    }
    if default_cluster is not None:
        listener["default_filter_chain"] = {"filters": [tcp_proxy(default_cluster, access_logs)]}
    return listener


def rbac_allow_path_prefixes(policy: str, prefixes: Sequence[str]) -> Config:
    """An HTTP RBAC filter that ALLOWs only paths under ``prefixes`` (policy ``policy``), as Istio
    turns an ALLOW AuthorizationPolicy into one: anything else gets 403 with response code details
    ``rbac_access_denied_matched_policy[none]``."""
    permissions = [{"url_path": {"path": {"prefix": prefix}}} for prefix in prefixes]
    rules = {
        "action": "ALLOW",
        "policies": {
            policy: {"permissions": [{"or_rules": {"rules": permissions}}], "principals": [{"any": True}]}
        },
    }
    return {"name": "envoy.filters.http.rbac", "typed_config": {"@type": _RBAC, "rules": rules}}


def _listener(name: str, address: str, port: int, filters: list[Config]) -> Config:
    return {"name": name, "address": socket_address(address, port), "filter_chains": [{"filters": filters}]}


def static_cluster(
    name: str,
    endpoints: Iterable[tuple[str, int]],
    *,
    alt_stat_name: str | None = None,
    connect_timeout: str = "1s",
) -> Config:
    """A STATIC cluster of fixed endpoints (``127.0.0.x:port``).

    Istio 1.23+ sets ``alt_stat_name`` to the cluster name plus ``;`` (its stat-tag separator); then
    ``%UPSTREAM_CLUSTER%`` prints that, ``%UPSTREAM_CLUSTER_RAW%`` the name.
    """
    lb_endpoints = [{"endpoint": {"address": socket_address(host, port)}} for host, port in endpoints]
    cluster: Config = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    }
    if alt_stat_name is not None:
        cluster["alt_stat_name"] = alt_stat_name
    return cluster


def blackhole_cluster(name: str = BLACKHOLE_CLUSTER) -> Config:
    """Istio's ``BlackHoleCluster``: STATIC with no endpoints (HTTP 503 ``UH``, TCP closed ``UH``)."""
    return {"name": name, "type": "STATIC", "connect_timeout": "10s"}


def passthrough_cluster(name: str = PASSTHROUGH_CLUSTER, *, use_http_header: bool = True) -> Config:
    """Istio's ``PassthroughCluster``: ORIGINAL_DST, connecting where the client meant to go.

    Without iptables redirection the original destination of a loopback connection is the listener
    itself, so by default the destination comes from the ``x-envoy-original-dst-host`` request header
    (``127.0.0.1:PORT``) instead.
    """
    cluster: Config = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
    }
    if use_http_header:
        cluster["original_dst_lb_config"] = {"use_http_header": True}
    return cluster
