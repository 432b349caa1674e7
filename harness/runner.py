"""The one scenario runner: a catalog scenario on any tier (``harness.tier``), judged the same way.

For each scenario: the tier's skip reason; then its stage, applied and converged; every request
rendered, sent and judged:

1. by the hop logs (``harness.scenarios.expect.judge``): the target's sidecar and the egress gateway
   show what the request's ``expect:`` block says; the first hop that disagrees fails it. The
   request is found at each hop by ``Sent.ref`` (a TLS request the workload encrypts itself by its
   SNI in its time window), and an absence at the gateway holds only once a canary the stage sent
   through the gateway (``Stage.canary``) shows up in the same log;
2. by the status the client got;
3. by the external host: for a request that had to leave through the egress gateway (``via_gateway:
   true`` and not blocked) its record's caller was the gateway; for a direct one that asks for it
   its record's caller was not the gateway (``external_caller: not-gateway``) or was the calling
   workload itself (``external_caller: workload``); a refused request
   (``blocked``) has no record there.

Afterwards the stage is removed, whatever happened (also on Ctrl-C), unless the tier keeps a failed
scenario for a look. The outcome is a ``ScenarioResult`` (``harness.report.results``):

- ``passed``: every request showed what it should; the message is one line per request of what was seen;
- ``failed``: the scenario's claim does not hold: an ``AssertionError`` (the evidence engine's
  errors name the hop where the path diverged, which the result keeps) or one of the tier's
  ``failures`` (a configuration that never converged);
- ``error``: anything else: the tier could not run it (the message starts with the exception's type);
- ``skipped``: the tier's skip reason.

``run_scenario`` never raises but for Ctrl-C (``BaseException``). Per request, the outcomes are kept
(``RequestOutcome``) for a command's PASS/FAIL lines. This module knows no tier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from harness.evidence import HopEvidence
from harness.report.results import Outcome, Phase, ScenarioResult
from harness.scenarios.expect import judge
from harness.scenarios.model import ResolvedRequest, Scenario
from harness.scenarios.render import render_request
from harness.tier import Sent, Stage, Tier

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default ``progress``: say nothing."""


@dataclass
class RequestOutcome:
    """One request of a scenario: what was sent, the hops that proved it, what went wrong.

    ``error`` is the assertion that failed (an ``EvidenceError`` names its ``hop``); ``witness`` is
    what the external host's record showed, for a request that had to leave through the gateway.
    """

    request: ResolvedRequest
    sent: Sent
    proof: list[HopEvidence] = field(default_factory=list)
    error: Exception | None = None
    witness: str | None = None
    #: seconds from the answer reaching the client (``Sent.answered_at``, else the return of
    #: ``Stage.send``) to the hop logs' judgement passing; None when it did not pass
    judged_s: float | None = None

    @property
    def request_id(self) -> str:
        return self.sent.request_id

    @property
    def status(self) -> int:
        return self.sent.status

    @property
    def passed(self) -> bool:
        return self.error is None

    @property
    def hop(self) -> str | None:
        """The hop where the path diverged, when the error names one."""
        hop = getattr(self.error, "hop", None)
        return hop if isinstance(hop, str) else None

    @property
    def line(self) -> str:
        """What was seen, e.g. ``via-gateway: HTTP 200, target sidecar -> egress gateway -> external host
        (called from 172.18.0.2)``."""
        path = [e.hop for e in self.proof] + ([self.witness] if self.witness else [])
        return f"{self.request.name}: HTTP {self.status}, " + " -> ".join(path)


