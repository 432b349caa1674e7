"""What the proxies report after an upgrade, and what keeps them from being the new version.

Proxies are checked two ways: ``istioctl proxy-status`` (``parse_proxy_status`` reads its table, whose
columns vary by release, or its ``-o json`` output; ``proxy_problems`` judges it), and the
``istio-proxy`` container image of every pod, which must carry the new version's tag
(``pod_image_problems``; the container's name and the tag come from ``harness.cluster.convergence``,
which reads the same images for a result's proxy versions).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from harness.cluster.acks import json_documents
from harness.cluster.convergence import PROXY_CONTAINER, image_tag
from harness.cluster.istio import ISTIO_NAMESPACE

EGRESS_GATEWAY_PREFIX: Final = "istio-egressgateway-"


class ProxyStatusError(ValueError):
    """``istioctl proxy-status`` printed something that is neither its table nor its JSON."""


@dataclass(frozen=True)
class ProxyStatus:
    """One proxy as ``istioctl proxy-status`` lists it: ``pod.namespace``, its istiod, its version."""

    name: str
    istiod: str
    version: str

    @property
    def namespace(self) -> str:
        return self.name.rpartition(".")[2] if "." in self.name else ""

    @property
    def pod(self) -> str:
        return self.name.rpartition(".")[0] if "." in self.name else self.name


def parse_proxy_status(text: str) -> list[ProxyStatus]:
    """The proxies in ``istioctl proxy-status`` output: its table, or its ``-o json`` output."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        return _parse_proxy_status_json(stripped)
    return _parse_proxy_status_table(text)


def _is_header(tokens: list[str]) -> bool:
    return (
        tokens[:1] in (["NAME"], ["PROXY"])
        and "VERSION" in tokens
        and ("ISTIOD" in tokens or "PILOT" in tokens)
    )


def _parse_proxy_status_table(text: str) -> list[ProxyStatus]:
    """The table: ``NAME [CLUSTER] CDS LDS EDS RDS [ECDS] ISTIOD VERSION`` (columns vary by release).

    The header's column offsets cut each row (istioctl aligns with a tabwriter), so a status with a
    space in it (``NOT SENT``, ``SYNCED (2m3s)``) or an empty VERSION cannot shift the columns. The
    VERSION a pre-1.2 Istio could not tell carries a ``*`` suffix; it is dropped.
    """
    lines = text.splitlines()
    header_at = next(
        (i for i, line in enumerate(lines) if _is_header(line.split())),
        None,
    )
    if header_at is None:
        raise ProxyStatusError(
            "no proxy-status table header (NAME ... ISTIOD VERSION) in the output:\n" + text.strip()[:500]
        )
    header = lines[header_at]
    names = header.split()
    starts: list[int] = []
    position = 0
    for name in names:
        position = header.index(name, position)
        starts.append(position)
        position += len(name)
    istiod_col = names.index("ISTIOD") if "ISTIOD" in names else names.index("PILOT")
    version_col = names.index("VERSION")

    def cell(line: str, col: int) -> str:
        end = starts[col + 1] if col + 1 < len(starts) else len(line)
        return line[starts[col] : end].strip()

    found: list[ProxyStatus] = []
    for line in lines[header_at + 1 :]:
        if not line.strip():
            continue
        name = cell(line, 0)
        if not name or " " in name:
            raise ProxyStatusError(f"cannot read a proxy name from the proxy-status row {line!r}")
        found.append(ProxyStatus(name, cell(line, istiod_col), cell(line, version_col).rstrip("*")))
    return found


def _istiod_id(response: Mapping[str, Any]) -> str:
    identifier = (response.get("controlPlane") or {}).get("identifier")
    if isinstance(identifier, str):
        try:
            parsed = json.loads(identifier)
        except ValueError:
            return identifier
        if isinstance(parsed, Mapping):
            return str(parsed.get("ID") or "")
    return ""


#: keys of istiod's sync DiscoveryResponse (any one says the object is a response)
_RESPONSE_KEYS = frozenset({"resources", "typeUrl", "versionInfo", "controlPlane"})


