"""Upgrading Istio under the scenario catalog: install A, run the catalog, upgrade to B, run it again.

Two modes, each following Istio's documented procedure:

``in-place`` (istio.io "In-place Upgrades")
    A is installed without a revision. The istioctl of B checks the cluster (``istioctl x precheck``)
    and runs ``istioctl upgrade`` with the same ``-f`` overlay A was installed with (in current
    istioctl, ``upgrade`` is ``install`` under another name, with the same flags); the control plane
    and the gateways are replaced in place. The workloads are restarted so their sidecars are
    injected again, and every proxy must then report B. In-place upgrades go at most one minor
    version at a time.

``canary`` (istio.io "Canary Upgrades")
    A is installed as revision ``1-29-6`` (a version's dots become dashes: a dot is not valid in a
    revision name) and the run namespaces carry ``istio.io/rev=1-29-6``. The istioctl of B installs B
    next to it with ``--set revision=1-30-3`` and the same overlay; Istio's gateways have no
    per-revision instances, so the revisioned install upgrades the egress and ingress gateways in place
    to the new revision, which is what the canary guide describes for gateways. The namespaces are
    relabelled (``istio.io/rev=1-30-3``, and ``istio-injection`` removed since it would take precedence),
    the workloads restarted, and every proxy, the egress gateway included, must report B and be
    connected to ``istiod-1-30-3``. Then A's control plane is removed with
    ``istioctl uninstall --revision 1-29-6 -y`` and its istiod must be gone. Revision-based upgrades may
    skip a minor version.

Phases and steps: ``install`` (check both istioctl binaries, refuse a cluster that already has an
istiod, install A, wait for it, label or create the namespaces), ``before`` (the catalog on A), ``upgrade`` (the steps above, with the optional prober
sending traffic all along), ``after`` (the catalog on B), ``cleanup`` (always: uninstall Istio with
``--purge``, delete istio-system and the namespaces this run created; ``keep`` skips it). Every step
is recorded; a failed step ends the run there, names its phase and step in the result, the scenarios
of the phases that did not run are recorded as skipped with that reason, and cleanup still runs.

Proxies are checked two ways: ``istioctl proxy-status`` (its table, or ``-o json`` where the
istioctl has it) and the ``istio-proxy`` container image of every pod, which must carry B's tag.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, get_args

from harness.cluster.istio import (
    ACCESS_LOG_ENCODINGS,
    EGRESS_GATEWAY_SELECTOR,
    ISTIO_NAMESPACE,
    OUTBOUND_POLICIES,
    kube_target_args,
    render_overlay,
)
from harness.cluster.kube import REQUEST_TIMEOUT_S, RolloutCheck, wait_until
from harness.cluster.providers.kind import INGRESS_NODE_PORT
from harness.common import versions
from harness.common.proc import interrupts_deferred, progress, run
from harness.common.tools import parse_istioctl_version
from harness.report.results import Phase, ProberStats, RunResult, ScenarioResult, StepResult, utc_now

T = TypeVar("T")

UpgradeMode = Literal["in-place", "canary"]
UPGRADE_MODES: tuple[UpgradeMode, ...] = get_args(UpgradeMode)

FROM_ENV: Final = "EGRESS_HARNESS_UPGRADE_FROM"
TO_ENV: Final = "EGRESS_HARNESS_UPGRADE_TO"
MODE_ENV: Final = "EGRESS_HARNESS_UPGRADE_MODE"

REV_LABEL: Final = "istio.io/rev"
INJECTION_LABEL: Final = "istio-injection"
RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"
PROXY_CONTAINER: Final = "istio-proxy"
GATEWAY_SELECTORS: Final = (EGRESS_GATEWAY_SELECTOR, "istio=ingressgateway")
GATEWAY_DEPLOYMENTS: Final = ("istio-ingressgateway", "istio-egressgateway")
EGRESS_GATEWAY_PREFIX: Final = "istio-egressgateway-"

VERSION_TIMEOUT_S: Final = 30.0
PRECHECK_TIMEOUT_S: Final = 180.0
PROXY_STATUS_TIMEOUT_S: Final = 60.0
UNINSTALL_TIMEOUT_S: Final = 300.0
NAMESPACE_DELETE_S: Final = 180.0
HEARTBEAT_S: Final = 30.0

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class UpgradeError(RuntimeError):
    """An upgrade step could not be done or its check did not hold."""


class StepFailedError(UpgradeError):
    """A step failed; ``phase`` and ``step`` say which, ``cause`` why."""

    def __init__(self, phase: str, step: str, cause: BaseException) -> None:
        self.phase, self.step, self.cause = phase, step, cause
        super().__init__(f"phase {phase!r}, step {step!r} failed: {cause}")


# --- the plan ---------------------------------------------------------------------------------------


def revision_name(version: str) -> str:
    """The revision name Istio's docs use for a version: ``1.30.3`` -> ``1-30-3``."""
    if not _VERSION.match(version):
        raise ValueError(f"not an Istio release version (X.Y.Z): {version!r}")
    return version.replace(".", "-")