@dataclass(frozen=True)
class ScenarioRun:
    """How one scenario went on a tier: its result, its requests, where its diagnostics are.

    ``error`` is the exception behind a ``failed`` or ``error`` outcome (the first failed request's,
    when requests failed); ``kept``: the tier kept the failed scenario for a look.
    """

    result: ScenarioResult
    requests: tuple[RequestOutcome, ...] = ()
    diagnostics: Path | None = None
    kept: bool = False
    error: BaseException | None = None

    @property
    def passed(self) -> bool:
        return self.result.outcome == "passed"

    def lines(self) -> list[str]:
        """A command's report of it, one line each: ``SKIP``, or a ``PASS``/``FAIL`` line per request
        sent (its error indented under it), then ``FAIL``/``ERROR`` for what went wrong besides the
        requests, and where the diagnostics are."""
        name = self.result.scenario
        if self.result.outcome == "skipped":
            return [f"SKIP  {name}: {self.result.message}"]
        out: list[str] = []
        for o in self.requests:
            out.append(
                f"{'PASS' if o.passed else 'FAIL'}  {name}/{o.request.name}  status {o.status}  id {o.request_id}"
            )
            if o.error is not None:
                out += _indented(str(o.error))
        if self.error is not None and not any(o.error is self.error for o in self.requests):
            label = "FAIL " if self.result.outcome == "failed" else "ERROR"
            head, *rest = self.result.message.split("\n")
            out += [f"{label} {name}: {head}", *_indented("\n".join(rest))]
        elif self.diagnostics is not None:
            out.append(f"      diagnostics: {self.diagnostics}")
        return out


def _indented(text: str) -> list[str]:
    """``text``'s lines, indented under a report line (none for no text)."""
    return ["      " + line for line in text.split("\n")] if text else []


def exercise(
    stage: Stage,
    request: ResolvedRequest,
    *,
    failures: tuple[type[Exception], ...] = (AssertionError,),
) -> RequestOutcome:
    """Send ``request`` on ``stage`` and judge it: hop logs, the client's status, the external host.

    An exception of ``failures`` is the request's ``error``; any other propagates.
    """
    sent = stage.send(request)
    answered = sent.answered_at or datetime.now(UTC)
    outcome = RequestOutcome(request, sent)
    exp = request.expect
    try:
        logs = stage.hop_logs(sent)
        outcome.proof = judge(
            request,
            sent.ref(request.host, scheme=request.scheme),
            sidecar=logs.sidecar,
            gateway=logs.gateway,
            wait=stage.wait,
            absence_window=stage.absence_window,
            gateway_service=logs.gateway_service,
            canary=stage.canary,
        )
        outcome.judged_s = round(max(0.0, (datetime.now(UTC) - answered).total_seconds()), 4)
        if sent.status != exp.status:
            raise AssertionError(
                f"request {request.name}: the client got HTTP {sent.status}, expected {exp.status} "
                f"(x-request-id {sent.request_id}; failed hop {sent.failed_hop or '-'}: {sent.error or '-'})"
            )
        if exp.blocked:
            stage.witness_absence(request, sent)
        elif exp.via_gateway or exp.external_caller is not None:
            outcome.witness = stage.witness(request, sent)
    except failures as exc:
        outcome.error = exc
    return outcome


def run_scenario(
    tier: Tier,
    scenario: Scenario,
    *,
    phase: Phase = "single",
    version: str | None = None,
    test_id: str | None = None,
    keep_going: bool = True,
    progress: Progress = _quiet,
) -> ScenarioRun:
    """Run ``scenario`` on ``tier`` (entered) and say how it went; see the module docstring.

    ``version`` is the Istio version the result is recorded under (default: the tier's);
    ``test_id`` names the diagnostics of a failure (default ``<phase>-<version>-<scenario>``).
    ``keep_going``: after a request failed, send the others too (each has its outcome); otherwise
    the first failed request ends the scenario.
    """
    attempt = _Attempt(scenario, phase, version or "", progress)
    try:
        attempt.version = version or tier.istio_version
        attempt.failures = (AssertionError, *tier.failures)
        reason = tier.skip_reason(scenario)
        if reason:
            progress(f"scenario {scenario.name}: skipped: {reason}")
            return ScenarioRun(attempt.result("skipped", reason))
        stage = tier.stage(scenario)
    except Exception as exc:
        message = f"scenario {scenario.name} could not run: {type(exc).__name__}: {exc}"
        return ScenarioRun(attempt.result("error", message), error=exc)
    run: ScenarioRun | None = None
    cleanup_error: Exception | None = None
    try:
        run = attempt.on(
            stage, label=test_id or f"{phase}-{attempt.version}-{scenario.name}", keep_going=keep_going
        )
    finally:
        # also on Ctrl-C: the stage is removed (kept only after a failure, when the tier keeps those)
        try:
            kept = stage.remove(failed=run is not None and not run.passed)
        except Exception as exc:
            cleanup_error, kept = exc, False
    assert run is not None
    if kept:
        run = replace(run, kept=True)
    if cleanup_error is not None:
        text = f"removing scenario {scenario.name} failed: {type(cleanup_error).__name__}: {cleanup_error}"
        res = run.result
        if res.outcome == "passed":
            res = replace(res, outcome="error", message=f"{text}\n{res.message}")
            run = replace(run, error=cleanup_error)
        else:
            res = replace(res, message=f"{res.message}\n{text}")
        run = replace(run, result=res)
    return run


