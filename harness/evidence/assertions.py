"""Eventually-consistent assertions over hop logs.

Envoy writes access logs on an interval (Istio: every second), so an assertion polls: it reads what
is new in the hop's log, looks for the entry of *this* request (``RequestRef``: by x-request-id, a
path token, or for TCP/TLS by SNI, cluster and time window; never an inbound entry), and checks it
against the expectation. A failure names the hop, the request, what was expected, how many entries
were scanned, and shows the nearest entries, so a red test says where the request went instead.

An absence (no entry of the request at a hop) proves something only when the hop's log source is
live: ``expect_absent`` takes a canary, a request sent through the same hop only to be logged
there, and the absence counts once the canary's entry has shown up in the same log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tenacity import RetryCallState, RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed
from tenacity.stop import stop_base

from harness.accesslog import AccessLogEntry
from harness.evidence import predicates as p
from harness.evidence.sources import EntryLog

#: Default time to wait for an entry. Envoy flushes access logs every second in Istio (1 s in the
#: local tier too); a pod-log read adds its own latency. Ten seconds covers both with room.
DEFAULT_TIMEOUT = 10.0
#: Default time between two reads of a log.
DEFAULT_INTERVAL = 0.1
#: Once entries of the request have been seen and none passed, how long to wait for a better one
#: (another entry of the same request flushed a moment later) before failing.
DEFAULT_SETTLE = 1.5
#: How far a TLS request's window reaches beyond [sent, answered] (seconds). The connection really
#: starts inside it; the slack covers Envoy's start times in whole milliseconds and a small clock
#: difference between the client and the proxies (none on kind or netns: one kernel clock). Small,
#: so that the request before or after this one to the same SNI is not taken for it.
TCP_SLACK_S = 0.05
#: The start of a canary's path token (``new_canary_token``).
CANARY_PREFIX = "egh-live-"
#: What a failed liveness proof says: the hop's log never showed the canary sent through it.
CANARY_MISSING = (
    "the gateway's log source shows no entry of a canary sent to it: "
    "the absence of the request proves nothing"
)


def new_canary_token() -> str:
    """A fresh token for a canary's path: ``egh-live-<uuid4>``."""
    return f"{CANARY_PREFIX}{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class Wait:
    """How long an assertion polls and how often (seconds)."""

    timeout: float = DEFAULT_TIMEOUT
    interval: float = DEFAULT_INTERVAL
    settle: float = DEFAULT_SETTLE

    def __post_init__(self) -> None:
        if self.timeout < 0 or self.interval <= 0 or self.settle < 0:
            raise ValueError(f"Wait needs timeout >= 0, interval > 0, settle >= 0: {self}")


