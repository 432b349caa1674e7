"""Thin helpers over the official Kubernetes client, always bound to one kubeconfig file.

The kubeconfig is loaded into a new ApiClient; the client library's global default configuration
and ~/.kube/config are never read or written. Waits poll with a deadline; their decisions are pure
functions of the fetched object (``rollout_status``) so they are tested without a cluster.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from harness.common.proc import progress
from harness.scenarios import render_template as _render_template

FIELD_MANAGER = "istio-egress-harness"
INJECTION_LABELS: Mapping[str, str] = {"istio-injection": "enabled"}
REQUEST_TIMEOUT_S = 30.0

T = TypeVar("T")


class KubeError(RuntimeError):
    pass


class WaitTimeoutError(KubeError):
    def __init__(self, what: str, deadline_s: float, last: str) -> None:
        self.what, self.deadline_s, self.last = what, deadline_s, last
        super().__init__(f"{what}: not done after {deadline_s:g}s; last state: {last}")


class RolloutFailedError(KubeError):
    """The Deployment controller gave up (condition Progressing, reason ProgressDeadlineExceeded)."""


# --- templates ------------------------------------------------------------------------------------

# The catalog's engine renders every template of the project; these keep the names the cluster tier
# has always used. Errors are TemplateError (a KeyError, as before) naming the file and line.


def render_template(text: str, values: Mapping[str, object], *, source: Path = Path("<template>")) -> str:
    """Replace every ``{{ name }}`` in ``text``; an unknown or unused name, or a malformed placeholder,
    is a :class:`~harness.scenarios.TemplateError` (a ``KeyError``) naming ``source`` and the line."""
    return _render_template(text, values, source=source, exact=True)


def render_file(template: Path, values: Mapping[str, object], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render_template(template.read_text(), values, source=template))
    return dest


# --- pure decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutCheck:
    done: bool
    message: str


def rollout_status(deployment: Mapping[str, Any] | None, name: str = "") -> RolloutCheck:
    """Decide a Deployment's rollout the way ``kubectl rollout status`` does.

    Done when the controller has observed the latest generation, every desired replica is updated,
    no old replica is left, and every updated replica is available. Raises RolloutFailedError when
    the Progressing condition says the progress deadline was exceeded.
    """
    if deployment is None:
        return RolloutCheck(False, f"deployment {name!r} does not exist yet")
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = name or str(meta.get("name", "?"))
    generation = int(meta.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if generation > observed:
        return RolloutCheck(
            False, f"waiting for the controller to observe generation {generation} of {name!r}"
        )
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            raise RolloutFailedError(
                f"deployment {name!r} exceeded its progress deadline: {cond.get('message', '')}".rstrip(": ")
            )
    desired = spec.get("replicas")
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if desired is not None and updated < int(desired):
        return RolloutCheck(False, f"{name!r}: {updated} of {desired} new replicas updated")
    if current > updated:
        return RolloutCheck(False, f"{name!r}: {current - updated} old replicas pending termination")
    if available < updated:
        return RolloutCheck(False, f"{name!r}: {available} of {updated} updated replicas available")
    return RolloutCheck(True, f"deployment {name!r} successfully rolled out")


def wait_until(
    fetch: Callable[[], T],
    decide: Callable[[T], RolloutCheck],
    *,
    what: str,
    deadline_s: float,
    interval_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll ``fetch`` until ``decide`` says done; raise WaitTimeoutError at the deadline.

    ``decide`` may raise to fail fast. A new state is printed as a progress line when it changes.
    """
    start = clock()
    deadline = start + deadline_s
    last = "not checked yet"
    while True:
        value = fetch()
        check = decide(value)
        if check.done:
            return value
        if check.message != last:
            progress(f"{what}: {check.message}")
            last = check.message
        now = clock()
        if now >= deadline:
            raise WaitTimeoutError(what, deadline_s, last)
        sleep(max(0.0, min(interval_s, deadline - now)))


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?")


def parse_log_timestamp(line: str) -> tuple[datetime, str] | None:
    """Split a ``timestamps=true`` log line into its RFC 3339 (nano) timestamp and the rest."""
    match = _TIMESTAMP.match(line)
    if not match:
        return None
    seconds, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    stamp = datetime.fromisoformat(f"{seconds}.{micro}{'+00:00' if zone == 'Z' else zone}")
    return stamp, line[match.end() :]