class _Attempt:
    """The state of one scenario while it runs: what its result is made of."""

    def __init__(self, scenario: Scenario, phase: Phase, version: str, progress: Progress) -> None:
        self.scenario, self.phase, self.version, self.progress = scenario, phase, version, progress
        self.failures: tuple[type[Exception], ...] = (AssertionError,)
        self.started = time.monotonic()
        self.requests: list[RequestOutcome] = []
        self.convergence: float | None = None

    def result(
        self, outcome: Outcome, message: str = "", *, hop: str | None = None, proxies: list[str] | None = None
    ) -> ScenarioResult:
        return ScenarioResult(
            scenario=self.scenario.name,
            phase=self.phase,
            istio_version=self.version,
            outcome=outcome,
            message=message,
            convergence_s=self.convergence,
            proxy_versions=list(proxies or []),
            duration_s=round(time.monotonic() - self.started, 3),
            hop=hop,
        )

    def on(self, stage: Stage, *, label: str, keep_going: bool) -> ScenarioRun:
        """Apply, send and judge every request; the run (the stage still in place)."""
        try:
            self.convergence = stage.apply()
            for spec in self.scenario.requests:
                request = render_request(spec, stage.context, source=self.scenario.file)
                outcome = exercise(stage, request, failures=self.failures)
                self.requests.append(outcome)
                if outcome.error is not None and not keep_going:
                    break
        except Exception as exc:
            kind: Outcome = "failed" if isinstance(exc, self.failures) else "error"
            message = str(exc) if kind == "failed" else f"{type(exc).__name__}: {exc}"
            hop = getattr(exc, "hop", None)
            return self.went_wrong(
                stage, exc, kind, message, hop=hop if isinstance(hop, str) else None, label=label
            )
        wrong = [(o, o.error) for o in self.requests if o.error is not None]
        if wrong:
            message = "\n".join(str(error) for _, error in wrong)
            first, error = wrong[0]
            return self.went_wrong(stage, error, "failed", message, hop=first.hop, label=label)
        summary = "; ".join(o.line for o in self.requests)
        return ScenarioRun(self.result("passed", summary, proxies=self.proxies(stage)), tuple(self.requests))

    def went_wrong(
        self, stage: Stage, exc: Exception, outcome: Outcome, message: str, *, hop: str | None, label: str
    ) -> ScenarioRun:
        """A failed or error run: its diagnostics collected first, while the stage is still there."""
        try:
            diagnostics = stage.diagnose(exc, label=label)
        except Exception as problem:
            self.progress(
                f"diagnostics of {self.scenario.name} could not be collected: "
                f"{type(problem).__name__}: {problem}"
            )
            diagnostics = None
        if diagnostics is not None:
            message += f"\ndiagnostics: {diagnostics}"
        result = self.result(outcome, message, hop=hop, proxies=self.proxies(stage))
        return ScenarioRun(result, tuple(self.requests), diagnostics, error=exc)

    def proxies(self, stage: Stage) -> list[str]:
        try:
            return list(stage.proxy_versions())
        except Exception as exc:
            self.progress(
                f"could not read the proxies' versions of scenario {self.scenario.name}: "
                f"{type(exc).__name__}: {exc}"
            )
            return []


def run_catalog(
    tier: Tier,
    scenarios: Iterable[Scenario],
    *,
    phase: Phase = "single",
    version: str | None = None,
    keep_going: bool = True,
    progress: Progress = _quiet,
    each: Callable[[ScenarioRun], None] | None = None,
) -> list[ScenarioRun]:
    """``run_scenario`` over ``scenarios``, one after the other; ``each`` is called with every run as
    it ends (to print its lines while the rest still run)."""
    runs: list[ScenarioRun] = []
    for scenario in scenarios:
        run = run_scenario(
            tier, scenario, phase=phase, version=version, keep_going=keep_going, progress=progress
        )
        runs.append(run)
        if each is not None:
            each(run)
    return runs
