"""The chain a cluster run's requests take: ``client -> ingress -> proxy -> target -> external``.

The client sends ``GET <ingress>/proxy?url=<target URL>`` where the target URL is
``http://target.<ns>.svc.cluster.local:8080/proxy?url=<external URL>``
(``harness.common.traffic.chain_url``). :func:`send_until_answered` retries, with a deadline, until
both relays answer (the ingress route and the apps are ready), and says how long that took.

A scenario namespace of the catalog is reached through the shared ingress Gateway of the run
namespace: a VirtualService per namespace matches ``/<ns>/proxy`` and rewrites it to ``/proxy``
(:func:`ingress_route`), so the chain URL is ``<ingress>/<ns>/proxy?url=...``;
:class:`NamespaceRelays` are the relays of such a namespace.

A canary (:func:`send_canary`) goes down the same chain to the scenario's egress gateway service
itself, ``http://<gateway service>:80/egh-live-<uuid>``, which the gateway logs (404 ``NR``: no route
of it is for that name); :func:`liveness_gateway` gives the gateway the port-80 listener it needs
for that when the scenario's own Gateways give it none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from harness.cluster.apps import RELAY_IMAGE, RelayApps, ingress_host, require_token
from harness.cluster.errors import ChainNotReadyError
from harness.common.proc import progress
from harness.common.traffic import ChainResponse, TrafficError, chain_url
from harness.evidence import RequestRef, new_canary_token

TARGET_APP = "target"
RELAY_PORT = 8080
#: the path prefix the run namespace's ingress route sends to its ``proxy``
INGRESS_PATH = "/proxy"
#: the ingress Gateway of manifests/apps/relay.yaml; every scenario namespace's route binds to it
INGRESS_GATEWAY_NAME = "relay-gateway"
CHAIN_READY_TIMEOUT_S = 180.0
CHAIN_INTERVAL_S = 1.0
#: the egress gateway service's port a canary is sent to (plain HTTP; the gateway pod's 8080)
CANARY_PORT = 80
#: how long canaries are sent until one is not refused on the way (the gateway may not listen yet)
CANARY_DEADLINE_S = 30.0
CANARY_INTERVAL_S = 1.0
#: the status the calling sidecar answers while the gateway does not listen on the canary's port
CANARY_REFUSED = 503
#: the Gateway :func:`liveness_gateway` makes, in the scenario's namespace
LIVENESS_GATEWAY = "egh-live"


def target_url(namespace: str) -> str:
    """The ``target`` relay's /proxy endpoint as ``proxy`` calls it (in-mesh, by service name)."""
    return f"http://{TARGET_APP}.{namespace}.svc.cluster.local:{RELAY_PORT}/proxy"


def chain_for(ingress_url: str, namespace: str, destination: str, *, ingress_path: str = INGRESS_PATH) -> str:
    """``client -> ingress -> proxy -> target -> destination`` as one nested URL.

    ``ingress_path`` is where the ingress routes to the namespace's ``proxy``: ``/proxy`` for the run
    namespace, ``/<ns>/proxy`` for a scenario namespace (:func:`ingress_prefix`).
    """
    return chain_url([f"{ingress_url.rstrip('/')}{ingress_path}", target_url(namespace)], destination)


def chain_answered(response: ChainResponse) -> bool:
    """Both relays took part: the ingress route, ``proxy`` and ``target`` are up (whatever came after)."""
    return {"proxy", TARGET_APP} <= set(response.services)


@dataclass(frozen=True)
class ChainResult:
    """The answer to one request down the chain, after the chain itself was ready."""

    response: ChainResponse
    #: requests sent until both relays answered (1: ready at once)
    attempts: int
    #: seconds from the first attempt to the answer that counted
    waited_s: float
    #: when the request that counted was sent (UTC)
    sent_at: datetime
    #: when its answer came back (UTC)
    answered_at: datetime | None = None

    @property
    def request_id(self) -> str:
        return self.response.request_id

    @property
    def path_token(self) -> str | None:
        """The token in the request's path: it names the request at every hop, also where Istio's
        gateways replaced its x-request-id (None when the sender put none there)."""
        return self.response.path_token or None

    def ref(self, host: str | None = None, *, scheme: str = "http") -> RequestRef:
        """How the evidence engine finds this request's access-log entries: by its path token, else
        by its x-request-id; for TLS the workload speaks itself (``https``), by ``host`` as SNI in
        [sent_at, answered_at] (``RequestRef.for_request``)."""
        return RequestRef.for_request(
            scheme=scheme,
            host=host,
            request_id=self.request_id,
            path_token=self.path_token,
            sent_at=self.sent_at,
            answered_at=self.answered_at,
        )


