"""The harness's own apps on the cluster path: their images, and the relay chain in the run namespace.

Images. ``build_app_image("relay", RELAY_IMAGE)`` runs ``docker build -t TAG apps/relay`` (bounded by
a timeout, with heartbeat lines). On a machine that cannot reach a registry the Dockerfile's base
(``python:3.12-slim``) cannot be pulled; then, and only then (the build's error names a pull or a
registry), the image is made from this machine's Python by :func:`harness.cluster.images.build_local_python_image`
and tagged ``TAG`` so the manifests need no change. ``mode="dockerfile"`` or ``"local"`` forces one way.

Deployment. ``RelayApps(kube, namespace)`` applies manifests/apps/relay.yaml into the run namespace
(which must carry ``istio-injection=enabled``): Deployments and Services ``proxy`` and ``target``,
and the ingress route (a Gateway on the ingress gateway's port 80 and a VirtualService sending the
path prefix ``/proxy`` to ``proxy:8080``). It waits for both rollouts and checks that each pod got
its ``istio-proxy`` sidecar. The manifest is checked for those parts before anything is applied.

Placement. On the harness's own cluster (``pin_to_control_plane``) the relays run on the
control-plane node, away from the egress gateway's worker (the node labels of manifests/kind/cluster.yaml
and the netns provider's): there the external host's record of its caller tells the gateway's node
from the relays'. The manifest itself places nothing, so on a cluster the harness does not own the
scheduler puts the pods wherever they fit (a managed cluster has no schedulable control-plane node).

What the relays may fetch, and who reaches them. The relays are no open proxies (issue 14): each
relay container gets ``ALLOWED_UPSTREAMS`` (apps/relay), the ``host:port`` list of what the chain
and the scenarios being run need (:func:`chain_upstreams` and what the caller adds), and refuses
anything else, and any loopback or link-local address, with 403. With a ``token`` (the run's,
``harness.common.traffic.new_token``) every ingress VirtualService route to a relay matches only
requests carrying ``x-egress-harness-token: <token>`` (:func:`require_token`): the ingress gateway
answers any other request 404 itself (no route), and the relay never sees it. The token is in the
cluster (the VirtualService) and in the run's state only: the manifest written to the run directory
has it redacted (:meth:`RelayApps.save`). With ``labels`` (the run's label) every object carries
them besides its own. With ``callers`` the relays also answer only the mesh's callers the chain needs
(:func:`caller_policies`, Istio AuthorizationPolicies): ``proxy`` the ingress gateway's identity,
``target`` its own namespace's; any other caller in the mesh gets 403 ``RBAC: access denied`` from
the relay's sidecar.

The calling relay. ``target`` calls the external host; a scenario's ``caller.sidecar`` says how its
pod is made (:func:`caller_pod`): with the sidecar (the default), without one (the pod label
``sidecar.istio.io/inject: "false"``, which Istio's injection webhook skips by its object selector),
or with a sidecar whose capture leaves out the external host's address (the pod annotation
``traffic.sidecar.istio.io/excludeOutboundIPRanges: <address>/32``, which the injector turns into the
iptables rules' exclusions). The deployment then checks that the pod has (or has not) the sidecar.

Trusting the run's CA. With ``ca_pem`` (the run's CA certificate, ``harness.common.certs``) the relays call
HTTPS hosts whose certificates that CA signed: the ConfigMap ``egress-harness-ca`` (key ``ca.crt``)
is applied first, and each relay Deployment mounts it read-only at ``/etc/egress-harness/ca/`` and
sets ``SSL_CERT_FILE=/etc/egress-harness/ca/ca.crt``, which Python's default TLS context (the relay's
``urllib``) loads instead of the system's bundle. Without ``ca_pem`` the manifest is applied as it is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import yaml

from harness.cluster.images import ImageBuildError, build_local_python_image
from harness.cluster.kube import ObjectRef, split_documents
from harness.common.certs import configmap_manifest
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, progress, run
from harness.common.traffic import TOKEN_HEADER

APPS_DIR = REPO_ROOT / "apps"
RELAY_MANIFEST = REPO_ROOT / "manifests" / "apps" / "relay.yaml"
RELAY_IMAGE = "istio-egress-harness/relay:dev"
RECORDER_IMAGE = "istio-egress-harness/recorder:dev"
RELAY_DEPLOYMENTS: tuple[str, ...] = ("proxy", "target")
#: the relay that calls the external host (the chain's last hop)
CALLER_DEPLOYMENT = "target"
#: the pod label Istio's injection webhook skips a pod by (its object selector: NotIn ["false"])
INJECT_LABEL = "sidecar.istio.io/inject"
#: the pod annotation whose CIDRs the sidecar's iptables rules do not redirect to the sidecar
EXCLUDE_OUTBOUND_ANNOTATION = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
RELAY_PORT = 8080
#: the path prefix the ingress VirtualService routes to the ``proxy`` service
INGRESS_PREFIX = "/proxy"
#: the domain of the runs' ingress hosts (``.test`` is reserved: it never resolves anywhere else)
INGRESS_DOMAIN = "ingress.egress-harness.test"
INGRESS_SELECTOR: Mapping[str, str] = {"istio": "ingressgateway"}
SIDECAR_CONTAINER = "istio-proxy"
#: the node the relays run on in the harness's own cluster, and the taint that node carries there
CONTROL_PLANE_NODE_SELECTOR: Mapping[str, str] = {"node-role.kubernetes.io/control-plane": ""}
CONTROL_PLANE_TOLERATION: Mapping[str, str] = {
    "key": "node-role.kubernetes.io/control-plane",
    "operator": "Exists",
    "effect": "NoSchedule",
}
#: the ConfigMap with the run's CA (key ``ca.crt``) that the relays trust when given one
CA_CONFIGMAP = "egress-harness-ca"
CA_VOLUME = "egress-harness-ca"
CA_MOUNT_DIR = "/etc/egress-harness/ca"
CA_FILE = f"{CA_MOUNT_DIR}/ca.crt"
#: the variable OpenSSL (and so Python's default TLS context) reads the trusted CAs from
CA_FILE_ENV = "SSL_CERT_FILE"
#: the relay's variable listing the ``host:port`` upstreams it may fetch (apps/relay)
ALLOWED_ENV = "ALLOWED_UPSTREAMS"
#: where the ingress gateway runs (its pods' identity is the one ``proxy`` answers)
INGRESS_NAMESPACE = "istio-system"
#: the AuthorizationPolicies that limit who may call the relays
CALLER_POLICIES = ("relay-proxy-callers", "relay-target-callers")
#: what stands for the run's token in a manifest written to disk
REDACTED_TOKEN = "REDACTED-the-run-token-is-in-its-run-state.json"  # noqa: S105

BUILD_TIMEOUT_S = 900.0
TAG_TIMEOUT_S = 60.0
ROLLOUT_TIMEOUT_S = 300.0
#: how often a relay's rollout is checked (a relay pod is ready within seconds)
ROLLOUT_INTERVAL_S = 0.5
HEARTBEAT_S = 30.0

BuildMode = Literal["auto", "dockerfile", "local"]
BUILD_MODES: tuple[str, ...] = ("auto", "dockerfile", "local")
#: what ``docker build`` prints when the base image cannot be pulled (no registry, no network)
_PULL_FAILURE = re.compile(
    r"pull access denied|failed to resolve source metadata|failed to do request|error pulling|"
    r"manifest unknown|toomanyrequests|dial tcp|no such host|i/o timeout|TLS handshake timeout|"
    r"connection refused|network is unreachable|temporary failure in name resolution|"
    r"failed to fetch anonymous token|failed to authorize|registry-1\.docker\.io",
    re.IGNORECASE,
)


class AppsError(RuntimeError):
    pass


# --- images ---------------------------------------------------------------------------------------


def is_pull_failure(text: str) -> bool:
    """Whether a ``docker build`` failure reads like "the base image could not be pulled"."""
    return bool(_PULL_FAILURE.search(text))


def _repository(tag: str) -> str:
    return tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag


def build_app_image(
    app: str,
    tag: str,
    *,
    mode: BuildMode = "auto",
    apps_dir: Path = APPS_DIR,
    timeout_s: float = BUILD_TIMEOUT_S,
) -> str:
    """Build ``apps/<app>`` as the image ``tag``; returns ``tag``.

    ``auto``: the Dockerfile, and the local-Python image when the build could not pull its base.
    """
    if mode not in BUILD_MODES:
        raise ValueError(f"mode must be one of {BUILD_MODES}, not {mode!r}")
    context = apps_dir / app
    if not (context / f"{app}.py").is_file():
        raise AppsError(f"no app {app!r}: {context / f'{app}.py'} does not exist")
    if mode != "local":
        progress(f"building image {tag} from {context}/Dockerfile")
        try:
            run(["docker", "build", "-t", tag, str(context)], timeout=timeout_s, heartbeat_s=HEARTBEAT_S)
            return tag
        except CommandError as exc:
            if mode == "dockerfile" or not is_pull_failure(f"{exc.stderr_tail}\n{exc.stdout_tail}"):
                raise AppsError(f"building {tag} failed:\n{exc}") from exc
            progress(
                f"`docker build` could not pull the base image of {app} (no registry reachable?); "
                "building it from this machine's Python instead"
            )
    try:
        local = build_local_python_image(_repository(tag), context, script=f"{app}.py", timeout=timeout_s)
    except ImageBuildError as exc:
        raise AppsError(f"building {tag} from this machine's Python failed: {exc}") from exc
    if local != tag:
        run(["docker", "tag", local, tag], timeout=TAG_TIMEOUT_S)
    progress(f"image {tag} built from this machine's Python ({local})")
    return tag


class ImageLoader(Protocol):
    def load_image(self, image: str) -> Any: ...


def prepare_relay_image(
    cluster: ImageLoader | None, *, tag: str = RELAY_IMAGE, mode: BuildMode = "auto"
) -> str:
    """Build the relay image and copy it into the cluster's nodes (``kind load docker-image``)."""
    build_app_image("relay", tag, mode=mode)
    if cluster is not None:
        cluster.load_image(tag)
    return tag


