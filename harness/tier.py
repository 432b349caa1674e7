"""What a tier offers the catalog: the small interface the one scenario runner (``harness.runner``) drives.

A tier is a place where Istio's data plane runs: the emulated local mesh (real Envoy processes on
loopback), the kind cluster, an istiod tier. Each owns its processes or its cluster and offers the
same steps, so that running a scenario, its results and the reports are written once for all tiers:

- bring up and tear down: a ``Tier`` is a context manager (``with tier:``);
- ``tier.skip_reason(scenario)``: why it cannot run the scenario (its Istio range, what it needs of
  the install, what the tier cannot emulate), or None;
- ``tier.stage(scenario)``: a ``Stage`` for the scenario, with the ``RenderContext`` its templates
  and requests are rendered with; the tier may take what the scenario needs to itself here (a lock)
  and raises when it cannot run it at all;
- ``stage.apply()``: apply the scenario's manifests and wait until the proxies have them
  (convergence); ``stage.remove(failed=...)`` undoes everything ``apply`` made, also part of it
  after a failure, and may keep a failed scenario for a look;
- ``stage.send(request)``: one request down the chain (``Sent``: its x-request-id, the status the
  client got, when it was sent and when the answer came back; ``Sent.ref`` says how its entries
  are found);
- ``stage.hop_logs(sent)``: the access logs of the hops the evidence engine judges, the calling
  workload's sidecar and the egress gateway (``HopLogs``);
- ``stage.canary()``: a request sent through the egress gateway only to be logged there, which
  proves the gateway's log source live before an absence in it is believed;
- ``stage.witness(request, sent)``: the external host's record of a request that had to leave
  through the egress gateway; ``stage.witness_absence(request, sent)``: that it has none of a
  request refused on the way;
- ``stage.diagnose(exc, label=...)``: what helps to understand a failure, collected before
  ``remove``.

The judgement itself (``harness.scenarios.expect.judge``) and the outcome of a scenario belong to
the runner, not to a tier. This module knows no tier: it imports only the catalog's model and the
evidence engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from harness.evidence import EGRESS_GATEWAY_SERVICE, EntryLog, RequestRef, Wait
from harness.scenarios.model import RenderContext, ResolvedRequest, Scenario


@dataclass(frozen=True)
class TierVersions:
    """What a tier runs, for a report's header: the Istio it is (or stands for), Envoy, Kubernetes.

    ``emulated``: no Istio control plane runs; the tier stands for ``istio`` (its routing is an
    image of what istiod would make of the scenario's manifests).
    """

    istio: str
    envoy: str | None = None
    kubernetes: str | None = None
    emulated: bool = False

    def header(self) -> str:
        """One line, e.g. ``Istio 1.30.3 (emulated), Envoy 1.36.4`` or ``Istio 1.30.3, Kubernetes v1.33.1``."""
        parts = [f"Istio {self.istio}" + (" (emulated)" if self.emulated else "")]
        if self.envoy:
            parts.append(f"Envoy {self.envoy}")
        if self.kubernetes:
            parts.append(f"Kubernetes {self.kubernetes}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Sent:
    """One request sent down a tier's chain, as the client saw it.

    ``failed_hop`` and ``error`` are what the relays reported when a hop could not reach its
    upstream (None when the answer came through).
    """

    request_id: str
    status: int
    sent_at: datetime
    failed_hop: str | None = None
    error: str | None = None
    #: a unique token in the request's path, when the tier put one there: it identifies the request
    #: at every hop even where a proxy replaces the x-request-id (Istio's gateways do, for callers
    #: they do not count as internal)
    path_token: str | None = None
    #: when the answer came back (UTC; None: not recorded): with ``sent_at``, the window a TLS
    #: request's TCP entries are found in
    answered_at: datetime | None = None

    def ref(self, host: str | None = None, *, scheme: str = "http") -> RequestRef:
        """How the evidence engine finds this request's entries: over HTTP by its path token, else
        its x-request-id; for TLS the calling workload speaks itself (``https``: TCP entries carry
        neither) by ``host`` as the SNI, in an entry started between ``sent_at`` and ``answered_at``
        (``RequestRef.for_request``)."""
        return RequestRef.for_request(
            scheme=scheme,
            host=host,
            request_id=self.request_id,
            path_token=self.path_token,
            sent_at=self.sent_at,
            answered_at=self.answered_at,
        )


@dataclass(frozen=True)
class HopLogs:
    """The access logs the evidence engine judges a request by, and the egress gateway's service
    (the cluster name the sidecar's entry must name to have sent the request there)."""

    #: None: the calling workload has no sidecar (``caller.sidecar: none``), so no log of one
    sidecar: EntryLog | None
    gateway: EntryLog
    gateway_service: str = EGRESS_GATEWAY_SERVICE


class Stage(Protocol):
    """One scenario on a tier: applied, exercised, removed (see the module docstring)."""

    @property
    def context(self) -> RenderContext:
        """What the scenario's templates and requests are rendered with on this tier."""
        ...

    @property
    def wait(self) -> Wait | None:
        """How long the hop assertions poll a log for an entry (None: the evidence engine's default)."""
        ...

    @property
    def absence_window(self) -> float:
        """How long a log is watched for an entry that must not appear (at least its flush interval)."""
        ...

    def apply(self) -> float | None:
        """Apply the scenario and wait until the proxies have it; the seconds convergence took (None:
        not measured). A timeout is an exception the tier lists in ``Tier.failures`` when it means
        the scenario's configuration does not take effect."""
        ...

    def send(self, request: ResolvedRequest) -> Sent:
        """Send ``request`` down the chain; whatever the client got is returned, not judged."""
        ...

    def hop_logs(self, sent: Sent) -> HopLogs:
        """The target sidecar's and the egress gateway's logs, reading at least from ``sent.sent_at``."""
        ...

    def witness(self, request: ResolvedRequest, sent: Sent) -> str | None:
        """The external host's record of a request that had to leave through the egress gateway
        (``via_gateway: true``), or that had to go straight out (``via_gateway: false`` with
        ``external_caller: not-gateway``).

        Returns what the record showed, for the request's summary (``external host (called from
        ADDRESS)``), or None when this tier has no witness for it. Raises ``AssertionError``
        (``harness.evidence.ExternalEvidenceError``, naming the hop) when the record says otherwise:
        no record, or a caller that is not the gateway (that is the gateway, for a direct request).
        """
        ...

    def witness_absence(self, request: ResolvedRequest, sent: Sent) -> str | None:
        """The external host has no record of a request that was refused on the way (``blocked``).

        Returns what was checked, or None when this tier has no witness for it. Raises
        ``harness.evidence.ExternalEvidenceError`` (naming the hop) when the host has a record of it.
        """
        ...

    def canary(self) -> RequestRef:
        """Send a canary through the scenario's egress gateway, a request it logs whatever it answers
        (typically 404 ``NR``: it has no route for it), and say how to find its entry in the gateway's
        log (``hop_logs(...).gateway``). The runner sends one before it believes an absence there."""
        ...

    def proxy_versions(self) -> list[str]:
        """The Istio versions the proxies on the path report (empty when unknown)."""
        ...

    def diagnose(self, exc: BaseException, *, label: str) -> Path | None:
        """The scenario failed (``exc``): collect what helps to understand it, before ``remove``;
        where it is, or None. ``label`` names the collection (a test id, or phase-version-scenario)."""
        ...

    def remove(self, *, failed: bool) -> bool:
        """Undo what ``apply`` made (also part of it, after a failure), and release what ``stage``
        took. Returns True when the tier kept the failed scenario for a look (keep-on-failure)."""
        ...


class Tier(Protocol):
    """A place scenarios run; a context manager that brings it up and tears it down."""

    @property
    def name(self) -> str:
        """A short name: ``local``, ``cluster``."""
        ...

    @property
    def istio_version(self) -> str:
        """The Istio version scenarios run against (installed, or the one an emulating tier stands for)."""
        ...

    @property
    def failures(self) -> tuple[type[Exception], ...]:
        """Exceptions besides ``AssertionError`` that mean the scenario's claim does not hold (an
        outcome ``failed``, such as a configuration that never converged); any other exception is
        an ``error``: the tier could not run the scenario."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def versions(self) -> TierVersions:
        """What this tier runs, for a header."""
        ...

    def skip_reason(self, scenario: Scenario) -> str | None:
        """Why ``scenario`` cannot run on this tier, or None. Touches nothing."""
        ...

    def stage(self, scenario: Scenario) -> Stage:
        """The stage of ``scenario`` (nothing applied yet); raises when the tier cannot run it."""
        ...


@contextlib.contextmanager
def staged(tier: Tier, scenario: Scenario) -> Iterator[Stage]:
    """``with staged(tier, scenario) as stage:``: the scenario applied for the block, removed after it
    (kept only when the block failed and the tier keeps failures). For a test written by hand; the
    runner drives the steps itself, to collect diagnostics before the removal."""
    stage = tier.stage(scenario)
    failed = False
    try:
        stage.apply()
        yield stage
    except Exception:
        failed = True
        raise
    finally:
        stage.remove(failed=failed)