def _stamp(at: datetime | None) -> str:
    """A window bound as Envoy prints start times (UTC, milliseconds), or ``...`` for none."""
    if at is None:
        return "..."
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time as Envoy and istiod write it (``Z`` or an offset; none means UTC); None when unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RequestRef:
    """What identifies one request's entries in a log.

    HTTP entries carry the x-request-id (the relay propagates it) or a unique token in the path.
    TCP/TLS entries carry neither: they are matched by SNI and/or upstream cluster within a time
    window around when the request was sent (``since``/``until``, widened by ``slack`` seconds).
    ``host`` is not used to match; it ranks the nearest entries shown when an assertion fails.
    An inbound entry (``inbound|...``) never belongs to the request: the relays' inbound entries
    hold the whole chain URL, hence the destination's path token, and its x-request-id.
    ``for_request`` builds the ref of a request a tier's client sent.
    """

    request_id: str | None = None
    path_token: str | None = None
    sni: str | None = None
    cluster: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    slack: float = 2.0
    host: str | None = None
    #: a plain TCP connection (no SNI, no HTTP): an entry without a method and without an SNI, in
    #: the window (which it needs)
    tcp: bool = False

    def __post_init__(self) -> None:
        if not (self.request_id or self.path_token or self.sni or self.cluster or self.tcp):
            raise ValueError("RequestRef needs a request_id, a path_token, an sni, a cluster or tcp")
        if self.tcp and self.since is None:
            raise ValueError("a plain TCP request is found only by when it was sent: give since")

    @classmethod
    def for_request(
        cls,
        *,
        scheme: str = "http",
        host: str | None = None,
        request_id: str | None = None,
        path_token: str | None = None,
        sent_at: datetime | None = None,
        answered_at: datetime | None = None,
        slack: float = TCP_SLACK_S,
    ) -> RequestRef:
        """How the entries of a request a tier's client sent are found.

        Plain HTTP (``http``, the proxies read the request): by its path token when the sender put
        one in the path, else by its x-request-id. When the calling workload speaks TLS itself
        (``https``), the proxies pass its connection through and log TCP entries that carry neither
        (``%REQ(X-REQUEST-ID)%`` is ``-``, there is no path): the request is then its host as the
        SNI, in an entry whose connection started between ``sent_at`` and ``answered_at`` (``None``:
        no upper bound), ``slack`` seconds either side. Plain TCP (``tcp``: the workload sends bytes
        to a TCP port) has no SNI either: an entry with neither a method nor an SNI, started in
        that window.
        """
        if scheme == "tcp":
            if sent_at is None:
                raise ValueError("a TCP request is found by when it was sent: give sent_at")
            return cls(tcp=True, since=sent_at, until=answered_at, slack=slack, host=host)
        if scheme == "https":
            if not host or sent_at is None:
                raise ValueError(
                    "a TLS request is found by its SNI and when it was sent: give host and sent_at"
                )
            return cls(sni=host, since=sent_at, until=answered_at, slack=slack, host=host)
        if path_token:
            return cls(path_token=path_token, host=host)
        if not request_id:
            raise ValueError("an HTTP request is found by its path token or its x-request-id: give one")
        return cls(request_id=request_id, host=host)

    def __str__(self) -> str:
        if self.request_id:
            return f"x-request-id={self.request_id}"
        if self.path_token:
            return f"path token {self.path_token!r}"
        parts = [
            "plain" if self.tcp else "",
            f"sni={self.sni}" if self.sni else "",
            f"cluster={self.cluster}" if self.cluster else "",
        ]
        if self.since or self.until:
            lo, hi = (_stamp(t) for t in self._bounds())
            parts.append(f"started within [{lo}, {hi}]")
        return "TCP " + " ".join(x for x in parts if x)

    def predicate(self) -> p.Predicate:
        """The check that an entry belongs to this request (never an inbound entry)."""
        outbound = p.not_(p.inbound())
        if self.request_id:
            return p.all_of(p.request_id(self.request_id), outbound)
        if self.path_token:
            return p.all_of(p.path_contains(self.path_token), outbound)
        parts: list[p.Predicate] = []
        if self.sni:
            parts.append(p.sni(self.sni))
        if self.cluster:
            parts.append(p.cluster(self.cluster))
        if self.tcp:
            parts += [p.field("method", None), p.field("requested_server_name", None)]
        if self.since or self.until:
            parts.append(self._window())
        return p.all_of(*parts, outbound)

    def closest_first(self, entries: Sequence[AccessLogEntry]) -> list[AccessLogEntry]:
        """``entries`` (of this request), those that started inside [since, until] itself first, then
        by how far outside (within the slack) they started; in log order otherwise."""
        if not (self.since or self.until):
            return list(entries)

        def outside(entry: AccessLogEntry) -> float:
            at = parse_time(entry.start_time)
            if at is None:
                return float("inf")
            early = (self.since - at).total_seconds() if self.since else 0.0
            late = (at - self.until).total_seconds() if self.until else 0.0
            return max(early, late, 0.0)

        return sorted(entries, key=outside)

    def _bounds(self) -> tuple[datetime | None, datetime | None]:
        slack = timedelta(seconds=self.slack)
        return (self.since - slack if self.since else None, self.until + slack if self.until else None)

    def _window(self) -> p.Predicate:
        lo, hi = self._bounds()

        def inside(entry: AccessLogEntry) -> bool:
            at = parse_time(entry.start_time)
            return at is not None and (lo is None or at >= lo) and (hi is None or at <= hi)

        return p.Predicate(f"start_time within [{_stamp(lo)}, {_stamp(hi)}]", inside)

    def nearest(self, entries: Sequence[AccessLogEntry], limit: int = 5) -> list[AccessLogEntry]:
        """The entries most like this request's: same id, same host or SNI, same cluster."""

        def score(entry: AccessLogEntry) -> int:
            s = 0
            if self.request_id and entry.request_id == self.request_id:
                s += 8
            if self.path_token and entry.path and self.path_token in entry.path:
                s += 8
            host = self.host or self.sni
            http = bool(self.request_id or self.path_token)
            if host and (entry.authority or "").split(":")[0] == host:
                s += 4
            if host and entry.requested_server_name == host:
                s += 1 if http else 4
            if host and entry.upstream_cluster and entry.upstream_cluster.endswith(f"|{host}"):
                s += 2
            if self.cluster and entry.upstream_cluster == self.cluster:
                s += 2
            return s

        ranked = sorted(enumerate(entries), key=lambda ie: (score(ie[1]), ie[0]), reverse=True)
        close = [e for _, e in ranked if score(e) > 0][:limit]
        return close or list(entries[-min(limit, 3) :])


