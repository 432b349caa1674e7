"""A background prober: keeps sending one request at a fixed interval while something disruptive runs.

Typical use, around an upgrade::

    with Traffic(timeout=5) as traffic, Prober(lambda: traffic.send(url), target=url) as prober:
        upgrade()
    stats = prober.stats()          # counts, ratio, outages; stats.passed against the threshold

The probe is any callable. What it returns decides success: a ``bool`` is the answer itself, an
``int`` is an HTTP status (2xx and 3xx succeed), an object with an ``int`` ``status`` (a
``harness.common.traffic.ChainResponse``) is judged by that status, and ``None`` succeeds. An exception is
a failure and its text is kept. Give the probe its own timeout (``Traffic(timeout=...)``): a thread
cannot be interrupted mid-call, so ``stop`` waits at most ``join_timeout_s`` for the last probe and
then reports a prober that did not stop.

The run passes when at least ``threshold`` of the probes succeeded (default 0.95). The value is the
one Istio's own revision-based upgrade integration test holds its continuous traffic to
(``successThreshold`` in tests/integration/pilot/revisioned_upgrade_test.go of istio/istio, with a
call every 200 ms, which is also the default interval here). No completed probe is a failure, never
a pass.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from harness.report.results import Outage, ProberStats, utc_now

DEFAULT_THRESHOLD: Final = 0.95
DEFAULT_INTERVAL_S: Final = 0.2
JOIN_TIMEOUT_S: Final = 30.0
#: How many failure descriptions a ProberStats keeps (the first ones, then the last ones).
KEPT_FAILURES: Final = 10


class ProberError(RuntimeError):
    """The prober was misused, or its thread did not stop."""


class ProbeBelowThresholdError(AssertionError):
    """Fewer probes succeeded than the threshold asks for."""

    def __init__(self, stats: ProberStats) -> None:
        self.stats = stats
        super().__init__(f"prober of {stats.target or 'the target'}: {stats.verdict()}")


@dataclass(frozen=True)
class Sample:
    """One probe: when it started (seconds since the prober started), how it ended, how long it took."""

    at_s: float
    ok: bool
    detail: str
    latency_s: float


def judge(outcome: Any) -> tuple[bool, str]:
    """Whether a probe's return value is a success, and a short description of it."""
    if outcome is None:
        return True, "ok"
    if isinstance(outcome, bool):
        return outcome, "ok" if outcome else "probe returned False"
    if isinstance(outcome, int):
        return 200 <= outcome < 400, f"HTTP {outcome}"
    status = getattr(outcome, "status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        detail = f"HTTP {status}"
        failed_hop = getattr(outcome, "failed_hop", None)
        hops = getattr(outcome, "hops", None)
        if isinstance(failed_hop, str) and failed_hop:
            detail += f" (failed hop {failed_hop})"
        elif status >= 400 and hops == ():
            # no relay answered: the ingress gateway could not reach the first relay (its own answer,
            # e.g. Envoy's "no healthy upstream", is the body)
            text = " ".join(str(getattr(outcome, "text", "") or "").split())[:120]
            detail += f" (failed hop ingress gateway -> proxy{': ' + text if text else ''})"
        return 200 <= status < 400, detail
    raise ProberError(
        f"cannot judge a probe result of type {type(outcome).__name__}: return a bool, an HTTP status, "
        "or an object with an int `status`"
    )


class Prober:
    """Calls ``probe`` every ``interval_s`` seconds on a background thread until stopped.

    The schedule is fixed-rate: a slow probe delays the next one but does not shift the whole
    series. Counters and samples are safe to read while it runs (``ratio``, ``stats()``).
    """

    def __init__(
        self,
        probe: Callable[[], Any],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        threshold: float = DEFAULT_THRESHOLD,
        target: str = "",
        join_timeout_s: float = JOIN_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.probe = probe
        self.interval_s = interval_s
        self.threshold = threshold
        self.target = target
        self.join_timeout_s = join_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[Sample] = []
        self._started_at: float | None = None
        self._started_wall = ""
        self._stopped_at: float | None = None
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Prober:
        if self._thread is not None:
            raise ProberError("the prober was already started (a Prober runs once)")
        self._started_at = self._clock()
        self._started_wall = utc_now()
        self._thread = threading.Thread(target=self._loop, name=f"prober {self.target}".strip(), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> ProberStats:
        """Stop probing, wait for the probe in flight (at most ``join_timeout_s``), return the stats."""
        if self._thread is None:
            raise ProberError("the prober was never started")
        self._stop.set()
        self._thread.join(self.join_timeout_s)
        if self._stopped_at is None:
            self._stopped_at = self._clock()
        if self._thread.is_alive():
            raise ProberError(
                f"the prober's last probe did not return within {self.join_timeout_s:g}s of stop; "
                "give the probe a timeout"
            )
        if self._error is not None:
            raise ProberError(f"the prober's thread failed: {self._error}") from self._error
        return self.stats()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the prober started (the time base of its samples); 0 before it started."""
        if self._started_at is None:
            return 0.0
        end = self._stopped_at if self._stopped_at is not None else self._clock()
        return end - self._started_at

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def __enter__(self) -> Prober:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.stop()
            return
        # The block failed: stop anyway, but let its exception be the one that propagates.
        with contextlib.suppress(ProberError):
            self.stop()

    def _loop(self) -> None:
        assert self._started_at is not None
        n = 0
        try:
            while not self._stop.is_set():
                self._probe_once()
                n += 1
                delay = self._started_at + n * self.interval_s - self._clock()
                if delay > 0 and self._stop.wait(delay):
                    break
        except BaseException as exc:  # a bug in judge() or the clock: surface it from stop()
            self._error = exc
        finally:
            self._stopped_at = self._clock()

    def _probe_once(self) -> None:
        assert self._started_at is not None
        began = self._clock()
        try:
            ok, detail = judge(self.probe())
        except ProberError:
            raise
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}".strip()
        ended = self._clock()
        with self._lock:
            self._samples.append(Sample(began - self._started_at, ok, detail, ended - began))

    # -- reading -----------------------------------------------------------------------------------

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    @property
    def total(self) -> int:
        with self._lock:
            return len(self._samples)

    @property
    def successes(self) -> int:
        with self._lock:
            return sum(1 for s in self._samples if s.ok)

    @property
    def ratio(self) -> float | None:
        """Successes over probes so far; None before the first probe completed."""
        with self._lock:
            if not self._samples:
                return None
            return sum(1 for s in self._samples if s.ok) / len(self._samples)

    @property
    def passed(self) -> bool:
        ratio = self.ratio
        return ratio is not None and ratio >= self.threshold

    def stats(self) -> ProberStats:
        samples = self.samples
        duration = self.elapsed_s
        failures = [f"+{s.at_s:.2f}s {s.detail}" for s in samples if not s.ok]
        if len(failures) > 2 * KEPT_FAILURES:
            skipped = len(failures) - 2 * KEPT_FAILURES
            failures = [*failures[:KEPT_FAILURES], f"... {skipped} more ...", *failures[-KEPT_FAILURES:]]
        return ProberStats(
            target=self.target,
            total=len(samples),
            successes=sum(1 for s in samples if s.ok),
            threshold=self.threshold,
            interval_s=self.interval_s,
            started=self._started_wall,
            duration_s=round(duration, 3),
            outages=outages(samples),
            failure_samples=failures,
        )

    def check(self) -> ProberStats:
        """The stats; raises ProbeBelowThresholdError when the ratio is below the threshold (or unknown)."""
        stats = self.stats()
        if not stats.passed:
            raise ProbeBelowThresholdError(stats)
        return stats


def outages(samples: list[Sample]) -> list[Outage]:
    """The runs of consecutive failures, each from its first failed probe to the end of its last one."""
    found: list[Outage] = []
    start: Sample | None = None
    last: Sample | None = None
    count = 0
    for sample in samples:
        if not sample.ok:
            if start is None:
                start = sample
                count = 0
            last = sample
            count += 1
        elif start is not None and last is not None:
            found.append(_outage(start, last, count))
            start = last = None
    if start is not None and last is not None:
        found.append(_outage(start, last, count))
    return found


def _outage(first: Sample, last: Sample, count: int) -> Outage:
    return Outage(round(first.at_s, 3), round(last.at_s + last.latency_s, 3), count)
