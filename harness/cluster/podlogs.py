"""Pod logs as a :class:`harness.evidence.LogSource`: every replica, read incrementally.

``PodLogSource(kube, namespace, selector)`` reads the log of one container (``istio-proxy`` by
default) in *every* pod that matches a label selector, e.g. all egress gateway replicas. Each
``read_new()`` returns only the lines written since the previous read:

* each pod's log is fetched with ``timestamps=true`` and a ``sinceSeconds`` window that reaches back
  to the last line already seen in that pod (the API takes whole seconds, so the window overlaps);
* lines stamped before that last line are dropped; lines stamped exactly at it are dropped as
  often as they were already returned (a multiset of the boundary lines), so two equal lines in
  the same nanosecond are neither lost nor doubled;
* the stamp is removed, and the lines of all pods are merged in time order.

The whole log of each pod is read, never a tail: ``kubectl logs -l SELECTOR`` shows only the last 10
lines per pod unless told otherwise, which silently loses entries on a busy gateway.

Pods that appear later (a new replica, a rollout) are read from the source's start time; a pod whose
container restarted has the rest of its previous container's log read first (``previous=true``), so
entries written just before a crash are kept. Only one restart between two reads is covered. A native
sidecar's restarts are counted from ``initContainerStatuses`` (where Kubernetes reports them).
A pod whose container is not running yet, or that disappeared between list and read (HTTP 400/404),
is skipped for that read.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from harness.cluster.kube import REQUEST_TIMEOUT_S

__all__ = [
    "PodLogApi",
    "PodLogSource",
    "PodLogState",
    "Stamp",
    "new_lines",
    "split_stamp",
    "window_seconds",
]

# RFC 3339 with up to nanoseconds, as the kubelet writes it with timestamps=true.
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


@dataclass(frozen=True, order=True)
class Stamp:
    """A log line's timestamp with its full (nanosecond) precision, comparable."""

    seconds: datetime
    nanos: int = 0

    @classmethod
    def from_datetime(cls, when: datetime) -> Stamp:
        if when.tzinfo is None:
            raise ValueError(f"a timezone-aware datetime is needed, not {when!r}")
        when = when.astimezone(UTC)
        return cls(when.replace(microsecond=0), when.microsecond * 1000)

    def as_datetime(self) -> datetime:
        return self.seconds + timedelta(microseconds=self.nanos // 1000)


def split_stamp(line: str) -> tuple[Stamp, str] | None:
    """``2026-01-02T03:04:05.123456789Z body`` -> (stamp, ``body``); None without a stamp."""
    match = _STAMP.match(line)
    if not match:
        return None
    seconds, fraction, zone = match.groups()
    when = datetime.fromisoformat(f"{seconds}{'+00:00' if zone == 'Z' else zone}").astimezone(UTC)
    nanos = int((fraction or "0").ljust(9, "0"))
    return Stamp(when, nanos), line[match.end() :]


@dataclass
class PodLogState:
    """What has been returned so far from one pod's container."""

    #: the stamp of the last line returned (or the source's start, before any line)
    last: Stamp
    #: how often each line body stamped exactly ``last`` was returned
    boundary: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    uid: str = ""


def new_lines(text: str, state: PodLogState) -> list[tuple[Stamp, str]]:
    """The lines of ``text`` (a timestamped log read) not returned before; updates ``state``.

    ``text`` is what the server returned for a window that starts at or before ``state.last``. A
    line without a stamp takes the stamp of the line before it. A last line without its newline is
    left for the next read (it is returned again then, whole).
    """
    lines = text.split("\n")
    lines.pop()  # the text after the last newline: '' or an unfinished line
    kept: list[tuple[Stamp, str]] = []
    at_last: Counter[str] = Counter()  # every body stamped ``state.last`` in this read
    stamp: Stamp | None = None
    for raw in lines:
        line = raw.removesuffix("\r")
        parsed = split_stamp(line)
        if parsed is not None:
            stamp, body = parsed
        elif stamp is None:
            continue  # an unstamped line before any stamp: nothing to place it by
        else:
            body = line
        if stamp < state.last:
            continue
        if stamp == state.last:
            at_last[body] += 1
            if at_last[body] <= state.boundary[body]:
                continue
        kept.append((stamp, body))
    if kept:
        newest = max(s for s, _ in kept)
        if newest == state.last:
            state.boundary = at_last
        else:
            state.boundary = Counter(body for s, body in kept if s == newest)
            state.last = newest
    return kept


def window_seconds(since: Stamp, now: datetime) -> int:
    """The whole-second ``sinceSeconds`` that reaches back to ``since`` with a second to spare."""
    return max(1, math.ceil((now - since.as_datetime()).total_seconds()) + 1)


class PodLogApi(Protocol):
    """What the source needs from the cluster: ``harness.cluster.kube.Kube`` provides both."""

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    @property
    def core(self) -> Any:
        """A CoreV1Api (``read_namespaced_pod_log``)."""
        ...


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod's container statuses, init containers included: a native sidecar (Istio 1.28+ on
    Kubernetes >= 1.33) is an init container with ``restartPolicy: Always``, and its status, restart
    count included, is reported in ``initContainerStatuses``, never in ``containerStatuses``."""
    status = pod.get("status") or {}
    return [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]


def _restart_count(pod: Mapping[str, Any], container: str) -> int:
    for status in _container_statuses(pod):
        if status.get("name") == container:
            return int(status.get("restartCount") or 0)
    return 0


def _has_started(pod: Mapping[str, Any], container: str) -> bool:
    """Whether ``container`` ran at least once (a log exists); native sidecars are init containers."""
    for cs in _container_statuses(pod):
        if cs.get("name") == container:
            state = cs.get("state") or {}
            last = cs.get("lastState") or {}
            return "running" in state or "terminated" in state or "terminated" in last
    return False


class PodLogSource:
    """The new lines of ``container`` in every pod matching ``selector`` in ``namespace``.

    ``since`` (timezone-aware) is where reading starts: lines stamped before it are never returned.
    Default: the moment the source is made. ``clock`` gives "now" in UTC (tests replace it).
    """

    def __init__(
        self,
        kube: PodLogApi,
        namespace: str,
        selector: str,
        container: str = "istio-proxy",
        since: datetime | None = None,
        *,
        name: str | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        clock: Any = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.selector = selector
        self.container = container
        self._clock = clock or (lambda: datetime.now(UTC))
        self.since = Stamp.from_datetime(since or self._clock())
        self._name = name or f"{namespace}/{selector}/{container}"
        self.request_timeout_s = request_timeout_s
        self.pods: dict[str, PodLogState] = {}
        #: per pod, why the last read of it was skipped (for messages); cleared when it is read
        self.skipped: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self._name

    def _read(self, pod: str, since: Stamp, *, previous: bool = False) -> str:
        raw = self.kube.core.read_namespaced_pod_log(
            name=pod,
            namespace=self.namespace,
            container=self.container,
            timestamps=True,
            since_seconds=window_seconds(since, self._clock()),
            previous=previous,
            _preload_content=False,
            _request_timeout=self.request_timeout_s,
        )
        data = raw.data
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    def _read_pod(self, pod: Mapping[str, Any]) -> list[tuple[Stamp, str]]:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        uid = str(meta.get("uid") or "")
        restarts = _restart_count(pod, self.container)
        state = self.pods.get(name)
        if state is None or (uid and state.uid and uid != state.uid):
            # a pod not seen before (or recreated under the same name): from the source's start
            state = PodLogState(last=self.since, restarts=restarts, uid=uid)
            self.pods[name] = state
        if not _has_started(pod, self.container):
            self.skipped[name] = f"container {self.container} has not started"
            return []
        out: list[tuple[Stamp, str]] = []
        try:
            if restarts > state.restarts:
                # the rest of the container that ended: its log is now the "previous" one
                out += new_lines(self._read(name, state.last, previous=True), state)
            out += new_lines(self._read(name, state.last), state)
        except Exception as exc:
            code = _status_code(exc)
            if code in (400, 404):
                self.skipped[name] = f"log not readable now (HTTP {code})"
                return out
            raise
        state.restarts = restarts
        self.skipped.pop(name, None)
        return out

    def read_new(self) -> list[str]:
        pods = self.kube.list_pods(self.namespace, self.selector)
        current = {str((p.get("metadata") or {}).get("name")) for p in pods}
        for gone in set(self.pods) - current:
            del self.pods[gone]
        merged: list[tuple[Stamp, int, str]] = []
        for index, pod in enumerate(sorted(pods, key=lambda p: str(p["metadata"]["name"]))):
            merged.extend((stamp, index, body) for stamp, body in self._read_pod(pod))
        merged.sort(key=lambda item: (item[0], item[1]))
        return [body for _, _, body in merged]

    def pod_names(self) -> Sequence[str]:
        return sorted(self.pods)
