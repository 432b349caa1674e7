"""The local image of a scenario (``plan_for``): the catalog's own manifests, rendered, as routing.

The envoy tier runs these plans through real Envoy; here the translation itself is checked, fast,
against what Istio makes of the same objects:

- a VirtualService's ``gateways`` entry ``<namespace>/<name>`` names the Gateway ``name`` in
  ``namespace``; a bare ``name`` is the Gateway of that name in the VirtualService's own namespace
  (Istio's VirtualService reference, field ``gateways``);
- ``mesh`` binds a route to the sidecars; a route whose destination is the egress gateway service
  sends the host there (with the destination's subset);
- a Gateway binds only when it selects the egress gateway pods (``istio: egressgateway``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.localmesh.mesh import GatewayRoute, RoutingPlan, SidecarRoute
from harness.localmesh.plan import NotEmulable, plan_for
from harness.scenarios import load_catalog
from harness.scenarios.model import RenderContext
from harness.scenarios.render import render_scenario

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT / "scenarios")
CTX = RenderContext(istio_version="1.28.0")
HOST = CTX.external_host
GW_SERVICE = CTX.egress_gateway_service

Doc = dict[str, Any]


def documents(name: str, ctx: RenderContext = CTX) -> list[Doc]:
    """The scenario's manifests rendered as a run renders them (each a fresh copy to edit)."""
    rendered = render_scenario(CATALOG.get(name), ctx)
    return [copy.deepcopy(d.document.value) for d in rendered.documents]


def plan(
    name: str, edit: Callable[[list[Doc]], object] | None = None, ctx: RenderContext = CTX
) -> RoutingPlan:
    docs = documents(name, ctx)
    if edit is not None:
        edit(docs)
    return plan_for(CATALOG.get(name), docs, ctx)


