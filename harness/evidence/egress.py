"""What egress looks like in Istio's access logs, as predicates and path assertions.

The facts, from Istio's egress tasks and its Envoy configuration:

- A sidecar that routes an external host to the egress gateway logs an outbound entry whose upstream
  cluster is the gateway service's: ``outbound|80|<subset>|istio-egressgateway.istio-system.svc.cluster.local``.
- The egress gateway logs the same request (same x-request-id) with the external host's cluster,
  ``outbound|<port>||<host>`` (or ``outbound|<port>|<subset>|<host>``), and the host as authority.
- With ``outboundTrafficPolicy: ALLOW_ANY`` and no ServiceEntry the sidecar sends the request to
  ``PassthroughCluster``; with a ServiceEntry but no gateway routing, straight to ``outbound|P||H``.
- With ``REGISTRY_ONLY`` an unregistered HTTP host gets ``502`` with details ``direct_response`` on
  route ``block_all``; a TCP/TLS connection goes to ``BlackHoleCluster`` with flag ``UH``.
- A gateway without a route for the host answers ``404`` ``NR`` ``route_not_found`` (HTTP), or
  closes with ``0`` ``NR`` ``filter_chain_not_found`` (TLS with no matching server).
- A gateway whose AuthorizationPolicy denies the request answers ``403`` with details
  ``rbac_access_denied_matched_policy[<policy>]`` (``[none]``: no ALLOW rule matched); the sidecar
  that sent it there relays the 403 (``via_upstream``).
- A gateway that originates TLS and cannot verify the external host's certificate (a CA that did
  not sign it, a subjectAltName it does not carry) answers ``503`` with flag ``UF`` (upstream
  connection failure) and, in ``%UPSTREAM_TRANSPORT_FAILURE_REASON%``, BoringSSL's
  ``CERTIFICATE_VERIFY_FAILED``; no HTTP request was written to the host.

Each way, the gateway refused it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.evidence import predicates as p
from harness.evidence.assertions import (
    DEFAULT_SETTLE,
    HopCheck,
    HopEvidence,
    RequestRef,
    Wait,
    assert_hops,
    expect_absent,
    expect_entry,
)
from harness.evidence.sources import EntryLog

EGRESS_GATEWAY_SERVICE = "istio-egressgateway.istio-system.svc.cluster.local"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
_ANY = p._ANY


def gateway_forwarded(
    host: str, port: int, *, status: int | None = 200, subset: object = _ANY
) -> p.Predicate:
    """A gateway entry that sent the request on to ``host:port`` (its outbound cluster)."""
    parts = [p.outbound_cluster(host, port, subset)]
    if status is not None:
        parts.insert(0, p.status(status))
    return p.all_of(*parts)


def gateway_forwarded_http(
    host: str, port: int, *, status: int | None = 200, subset: object = _ANY
) -> p.Predicate:
    """An HTTP gateway entry for ``host`` that went to its outbound cluster."""
    return p.all_of(gateway_forwarded(host, port, status=status, subset=subset), p.authority(host, port))


def sidecar_to_gateway(
    *, gateway_service: str = EGRESS_GATEWAY_SERVICE, port: int | None = 80, subset: object = _ANY
) -> p.Predicate:
    """A sidecar entry whose upstream is the egress gateway service (on ``port``; ``None``: any port)."""
    return p.outbound_cluster(gateway_service, port, subset)


def sidecar_direct(host: str, port: int) -> p.Predicate:
    """A sidecar entry that went to the external host itself (passthrough, or its ServiceEntry cluster)."""
    return p.any_of(p.cluster(PASSTHROUGH_CLUSTER), p.cluster(f"outbound|{port}||{host}"))


def sidecar_blocked() -> p.Predicate:
    """A sidecar entry of a request REGISTRY_ONLY refused: HTTP 502 on ``block_all``, or TCP to the black hole."""
    http_block = p.all_of(p.status(502), p.details("direct_response"), p.route("block_all"))
    tcp_block = p.all_of(p.flags("UH"), p.cluster(BLACKHOLE_CLUSTER))
    return p.any_of(http_block, tcp_block)


def gateway_no_route() -> p.Predicate:
    """A gateway entry of a request it had no route for."""
    http = p.all_of(p.status(404), p.flags("NR"), p.details("route_not_found"))
    tls = p.all_of(p.status(0), p.flags("NR"), p.details("filter_chain_not_found"))
    return p.any_of(http, tls)


def gateway_denied() -> p.Predicate:
    """A gateway entry of a request its AuthorizationPolicy refused (Envoy's RBAC filter): 403."""
    return p.all_of(p.status(403), p.details_prefix("rbac_access_denied"))


#: what BoringSSL names a failed verification of the peer's certificate (Envoy's transport failure reason)
CERTIFICATE_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


def gateway_unverified_upstream() -> p.Predicate:
    """A gateway entry of a request it would not send: the TLS it originated to the external host
    failed to verify the host's certificate (503 ``UF``, ``CERTIFICATE_VERIFY_FAILED``)."""
    return p.all_of(
        p.status(503),
        p.flags("UF"),
        p.field_contains("upstream_transport_failure_reason", CERTIFICATE_VERIFY_FAILED),
    )


def gateway_refused() -> p.Predicate:
    """A gateway entry of a request the gateway refused: it had no route for it, denied it, or could
    not verify the external host it was to originate TLS to."""
    return p.any_of(gateway_no_route(), gateway_denied(), gateway_unverified_upstream())


@dataclass(frozen=True, slots=True)
class EgressTarget:
    """The external destination of a request."""

    host: str
    port: int = 80
    subset: object = _ANY


def assert_through_gateway(
    request: RequestRef,
    target: EgressTarget,
    *,
    gateway: EntryLog,
    sidecar: EntryLog | None = None,
    status: int | None = 200,
    gateway_service: str = EGRESS_GATEWAY_SERVICE,
    gateway_port: int = 80,
    wait: Wait | None = None,
) -> list[HopEvidence]:
    """The request left the mesh through the egress gateway.

    With ``sidecar`` (the log of the workload that called the external host), its entry must show
    the gateway as upstream; the gateway's entry must show the external host's cluster.
    """
    checks: list[HopCheck] = []
    if sidecar is not None:
        checks.append(
            HopCheck(sidecar, sidecar_to_gateway(gateway_service=gateway_service, port=gateway_port))
        )
    forwarded = gateway_forwarded(target.host, target.port, status=status, subset=target.subset)
    checks.append(HopCheck(gateway, forwarded))
    return assert_hops(request, checks, wait=wait)


def assert_not_through_gateway(
    request: RequestRef,
    target: EgressTarget,
    *,
    sidecar: EntryLog,
    gateway: EntryLog,
    wait: Wait | None = None,
    window: float = DEFAULT_SETTLE,
    canary: Callable[[], RequestRef] | None = None,
) -> HopEvidence:
    """The sidecar sent the request straight out, and the gateway has no entry for it (proven on a
    live gateway log by ``canary``, a request sent through the gateway: ``expect_absent``)."""
    entry = expect_entry(sidecar, request, sidecar_direct(target.host, target.port), wait=wait)
    expect_absent(gateway, request, window=window, canary=canary, wait=wait)
    return HopEvidence(sidecar.hop, entry)


def assert_blocked(
    request: RequestRef,
    *,
    sidecar: EntryLog | None = None,
    gateway: EntryLog | None = None,
    wait: Wait | None = None,
) -> HopEvidence:
    """The request was refused: by the sidecar (REGISTRY_ONLY) or, when only ``gateway`` is given, by
    the gateway (no route, or an AuthorizationPolicy's denial)."""
    if sidecar is not None:
        return HopEvidence(sidecar.hop, expect_entry(sidecar, request, sidecar_blocked(), wait=wait))
    if gateway is not None:
        return HopEvidence(gateway.hop, expect_entry(gateway, request, gateway_refused(), wait=wait))
    raise ValueError("assert_blocked needs the sidecar's or the gateway's log")