# --- the calling relay ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CallerPod:
    """What the calling relay's pod gets: ``sidecar`` (whether it must have one), and the labels and
    annotations that make it so."""

    sidecar: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def caller_pod(sidecar: str, external_address: str | None = None) -> CallerPod:
    """The calling relay's pod for a scenario's ``caller.sidecar``: ``injected``, ``none``, or
    ``excludes-external`` (which needs the external host's IP address)."""
    if sidecar == "injected":
        return CallerPod()
    if sidecar == "none":
        return CallerPod(sidecar=False, labels={INJECT_LABEL: "false"})
    if sidecar == "excludes-external":
        if not external_address:
            raise AppsError("caller.sidecar excludes-external needs the external host's address")
        try:
            address = ipaddress.ip_address(external_address)
        except ValueError as exc:
            raise AppsError(f"the external host's address {external_address!r} is not an IP address") from exc
        return CallerPod(annotations={EXCLUDE_OUTBOUND_ANNOTATION: f"{address}/{address.max_prefixlen}"})
    raise AppsError(f"unknown caller.sidecar {sidecar!r}: expected injected, none or excludes-external")


def apply_caller_pod(docs: Sequence[dict[str, Any]], caller: CallerPod, app: str = CALLER_DEPLOYMENT) -> None:
    """The labels and annotations of ``caller`` on the pod template of Deployment ``app``."""
    if not caller.labels and not caller.annotations:
        return
    found = False
    for doc in docs:
        if doc.get("kind") != "Deployment" or (doc.get("metadata") or {}).get("name") != app:
            continue
        found = True
        meta = doc["spec"]["template"].setdefault("metadata", {})
        for key, extra in (("labels", caller.labels), ("annotations", caller.annotations)):
            if extra:
                meta[key] = {**(meta.get(key) or {}), **extra}
    if not found:
        raise AppsError(f"the relay manifest has no Deployment {app!r} to make the caller")


