"""Whether the proxies ACKed what istiod pushed them: istiod's own sync status, NACKs named.

``istioctl proxy-status -o json`` asks every istiod for its sync status (its ``TypeDebugSyncronization``
debug type, ``pilot/pkg/xds/statusgen.go``) and prints one ``DiscoveryResponse`` per istiod: a
``ClientConfig`` per connected proxy (``node.id`` is ``<pod>.<namespace>``) with one
``genericXdsConfigs`` entry per xDS type it watches, whose ``configStatus`` istiod derives from the
nonces it sent and the proxy acknowledged: ``SYNCED`` (the last push was ACKed), ``STALE`` (sent, not
yet ACKed), ``NOT_SENT``, or ``ERROR`` (the proxy NACKed it; ``errorState.details`` is Envoy's reason),
and ``lastUpdated`` (when istiod last sent that type).

:func:`wait_for_acks` polls it after a scenario was applied, until every proxy the scenario's objects
reach has ACKed a push istiod sent after the apply (every type ``SYNCED``, one sent since then); a NACK
fails at once with :class:`NackError`, naming the proxy, the type and Envoy's reason. The seconds from
the apply to the latest of those pushes (of clusters, listeners or routes: endpoints are pushed
whenever pods move) are the scenario's ACK time, independent of the poll interval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harness.cluster.errors import ConvergenceError
from harness.cluster.kube import RolloutCheck, WaitTimeoutError, wait_until
from harness.common.proc import CommandError, progress, run
from harness.evidence.assertions import parse_time

PROXY_STATUS_TIMEOUT_S = 60.0
ACK_TIMEOUT_S = 60.0
ACK_INTERVAL_S = 0.25
#: the xDS types a scenario's objects change (Envoy's clusters, listeners and routes); endpoints
#: (ClusterLoadAssignment) and secrets are pushed on their own schedule
CONFIG_TYPES = frozenset({"Cluster", "Listener", "RouteConfiguration"})


class NackError(ConvergenceError):
    """A proxy rejected (NACKed) what istiod pushed it: the scenario's configuration cannot take effect."""

    def __init__(self, proxy: str, type_url: str, details: str) -> None:
        self.proxy, self.type_url, self.details = proxy, type_url, details
        super().__init__(f"proxy {proxy} rejected (NACKed) {short_type(type_url)} from istiod: {details}")


