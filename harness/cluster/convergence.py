"""When the proxies have a scenario: what its objects put into their configuration, and the waits.

A scenario is applied and then awaited until the proxies have it: the target's sidecar and the
egress gateway are asked for their configuration (``istioctl proxy-config all <pod>.<ns> -o json``)
until it holds every object of the scenario that reaches them (:func:`convergence_markers`: a
ServiceEntry's clusters, and the DestinationRules and VirtualServices, which Istio names in the
metadata of the clusters and routes it builds from them). Removal waits until they are gone again
(:func:`wait_for_markers` with ``present=False``), so one scenario cannot leak into the next.

The gateway a scenario's egress traffic leaves through is Istio's egress gateway, or the one Istio
deploys for a Gateway API ``Gateway`` among the scenario's objects (:func:`scenario_gateway`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.cluster.apps import has_sidecar
from harness.cluster.chain import TARGET_APP
from harness.cluster.errors import ConvergenceError, E2EError
from harness.cluster.gatewayapi import GATEWAY_API_GROUP
from harness.cluster.istio import EGRESS_GATEWAY_SELECTOR, ISTIO_NAMESPACE
from harness.cluster.kube import RolloutCheck, WaitTimeoutError, wait_until
from harness.common.proc import CommandError, progress, run
from harness.evidence import EGRESS_GATEWAY_SERVICE

CONVERGE_TIMEOUT_S = 120.0
CONVERGE_INTERVAL_S = 2.0
ISTIOCTL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ScenarioGateway:
    """The gateway a scenario's egress traffic leaves through: Istio's egress gateway, or the
    gateway Istio deploys for a Gateway API ``Gateway`` in the scenario's namespace."""

    namespace: str = ISTIO_NAMESPACE
    selector: str = EGRESS_GATEWAY_SELECTOR
    service: str = EGRESS_GATEWAY_SERVICE
    #: the Deployment Istio makes for a Gateway API Gateway (awaited after apply); None for Istio's
    deployment: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.selector.split(",") if "=" in item)


DEFAULT_GATEWAY = ScenarioGateway()


def scenario_gateway(documents: Sequence[Mapping[str, Any]], namespace: str) -> ScenarioGateway:
    """The gateway of a scenario: a Gateway API ``Gateway`` of class ``istio`` among ``documents``
    (Istio names its Deployment and Service ``<name>-istio`` and labels the pods
    ``gateway.networking.k8s.io/gateway-name=<name>``), else Istio's egress gateway."""
    for doc in documents:
        if doc.get("kind") != "Gateway" or not str(doc.get("apiVersion", "")).startswith(
            f"{GATEWAY_API_GROUP}/"
        ):
            continue
        if (doc.get("spec") or {}).get("gatewayClassName") != "istio":
            continue
        meta = doc.get("metadata") or {}
        name, ns = str(meta.get("name")), str(meta.get("namespace") or namespace)
        return ScenarioGateway(
            namespace=ns,
            selector=f"{GATEWAY_API_GROUP}/gateway-name={name}",
            service=f"{name}-istio.{ns}.svc.cluster.local",
            deployment=f"{name}-istio",
        )
    return DEFAULT_GATEWAY


ProxyKind = Literal["sidecar", "gateway"]

#: the Sidecar that gives a scenario's namespace the outbound traffic policy it needs when the
#: install has the other one (``requires.outbound_traffic_policy``)
OUTBOUND_POLICY_SIDECAR = "egress-harness-outbound-policy"
#: what a sidecar's routes hold under each outbound policy: Istio's catch-all virtual host is
#: ``block_all`` (502) under REGISTRY_ONLY and ``allow_any`` (PassthroughCluster) under ALLOW_ANY
CATCH_ALL_ROUTE = {"REGISTRY_ONLY": "block_all", "ALLOW_ANY": "allow_any"}


def outbound_policy_sidecar(namespace: str, mode: str) -> dict[str, Any]:
    """A namespace-wide Sidecar (no workloadSelector) with ``outboundTrafficPolicy`` ``mode``; its
    egress is the default one (every namespace's services), which a Sidecar must still list."""
    if mode not in CATCH_ALL_ROUTE:
        raise ValueError(f"outbound traffic policy must be one of {sorted(CATCH_ALL_ROUTE)}, not {mode!r}")
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": OUTBOUND_POLICY_SIDECAR, "namespace": namespace},
        "spec": {"egress": [{"hosts": ["*/*"]}], "outboundTrafficPolicy": {"mode": mode}},
    }