# --- the manifest ---------------------------------------------------------------------------------


def _find(docs: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Mapping[str, Any]]:
    return [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or (d.get("metadata") or {}).get("name") == name)
    ]


def ingress_host(namespace: str) -> str:
    """The host the run in ``namespace`` is reached by at the ingress gateway, e.g.
    ``egress-abc123.ingress.egress-harness.test``: the run's ingress Gateway and routes match only it,
    and the client sends it as ``Host``, so that two runs on one cluster do not claim the same host
    and port of the shared ingress gateway (``istioctl analyze`` IST0145 when both said ``*``)."""
    return f"{namespace}.{INGRESS_DOMAIN}"


def chain_upstreams(namespace: str) -> list[str]:
    """What the relays of ``namespace`` fetch for the chain itself: ``target``'s service (``proxy``
    calls it; ``target`` calls its own ``/healthz`` through it while the chain is awaited)."""
    return [f"target.{namespace}.svc.cluster.local:{RELAY_PORT}"]


def require_token(spec: dict[str, Any], token: str) -> None:
    """Every route of a VirtualService ``spec`` matches only requests whose :data:`TOKEN_HEADER` is
    ``token`` (added to each of its match conditions; a route without any gets one)."""
    for http in spec.get("http") or []:
        matches = http.get("match") or [{}]
        for match in matches:
            match["headers"] = {**(match.get("headers") or {}), TOKEN_HEADER: {"exact": token}}
        http["match"] = matches