def send_until_answered(
    send: Callable[[], ChainResponse],
    *,
    deadline_s: float = CHAIN_READY_TIMEOUT_S,
    interval_s: float = CHAIN_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChainResult:
    """Call ``send`` (a fresh x-request-id each time) until both relays answer, or the deadline passes."""
    start = clock()
    attempts = 0
    last = "nothing sent yet"
    while True:
        attempts += 1
        sent_at = now()
        try:
            response = send()
        except TrafficError as exc:
            last = str(exc)
        else:
            if chain_answered(response):
                return ChainResult(response, attempts, clock() - start, sent_at, now())
            last = f"HTTP {response.status} without both relays ({response.text[:160]!r})"
        remaining = start + deadline_s - clock()
        if remaining <= 0:
            raise ChainNotReadyError(
                f"the chain client -> ingress -> proxy -> target did not answer within {deadline_s:g}s "
                f"({attempts} attempts); last: {last}"
            )
        if attempts == 1 or attempts % 10 == 0:
            progress(f"waiting for the chain to answer (attempt {attempts}): {last}")
        sleep(min(interval_s, remaining))


def canary_path(token: str) -> str:
    """The path of a canary: ``/<token>`` (``egh-live-<uuid>``)."""
    return f"/{token}"


def send_canary(
    send: Callable[[str], ChainResult],
    *,
    deadline_s: float = CANARY_DEADLINE_S,
    interval_s: float = CANARY_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, ChainResult]:
    """Send canaries, ``send(path)`` down the chain to the gateway service, until one is answered by
    something else than the calling sidecar's 503 (the gateway does not listen on the port yet:
    :func:`liveness_gateway` was applied a moment ago), or the deadline passes; the last one's token
    and result. A canary's entry at the gateway is looked for by that token, whatever it answered."""
    start = clock()
    while True:
        token = new_canary_token()
        result = send(canary_path(token))
        remaining = start + deadline_s - clock()
        if result.response.status != CANARY_REFUSED or remaining <= 0:
            return token, result
        sleep(min(interval_s, remaining))


def liveness_gateway(
    namespace: str, selector: Mapping[str, str], *, port: int = CANARY_PORT
) -> dict[str, Any]:
    """An Istio Gateway in ``namespace`` with one plain HTTP server on ``port`` of the gateway pods
    ``selector`` picks, for a host nobody calls (``<namespace>.egh-live.invalid``).

    Istio gives a gateway listeners only for the ports of the Gateways that select it: without one on
    port 80 (a scenario without egress routing, such as sidecar-only-egress) the gateway refuses the
    canary's connection and logs nothing. With it, a request for a name no route there knows (the
    canary's, the gateway service's own) gets 404 ``NR`` and an access-log entry. The host is the
    namespace's own, so that two scenarios' Gateways never claim the same host and port.
    """
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": LIVENESS_GATEWAY, "namespace": namespace},
        "spec": {
            "selector": dict(selector),
            "servers": [
                {
                    "port": {"number": port, "name": f"http-{LIVENESS_GATEWAY}", "protocol": "HTTP"},
                    "hosts": [f"{namespace}.{LIVENESS_GATEWAY}.invalid"],
                }
            ],
        },
    }


def ingress_prefix(namespace: str) -> str:
    """The ingress path of a scenario namespace's ``proxy``: ``/<ns>/proxy``."""
    return f"/{namespace}{INGRESS_PATH}"


def ingress_route(namespace: str, gateway: str, token: str | None = None) -> dict[str, Any]:
    """The VirtualService that reaches ``namespace``'s ``proxy`` through the shared ingress ``gateway``.

    ``gateway`` is ``<ns>/<name>`` of the run's ingress Gateway; the route matches that run's
    :func:`~harness.cluster.apps.ingress_host` only, as the Gateway does. Istio merges the routes of several
    VirtualServices bound to one ingress gateway for one host, so every namespace adds its own
    prefix ``/<ns>/proxy``, rewritten to ``/proxy`` (the query string stays) before ``proxy`` gets it.
    With ``token`` the route matches requests carrying the run's token only
    (:func:`~harness.cluster.apps.require_token`).
    """
    route: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "relay-ingress", "namespace": namespace},
        "spec": {
            "hosts": [ingress_host(gateway.split("/", 1)[0])],
            "gateways": [gateway],
            "http": [
                {
                    "name": "to-proxy",
                    "match": [{"uri": {"prefix": ingress_prefix(namespace)}}],
                    "rewrite": {"uri": INGRESS_PATH},
                    "route": [
                        {
                            "destination": {
                                "host": f"proxy.{namespace}.svc.cluster.local",
                                "port": {"number": RELAY_PORT},
                            }
                        }
                    ],
                }
            ],
        },
    }
    if token:
        require_token(route["spec"], token)
    return route


class NamespaceRelays(RelayApps):
    """``proxy`` and ``target`` of manifests/apps/relay.yaml in a scenario namespace, reached through
    the run's shared ingress Gateway by :func:`ingress_route` instead of a Gateway of their own."""

    def __init__(
        self, kube: Any, namespace: str, *, gateway: str, image: str = RELAY_IMAGE, **kw: Any
    ) -> None:
        super().__init__(kube, namespace, image=image, **kw)
        self.gateway = gateway

    def documents(self) -> list[dict[str, Any]]:
        docs = [d for d in self.relay_documents() if d["kind"] not in ("Gateway", "VirtualService")]
        route = ingress_route(self.namespace, self.gateway, self.token)
        if self.labels:
            route["metadata"]["labels"] = dict(self.labels)
        return [*docs, route]

    def render(self) -> str:
        self.text = yaml.safe_dump_all(self.documents(), sort_keys=False)
        return self.text