def _minor(version: str) -> tuple[int, int, int]:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not an Istio release version (X.Y.Z): {version!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class UpgradePlan:
    """What to upgrade from and to, how, in which namespaces, and how long each wait may take."""

    from_version: str
    to_version: str
    mode: UpgradeMode = "canary"
    namespaces: tuple[str, ...] = ("egress-harness-upgrade",)
    access_log_encoding: str = "TEXT"
    outbound_traffic_policy: str = "ALLOW_ANY"
    ingress_node_port: int = INGRESS_NODE_PORT
    install_timeout_s: float = 900.0
    readiness_timeout_s: float = 600.0
    rollout_timeout_s: float = 300.0
    proxy_wait_s: float = 180.0
    poll_interval_s: float = 5.0
    prober_threshold: float = 0.95
    prober_interval_s: float = 0.2

    def __post_init__(self) -> None:
        for version in (self.from_version, self.to_version):
            versions.istio_version(version)  # raises for a version this harness does not support
        if self.mode not in UPGRADE_MODES:
            raise ValueError(f"mode must be one of {', '.join(UPGRADE_MODES)}, not {self.mode!r}")
        old, new = _minor(self.from_version), _minor(self.to_version)
        if new <= old:
            raise ValueError(f"an upgrade goes to a newer Istio: {self.from_version} -> {self.to_version}")
        steps = new[1] - old[1] if new[0] == old[0] else 99
        # In-place: the installed Istio may be at most one minor behind; revisions may skip one minor.
        limit = 1 if self.mode == "in-place" else 2
        if steps > limit:
            raise ValueError(
                f"{self.mode} upgrades span at most {limit} minor version{'s' if limit > 1 else ''}; "
                f"{self.from_version} -> {self.to_version} spans {steps}"
            )
        if not self.namespaces:
            raise ValueError("namespaces must name at least one namespace for the workloads")
        for ns in self.namespaces:
            if not _NAMESPACE.match(ns) or ns == ISTIO_NAMESPACE:
                raise ValueError(f"not a usable workload namespace: {ns!r}")
        if self.access_log_encoding not in ACCESS_LOG_ENCODINGS:
            raise ValueError(f"access_log_encoding must be one of {ACCESS_LOG_ENCODINGS}")
        if self.outbound_traffic_policy not in OUTBOUND_POLICIES:
            raise ValueError(f"outbound_traffic_policy must be one of {OUTBOUND_POLICIES}")

    @property
    def from_revision(self) -> str | None:
        return revision_name(self.from_version) if self.mode == "canary" else None

    @property
    def to_revision(self) -> str | None:
        return revision_name(self.to_version) if self.mode == "canary" else None

    def revision(self, version: str) -> str | None:
        return revision_name(version) if self.mode == "canary" else None

    def istiod_deployment(self, version: str) -> str:
        rev = self.revision(version)
        return f"istiod-{rev}" if rev else "istiod"

    def namespace_labels(self, version: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """(labels to set, labels to remove) so that new pods in the namespaces get ``version``'s sidecar."""
        rev = self.revision(version)
        if rev is None:
            return {INJECTION_LABEL: "enabled"}, (REV_LABEL,)
        # istio-injection takes precedence over istio.io/rev, so it must go.
        return {REV_LABEL: rev}, (INJECTION_LABEL,)

    def describe(self) -> str:
        return f"{self.mode} upgrade {self.from_version} -> {self.to_version}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> UpgradePlan | None:
        """The plan named by $EGRESS_HARNESS_UPGRADE_FROM/_TO/_MODE, or None when FROM and TO are unset."""
        env = os.environ if environ is None else environ
        old, new = env.get(FROM_ENV, "").strip(), env.get(TO_ENV, "").strip()
        if not old and not new:
            return None
        if not old or not new:
            raise ValueError(
                f"set both {FROM_ENV} and {TO_ENV} (got {old or 'nothing'} -> {new or 'nothing'})"
            )
        mode = env.get(MODE_ENV, "").strip() or "canary"
        return cls(old, new, mode, **overrides)  # type: ignore[arg-type]


# --- the cluster API the upgrade needs -------------------------------------------------------------


class UpgradeApi(Protocol):
    """Cluster reads and writes of an upgrade (``KubeUpgradeApi`` over ``harness.cluster.kube.Kube`` provides them)."""

    def deployment_exists(self, namespace: str, name: str) -> bool: ...

    def wait_rollout(
        self, namespace: str, name: str, *, deadline_s: float, interval_s: float = ...
    ) -> Any: ...

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    def namespace_exists(self, name: str) -> bool: ...

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None: ...

    def delete_namespace(self, name: str, *, deadline_s: float = ..., interval_s: float = ...) -> None: ...

    def label_namespace(self, name: str, labels: Mapping[str, str], remove: Sequence[str] = ()) -> None: ...

    def list_deployments(self, namespace: str) -> list[str]: ...

    def restart_deployment(self, namespace: str, name: str, restarted_at: str) -> None: ...


def label_patch(labels: Mapping[str, str], remove: Sequence[str] = ()) -> dict[str, Any]:
    """A merge patch of a namespace's labels: set ``labels``, delete ``remove`` (a null deletes a key)."""
    merged: dict[str, str | None] = {key: None for key in remove}
    merged.update(labels)
    return {"metadata": {"labels": merged}}


def restart_patch(restarted_at: str) -> dict[str, Any]:
    """The patch ``kubectl rollout restart`` sends: a new pod-template annotation, so new pods roll out."""
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}


class KubeUpgradeApi:
    """``UpgradeApi`` over a ``harness.cluster.kube.Kube`` (the helpers it lacks are the two patches above)."""

    PATCH_TYPE: Final = "application/strategic-merge-patch+json"

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    def deployment_exists(self, namespace: str, name: str) -> bool:
        return bool(self.kube.deployment_exists(namespace, name))

    def wait_rollout(self, namespace: str, name: str, *, deadline_s: float, interval_s: float = 2.0) -> Any:
        return self.kube.wait_rollout(namespace, name, deadline_s=deadline_s, interval_s=interval_s)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = self.kube.list_pods(namespace, selector)
        return pods

    def namespace_exists(self, name: str) -> bool:
        return bool(self.kube.namespace_exists(name))

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        self.kube.create_namespace(name, labels)

    def delete_namespace(self, name: str, *, deadline_s: float = 180.0, interval_s: float = 1.0) -> None:
        self.kube.delete_namespace(name, deadline_s=deadline_s, interval_s=interval_s)

    def label_namespace(self, name: str, labels: Mapping[str, str], remove: Sequence[str] = ()) -> None:
        self.kube.core.patch_namespace(
            name=name,
            body=label_patch(labels, remove),
            _content_type=self.PATCH_TYPE,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def list_deployments(self, namespace: str) -> list[str]:
        listing = self.kube.apps.list_namespaced_deployment(
            namespace=namespace, _request_timeout=REQUEST_TIMEOUT_S
        )
        items = self.kube.api_client.sanitize_for_serialization(listing).get("items") or []
        return sorted(str(item["metadata"]["name"]) for item in items)

    def restart_deployment(self, namespace: str, name: str, restarted_at: str) -> None:
        self.kube.apps.patch_namespaced_deployment(
            name=name,
            namespace=namespace,
            body=restart_patch(restarted_at),
            _content_type=self.PATCH_TYPE,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def close(self) -> None:
        self.kube.close()


# --- what the proxies report -----------------------------------------------------------------------


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


def _parse_proxy_status_json(text: str) -> list[ProxyStatus]:
    """``-o json``: istiod's sync DiscoveryResponse(s), each resource a ClientConfig with its node.

    Accepted shapes: one response, a list of them, or an object of istiod id -> response (or its
    JSON text). A proxy's version is its node metadata ``ISTIO_VERSION`` (what the proxy says it is).
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProxyStatusError(f"proxy-status JSON does not parse: {exc}") from exc
    if isinstance(data, Mapping) and "resources" in data:
        responses: list[Any] = [data]
    elif isinstance(data, list):
        responses = data
    elif isinstance(data, Mapping):
        responses = [json.loads(v) if isinstance(v, str) else v for v in data.values()]
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


def image_tag(image: str) -> str | None:
    """The tag of an image reference (``docker.io/istio/proxyv2:1.30.3`` -> ``1.30.3``); None for a digest only."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


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


# --- the run ------------------------------------------------------------------------------------------


#: ``run_catalog(phase, istio_version)``: run the scenario catalog and return one result per scenario.
CatalogRunner = Callable[[Phase, str], Sequence[ScenarioResult]]


@dataclass
class _State:
    steps: list[StepResult] = field(default_factory=list)
    scenarios: list[ScenarioResult] = field(default_factory=list)
    prober: ProberStats | None = None
    installed_with: str | None = None
    created_namespaces: list[str] = field(default_factory=list)
    failure: StepFailedError | None = None


class UpgradeRun:
    """Runs one ``UpgradePlan`` on a cluster and returns its ``RunResult``; cleanup always runs.

    ``run_catalog`` runs the scenario catalog; ``istioctl_for(version)`` gives the istioctl of a
    version (default: the pinned one, from PATH, the cache, or downloaded and verified); ``probe``, if
    given, is sent continuously during the upgrade phase by a ``harness.upgrade.prober.Prober``. ``clock`` and
    ``sleep`` drive the polling waits (the tests pass fakes).
    """

    def __init__(
        self,
        plan: UpgradePlan,
        kubeconfig: Path,
        run_dir: Path,
        *,
        run_catalog: CatalogRunner,
        context: str | None = None,
        istioctl_for: Callable[[str], str | os.PathLike[str]] | None = None,
        api: UpgradeApi | None = None,
        probe: Callable[[], Any] | None = None,
        probe_target: str = "",
        keep: bool = False,
        run_id: str | None = None,
        results_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plan = plan
        self.kubeconfig = kubeconfig
        self.run_dir = run_dir
        self.run_catalog = run_catalog
        self.context = context
        self._istioctl_for = istioctl_for or _pinned_istioctl
        self._istioctl: dict[str, str] = {}
        self._api = api
        self._owns_api = api is None
        self.probe = probe
        self.probe_target = probe_target
        self.keep = keep
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.run_id = run_id or f"upgrade-{plan.mode}-{plan.from_version}-{plan.to_version}-{stamp}"
        self.results_path = results_path
        self._clock = clock
        self._sleep = sleep
        self._state = _State()
        self._started = ""

    # -- plumbing --------------------------------------------------------------------------------------

    @property
    def api(self) -> UpgradeApi:
        if self._api is None:
            from harness.cluster.kube import Kube

            self._api = KubeUpgradeApi(Kube(self.kubeconfig, self.context))
        return self._api

    @property
    def overlay_path(self) -> Path:
        return self.run_dir / "istio-overlay.yaml"

    def _target(self) -> list[str]:
        return kube_target_args(self.kubeconfig, self.context)

    def istioctl(self, version: str) -> str:
        if version not in self._istioctl:
            self._istioctl[version] = str(self._istioctl_for(version))
        return self._istioctl[version]

    def _step(self, phase: str, name: str, action: Callable[[], T]) -> T:
        progress(f"{self.plan.describe()}: [{phase}] {name}")
        started = self._clock()
        try:
            value = action()
        except Exception as exc:
            self._record(phase, name, "failed", str(exc), started)
            raise StepFailedError(phase, name, exc) from exc
        except BaseException:
            self._record(phase, name, "failed", "interrupted", started)
            raise
        self._record(phase, name, "passed", "", started)
        return value

    def _record(self, phase: str, name: str, outcome: Any, message: str, started: float) -> None:
        self._state.steps.append(
            StepResult(phase, name, outcome, message, round(max(0.0, self._clock() - started), 3))
        )

    def _wait(
        self, what: str, fetch: Callable[[], T], decide: Callable[[T], RolloutCheck], deadline_s: float
    ) -> T:
        return wait_until(
            fetch,
            decide,
            what=what,
            deadline_s=deadline_s,
            interval_s=self.plan.poll_interval_s,
            clock=self._clock,
            sleep=self._sleep,
        )

    # -- the steps -------------------------------------------------------------------------------------

    def check_istioctl(self, version: str) -> str:
        path = self.istioctl(version)
        done = run([path, "version", "--remote=false", "-o", "json"], timeout=VERSION_TIMEOUT_S)
        found = parse_istioctl_version(done.stdout)
        if found != version:
            raise UpgradeError(f"{path} is Istio {found or 'of an unknown version'}, not {version}")
        return path

    def refuse_existing_istio(self) -> None:
        """Refuse a cluster that already runs an istiod: this run's cleanup would remove that Istio too."""
        names = dict.fromkeys(
            [
                "istiod",
                self.plan.istiod_deployment(self.plan.from_version),
                self.plan.istiod_deployment(self.plan.to_version),
            ]
        )
        found = [name for name in names if self.api.deployment_exists(ISTIO_NAMESPACE, name)]
        if found:
            raise UpgradeError(
                f"Istio is already installed on this cluster ({', '.join(f'{ISTIO_NAMESPACE}/{n}' for n in found)}); "
                "an upgrade run installs its own and removes it afterwards, so it needs a cluster without Istio"
            )

    def render(self) -> Path:
        return render_overlay(
            self.overlay_path,
            access_log_encoding=self.plan.access_log_encoding,
            outbound_traffic_policy=self.plan.outbound_traffic_policy,
            ingress_node_port=self.plan.ingress_node_port,
        )

    def install(self, version: str, verb: str = "install") -> None:
        """``istioctl install`` (or ``upgrade``) of ``version`` with the overlay, and its revision in a canary."""
        args = [self.istioctl(version), verb, "-y", "-f", str(self.overlay_path)]
        rev = self.plan.revision(version)
        if rev:
            args += ["--set", f"revision={rev}"]
        args += [*self._target(), "--readiness-timeout", f"{self.plan.readiness_timeout_s:g}s"]
        self._state.installed_with = version
        run(args, timeout=self.plan.install_timeout_s, echo=True, heartbeat_s=HEARTBEAT_S)

    def wait_control_plane(self, version: str) -> list[str]:
        for name in (self.plan.istiod_deployment(version), *GATEWAY_DEPLOYMENTS):
            self.api.wait_rollout(ISTIO_NAMESPACE, name, deadline_s=self.plan.readiness_timeout_s)
        pods = self.api.list_pods(ISTIO_NAMESPACE, EGRESS_GATEWAY_SELECTOR)
        running = [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            raise UpgradeError(
                f"no running egress gateway pod ({EGRESS_GATEWAY_SELECTOR}) in {ISTIO_NAMESPACE}"
            )
        return running

    def label_namespaces(self, version: str) -> None:
        labels, remove = self.plan.namespace_labels(version)
        for ns in self.plan.namespaces:
            if self.api.namespace_exists(ns):
                self.api.label_namespace(ns, labels, remove)
            else:
                self.api.create_namespace(ns, labels)
                self._state.created_namespaces.append(ns)

    def run_phase(self, phase: Phase, version: str) -> list[ScenarioResult]:
        results = list(self.run_catalog(phase, version))
        for result in results:
            if result.phase != phase or result.istio_version != version:
                raise UpgradeError(
                    f"the catalog returned {result.scenario} as phase {result.phase} on {result.istio_version}, "
                    f"but this is phase {phase} on {version}"
                )
        self._state.scenarios.extend(results)
        return results

    def precheck(self, version: str) -> None:
        run([self.istioctl(version), "x", "precheck", *self._target()], timeout=PRECHECK_TIMEOUT_S)

    def restart_workloads(self) -> dict[str, list[str]]:
        """``kubectl rollout restart deployment -n NS`` for each namespace, through the API; then wait."""
        restarted: dict[str, list[str]] = {}
        at = utc_now()
        for ns in self.plan.namespaces:
            names = self.api.list_deployments(ns)
            for name in names:
                self.api.restart_deployment(ns, name, at)
            restarted[ns] = names
        if not any(restarted.values()):
            raise UpgradeError(
                f"no deployment in {', '.join(self.plan.namespaces)}: no workload would carry the new sidecar"
            )
        for ns, names in restarted.items():
            for name in names:
                self.api.wait_rollout(ns, name, deadline_s=self.plan.rollout_timeout_s)
        return restarted

    def proxy_status(self, version: str) -> list[ProxyStatus]:
        done = run([self.istioctl(version), "proxy-status", *self._target()], timeout=PROXY_STATUS_TIMEOUT_S)
        return parse_proxy_status(done.stdout)

    def verify_proxies(self, version: str, *, expect_proxies_in: Iterable[str] = ()) -> None:
        """Poll until every proxy in scope reports ``version`` (and its revision's istiod in a canary)."""
        rev = self.plan.revision(version)
        prefix = f"istiod-{rev}-" if rev else None
        expected = tuple(expect_proxies_in)

        def fetch() -> list[str]:
            problems = proxy_problems(
                self.proxy_status(version),
                version=version,
                namespaces=self.plan.namespaces,
                istiod_prefix=prefix,
                expect_proxies_in=expected,
            )
            pods: list[dict[str, Any]] = []
            for selector in GATEWAY_SELECTORS:
                pods += self.api.list_pods(ISTIO_NAMESPACE, selector)
            for ns in self.plan.namespaces:
                pods += self.api.list_pods(ns, "")
            return problems + pod_image_problems(pods, version)

        def decide(problems: list[str]) -> RolloutCheck:
            if not problems:
                return RolloutCheck(True, f"every proxy reports {version}")
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            return RolloutCheck(False, shown)

        self._wait(f"proxies at Istio {version}", fetch, decide, self.plan.proxy_wait_s)

    def uninstall_revision(self, version: str, rev: str) -> None:
        run(
            [self.istioctl(version), "uninstall", "--revision", rev, "-y", *self._target()],
            timeout=UNINSTALL_TIMEOUT_S,
            heartbeat_s=HEARTBEAT_S,
        )

    def wait_gone(self, deployment: str) -> None:
        self._wait(
            f"{ISTIO_NAMESPACE}/{deployment} removal",
            lambda: self.api.deployment_exists(ISTIO_NAMESPACE, deployment),
            lambda exists: RolloutCheck(not exists, "still there" if exists else "gone"),
            self.plan.readiness_timeout_s,
        )

    # -- the phases ------------------------------------------------------------------------------------

    def _install_phase(self) -> None:
        plan = self.plan
        self._step(
            "install", f"check istioctl {plan.from_version}", lambda: self.check_istioctl(plan.from_version)
        )
        self._step(
            "install", f"check istioctl {plan.to_version}", lambda: self.check_istioctl(plan.to_version)
        )
        self._step("install", "check that no Istio is installed", self.refuse_existing_istio)
        self._step("install", "render overlay", self.render)
        rev = plan.from_revision
        self._step(
            "install",
            f"install Istio {plan.from_version}" + (f" as revision {rev}" if rev else ""),
            lambda: self.install(plan.from_version),
        )
        self._step(
            "install", "wait for the control plane", lambda: self.wait_control_plane(plan.from_version)
        )
        self._step("install", "label namespaces", lambda: self.label_namespaces(plan.from_version))

    def _upgrade_phase(self) -> None:
        plan = self.plan
        new = plan.to_version
        self._step("upgrade", "precheck", lambda: self.precheck(new))
        if plan.mode == "in-place":
            self._step("upgrade", f"istioctl upgrade to {new}", lambda: self.install(new, "upgrade"))
            self._step("upgrade", "wait for the control plane", lambda: self.wait_control_plane(new))
            restarted = self._step("upgrade", "restart workloads", self.restart_workloads)
            self._step(
                "upgrade",
                "verify proxies",
                lambda: self.verify_proxies(new, expect_proxies_in=[ns for ns, d in restarted.items() if d]),
            )
            return
        rev, old_rev = plan.to_revision, plan.from_revision
        assert rev is not None
        assert old_rev is not None
        self._step("upgrade", f"install Istio {new} as revision {rev}", lambda: self.install(new))
        # The revisioned install also moves the egress (and ingress) gateway to revision `rev` in place.
        self._step("upgrade", "wait for the control plane and gateways", lambda: self.wait_control_plane(new))
        self._step("upgrade", "relabel namespaces", lambda: self.label_namespaces(new))
        restarted = self._step("upgrade", "restart workloads", self.restart_workloads)
        self._step(
            "upgrade",
            "verify gateway and proxies",
            lambda: self.verify_proxies(new, expect_proxies_in=[ns for ns, d in restarted.items() if d]),
        )
        self._step("upgrade", f"uninstall revision {old_rev}", lambda: self.uninstall_revision(new, old_rev))
        self._step(
            "upgrade",
            f"verify revision {old_rev} is gone",
            lambda: self.wait_gone(plan.istiod_deployment(plan.from_version)),
        )

    def _probed_upgrade(self) -> None:
        if self.probe is None:
            self._upgrade_phase()
            return
        from harness.upgrade.prober import Prober

        prober = Prober(
            self.probe,
            interval_s=self.plan.prober_interval_s,
            threshold=self.plan.prober_threshold,
            target=self.probe_target,
        )
        prober.start()
        try:
            self._upgrade_phase()
        finally:
            try:
                self._state.prober = prober.stop()
            except Exception as exc:  # the prober's own failure must not hide the upgrade's
                progress(f"prober: {exc}")
                self._state.prober = prober.stats()
            progress(f"traffic during the upgrade: {self._state.prober.verdict()}")

    def _cleanup(self) -> None:
        if self.keep:
            self._state.steps.append(StepResult("cleanup", "cleanup", "skipped", "kept (keep is on)"))
            progress("keeping Istio and the namespaces (keep is on)")
            return
        with interrupts_deferred("the upgrade run's cleanup"):
            installed = self._state.installed_with
            if installed is not None:
                self._cleanup_step(
                    "uninstall Istio",
                    lambda: run(
                        [self.istioctl(installed), "uninstall", "--purge", "-y", *self._target()],
                        timeout=UNINSTALL_TIMEOUT_S,
                        heartbeat_s=HEARTBEAT_S,
                    ),
                )
                self._cleanup_step(
                    f"delete namespace {ISTIO_NAMESPACE}",
                    lambda: self.api.delete_namespace(ISTIO_NAMESPACE, deadline_s=NAMESPACE_DELETE_S),
                )
                self._state.installed_with = None
            for ns in list(self._state.created_namespaces):
                self._cleanup_step(
                    f"delete namespace {ns}",
                    functools.partial(self.api.delete_namespace, ns, deadline_s=NAMESPACE_DELETE_S),
                )
                self._state.created_namespaces.remove(ns)

    def _cleanup_step(self, name: str, action: Callable[[], object]) -> None:
        try:
            self._step("cleanup", name, action)
        except StepFailedError as exc:
            progress(f"cleanup: {exc}")

    def _skip_missing_phases(self, failure: StepFailedError) -> None:
        """Record each scenario of a phase that did not run as skipped, with the failed step as the reason."""
        ran = {(s.scenario, s.phase) for s in self._state.scenarios}
        names = sorted({s.scenario for s in self._state.scenarios})
        reason = f"not run: the upgrade failed in phase {failure.phase!r} at step {failure.step!r}"
        phases: tuple[tuple[Phase, str], ...] = (
            ("before", self.plan.from_version),
            ("after", self.plan.to_version),
        )
        for phase, version in phases:
            for name in names:
                if (name, phase) not in ran:
                    self._state.scenarios.append(ScenarioResult(name, phase, version, "skipped", reason))

    def result(self) -> RunResult:
        return RunResult(
            run_id=self.run_id,
            started=self._started,
            istio_versions=[self.plan.from_version, self.plan.to_version],
            mode=self.plan.mode,
            prober=self._state.prober,
            scenarios=list(self._state.scenarios),
            steps=list(self._state.steps),
        )

    def execute(self) -> RunResult:
        """Install, before, upgrade, after; then cleanup whatever happened. Returns the run's result.

        A failed step does not raise: the result names it (``failed_step``). Ctrl-C runs the cleanup
        and propagates. The result is also written to ``results_path`` when one was given.
        """
        self._started = utc_now()
        self._state = _State()
        plan = self.plan
        try:
            self._install_phase()
            self._step("before", "run the catalog", lambda: self.run_phase("before", plan.from_version))
            self._probed_upgrade()
            self._step("after", "run the catalog", lambda: self.run_phase("after", plan.to_version))
        except StepFailedError as failure:
            self._state.failure = failure
            progress(f"{plan.describe()} failed: {failure}")
            self._skip_missing_phases(failure)
        finally:
            try:
                self._cleanup()
            finally:
                self._close()
                if self.results_path is not None:
                    self.result().save(self.results_path)
        return self.result()

    def _close(self) -> None:
        if self._owns_api and self._api is not None:
            close = getattr(self._api, "close", None)
            if callable(close):
                close()
            self._api = None


def _pinned_istioctl(version: str) -> Path:
    from harness.common.tools import ensure_tool

    return ensure_tool("istioctl", version)