def allow_upstreams(docs: Sequence[dict[str, Any]], upstreams: Sequence[str]) -> None:
    """Every relay container of ``docs`` fetches ``upstreams`` (``host:port``) only: its ``ALLOWED_UPSTREAMS``."""
    value = ",".join(dict.fromkeys(upstreams))
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"].get("containers") or []:
            if container.get("name") == "relay":
                env = [e for e in container.get("env") or [] if e.get("name") != ALLOWED_ENV]
                env.append({"name": ALLOWED_ENV, "value": value})
                container["env"] = env


def label_objects(docs: Sequence[dict[str, Any]], labels: Mapping[str, str]) -> None:
    """Every object of ``docs`` carries ``labels`` besides its own (its pods' labels stay as they are)."""
    for doc in docs:
        metadata = doc.setdefault("metadata", {})
        metadata["labels"] = {**(metadata.get("labels") or {}), **labels}


def ingress_principals(kube: AppsApi, namespace: str = INGRESS_NAMESPACE) -> list[str]:
    """The identities of the ingress gateway's pods (``*/ns/<ns>/sa/<service account>``: any trust
    domain), read from the pods that :data:`INGRESS_SELECTOR` picks in ``namespace``."""
    selector = ",".join(f"{k}={v}" for k, v in INGRESS_SELECTOR.items())
    accounts = {
        (p.get("spec") or {}).get("serviceAccountName") or "default"
        for p in kube.list_pods(namespace, selector)
    }
    return [f"*/ns/{namespace}/sa/{account}" for account in sorted(accounts)]


def caller_policies(namespace: str, ingress: Sequence[str]) -> list[dict[str, Any]]:
    """Istio AuthorizationPolicies (ALLOW) in ``namespace``: ``proxy`` answers the ``ingress``
    principals only, ``target`` its own namespace's workloads only (``proxy``, and ``target`` itself
    for its ``/healthz`` through its Service). A caller without a mesh identity (plain text) matches
    neither. The sidecar answers anyone else 403; the kubelet's probes, which Istio's injector sends to
    the sidecar's agent (port 15020), are not affected."""

    def policy(name: str, app: str, source: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": app}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": source}]}],
            },
        }

    return [
        policy(CALLER_POLICIES[0], "proxy", {"principals": list(ingress)}),
        policy(CALLER_POLICIES[1], "target", {"namespaces": [namespace]}),
    ]


def redact(text: str, token: str | None) -> str:
    """``text`` with the run's token replaced by :data:`REDACTED_TOKEN` (for files on disk)."""
    return text.replace(token, REDACTED_TOKEN) if token else text