def short_type(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.cluster.v3.Cluster`` -> ``Cluster``."""
    return type_url.rsplit(".", 1)[-1] or type_url


@dataclass(frozen=True)
class XdsSync:
    """One xDS type of one proxy as istiod sees it."""

    proxy: str
    type_url: str
    status: str
    last_updated: datetime | None = None
    error: str | None = None


def parse_proxy_status(text: str) -> list[XdsSync]:
    """Every proxy's xDS types from ``istioctl proxy-status -o json`` (one JSON document per istiod,
    printed one after the other). Lines that are not part of a document (istioctl's own log lines,
    such as a timestamped warning) are skipped; output without any document raises ValueError."""
    out: list[XdsSync] = []
    docs = json_documents(text)
    for doc in docs:
        for resource in doc.get("resources") or [] if isinstance(doc, dict) else []:
            node = str(((resource or {}).get("node") or {}).get("id") or "")
            if not node:
                continue
            for config in resource.get("genericXdsConfigs") or []:
                error = (config.get("errorState") or {}).get("details")
                out.append(
                    XdsSync(
                        proxy=node,
                        type_url=str(config.get("typeUrl") or ""),
                        status=str(config.get("configStatus") or "UNKNOWN"),
                        last_updated=parse_time(str(config.get("lastUpdated") or "")),
                        error=str(error) if error else None,
                    )
                )
    if not docs:
        raise ValueError(f"istioctl proxy-status printed no sync status: {text.strip()[:200]!r}")
    return out


def json_documents(text: str) -> list[Any]:
    """The JSON documents of istioctl's ``-o json`` output, which prints one per istiod it asked, one
    after the other; lines outside a document (istioctl's own log lines) are skipped. ValueError when
    a document does not parse."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    at = _next_document(text, 0)
    while at is not None:
        doc, end = decoder.raw_decode(text, at)
        docs.append(doc)
        at = _next_document(text, end)
    return docs


def _next_document(text: str, start: int) -> int | None:
    """Where the next JSON document starts at or after ``start``: a ``{`` (or ``[``) opening a line."""
    while start < len(text):
        line_end = text.find("\n", start)
        line = text[start : line_end if line_end >= 0 else len(text)]
        if line.lstrip().startswith(("{", "[")):
            return start + (len(line) - len(line.lstrip()))
        if line_end < 0:
            return None
        start = line_end + 1
    return None


def proxy_status(istioctl: str, kube_args: Sequence[str] = ()) -> list[XdsSync]:
    """``istioctl proxy-status -o json``, parsed."""
    argv = [istioctl, "proxy-status", "-o", "json", *kube_args]
    return parse_proxy_status(run(argv, timeout=PROXY_STATUS_TIMEOUT_S).stdout)


@dataclass(frozen=True)
class AckState:
    """Where the proxies stand: which are done, which wait and why, how long the pushes took."""

    waiting: tuple[str, ...]
    #: seconds from ``since`` to the latest push of a done proxy (None: no proxy done yet)
    acked_s: float | None


def ack_state(statuses: Sequence[XdsSync], proxies: Sequence[str], since: datetime) -> AckState:
    """Whether each of ``proxies`` ACKed a push sent at or after ``since``; a NACK raises NackError."""
    waiting: list[str] = []
    latest: datetime | None = None
    for proxy in proxies:
        mine = [s for s in statuses if s.proxy == proxy]
        for s in mine:
            if s.status == "ERROR" or s.error:
                raise NackError(proxy, s.type_url, s.error or "no reason given")
        if not mine:
            waiting.append(f"{proxy}: not connected to istiod")
            continue
        pending = [short_type(s.type_url) for s in mine if s.status not in ("SYNCED", "NOT_SENT")]
        if pending:
            waiting.append(f"{proxy}: {', '.join(pending)} not ACKed yet")
            continue
        # a push of configuration (not only endpoints, which move whenever pods do) since the apply
        pushed = [
            s.last_updated
            for s in mine
            if s.last_updated is not None
            and s.last_updated >= since
            and short_type(s.type_url) in CONFIG_TYPES
        ]
        if not pushed:
            waiting.append(f"{proxy}: no push since the scenario was applied")
            continue
        newest = max(pushed)
        latest = newest if latest is None or newest > latest else latest
    acked = None if latest is None else max(0.0, (latest - since).total_seconds())
    return AckState(tuple(waiting), acked)


def wait_for_acks(
    proxies: Callable[[], Sequence[str]],
    status: Callable[[], Sequence[XdsSync]],
    *,
    since: datetime,
    what: str,
    deadline_s: float = ACK_TIMEOUT_S,
    interval_s: float = ACK_INTERVAL_S,
) -> float:
    """Poll istiod's sync status until every proxy of ``proxies()`` ACKed a push sent since
    ``since``; the seconds from ``since`` to the latest of those pushes. NackError at once when a
    proxy rejected one; ConvergenceError at the deadline naming who still waits."""
    started = time.monotonic()

    def fetch() -> AckState:
        try:
            statuses = status()
        except ValueError as exc:  # output it could not read: asked again until the deadline
            return AckState((str(exc),), None)
        return ack_state(statuses, proxies(), since)

    def decide(state: AckState) -> RolloutCheck:
        if not state.waiting:
            return RolloutCheck(True, "every proxy ACKed")
        return RolloutCheck(False, "; ".join(state.waiting))

    try:
        state = wait_until(
            fetch, decide, what=f"proxies ACKing {what}", deadline_s=deadline_s, interval_s=interval_s
        )
    except WaitTimeoutError as exc:
        raise ConvergenceError(str(exc)) from exc
    except CommandError as exc:
        raise ConvergenceError(f"could not read istiod's sync status: {exc}") from exc
    acked = state.acked_s if state.acked_s is not None else round(time.monotonic() - started, 3)
    progress(f"every proxy ACKed {what}: istiod's last push {acked:.3f}s after the apply")
    return round(acked, 3)