def the(kind: str, docs: list[Doc]) -> Doc:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def rebind(gateway_ref: str) -> Callable[[list[Doc]], None]:
    """Refer to the scenario's Gateway as ``gateway_ref`` wherever its VirtualService names it."""

    def edit(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        name = the("Gateway", docs)["metadata"]["name"]
        vs["gateways"] = [gateway_ref if g == name else g for g in vs["gateways"]]
        for route in vs["http"]:
            for match in route["match"]:
                match["gateways"] = [gateway_ref if g == name else g for g in match["gateways"]]

    return edit


VIA_GATEWAY = RoutingPlan(
    sidecar_routes=(SidecarRoute(HOST, 80, via_gateway=True, subset="external"),),
    catch_all="allow_any",
    gateway_routes=(GatewayRoute(HOST, HOST, 80),),
)
#: The same manifests with the gateway leg unbound: the sidecars still send the host to the gateway,
#: which has no route for it.
SIDECAR_LEG_ONLY = RoutingPlan(
    sidecar_routes=(SidecarRoute(HOST, 80, via_gateway=True, subset="external"),),
    catch_all="allow_any",
    gateway_routes=(),
)


def test_the_via_gateway_scenario_routes_the_sidecar_to_the_gateway_and_the_gateway_out() -> None:
    assert plan("http-via-egress-gateway") == VIA_GATEWAY


def test_a_gateway_named_with_its_own_namespace_is_the_same_gateway() -> None:
    # <namespace>/<name> with the namespace the Gateway (and the VirtualService) is in
    assert plan("http-via-egress-gateway", rebind(f"{CTX.namespace}/egress-gateway")) == VIA_GATEWAY


def test_a_gateway_named_in_another_namespace_is_not_the_scenarios_gateway() -> None:
    # other-ns/egress-gateway is a Gateway the scenario does not define: the egress gateway gets no
    # route from it, whatever its name
    assert plan("http-via-egress-gateway", rebind("other-ns/egress-gateway")) == SIDECAR_LEG_ONLY


def test_a_bare_gateway_name_is_looked_up_in_the_virtual_services_namespace() -> None:
    def gateway_elsewhere(docs: list[Doc]) -> None:
        the("Gateway", docs)["metadata"]["namespace"] = CTX.gateway_namespace

    assert plan("http-via-egress-gateway", gateway_elsewhere) == SIDECAR_LEG_ONLY

    def named_with_its_namespace(docs: list[Doc]) -> None:
        gateway_elsewhere(docs)
        rebind(f"{CTX.gateway_namespace}/egress-gateway")(docs)

    assert plan("http-via-egress-gateway", named_with_its_namespace) == VIA_GATEWAY


def test_a_gateway_that_does_not_select_the_egress_gateway_routes_nothing_there() -> None:
    def ingress(docs: list[Doc]) -> None:
        the("Gateway", docs)["spec"]["selector"] = {"istio": "ingressgateway"}

    assert plan("http-via-egress-gateway", ingress) == SIDECAR_LEG_ONLY


def test_gateways_at_the_top_bind_the_matches_that_name_none() -> None:
    # a route without match gateways takes the VirtualService's: here both mesh and the gateway
    def no_match_gateways(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        vs["http"] = [vs["http"][1]]  # the gateway leg only (destination: the external host)
        del vs["http"][0]["match"][0]["gateways"]

    got = plan("http-via-egress-gateway", no_match_gateways)
    # the sidecars' leg: the host to itself (its destination is not the gateway service), no subset
    assert got.sidecar_routes == (SidecarRoute(HOST, 80, via_gateway=False, subset=""),)
    assert got.gateway_routes == (GatewayRoute(HOST, HOST, 80),)


def test_a_virtual_service_without_gateways_binds_the_mesh_only() -> None:
    def mesh_only(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        del vs["gateways"]
        vs["http"] = [vs["http"][0]]
        del vs["http"][0]["match"]

    got = plan("http-via-egress-gateway", mesh_only)
    # no match: port 80, the route's destination the gateway service's "external" subset
    assert got == SIDECAR_LEG_ONLY


def test_the_gateway_leg_forwards_to_its_destinations_port() -> None:
    def other_port(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        vs["http"][1]["route"][0]["destination"]["port"]["number"] = 8080

    assert plan("http-via-egress-gateway", other_port).gateway_routes == (GatewayRoute(HOST, HOST, 8080),)

    def no_port(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        del vs["http"][1]["route"][0]["destination"]["port"]
        vs["http"][1]["match"][0]["port"] = 8081

    # no destination port: the port the route matched on
    assert plan("http-via-egress-gateway", no_port).gateway_routes == (GatewayRoute(HOST, HOST, 8081),)


def test_a_sidecar_leg_on_another_port_routes_that_port() -> None:
    ctx = RenderContext(istio_version="1.28.0", external_port=8080)
    got = plan("http-via-egress-gateway", ctx=ctx)
    assert got.sidecar_routes == (SidecarRoute(HOST, 8080, via_gateway=True, subset="external"),)
    # the gateway's leg listens on 80 and forwards to the external host's 8080
    assert got.gateway_routes == (GatewayRoute(HOST, HOST, 8080),)


def test_the_wildcard_scenario_routes_the_domain_to_its_backend() -> None:
    got = plan("wildcard-host-via-egress-gateway")
    [route] = got.gateway_routes
    assert route.host == f"*.{CTX.external_host_domain}"
    assert route.port == 80 and route.destination != route.host
    assert [(r.host, r.via_gateway) for r in got.sidecar_routes] == [
        (f"*.{CTX.external_host_domain}", True),
        *[(r.host, False) for r in got.sidecar_routes[1:]],
    ]


def test_a_registered_host_without_routing_goes_straight_out() -> None:
    assert plan("sidecar-only-egress") == RoutingPlan(
        sidecar_routes=(SidecarRoute(HOST, 80, via_gateway=False),), catch_all="allow_any"
    )


def test_registry_only_blocks_the_unregistered() -> None:
    assert plan("registry-only-blocked") == RoutingPlan(
        sidecar_routes=(SidecarRoute(HOST, 80, via_gateway=False),), catch_all="block_all"
    )


def test_every_service_entry_port_and_host_is_registered() -> None:
    def two_ports_two_hosts(docs: list[Doc]) -> None:
        spec = the("ServiceEntry", docs)["spec"]
        spec["hosts"] = [HOST, "second.egress-harness.test"]
        spec["ports"] = [*spec["ports"], {"name": "http-alt", "number": 8080, "protocol": "http"}]

    got = plan("sidecar-only-egress", two_ports_two_hosts)
    assert {(r.host, r.port, r.via_gateway) for r in got.sidecar_routes} == {
        (HOST, 80, False),
        ("second.egress-harness.test", 80, False),
        (HOST, 8080, False),
        ("second.egress-harness.test", 8080, False),
    }


def test_a_route_to_the_gateway_keeps_the_registered_port_routed_to_the_gateway() -> None:
    # the ServiceEntry registers the host too: the VirtualService's route wins, not "straight out"
    got = plan("http-via-egress-gateway")
    assert [r.via_gateway for r in got.sidecar_routes] == [True]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("https-passthrough-via-egress-gateway", r"ServiceEntry port 443 is (TLS|HTTPS), not HTTP"),
        (
            "gateway-api-http-via-egress-gateway",
            r"Gateway \(gateway\.networking\.k8s\.io/v1\) has no local image",
        ),
        (
            "authz-policy-on-egress-gateway",
            r"AuthorizationPolicy \(security\.istio\.io/v1\) has no local image",
        ),
    ],
)
def test_what_the_local_tier_cannot_emulate_is_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(NotEmulable, match=reason):
        plan(name)


def test_tls_and_tcp_routes_are_refused() -> None:
    for kind in ("tls", "tcp"):

        def add(docs: list[Doc], kind: str = kind) -> None:
            the("VirtualService", docs)["spec"][kind] = [{"route": [{"destination": {"host": HOST}}]}]

        with pytest.raises(NotEmulable, match="VirtualService tls/tcp routes have no local image"):
            plan("http-via-egress-gateway", add)


def test_a_service_entry_port_without_protocol_is_refused() -> None:
    def no_protocol(docs: list[Doc]) -> None:
        del the("ServiceEntry", docs)["spec"]["ports"][0]["protocol"]

    with pytest.raises(NotEmulable, match=r"ServiceEntry port 80 is None, not HTTP"):
        plan("sidecar-only-egress", no_protocol)


def test_a_document_without_spec_is_no_routing() -> None:
    def bare(docs: list[Doc]) -> None:
        docs.append(
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "x"}}
        )
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "y"},
                "spec": [],
            }
        )

    assert plan("sidecar-only-egress", bare) == plan("sidecar-only-egress")