def scope_ingress(docs: Sequence[dict[str, Any]], host: str, token: str | None = None) -> None:
    """The ingress Gateway's servers and the VirtualServices bound to it match ``host`` only (and,
    with ``token``, requests carrying it only: :func:`require_token`)."""
    gateways = {
        g["metadata"]["name"]
        for g in docs
        if g.get("kind") == "Gateway"
        and dict((g.get("spec") or {}).get("selector") or {}) == dict(INGRESS_SELECTOR)
    }
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc.get("kind") == "Gateway" and doc["metadata"]["name"] in gateways:
            for server in spec.get("servers") or []:
                server["hosts"] = [host]
        elif doc.get("kind") == "VirtualService" and gateways & set(spec.get("gateways") or []):
            spec["hosts"] = [host]
            if token:
                require_token(spec, token)


def check_relay_manifest(docs: Sequence[Mapping[str, Any]]) -> None:
    """The manifest has both relays with their Services and the ingress route ``/proxy`` -> proxy:8080."""
    problems: list[str] = []
    for app in RELAY_DEPLOYMENTS:
        deployments = _find(docs, "Deployment", app)
        if not deployments:
            problems.append(f"no Deployment {app!r}")
        else:
            containers = deployments[0]["spec"]["template"]["spec"].get("containers") or []
            if not any(c.get("name") == "relay" for c in containers):
                problems.append(f"Deployment {app!r} has no container named 'relay'")
        services = _find(docs, "Service", app)
        if not services or not any(
            p.get("port") == RELAY_PORT for p in services[0]["spec"].get("ports") or []
        ):
            problems.append(f"no Service {app!r} on port {RELAY_PORT}")
    gateways = [
        g
        for g in _find(docs, "Gateway")
        if dict((g.get("spec") or {}).get("selector") or {}) == dict(INGRESS_SELECTOR)
        and any(
            (s.get("port") or {}).get("number") == 80 and (s.get("port") or {}).get("protocol") == "HTTP"
            for s in (g.get("spec") or {}).get("servers") or []
        )
    ]
    if not gateways:
        problems.append("no Gateway selecting istio=ingressgateway with an HTTP server on port 80")
    names = {g["metadata"]["name"] for g in gateways}
    routed = False
    for vs in _find(docs, "VirtualService"):
        spec = vs.get("spec") or {}
        if not names & set(spec.get("gateways") or []):
            continue
        for http in spec.get("http") or []:
            prefixes = {((m.get("uri") or {}).get("prefix")) for m in http.get("match") or []}
            targets = {
                (
                    (r.get("destination") or {}).get("host"),
                    ((r.get("destination") or {}).get("port") or {}).get("number"),
                )
                for r in http.get("route") or []
            }
            if INGRESS_PREFIX in prefixes and ("proxy", RELAY_PORT) in targets:
                routed = True
    if not routed:
        problems.append(
            f"no VirtualService on that Gateway routing prefix {INGRESS_PREFIX} to proxy:{RELAY_PORT}"
        )
    if problems:
        raise AppsError("the relay manifest is incomplete: " + "; ".join(problems))