@dataclass(frozen=True)
class ConfigMarker:
    """A piece of text a proxy's configuration holds once it has one applied object."""

    proxy: ProxyKind
    needle: str
    what: str


def _kebab(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", kind).lower()


def _config_path(namespace: str, kind: str, name: str) -> str:
    # Istio puts "/apis/<group>/<version>/namespaces/<ns>/<kind>/<name>" into the istio.config metadata
    # of what it builds from an object; the version part varies, so match from the namespace on.
    return f'/namespaces/{namespace}/{_kebab(kind)}/{name}"'


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == str(v) for k, v in selector.items())


def _exported_to(doc_namespace: str, export_to: Sequence[str] | None, namespace: str) -> bool:
    """Whether an object of ``doc_namespace`` with ``exportTo`` is visible in ``namespace``."""
    if not export_to:
        return True
    return "*" in export_to or namespace in export_to or ("." in export_to and doc_namespace == namespace)


def convergence_markers(
    documents: Sequence[Mapping[str, Any]],
    namespace: str,
    *,
    gateway_labels: Mapping[str, str] | None = None,
) -> list[ConfigMarker]:
    """What the target's sidecar and the egress gateway must hold once ``documents`` reached them.

    * ServiceEntry: the sidecar has a cluster ``outbound|<port>||<host>`` per host and port;
    * DestinationRule of the run namespace (without workloadSelector): the sidecar has a cluster
      built with it;
    * VirtualService with ``http`` routes: a route built from it in the sidecar (gateways ``mesh`` or
      none) and in the egress gateway (a Gateway of ``documents`` whose selector matches
      ``gateway_labels``). ``tls``/``tcp`` routes carry no such name, so they add no marker.
    * AuthorizationPolicy in the gateway's namespace selecting the egress gateway: the gateway's RBAC
      filter holds a policy ``ns[<ns>]-policy[<name>]-rule[<i>]`` (Istio's name for each rule);
    * HTTPRoute (Gateway API) of the namespace: a route Istio built from it, named after a
      VirtualService of the namespace, in the sidecar (a ServiceEntry or Service parent) or in the
      gateway (a Gateway parent).

    * Sidecar of the namespace (without workloadSelector) with an outbound traffic policy: the sidecar's
      catch-all route of that policy (``block_all`` or ``allow_any``).

    Other kinds (TLSRoute, other policies) add no marker.
    """
    labels = gateway_labels or {"istio": "egressgateway"}
    egress_gateways = _egress_gateway_names(documents, namespace, labels)
    markers: list[ConfigMarker] = []
    for doc in documents:
        meta = doc.get("metadata") or {}
        ns = meta.get("namespace") or namespace
        spec = doc.get("spec") or {}
        api_version = str(doc.get("apiVersion", ""))
        kind, name = str(doc.get("kind")), str(meta.get("name"))
        if api_version.startswith("security.istio.io/") and kind == "AuthorizationPolicy":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if ns == ISTIO_NAMESPACE and _selects(selector, labels):
                markers.append(
                    ConfigMarker(
                        "gateway",
                        f"-policy[{name}]-rule[",
                        f"AuthorizationPolicy {ns}/{name} (egress gateway)",
                    )
                )
            continue
        if api_version.startswith(f"{GATEWAY_API_GROUP}/") and kind == "HTTPRoute" and ns == namespace:
            markers += _gateway_api_markers(name, ns, spec)
            continue
        if not api_version.startswith("networking.istio.io/"):
            continue
        if _exported_to(ns, spec.get("exportTo"), namespace):
            markers += _markers_of(kind, name, ns, spec, namespace=namespace, egress_gateways=egress_gateways)
    return markers


def _gateway_api_markers(name: str, ns: str, spec: Mapping[str, Any]) -> list[ConfigMarker]:
    # Istio turns an HTTPRoute into VirtualServices of the same namespace with generated names (the
    # scheme changed between releases), so the marker is the namespace's VirtualService path prefix.
    needle = f"/namespaces/{ns}/virtual-service/"
    kinds = {str((ref or {}).get("kind") or "Gateway") for ref in spec.get("parentRefs") or []}
    markers = []
    if kinds & {"ServiceEntry", "Service"}:
        markers.append(ConfigMarker("sidecar", needle, f"HTTPRoute {ns}/{name} (mesh)"))
    if "Gateway" in kinds:
        markers.append(ConfigMarker("gateway", needle, f"HTTPRoute {ns}/{name} (gateway)"))
    return markers