class EvidenceError(AssertionError):
    """The evidence of a hop does not show what was expected. The message says which hop and why."""

    def __init__(
        self,
        *,
        hop: str,
        request: RequestRef,
        expected: str,
        problem: str,
        scanned: int,
        skipped: int,
        source: str,
        candidates: Sequence[tuple[AccessLogEntry, list[str]]] = (),
        nearest: Sequence[AccessLogEntry] = (),
    ) -> None:
        self.hop = hop
        self.request = request
        self.expected = expected
        self.problem = problem
        self.scanned = scanned
        self.candidates = list(candidates)
        self.nearest = list(nearest)
        lines = [
            f"hop {hop!r}: {problem} for request {request}",
            f"  expected: {expected}",
            f"  scanned:  {scanned} entries ({skipped} other lines skipped) from {source}",
        ]
        if self.candidates:
            lines.append("  entries of this request that did not match:")
            for entry, why in self.candidates:
                lines.append(f"    {entry.short()}")
                lines.extend(f"      - {w}" for w in why)
        elif self.nearest:
            lines.append("  nearest entries:")
            lines.extend(f"    {e.short()}" for e in self.nearest)
        else:
            lines.append("  the log has no access-log entries at all")
        super().__init__("\n".join(lines))


def expect_entry(
    log: EntryLog,
    request: RequestRef,
    expect: p.Predicate | None = None,
    *,
    wait: Wait | None = None,
) -> AccessLogEntry:
    """The entry of ``request`` in ``log`` that passes ``expect``, waiting for it to be written.

    Polls ``log`` every ``wait.interval`` seconds up to ``wait.timeout``. When entries of the request
    have been seen but none passes, it waits ``wait.settle`` seconds more for a better one, then fails
    with those entries and what each got wrong. Raises ``EvidenceError``.
    """
    wait = wait or Wait()
    expect = expect or p.always()
    belongs = request.predicate()
    first_seen: list[float] = []

    def attempt() -> AccessLogEntry | None:
        log.poll()
        mine = request.closest_first([e for e in log.entries if belongs(e)])
        for entry in mine:
            if expect(entry):
                return entry
        if mine and not first_seen:
            first_seen.append(time.monotonic())
        return None

    def settled(state: RetryCallState) -> bool:
        return bool(first_seen) and time.monotonic() - first_seen[0] >= wait.settle

    retry = Retrying(
        stop=stop_after_delay(wait.timeout) | _StopWhen(settled),
        wait=wait_fixed(wait.interval),
        retry=retry_if_result(lambda r: r is None),
        reraise=True,
    )
    try:
        found = retry(attempt)
    except RetryError:
        found = None
    if found is not None:
        return found
    mine = [e for e in log.entries if belongs(e)]
    raise EvidenceError(
        hop=log.hop,
        request=request,
        expected=expect.description,
        problem=(
            f"{len(mine)} entr{'y' if len(mine) == 1 else 'ies'} of the request, none as expected"
            if mine
            else f"no access-log entry within {wait.timeout:g}s"
        ),
        scanned=len(log.entries),
        skipped=log.skipped,
        source=log.source.name,
        candidates=[(e, expect.mismatches(e)) for e in mine],
        nearest=request.nearest(log.entries),
    )