def relay_documents(
    image: str = RELAY_IMAGE,
    manifest: Path = RELAY_MANIFEST,
    *,
    ca_configmap: str | None = None,
    ingress: str | None = None,
    pin_to_control_plane: bool = False,
    token: str | None = None,
    upstreams: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The relay manifest's objects, checked, with each relay container's image set to ``image``;
    with ``ca_configmap`` each relay also trusts the CA in that ConfigMap (:func:`trust_ca`); with
    ``ingress`` the ingress route matches that host only and, with ``token``, requests carrying it
    only (:func:`scope_ingress`); with ``pin_to_control_plane`` (the harness's own cluster only) the
    relays run on the control-plane node (:func:`pin_relays_to_control_plane`); with ``upstreams``
    the relays fetch those only (:func:`allow_upstreams`); with ``labels`` every object carries them."""
    docs = split_documents(manifest.read_text())
    check_relay_manifest(docs)
    if ingress is not None:
        scope_ingress(docs, ingress, token)
    if pin_to_control_plane:
        pin_relays_to_control_plane(docs)
    if upstreams is not None:
        allow_upstreams(docs, upstreams)
    if labels:
        label_objects(docs, labels)
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container.get("name") == "relay":
                    container["image"] = image
    if ca_configmap is not None:
        trust_ca(docs, ca_configmap)
    return docs


def pin_relays_to_control_plane(docs: Sequence[dict[str, Any]]) -> None:
    """Every relay Deployment of ``docs`` runs on the control-plane node: its node selector
    (:data:`CONTROL_PLANE_NODE_SELECTOR`, added to any the pod has) and a toleration of that node's
    NoSchedule taint. Only for the harness's own cluster, whose control-plane node is schedulable
    that way; a managed cluster has none, and the pods would stay Pending."""
    for doc in docs:
        if (
            doc.get("kind") != "Deployment"
            or (doc.get("metadata") or {}).get("name") not in RELAY_DEPLOYMENTS
        ):
            continue
        pod = doc["spec"]["template"]["spec"]
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **CONTROL_PLANE_NODE_SELECTOR}
        tolerations = [t for t in pod.get("tolerations") or [] if t != dict(CONTROL_PLANE_TOLERATION)]
        pod["tolerations"] = [*tolerations, dict(CONTROL_PLANE_TOLERATION)]


def trust_ca(docs: Sequence[dict[str, Any]], configmap: str = CA_CONFIGMAP) -> None:
    """Make every relay container of ``docs`` trust the CA of ``configmap`` (key ``ca.crt``): the
    ConfigMap as a read-only volume at :data:`CA_MOUNT_DIR` and ``SSL_CERT_FILE`` pointing at it."""
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = [v for v in pod.get("volumes") or [] if v.get("name") != CA_VOLUME]
        volumes.append(
            {
                "name": CA_VOLUME,
                "configMap": {"name": configmap, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
            }
        )
        pod["volumes"] = volumes
        for container in pod.get("containers") or []:
            if container.get("name") != "relay":
                continue
            mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != CA_VOLUME]
            mounts.append({"name": CA_VOLUME, "mountPath": CA_MOUNT_DIR, "readOnly": True})
            container["volumeMounts"] = mounts
            env = [e for e in container.get("env") or [] if e.get("name") != CA_FILE_ENV]
            env.append({"name": CA_FILE_ENV, "value": CA_FILE})
            container["env"] = env


def ca_configmap_document(namespace: str, ca_pem: bytes, name: str = CA_CONFIGMAP) -> dict[str, Any]:
    """The ConfigMap ``name`` in ``namespace`` with the CA certificate as ``ca.crt``."""
    return dict(configmap_manifest(name, namespace, {"ca.crt": ca_pem.decode("ascii")}))


# --- deploying ------------------------------------------------------------------------------------


class AppsApi(Protocol):
    """The cluster calls the deployment needs (harness.cluster.kube.Kube provides them)."""

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]: ...

    def delete_objects(self, refs: Sequence[ObjectRef]) -> None: ...

    def wait_rollout(
        self, namespace: str, name: str, *, deadline_s: float = ..., interval_s: float = ...
    ) -> Any: ...

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """Whether the pod has Istio's proxy: a container, or a native sidecar (an init container)."""
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]}
    return SIDECAR_CONTAINER in names