def _by_kind(docs: list[Doc]) -> Mapping[str, int]:
    out: dict[str, int] = {}
    for d in docs:
        out[d["kind"]] = out.get(d["kind"], 0) + 1
    return out


def test_the_catalog_scenarios_the_local_tier_emulates() -> None:
    # the three patterns of the local tier, and nothing silently dropped from the others
    emulated: list[str] = []
    for scenario in CATALOG.scenarios:
        try:
            plan_for(scenario, documents(scenario.name), CTX)
        except NotEmulable:
            continue
        emulated.append(scenario.name)
    assert {"http-via-egress-gateway", "sidecar-only-egress", "registry-only-blocked"} <= set(emulated)
    assert _by_kind(documents("http-via-egress-gateway")) == {
        "ServiceEntry": 1,
        "Gateway": 1,
        "DestinationRule": 1,
        "VirtualService": 1,
    }


def test_objects_without_a_namespace_are_in_the_runs() -> None:
    def no_namespaces(docs: list[Doc]) -> None:
        for doc in docs:
            del doc["metadata"]["namespace"]

    assert plan("http-via-egress-gateway", no_namespaces) == VIA_GATEWAY

    def qualified(docs: list[Doc]) -> None:
        no_namespaces(docs)
        rebind(f"{CTX.namespace}/egress-gateway")(docs)

    assert plan("http-via-egress-gateway", qualified) == VIA_GATEWAY


def test_the_subset_goes_with_the_gateway_only() -> None:
    def direct_with_subset(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        vs["http"][0]["route"][0]["destination"] = {"host": HOST, "subset": "v1"}

    got = plan("http-via-egress-gateway", direct_with_subset)
    assert got.sidecar_routes == (SidecarRoute(HOST, 80, via_gateway=False, subset=""),)

    def gateway_without_subset(docs: list[Doc]) -> None:
        vs = the("VirtualService", docs)["spec"]
        del vs["http"][0]["route"][0]["destination"]["subset"]

    got = plan("http-via-egress-gateway", gateway_without_subset)
    assert got.sidecar_routes == (SidecarRoute(HOST, 80, via_gateway=True, subset=""),)


def test_refusals_name_the_kind_and_api_exactly() -> None:
    def no_api(docs: list[Doc]) -> None:
        del the("ServiceEntry", docs)["apiVersion"]

    with pytest.raises(NotEmulable, match=r"^ServiceEntry \(\) has no local image$"):
        plan("sidecar-only-egress", no_api)

    def tls(docs: list[Doc]) -> None:
        the("VirtualService", docs)["spec"]["tls"] = [{"route": [{"destination": {"host": HOST}}]}]

    with pytest.raises(NotEmulable, match=r"^VirtualService tls/tcp routes have no local image$"):
        plan("http-via-egress-gateway", tls)


def test_a_spec_that_is_not_a_mapping_is_no_routing() -> None:
    def listed(docs: list[Doc]) -> None:
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "y"},
                "spec": ["x"],
            }
        )

    assert plan("sidecar-only-egress", listed) == plan("sidecar-only-egress")
