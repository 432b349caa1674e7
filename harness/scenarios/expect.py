"""A scenario request's ``expect:`` block, judged by the evidence engine.

The same judgement serves every tier: the local Envoy mesh and the kind cluster hand over the
calling workload's sidecar log and the egress gateway's log; what the scenario expects decides which
hops must show what:

- ``blocked: sidecar``: the sidecar refused it (502 ``block_all``, or TCP to ``BlackHoleCluster``);
- ``blocked: gateway``: the sidecar sent it to the gateway, which refused it: no route for it
  (404 ``NR``), its AuthorizationPolicy denied it (403 ``rbac_access_denied...``), or the TLS it
  originated could not verify the external host (503 ``UF``, ``CERTIFICATE_VERIFY_FAILED``);
- ``via_gateway: true``: the sidecar sent it to the gateway, the gateway to the external host;
- ``via_gateway: false``: the sidecar sent it straight out, and the gateway has no entry of it,
  proven on a live gateway log: a canary sent through the gateway must show up in it
  (``harness.evidence.expect_absent``);
- ``sidecar: absent`` (a calling workload that bypasses its sidecar: ``caller.sidecar``): neither
  the calling workload's sidecar nor the gateway has an entry of it, each proven live by a canary
  (the canary to the gateway passes the calling sidecar too); a workload without a sidecar has no
  log there (``sidecar=None``), and what shows where the request went is the external host's record.

A TCP request (``scheme: tcp``) is judged by TCP entries only: no method, response code 0 (no
HTTP on the way); with ``tcp_bytes: N`` each of them carried N bytes each way. Via the gateway, the
gateway's entry is the other end of the sidecar's connection: its downstream remote address is the
sidecar entry's upstream local address (pod to pod, no address translation).

The ``sidecar:`` and ``gateway:`` field maps add exact checks on those hops' entries. How a request
is found at each hop (``RequestRef``: a TLS request by its SNI in its time window) is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from harness.evidence import (
    EGRESS_GATEWAY_SERVICE,
    EntryLog,
    HopCheck,
    HopEvidence,
    RequestRef,
    Wait,
    assert_hops,
    gateway_forwarded,
    gateway_refused,
    sidecar_blocked,
    sidecar_direct,
    sidecar_to_gateway,
)
from harness.evidence import (
    predicates as p,
)
from harness.scenarios.model import Expectation, LogValue, ResolvedRequest


def field_checks(fields: Mapping[str, LogValue]) -> list[p.Predicate]:
    """One equality check per expected log field (``None`` means: absent)."""
    return [p.field(name, value) for name, value in fields.items()]


def tcp_checks(request: ResolvedRequest) -> list[p.Predicate]:
    """What a TCP request's entries must show at every hop it passed: a TCP entry (no HTTP: response
    code 0, no method) and, with ``tcp_bytes``, that many bytes each way; nothing for http(s)."""
    if request.scheme != "tcp":
        return []
    checks = [p.field("response_code", 0), p.field("method", None)]
    count = request.expect.tcp_bytes
    if count is not None and request.expect.blocked is None:
        checks += [p.field("bytes_received", count), p.field("bytes_sent", count)]
    return checks


def needs_canary(expect: Expectation) -> bool:
    """Whether judging ``expect`` watches the gateway for an entry that must not appear (``via_gateway:
    false``, not blocked: ``hop_checks``' absent gateway check), which a canary must prove live (with
    ``sidecar: absent`` the calling sidecar's absence too)."""
    return not expect.via_gateway and expect.blocked is None


def hop_checks(
    request: ResolvedRequest,
    *,
    sidecar: EntryLog | None,
    gateway: EntryLog,
    gateway_service: str = EGRESS_GATEWAY_SERVICE,
    canary: Callable[[], RequestRef] | None = None,
) -> list[HopCheck]:
    """The checks, in path order, that the request's expectation asks of each hop; ``canary`` goes
    with the absence checks. ``sidecar`` None: the calling workload has no sidecar, which only a
    request expected with ``sidecar: absent`` can have (``ValueError`` otherwise)."""
    exp = request.expect
    if exp.sidecar_absent:
        # the workload bypassed its sidecar (or has none): no hop of the mesh has an entry of it
        nothing = [] if sidecar is None else [HopCheck(sidecar, absent=True, canary=canary)]
        return [*nothing, HopCheck(gateway, absent=True, canary=canary)]
    if sidecar is None:
        raise ValueError(
            f"request {request.name}: the calling workload has no sidecar, so no sidecar entry can show "
            "where it sent the request; only an expectation with sidecar: absent fits such a caller"
        )
    tcp = tcp_checks(request)
    side_extra = [*tcp, *field_checks(exp.sidecar)]
    gw_extra = [*tcp, *field_checks(exp.gateway)]
    # Any port of the gateway service: plain HTTP reaches it on 80, TLS origination on 443 (ISTIO_MUTUAL);
    # a scenario's own ``sidecar.upstream_cluster`` pins the exact one.
    to_gateway = sidecar_to_gateway(gateway_service=gateway_service, port=None)
    if exp.blocked == "sidecar":
        return [HopCheck(sidecar, p.all_of(sidecar_blocked(), *side_extra))]
    if exp.blocked == "gateway":
        return [
            HopCheck(sidecar, p.all_of(to_gateway, *side_extra)),
            HopCheck(gateway, p.all_of(gateway_refused(), *gw_extra)),
        ]
    if exp.via_gateway:
        # the workload's own TLS, or plain TCP: the proxies log TCP entries (response code 0)
        status = None if request.scheme in ("https", "tcp") else exp.status
        # A scenario that names the gateway's upstream cluster (a wildcard host forwarded to another
        # host) replaces the default: the cluster of the request's own host.
        if "upstream_cluster" in exp.gateway:
            forwarded = p.status(status) if status is not None else p.always()
        else:
            forwarded = gateway_forwarded(request.host, request.port, status=status)
        return [
            HopCheck(sidecar, p.all_of(to_gateway, *side_extra)),
            HopCheck(gateway, p.all_of(forwarded, *gw_extra)),
        ]
    direct = (
        sidecar_direct(request.host, request.port) if "upstream_cluster" not in exp.sidecar else p.always()
    )
    return [
        HopCheck(sidecar, p.all_of(direct, *side_extra)),
        HopCheck(gateway, absent=True, canary=canary),
    ]


def judge(
    request: ResolvedRequest,
    ref: RequestRef,
    *,
    sidecar: EntryLog | None,
    gateway: EntryLog,
    wait: Wait | None = None,
    absence_window: float = 2.0,
    gateway_service: str = EGRESS_GATEWAY_SERVICE,
    canary: Callable[[], RequestRef] | None = None,
) -> list[HopEvidence]:
    """Check the request's expectation against the hop logs; the first hop that disagrees raises.

    ``absence_window`` is how long the gateway's log is watched for an entry that must not appear
    (at least the gateway's log flush interval, counted from the response). ``canary`` sends a
    request through the gateway and says how to find it (a tier's ``Stage.canary``): an absence is
    judged only with one (``ValueError`` otherwise), and holds only once the canary's entry shows.
    """
    checks = hop_checks(
        request, sidecar=sidecar, gateway=gateway, gateway_service=gateway_service, canary=canary
    )
    for check in (c for c in checks if c.absent and c.canary is None):
        raise ValueError(
            f"request {request.name}: its absence at {check.log.hop!r} needs a canary sent through that hop "
            "(judge(..., canary=...)): an empty or wrong log source shows no entry either"
        )
    if not tcp_linked(request, checks):
        return assert_hops(ref, checks, wait=wait, absence_window=absence_window)
    # a TCP connection via the gateway: the gateway's entry is the one whose downstream is the
    # sidecar's upstream connection (the window alone could take another connection's entry)
    first = assert_hops(ref, checks[:1], wait=wait, absence_window=absence_window)
    link = first[0].entry.upstream_local_address
    linked = HopCheck(checks[1].log, p.all_of(checks[1].expect, p.field("downstream_remote_address", link)))
    return first + assert_hops(ref, [linked], wait=wait, absence_window=absence_window)


def tcp_linked(request: ResolvedRequest, checks: list[HopCheck]) -> bool:
    """Whether the gateway's entry of ``request`` must be the sidecar's connection's other end: a
    TCP request that went from the sidecar to the gateway (two entries to find, none absent)."""
    return (
        request.scheme == "tcp"
        and request.expect.via_gateway
        and len(checks) == 2
        and not any(c.absent for c in checks)
    )