class RelayApps:
    """``proxy`` and ``target`` (and the ingress route) in ``namespace``; removed on exit unless ``keep``.

    With ``ca_pem`` the ConfigMap :data:`CA_CONFIGMAP` comes first and the relays trust that CA; with
    ``pin_to_control_plane`` (the harness's own cluster only) they run on the control-plane node. The
    relays fetch :func:`chain_upstreams` and ``upstreams`` only; with ``token`` the ingress route
    requires it; ``labels`` go on every object; with ``callers`` the relays answer only the callers
    the chain needs (:func:`caller_policies`, the ingress gateway's identity read when deploying).
    """

    def __init__(
        self,
        kube: AppsApi,
        namespace: str,
        *,
        image: str = RELAY_IMAGE,
        manifest: Path = RELAY_MANIFEST,
        rollout_timeout_s: float = ROLLOUT_TIMEOUT_S,
        keep: bool = False,
        ca_pem: bytes | None = None,
        pin_to_control_plane: bool = False,
        token: str | None = None,
        upstreams: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        callers: bool = False,
        caller: CallerPod | None = None,
    ) -> None:
        self.kube = kube
        self.caller = caller or CallerPod()
        self.pin_to_control_plane = pin_to_control_plane
        self.token = token
        self.callers = callers
        #: the ingress gateway's identities ``proxy`` answers (read by :meth:`deploy` with ``callers``)
        self.ingress_principals: list[str] = []
        self.upstreams = [*chain_upstreams(namespace), *upstreams]
        self.labels = dict(labels or {})
        self.namespace = namespace
        self.image = image
        self.manifest = manifest
        self.rollout_timeout_s = rollout_timeout_s
        self.keep = keep
        self.ca_pem = ca_pem
        self.refs: list[ObjectRef] = []
        self.text = ""

    def relay_documents(self) -> list[dict[str, Any]]:
        """The manifest's objects for this namespace (the ingress route matching its
        :func:`ingress_host` only): with a CA, its ConfigMap first."""
        host = ingress_host(self.namespace)
        docs = relay_documents(
            self.image,
            self.manifest,
            ca_configmap=CA_CONFIGMAP if self.ca_pem is not None else None,
            ingress=host,
            pin_to_control_plane=self.pin_to_control_plane,
            token=self.token,
            upstreams=self.upstreams,
            labels=self.labels,
        )
        apply_caller_pod(docs, self.caller)
        if self.ingress_principals:
            policies = caller_policies(self.namespace, self.ingress_principals)
            if self.labels:
                label_objects(policies, self.labels)
            docs += policies
        if self.ca_pem is None:
            return docs
        configmap = ca_configmap_document(self.namespace, self.ca_pem)
        if self.labels:
            label_objects([configmap], self.labels)
        return [configmap, *docs]

    def render(self) -> str:
        self.text = yaml.safe_dump_all(self.relay_documents(), sort_keys=False)
        return self.text

    def deploy(self) -> list[ObjectRef]:
        if self.callers and not self.ingress_principals:
            self.ingress_principals = ingress_principals(self.kube)
            if not self.ingress_principals:
                progress(
                    f"no ingress gateway pods ({', '.join(f'{k}={v}' for k, v in INGRESS_SELECTOR.items())}) in "
                    f"{INGRESS_NAMESPACE}: the relays in {self.namespace} answer any caller in the mesh"
                )
        text = self.render()
        progress(f"deploying the relay apps (proxy, target) into {self.namespace} with image {self.image}")
        self.refs = self.kube.apply(text, namespace=self.namespace)
        for app in RELAY_DEPLOYMENTS:
            self.kube.wait_rollout(
                self.namespace, app, deadline_s=self.rollout_timeout_s, interval_s=ROLLOUT_INTERVAL_S
            )
            self.verify_sidecar(app)
        return self.refs

    def verify_sidecar(self, app: str) -> list[dict[str, Any]]:
        pods = self.kube.list_pods(self.namespace, f"app={app}")
        if not pods:
            raise AppsError(f"no pod of {app!r} in {self.namespace} after its rollout")
        if app == CALLER_DEPLOYMENT and not self.caller.sidecar:
            injected = [p["metadata"]["name"] for p in pods if has_sidecar(p)]
            if injected:
                raise AppsError(
                    f"pods of {app!r} with the {SIDECAR_CONTAINER} sidecar although the scenario's caller has "
                    f"none ({INJECT_LABEL}=false on the pod): {', '.join(injected)}"
                )
            return pods
        bare = [p["metadata"]["name"] for p in pods if not has_sidecar(p)]
        if bare:
            raise AppsError(
                f"pods of {app!r} without the {SIDECAR_CONTAINER} sidecar: {', '.join(bare)}; is namespace "
                f"{self.namespace} labelled istio-injection=enabled, and is istiod's injector running?"
            )
        return pods

    def delete(self) -> None:
        if self.refs:
            self.kube.delete_objects(self.refs)
            self.refs = []

    def save(self, directory: Path) -> Path:
        """Write the applied manifest (for the diagnostics), the run's token redacted."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "relay.yaml"
        path.write_text(redact(self.text or self.render(), self.token))
        return path

    def __enter__(self) -> RelayApps:
        try:
            self.deploy()
        except BaseException:
            if not self.keep:
                self.delete()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.keep:
            progress(f"keeping the relay apps in {self.namespace}")
            return
        self.delete()