def reached_proxies(
    documents: Sequence[Mapping[str, Any]],
    markers: Sequence[ConfigMarker],
    namespace: str,
    gateway: ScenarioGateway,
) -> list[ProxyKind]:
    """Which proxies a scenario's objects reach, whose ACK of istiod's push is awaited: the target's
    sidecar for any object of the scenario, the gateway when a marker is in it, an Istio Gateway of
    the scenario selects it (TLS passthrough and TLS routes leave no marker) or the scenario deploys it."""
    kinds: list[ProxyKind] = ["sidecar"] if documents else []
    if (
        any(m.proxy == "gateway" for m in markers)
        or gateway.deployment
        or _egress_gateway_names(documents, namespace, gateway.labels)
    ):
        kinds.append("gateway")
    return kinds


def _egress_gateway_names(
    documents: Sequence[Mapping[str, Any]], namespace: str, labels: Mapping[str, str]
) -> set[str]:
    """``ns/name`` (and ``name`` in the run namespace) of the Istio Gateways that select the egress gateway."""
    names: set[str] = set()
    for doc in documents:
        if doc.get("kind") == "Gateway" and str(doc.get("apiVersion", "")).startswith("networking.istio.io/"):
            meta = doc.get("metadata") or {}
            if _selects((doc.get("spec") or {}).get("selector") or {}, labels):
                ns = meta.get("namespace") or namespace
                names.update({f"{ns}/{meta['name']}", *([meta["name"]] if ns == namespace else [])})
    return names


def _markers_of(
    kind: str, name: str, ns: str, spec: Mapping[str, Any], *, namespace: str, egress_gateways: set[str]
) -> list[ConfigMarker]:
    markers: list[ConfigMarker] = []
    if kind == "ServiceEntry" and not spec.get("workloadSelector"):
        for host in spec.get("hosts") or []:
            for port in spec.get("ports") or []:
                cluster = f"outbound|{port.get('number')}||{host}"
                markers.append(
                    ConfigMarker("sidecar", f'"{cluster}"', f"cluster {cluster} (ServiceEntry {name})")
                )
    elif kind == "DestinationRule" and ns == namespace and not spec.get("workloadSelector"):
        # which proxies take a rule from another namespace (root namespace, exportTo, selectors)
        # depends on rules this does not model: only the run namespace's own rules are awaited
        markers.append(ConfigMarker("sidecar", _config_path(ns, kind, name), f"DestinationRule {ns}/{name}"))
    elif kind == "Sidecar" and ns == namespace and not spec.get("workloadSelector"):
        mode = (spec.get("outboundTrafficPolicy") or {}).get("mode")
        if mode in CATCH_ALL_ROUTE:
            route = CATCH_ALL_ROUTE[mode]
            markers.append(
                ConfigMarker("sidecar", f'"{route}"', f"Sidecar {ns}/{name} (outbound {mode}: {route})")
            )
    elif kind == "VirtualService" and spec.get("http"):
        # only HTTP routes carry the object's name in their metadata; tls/tcp routes add no marker
        gateways = list(spec.get("gateways") or ["mesh"])
        needle = _config_path(ns, kind, name)
        if "mesh" in gateways:
            markers.append(ConfigMarker("sidecar", needle, f"VirtualService {ns}/{name} (mesh)"))
        if any(g in egress_gateways or f"{ns}/{g}" in egress_gateways for g in gateways if g != "mesh"):
            markers.append(ConfigMarker("gateway", needle, f"VirtualService {ns}/{name} (egress gateway)"))
    return markers


def missing_markers(
    markers: Sequence[ConfigMarker], dumps: Mapping[ProxyKind, Sequence[str]], *, present: bool = True
) -> list[ConfigMarker]:
    """The markers not yet (``present``) or still (not ``present``) in every dump of their proxy kind."""
    out: list[ConfigMarker] = []
    for marker in markers:
        texts = dumps.get(marker.proxy) or []
        if not texts:
            # no proxy to hold it: not there yet, and nothing left to drop it
            if present:
                out.append(marker)
            continue
        if (present and not all(marker.needle in t for t in texts)) or (
            not present and any(marker.needle in t for t in texts)
        ):
            out.append(marker)
    return out


# --- reading the proxies --------------------------------------------------------------------------

#: what ``istioctl proxy-config <section>`` reads, for error messages
_SECTIONS: Mapping[str, str] = {"all": "configuration", "secret": "secrets"}


def proxy_config(
    istioctl: str | None, section: str, pod: str, namespace: str, kube_args: Sequence[str] = ()
) -> str:
    """``istioctl proxy-config <section> <pod>.<ns> -o json``: with ``all`` the proxy's whole
    configuration, with ``secret`` its SDS secrets. ``kube_args`` name the cluster."""
    if not istioctl:
        raise E2EError(f"istioctl is needed to read a proxy's {_SECTIONS.get(section, section)}")
    argv = [istioctl, "proxy-config", section, f"{pod}.{namespace}", "-o", "json", *kube_args]
    return run(argv, timeout=ISTIOCTL_TIMEOUT_S).stdout


