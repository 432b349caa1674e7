"""The local image of a scenario: its Istio manifests translated into a local-mesh ``RoutingPlan``.

A small, explicit model of what Istio's control plane makes of the plain-HTTP egress patterns,
so that the scenarios the local Envoy tier can emulate run there from the same ``scenario.yaml``:

- a ServiceEntry registers its hosts; without egress routing the sidecar sends a registered host
  to its own outbound cluster ``outbound|P||H``;
- a VirtualService route bound to ``mesh`` whose destination is the egress gateway service makes the
  sidecar send the host to ``outbound|P|SUBSET|<gateway service>``;
- a VirtualService route bound to a Gateway that selects the egress gateway makes the gateway send
  the route's hosts (``*.domain`` too) to its destination's cluster ``outbound|P||DEST``;
- ``outboundTrafficPolicy`` REGISTRY_ONLY turns the sidecar's catch-all into ``block_all`` (502).

What it cannot emulate (TLS, TCP, AuthorizationPolicy, the Kubernetes Gateway API, other kinds, a
calling workload that bypasses its sidecar) is refused with ``NotEmulable`` and the reason, and such a scenario is skipped on the local tier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.localmesh.mesh import GatewayRoute, RoutingPlan, SidecarRoute
from harness.scenarios.model import RenderContext, Scenario

_EMULATED = {"ServiceEntry", "Gateway", "VirtualService", "DestinationRule"}
_ISTIO_GROUP = "networking.istio.io/"


class NotEmulable(Exception):
    """The scenario uses something the local Envoy tier has no image of."""


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = doc.get("spec") or {}
    return spec if isinstance(spec, Mapping) else {}


def plan_for(scenario: Scenario, documents: Iterable[Mapping[str, Any]], ctx: RenderContext) -> RoutingPlan:
    """The routing the scenario's manifests give, or ``NotEmulable`` with the reason."""
    if not scenario.caller.captured:
        raise NotEmulable(
            f"its calling workload bypasses the sidecar (caller.sidecar: {scenario.caller.sidecar}), and the "
            "local mesh's workload sends everything through its sidecar Envoy (there is no iptables capture "
            "to leave out or go without)"
        )
    docs = list(documents)
    for doc in docs:
        kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
        if kind not in _EMULATED or not api.startswith(_ISTIO_GROUP):
            raise NotEmulable(f"{kind} ({api}) has no local image")
    registered: list[tuple[str, int]] = []
    for doc in (d for d in docs if d["kind"] == "ServiceEntry"):
        for port in _spec(doc).get("ports") or []:
            if str(port.get("protocol", "")).upper() != "HTTP":
                raise NotEmulable(
                    f"ServiceEntry port {port.get('number')} is {port.get('protocol')}, not HTTP"
                )
            registered += [(host, int(port["number"])) for host in _spec(doc).get("hosts") or []]
    egress_gateways = {
        (_namespace(doc, ctx), doc["metadata"]["name"])
        for doc in docs
        if doc["kind"] == "Gateway" and _spec(doc).get("selector") == {"istio": "egressgateway"}
    }
    sidecar: dict[tuple[str, int], SidecarRoute] = {}
    gateway: list[GatewayRoute] = []
    for doc in (d for d in docs if d["kind"] == "VirtualService"):
        _virtual_service(_spec(doc), ctx, egress_gateways, sidecar, gateway, namespace=_namespace(doc, ctx))
    for host, port in registered:
        sidecar.setdefault((host, port), SidecarRoute(host, port, via_gateway=False))
    policy = scenario.requires.outbound_traffic_policy or "ALLOW_ANY"
    return RoutingPlan(
        sidecar_routes=tuple(sidecar.values()),
        catch_all="block_all" if policy == "REGISTRY_ONLY" else "allow_any",
        gateway_routes=tuple(dict.fromkeys(gateway)),
    )


def _namespace(doc: Mapping[str, Any], ctx: RenderContext) -> str:
    """The namespace an object is applied in: its own, else the run's."""
    return str((doc.get("metadata") or {}).get("namespace") or ctx.namespace)


def _gateway_ref(ref: str, namespace: str) -> tuple[str, str]:
    """A VirtualService's gateway reference as (namespace, name): ``<namespace>/<name>``, or a bare
    ``name`` in the VirtualService's own namespace (Istio's VirtualService ``gateways`` field)."""
    ns, _, name = ref.rpartition("/")
    return (ns or namespace, name)


def _virtual_service(
    spec: Mapping[str, Any],
    ctx: RenderContext,
    egress_gateways: set[tuple[str, str]],
    sidecar: dict[tuple[str, int], SidecarRoute],
    gateway: list[GatewayRoute],
    *,
    namespace: str,
) -> None:
    """Add what one VirtualService (in ``namespace``) routes, at the sidecars (``mesh``) and at the
    egress gateway (``egress_gateways``: the (namespace, name) of each Gateway that selects it)."""
    if spec.get("tls") or spec.get("tcp"):
        raise NotEmulable("VirtualService tls/tcp routes have no local image")
    hosts = list(spec.get("hosts") or [])
    for route in spec.get("http") or []:
        unmodelled = sorted(set(route) - {"name", "match", "route"})
        if unmodelled:
            raise NotEmulable(f"VirtualService http route {', '.join(unmodelled)} has no local image")
        for match in route.get("match") or [{}]:
            bound = match.get("gateways") or spec.get("gateways") or ["mesh"]
            port = int(match.get("port") or 80)
            at_gateway = any(_gateway_ref(g, namespace) in egress_gateways for g in bound)
            for dest in (r.get("destination") or {} for r in route.get("route") or []):
                dest_host = dest.get("host")
                dest_port = int((dest.get("port") or {}).get("number") or port)
                for host in hosts:
                    if "mesh" in bound:
                        to_gateway = dest_host == ctx.egress_gateway_service
                        subset = str(dest.get("subset") or "") if to_gateway else ""
                        sidecar[(host, port)] = SidecarRoute(host, port, to_gateway, subset)
                    if at_gateway and dest_host:
                        gateway.append(GatewayRoute(host, str(dest_host), dest_port))