def filter_log_since(text: str, since: datetime) -> str:
    """Keep the lines stamped at or after ``since`` and drop the stamps.

    A line without a stamp (should the server send one) follows the decision for the line before it.
    """
    kept: list[str] = []
    keep = False
    for line in text.splitlines(keepends=True):
        parsed = parse_log_timestamp(line)
        body = line
        if parsed is not None:
            stamp, body = parsed
            keep = stamp >= since
        if keep:
            kept.append(body)
    return "".join(kept)


def since_seconds_for(since: datetime, now: datetime) -> int:
    """The whole-second window to ask the server for so that nothing at or after ``since`` is missed."""
    return max(1, math.ceil((now - since).total_seconds()) + 1)


# --- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str | None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.kind}/{self.name}{where}"


def split_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document manifest, each checked for kind and name."""
    docs: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            raise KubeError(f"not a Kubernetes object (no apiVersion/kind): {str(doc)[:120]}")
        if not (doc.get("metadata") or {}).get("name"):
            raise KubeError(f"{doc['kind']} without metadata.name")
        docs.append(doc)
    return docs


class Kube:
    """One cluster, reached through one kubeconfig file (and optionally one of its contexts)."""

    def __init__(self, kubeconfig: Path, context: str | None = None) -> None:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        if not kubeconfig.is_file():
            raise KubeError(f"kubeconfig {kubeconfig} does not exist")
        self.kubeconfig = kubeconfig
        self.context = context
        self.api_client: Any = cast(Any, k8s_config).new_client_from_config(
            config_file=str(kubeconfig), context=context, persist_config=False
        )
        self.core: Any = cast(Any, k8s_client).CoreV1Api(self.api_client)
        self.apps: Any = cast(Any, k8s_client).AppsV1Api(self.api_client)
        self._dynamic: Any = None

    def close(self) -> None:
        self.api_client.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dynamic(self) -> Any:
        if self._dynamic is None:
            from kubernetes.dynamic import DynamicClient

            self._dynamic = cast(Any, DynamicClient)(self.api_client)
        return self._dynamic

    def _plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    @staticmethod
    def _is_not_found(exc: BaseException) -> bool:
        return getattr(exc, "status", None) == 404

    # namespaces

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        }
        self.core.create_namespace(body=body, _request_timeout=REQUEST_TIMEOUT_S)
        progress(f"namespace {name} created (labels {dict(labels or {})})")

    def server_version(self) -> str:
        """The API server's own version (``/version``'s gitVersion, e.g. ``v1.36.3``)."""
        from kubernetes import client as k8s_client

        info = cast(Any, k8s_client).VersionApi(self.api_client).get_code(_request_timeout=REQUEST_TIMEOUT_S)
        return str(info.git_version)

    def namespace_exists(self, name: str) -> bool:
        try:
            self.core.read_namespace(name=name, _request_timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            if self._is_not_found(exc):
                return False
            raise
        return True

    def delete_namespace(
        self, name: str, *, deadline_s: float = 180.0, interval_s: float = 1.0, wait: bool = True
    ) -> None:
        """Delete ``name`` and (with ``wait``) wait until it is gone (its finalizers ran)."""
        try:
            self.core.delete_namespace(name=name, _request_timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            if not self._is_not_found(exc):
                raise
        if wait:
            self.wait_namespace_gone(name, deadline_s=deadline_s, interval_s=interval_s)

    def wait_namespace_gone(self, name: str, *, deadline_s: float = 180.0, interval_s: float = 1.0) -> None:
        """Until namespace ``name`` no longer exists (its finalizers ran)."""
        wait_until(
            lambda: self.namespace_exists(name),
            lambda exists: RolloutCheck(not exists, "terminating" if exists else "gone"),
            what=f"namespace {name} deletion",
            deadline_s=deadline_s,
            interval_s=interval_s,
        )

    @contextlib.contextmanager
    def temporary_namespace(
        self, name: str, labels: Mapping[str, str] = INJECTION_LABELS, *, keep: bool = False
    ) -> Iterator[str]:
        """A per-run namespace (sidecar injection on by default), deleted afterwards unless ``keep``."""
        self.create_namespace(name, labels)
        try:
            yield name
        finally:
            if keep:
                progress(f"keeping namespace {name}")
            else:
                self.delete_namespace(name)

    # applying manifests

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]:
        """Server-side apply every document of ``text`` (field manager istio-egress-harness, forced)."""
        refs: list[ObjectRef] = []
        for parsed in split_documents(text):
            resource = self.dynamic.resources.get(api_version=parsed["apiVersion"], kind=parsed["kind"])
            ns = None
            doc = parsed
            if resource.namespaced:
                ns = parsed["metadata"].get("namespace") or namespace
                if not ns:
                    raise KubeError(f"{parsed['kind']}/{parsed['metadata']['name']} needs a namespace")
                doc = {**parsed, "metadata": {**parsed["metadata"], "namespace": ns}}
            resource.server_side_apply(
                body=doc,
                name=doc["metadata"]["name"],
                namespace=ns,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
            refs.append(ObjectRef(doc["apiVersion"], doc["kind"], doc["metadata"]["name"], ns))
        return refs

    def delete_objects(self, refs: Sequence[ObjectRef]) -> None:
        """Delete applied objects, last first; objects already gone are fine."""
        for ref in reversed(refs):
            resource = self.dynamic.resources.get(api_version=ref.api_version, kind=ref.kind)
            try:
                resource.delete(name=ref.name, namespace=ref.namespace, _request_timeout=REQUEST_TIMEOUT_S)
            except Exception as exc:
                if not self._is_not_found(exc):
                    raise

    # deployments and pods

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.apps.read_namespaced_deployment(
                name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except Exception as exc:
            if self._is_not_found(exc):
                return None
            raise
        return cast(dict[str, Any], self._plain(obj))

    def deployment_exists(self, namespace: str, name: str) -> bool:
        return self.get_deployment(namespace, name) is not None

    def wait_rollout(
        self, namespace: str, name: str, *, deadline_s: float = 300.0, interval_s: float = 2.0
    ) -> dict[str, Any]:
        found = wait_until(
            lambda: self.get_deployment(namespace, name),
            lambda dep: rollout_status(dep, name),
            what=f"rollout of {namespace}/{name}",
            deadline_s=deadline_s,
            interval_s=interval_s,
        )
        assert found is not None
        progress(f"deployment {namespace}/{name} rolled out")
        return found

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(
            namespace=namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S
        )
        return cast(list[dict[str, Any]], self._plain(pods).get("items") or [])

    def pod_logs(
        self,
        namespace: str,
        selector: str,
        *,
        container: str = "istio-proxy",
        since_seconds: int | None = None,
        since_time: datetime | None = None,
    ) -> dict[str, str]:
        """The whole log of ``container`` in every pod matching ``selector`` that has one, keyed by
        pod name (a pod without that container, such as a workload without a sidecar among others
        with one, has no log of it and is left out).

        No tail limit. ``since_time`` (timezone-aware) is exact: the server is asked for a window
        covering it with timestamps, and lines before it are dropped here.
        """
        if since_seconds is not None and since_time is not None:
            raise ValueError("give since_seconds or since_time, not both")
        logs: dict[str, str] = {}
        for pod in self.list_pods(namespace, selector):
            name = pod["metadata"]["name"]
            spec = pod.get("spec") or {}
            named = {
                c.get("name") for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
            }
            if spec and container not in named:
                continue
            window = since_seconds
            if since_time is not None:
                window = since_seconds_for(since_time, datetime.now(UTC))
            raw = self.core.read_namespaced_pod_log(
                name=name,
                namespace=namespace,
                container=container,
                since_seconds=window,
                timestamps=since_time is not None,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
            text = raw.data.decode("utf-8", "replace")
            logs[name] = filter_log_since(text, since_time) if since_time is not None else text
        return logs

    def events(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's events, oldest first, as plain dicts (for failure reports)."""
        listing = self._plain(
            self.core.list_namespaced_event(namespace=namespace, _request_timeout=REQUEST_TIMEOUT_S)
        )
        items = cast(list[dict[str, Any]], listing.get("items") or [])

        def when(event: Mapping[str, Any]) -> str:
            return str(
                event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""
            )

        return sorted(items, key=when)