def proxy_pods(
    kube: Any, namespace: str, gateway: ScenarioGateway | None = None
) -> dict[ProxyKind, list[tuple[str, str]]]:
    """``(pod, namespace)`` of the target's sidecars in ``namespace`` (its pods that have one: a
    scenario's caller may run without) and of the gateway's pods."""
    gw = gateway or DEFAULT_GATEWAY
    sidecars = [
        (p["metadata"]["name"], namespace)
        for p in kube.list_pods(namespace, f"app={TARGET_APP}")
        if has_sidecar(p)
    ]
    gateways = [(p["metadata"]["name"], gw.namespace) for p in kube.list_pods(gw.namespace, gw.selector)]
    return {"sidecar": sidecars, "gateway": gateways}


#: the states of a listener in a proxy's config dump that it does not serve with: an updated or
#: removed listener drains for the proxy's drain duration (Istio: 45 s) and a new one warms first
_INACTIVE_STATES = ("draining_state", "warming_state")


def active_config(dump: str) -> str:
    """A proxy's configuration dump (``istioctl proxy-config all -o json``) as it serves traffic:
    without listeners that are still draining or warming. A dump that is not JSON is returned as
    it is. Without this, an object removed from a gateway listener (an AuthorizationPolicy's RBAC
    rules) stayed in the dump for the drain duration and every removal waited 46 s."""
    try:
        doc = json.loads(dump)
    except ValueError:
        return dump

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _INACTIVE_STATES}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(doc))


def wait_for_markers(
    markers: Sequence[ConfigMarker],
    *,
    pods: Callable[[], Mapping[ProxyKind, Sequence[tuple[str, str]]]],
    dump: Callable[[str, str], str],
    present: bool = True,
    deadline_s: float = CONVERGE_TIMEOUT_S,
    interval_s: float = CONVERGE_INTERVAL_S,
    what: str = "configuration",
) -> float:
    """Poll the proxies' configuration (``dump(pod, namespace)`` of each of ``pods()``) until every
    marker is there (or gone); the seconds it took. ConvergenceError naming what is missing at the
    deadline, or when a proxy's configuration cannot be read."""
    if not markers:
        return 0.0
    started = time.monotonic()
    kinds = sorted({m.proxy for m in markers}, key=lambda k: (k != "sidecar", k))

    def fetch() -> list[ConfigMarker]:
        listed = pods()
        dumps: dict[ProxyKind, list[str]] = {}
        for kind in kinds:
            dumps[kind] = [active_config(dump(pod, ns)) for pod, ns in listed[kind]]
        return missing_markers(markers, dumps, present=present)

    def decide(missing: list[ConfigMarker]) -> RolloutCheck:
        if not missing:
            return RolloutCheck(True, "converged")
        verb = "waiting for" if present else "still holding"
        return RolloutCheck(False, f"{verb} " + "; ".join(f"{m.what} in the {m.proxy}" for m in missing))

    try:
        wait_until(
            fetch,
            decide,
            what=f"proxies {'taking' if present else 'dropping'} {what}",
            deadline_s=deadline_s,
            interval_s=interval_s,
        )
    except WaitTimeoutError as exc:
        raise ConvergenceError(str(exc)) from exc
    except CommandError as exc:
        raise ConvergenceError(f"could not read a proxy's configuration: {exc}") from exc
    took = round(time.monotonic() - started, 3)
    progress(f"proxies {'have' if present else 'dropped'} {what} after {took:.1f}s")
    return took


# --- which Istio the proxies run ------------------------------------------------------------------

#: the container of Istio's proxy in a pod: a sidecar (or a native-sidecar init container), a gateway
PROXY_CONTAINER = "istio-proxy"


def image_tag(image: str) -> str | None:
    """The tag of an image reference (``docker.io/istio/proxyv2:1.30.3`` -> ``1.30.3``); None for a digest only."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def proxy_versions(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Istio versions the proxies of ``pods`` run: their ``istio-proxy`` image tags (``unknown``
    for an image without one), sorted, each once."""
    found: set[str] = set()
    for listed in pods:
        spec = listed.get("spec") or {}
        for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            if container.get("name") == PROXY_CONTAINER:
                found.add(image_tag(str(container.get("image") or "")) or "unknown")
    return sorted(found)