def expect_no_entry(
    log: EntryLog,
    request: RequestRef,
    expect: p.Predicate | None = None,
    *,
    window: float = DEFAULT_SETTLE,
    interval: float = DEFAULT_INTERVAL,
) -> None:
    """No entry of ``request`` passing ``expect`` appears in ``log`` during ``window`` seconds.

    Absence cannot be observed at an instant: the window must cover the hop's log flush interval
    (Istio's is one second), counted from when the request's response reached the client.
    """
    expect = expect or p.always()
    belongs = request.predicate()
    deadline = time.monotonic() + window
    while True:
        log.poll()
        hits = [e for e in log.entries if belongs(e) and expect(e)]
        if hits:
            raise EvidenceError(
                hop=log.hop,
                request=request,
                expected=f"no entry with {expect.description}",
                problem="an entry that should not exist",
                scanned=len(log.entries),
                skipped=log.skipped,
                source=log.source.name,
                candidates=[(e, [f"matched: {expect.description}"]) for e in hits],
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(interval, remaining))


def expect_absent(
    log: EntryLog,
    request: RequestRef,
    expect: p.Predicate | None = None,
    *,
    window: float = DEFAULT_SETTLE,
    canary: Callable[[], RequestRef] | None = None,
    wait: Wait | None = None,
) -> AccessLogEntry | None:
    """``expect_no_entry``, proven on a live log source: the canary's entry, when there is one.

    An empty log, one read from the wrong pods or files, or one whose lines the parser cannot read
    would show no entry of the request either. So ``canary()`` sends a request through the same hop
    (at once, before the window, so that its entry is flushed meanwhile) and says how to find it; after
    the window its entry must be in the log (any status, waiting up to ``wait.timeout``), and the log
    read up to then must still hold no entry of the request (whatever was flushed with the canary).
    """
    live = canary() if canary is not None else None
    expect_no_entry(log, request, expect, window=window)
    if live is None:
        return None
    seen = expect_canary(log, live, request, wait=wait)
    expect_no_entry(log, request, expect, window=0)
    return seen


def expect_canary(
    log: EntryLog, canary: RequestRef, request: RequestRef, *, wait: Wait | None = None
) -> AccessLogEntry:
    """The entry of ``canary`` (a request sent through ``log``'s hop to prove it logs) in ``log``, any
    status; else ``EvidenceError`` (for ``request``, whose absence it was to prove) naming the hop."""
    wait = wait or Wait()
    try:
        return expect_entry(log, canary, wait=wait)
    except EvidenceError as exc:
        raise EvidenceError(
            hop=log.hop,
            request=request,
            expected=f"an entry of the canary ({canary}), any status, within {wait.timeout:g}s",
            problem=CANARY_MISSING,
            scanned=len(log.entries),
            skipped=log.skipped,
            source=log.source.name,
            nearest=canary.nearest(log.entries),
        ) from exc


class _StopWhen(stop_base):
    """A tenacity stop condition from a plain function of the retry state."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate(retry_state)


@dataclass(frozen=True, slots=True)
class HopEvidence:
    """The entry that proved one hop."""

    hop: str
    entry: AccessLogEntry


@dataclass(slots=True)
class HopCheck:
    """One hop of a path: whose log, what its entry for the request must show (or that none exists).

    ``canary``, for an ``absent`` check: sends a request through the same hop and says how to find
    it (``expect_absent``); without one an absence is taken on trust.
    """

    log: EntryLog
    expect: p.Predicate = field(default_factory=p.always)
    absent: bool = False
    canary: Callable[[], RequestRef] | None = None


def assert_hops(
    request: RequestRef,
    checks: Sequence[HopCheck],
    *,
    wait: Wait | None = None,
    absence_window: float | None = None,
) -> list[HopEvidence]:
    """Check each hop in path order; the first hop that does not show what it should fails the test.

    A hop marked ``absent`` is watched for ``absence_window`` seconds (default: ``wait.settle``),
    and with its ``canary`` until the canary shows its log source live (``expect_absent``).
    """
    found: list[HopEvidence] = []
    window = absence_window if absence_window is not None else (wait or Wait()).settle
    for check in checks:
        if check.absent:
            expect_absent(check.log, request, check.expect, window=window, canary=check.canary, wait=wait)
        else:
            found.append(
                HopEvidence(check.log.hop, expect_entry(check.log, request, check.expect, wait=wait))
            )
    return found