def _parse_proxy_status_json(text: str) -> list[ProxyStatus]:
    """``-o json``: istiod's sync DiscoveryResponse(s), each resource a ClientConfig with its node.

    Accepted shapes: one response, a list of them, or an object of istiod id -> response (or its
    JSON text). A proxy's version is its node metadata ``ISTIO_VERSION`` (what the proxy says it is).
    """
    try:
        documents = json_documents(text)
    except ValueError as exc:
        raise ProxyStatusError(f"proxy-status JSON does not parse: {exc}") from exc
    responses: list[Any] = []
    for data in documents:
        if isinstance(data, Mapping) and _RESPONSE_KEYS & data.keys():
            # one istiod's response; one with no proxies has no "resources" at all (recorded: the
            # old revision's istiod once every proxy moved to the new one)
            responses.append(data)
        elif isinstance(data, list):
            responses += data
        elif isinstance(data, Mapping):
            responses += [json.loads(v) if isinstance(v, str) else v for v in data.values()]
        else:
            raise ProxyStatusError(f"unexpected proxy-status JSON of type {type(data).__name__}")
    found: list[ProxyStatus] = []
    for response in responses:
        if not isinstance(response, Mapping):
            raise ProxyStatusError("a proxy-status response is not a JSON object")
        istiod = _istiod_id(response)
        for resource in response.get("resources") or []:
            node = (resource or {}).get("node") or {}
            name = node.get("id")
            if not isinstance(name, str) or not name:
                raise ProxyStatusError("a proxy-status resource has no node id")
            metadata = node.get("metadata") or {}
            found.append(ProxyStatus(name, istiod, str(metadata.get("ISTIO_VERSION") or "")))
    return found


def proxy_problems(
    statuses: Iterable[ProxyStatus],
    *,
    version: str,
    namespaces: Iterable[str],
    istiod_prefix: str | None = None,
    expect_proxies_in: Iterable[str] = (),
) -> list[str]:
    """What keeps the proxies of the run from being upgraded to ``version``; empty when nothing does.

    In scope: every proxy in ``namespaces`` and the gateways in istio-system. An egress gateway proxy
    must be listed, and at least one proxy in each namespace of ``expect_proxies_in``. With
    ``istiod_prefix`` (a canary), each must be connected to an istiod of the new revision.
    """
    scope = set(namespaces)
    problems: list[str] = []
    seen_namespaces: set[str] = set()
    gateway_seen = False
    for proxy in statuses:
        is_gateway = proxy.namespace == ISTIO_NAMESPACE and proxy.pod.startswith(
            ("istio-egressgateway-", "istio-ingressgateway-")
        )
        if proxy.namespace not in scope and not is_gateway:
            continue
        seen_namespaces.add(proxy.namespace)
        if proxy.pod.startswith(EGRESS_GATEWAY_PREFIX) and proxy.namespace == ISTIO_NAMESPACE:
            gateway_seen = True
        if proxy.version != version:
            problems.append(f"{proxy.name} reports {proxy.version or 'no version'}, not {version}")
        if istiod_prefix and not proxy.istiod.startswith(istiod_prefix):
            problems.append(
                f"{proxy.name} is connected to {proxy.istiod or 'no istiod'}, not {istiod_prefix}*"
            )
    if not gateway_seen:
        problems.append(f"no egress gateway proxy ({EGRESS_GATEWAY_PREFIX}*.{ISTIO_NAMESPACE}) is listed")
    for ns in expect_proxies_in:
        if ns not in seen_namespaces:
            problems.append(f"no proxy of namespace {ns} is listed")
    return problems


def pod_image_problems(pods: Iterable[Mapping[str, Any]], version: str) -> list[str]:
    """Pods whose ``istio-proxy`` container (or native-sidecar init container) is not ``version``'s image.

    Pods already being deleted are left out: an old pod still terminating is not a problem.
    """
    problems = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        spec = pod.get("spec") or {}
        for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            if container.get("name") != PROXY_CONTAINER:
                continue
            image = str(container.get("image") or "")
            tag = image_tag(image)
            if tag is None or not (tag == version or tag.startswith(version + "-")):
                problems.append(
                    f"pod {meta.get('namespace', '?')}/{meta.get('name', '?')} runs {image or 'no image'}"
                )
    return problems
