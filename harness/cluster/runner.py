"""The whole catalog on a cluster run, one scenario namespace each; and the catalog under an upgrade.

:class:`ScenarioRunner`: each scenario runs in a namespace of its own (``e<run id>-<scenario>``,
labelled with the run id) with its own ``proxy`` and ``target`` and its own external host names
(``harness.cluster.hosts.scenario_hosts``), reached through the shared ingress Gateway of the run
namespace (``harness.cluster.chain.ingress_route``). A scenario whose objects reach beyond its
namespace holds the run's scenario lock alone (``harness.cluster.lock``), the others share it. Each
scenario ends as a ``harness.report.results.ScenarioResult``; its namespace is removed whatever
happened, unless keep-on-failure is on and it failed.

:class:`UpgradeCatalog` runs the catalog for each phase of a ``harness.upgrade.UpgradeRun`` on the
harness's cluster and sets up the prober's chain; :func:`upgrade_problems` says what an upgrade
run's result says went wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cluster.apps import RelayApps
from harness.cluster.chain import CHAIN_READY_TIMEOUT_S, INGRESS_GATEWAY_NAME, NamespaceRelays, chain_for
from harness.cluster.convergence import CONVERGE_TIMEOUT_S, DEFAULT_GATEWAY, ScenarioGateway
from harness.cluster.errors import ConvergenceError, E2EError
from harness.cluster.hosts import (
    RUN_LABEL,
    SCENARIO_LABEL,
    dns_label,
    scenario_hosts,
    scenario_namespace_name,
)
from harness.cluster.kube import INJECTION_LABELS
from harness.cluster.lock import ScenarioLock, exclusive_reason
from harness.cluster.options import E2EOptions
from harness.cluster.requirements import external_requirement
from harness.cluster.run import E2ERun
from harness.cluster.state import RunState
from harness.cluster.witness import check_tls_record, expects_external_tls, handshake_hint
from harness.common.proc import progress
from harness.common.traffic import ChainResponse, Traffic
from harness.evidence import Wait
from harness.evidence.external import ExternalEvidenceError
from harness.report.results import Phase, RunResult, ScenarioResult
from harness.scenarios.preflight import AnalyzeError

#: how the catalog's requests are judged: Envoy flushes access logs every second in Istio
SCENARIO_WAIT = Wait(timeout=20.0, interval=0.25, settle=2.0)


#: Exceptions that mean "the scenario's claim does not hold" (outcome ``failed``); anything else that
#: goes wrong while a scenario runs is an ``error`` (the harness or the cluster could not run it).
SCENARIO_FAILURES: tuple[type[BaseException], ...] = (AssertionError, ConvergenceError, AnalyzeError)


@dataclass(frozen=True)
class ScenarioReport:
    """How one scenario went: its result, the namespace it ran in, where its diagnostics are."""

    result: ScenarioResult
    namespace: str
    diagnostics: Path | None = None
    #: its namespace was kept (keep-on-failure)
    kept: bool = False


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class ScenarioRunner:
    """Runs catalog scenarios on a started :class:`E2ERun`, each in a namespace of its own.

    For each scenario: the skip reasons of the run (:meth:`E2ERun.skip_reason`) and of its hosts;
    then, under the run's scenario lock (shared, or alone for a scenario that reaches beyond its
    namespace): a namespace ``<prefix>-<scenario>`` with ``namespace_labels`` and the run labels,
    the relays and the ingress route, the scenario applied and converged, every request sent and
    judged (access logs of the target's sidecar and the gateway, and the recorder's record of the
    caller for a request that must leave through the gateway). Afterwards the scenario's objects are
    removed (awaited until the proxies dropped them) and the namespace deleted, whatever happened,
    unless it failed with keep-on-failure. :meth:`run` never raises but for Ctrl-C: the outcome,
    the message and the hop where the path diverged are in the :class:`ScenarioReport`.
    """

    def __init__(
        self,
        run: E2ERun,
        *,
        phase: Phase = "single",
        namespace_labels: Mapping[str, str] | None = None,
        namespace_prefix: str | None = None,
        wait: Wait = SCENARIO_WAIT,
        lock: ScenarioLock | None = None,
        keep_on_failure: bool | None = None,
        collect_diagnostics: bool = True,
        chain_deadline_s: float = CHAIN_READY_TIMEOUT_S,
        converge_s: float = CONVERGE_TIMEOUT_S,
    ) -> None:
        self.run = run
        self.phase = phase
        self.namespace_labels = dict(namespace_labels if namespace_labels is not None else INJECTION_LABELS)
        self.prefix = namespace_prefix or f"e{run.run_id}"
        self.wait = wait
        self.lock = lock if lock is not None else run.scenario_lock()
        self.keep_on_failure = run.options.keep_on_failure if keep_on_failure is None else keep_on_failure
        self.collect_diagnostics = collect_diagnostics
        self.chain_deadline_s = chain_deadline_s
        self.converge_s = converge_s

    def namespace_for(self, scenario: Any) -> str:
        return scenario_namespace_name(self.prefix, scenario.name)

    def view(self, scenario: Any) -> E2ERun:
        hosts = scenario_hosts(scenario.name)
        return self.run.scoped(
            self.namespace_for(scenario),
            external_host=hosts.external,
            unregistered_host=hosts.unregistered,
            mtls_host=hosts.mtls,
        )

    def skip_reason(self, scenario: Any) -> str | None:
        reason = self.run.skip_reason(scenario)
        if reason:
            return reason
        recorder = self.run.recorder
        if recorder is None:
            return (
                "the catalog runs against the recorder's per-scenario host names; this run has no recorder "
                "(--external internet)"
            )
        hosts = scenario_hosts(scenario.name)
        mutual = external_requirement(scenario) == "mtls"
        wanted = [
            ("recorder", recorder, h) for h in ([] if mutual else [hosts.external]) + [hosts.unregistered]
        ]
        if mutual:
            if self.run.mtls_recorder is None:
                return "needs the recorder that requires client certificates; this run has none"
            wanted.append(("mTLS recorder", self.run.mtls_recorder, hosts.mtls))
        for what, holder, host in wanted:
            if host not in set(holder.aliases):
                return (
                    f"the {what} does not answer to {host}: the catalog changed after the run's recorders "
                    "started (`egress-harness e2e down`, then `up` again)"
                )
        return None

    def run_all(self, scenarios: Iterable[Any]) -> list[ScenarioResult]:
        return [self.run_scenario(s).result for s in scenarios]

    def run_scenario(self, scenario: Any, *, test_id: str | None = None) -> ScenarioReport:
        """Run one scenario (see the class docstring); never raises but for Ctrl-C."""
        started = time.monotonic()
        namespace = self.namespace_for(scenario)

        def report(outcome: Any, message: str = "", **kw: Any) -> ScenarioReport:
            result = ScenarioResult(
                scenario=scenario.name,
                phase=self.phase,
                istio_version=self.run.options.istio_version,
                outcome=outcome,
                message=message,
                convergence_s=kw.get("convergence"),
                proxy_versions=list(kw.get("proxies") or []),
                duration_s=round(time.monotonic() - started, 3),
                hop=kw.get("hop"),
            )
            return ScenarioReport(result, namespace, kw.get("diagnostics"), bool(kw.get("kept")))

        reason = self.skip_reason(scenario)
        if reason:
            progress(f"scenario {scenario.name}: skipped: {reason}")
            return report("skipped", reason)
        try:
            view = self.view(scenario)
            from harness.scenarios import render_scenario

            documents = [d.body for d in render_scenario(scenario, view.render_context()).documents]
            alone = exclusive_reason(documents, namespace)
            if alone:
                progress(f"scenario {scenario.name} needs the cluster alone: {alone}")
            with self.lock.hold(exclusive=alone is not None, what=f"scenario {scenario.name}"):
                return self._run_in(view, scenario, report, test_id)
        except Exception as exc:
            return report("error", f"scenario {scenario.name} could not run: {type(exc).__name__}: {exc}")

    def _run_in(
        self, view: E2ERun, scenario: Any, report: Callable[..., ScenarioReport], test_id: str | None
    ) -> ScenarioReport:
        kube = view._kube()
        ns = view.namespace
        stack = contextlib.ExitStack()
        gateway = DEFAULT_GATEWAY
        convergence: float | None = None
        outcome: ScenarioReport | None = None
        failed = False
        kept = False
        cleanup_error: Exception | None = None
        try:
            try:
                kube.create_namespace(
                    ns,
                    {
                        **self.namespace_labels,
                        RUN_LABEL: view.run_id,
                        SCENARIO_LABEL: dns_label(scenario.name),
                    },
                )
                # only a namespace made here is deleted (one that was there is not this scenario's)
                stack.callback(kube.delete_namespace, ns)
                relays = NamespaceRelays(
                    kube, ns, gateway=view.ingress_gateway, image=view.relay_image, ca_pem=view.ca_pem
                )
                relays.deploy()
                view.relay_manifest = relays.save(view.run_dir / "manifests" / ns)
                view.wait_chain_ready(deadline_s=self.chain_deadline_s)
                stack.callback(self._remove_applied, view)
                applied = view.apply_scenario(scenario, wait_s=self.converge_s)
                gateway, convergence = applied.gateway, applied.converged_s
                summary = self._exercise(view, scenario, gateway)
                outcome = report(
                    "passed", summary, convergence=convergence, proxies=self._proxies(view, gateway)
                )
            except Exception as exc:
                failed = True
                kind = "failed" if isinstance(exc, SCENARIO_FAILURES) else "error"
                message = str(exc) if kind == "failed" else f"{type(exc).__name__}: {exc}"
                diagnostics = self._diagnose(view, gateway, scenario, test_id)
                if diagnostics is not None:
                    message += f"\ndiagnostics: {diagnostics}"
                outcome = report(
                    kind,
                    message,
                    hop=getattr(exc, "hop", None),
                    convergence=convergence,
                    proxies=self._proxies(view, gateway),
                    diagnostics=diagnostics,
                )
        finally:
            # also on Ctrl-C: nothing of the scenario is left behind unless asked
            if failed and self.keep_on_failure:
                stack.pop_all()
                kept = True
                progress(
                    f"keeping namespace {ns} of the failed scenario {scenario.name} (keep-on-failure); "
                    f"remove it with `kubectl delete namespace {ns}`"
                )
                for ref in (r for a in view.applied for r in a.secret_refs):
                    progress(
                        f"keeping its Secret {ref.namespace}/{ref.name} too; remove it with "
                        f"`kubectl delete secret -n {ref.namespace} {ref.name}`"
                    )
            else:
                try:
                    stack.close()
                except Exception as exc:
                    cleanup_error = exc
        assert outcome is not None
        result = outcome.result
        if cleanup_error is not None:
            text = f"removing the scenario's objects or namespace {ns} failed: {type(cleanup_error).__name__}: {cleanup_error}"
            if result.outcome == "passed":
                result = dataclasses.replace(result, outcome="error", message=f"{text}\n{result.message}")
            else:
                result = dataclasses.replace(result, message=f"{result.message}\n{text}")
        return dataclasses.replace(outcome, result=result, kept=kept)

    def _exercise(self, view: E2ERun, scenario: Any, gateway: ScenarioGateway) -> str:
        """Send and judge every request of the scenario; one line per request of what was seen.

        A request that must leave through the gateway is also judged by the external host's record:
        its caller is a gateway address and, when its last leg is TLS (:func:`expects_external_tls`),
        it came with the host as SNI and, for mutual TLS, with the run's client certificate.
        """
        from harness.scenarios import render_request

        ctx = view.render_context(scenario)
        recorder = view.recorder_for(scenario)
        mutual = external_requirement(scenario) == "mtls"
        lines = []
        for spec in scenario.requests:
            request = render_request(spec, ctx, source=scenario.file)
            done = view.run_request(request, wait=self.wait, gateway=gateway)
            line = f"{request.name}: HTTP {done.result.response.status}, " + " -> ".join(
                e.hop for e in done.evidence
            )
            if request.expect.via_gateway and not request.expect.blocked and recorder is not None:
                tls = expects_external_tls(request, ctx.external_tls_port)
                try:
                    record = view.expect_external_from_gateway(
                        done.result.request_id, gateway=gateway, recorder=recorder
                    )
                except ExternalEvidenceError as exc:
                    if tls:
                        exc.args = (f"{exc}{handshake_hint(recorder, request.host)}",)
                    raise
                line += f" -> external host (called from {record.get('client_ip')})"
                if tls:
                    subject = view.pki.client.subject if mutual and view.pki is not None else None
                    seen = check_tls_record(record, host=request.host, client_subject=subject)
                    line += f" over {seen.get('version') or 'TLS'}, SNI {seen.get('sni')}"
                    if subject is not None:
                        line += f", client certificate {subject}"
            lines.append(line)
        return "; ".join(lines)

    def _remove_applied(self, view: E2ERun) -> None:
        problems = []
        for applied in reversed(view.applied):
            try:
                view.delete_scenario(applied, wait_s=self.converge_s)
            except Exception as exc:
                problems.append(f"{applied.scenario.name}: {exc}")
        if problems:
            raise E2EError("; ".join(problems))

    def _proxies(self, view: E2ERun, gateway: ScenarioGateway) -> list[str]:
        try:
            return view.proxy_versions(gateway)
        except Exception as exc:
            progress(f"could not read the proxies' versions in {view.namespace}: {exc}")
            return []

    def _diagnose(
        self, view: E2ERun, gateway: ScenarioGateway, scenario: Any, test_id: str | None
    ) -> Path | None:
        if not self.collect_diagnostics:
            return None
        name = test_id or f"{self.phase}-{self.run.options.istio_version}-{scenario.name}"
        try:
            path: Path = view.diagnostics(gateway).collect(name)
        except Exception as exc:
            progress(f"diagnostics of {scenario.name} could not be collected: {type(exc).__name__}: {exc}")
            return None
        return path


def catalog_results(
    scenarios: Iterable[Any],
    run_one: Callable[[Any], ScenarioResult],
    *,
    phase: Phase,
    version: str,
) -> list[ScenarioResult]:
    """``run_one`` over ``scenarios``; one that raises is recorded as an ``error`` and the rest still run."""
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        try:
            result = run_one(scenario)
        except Exception as exc:
            result = ScenarioResult(scenario.name, phase, version, "error", f"{type(exc).__name__}: {exc}")
        results.append(result)
    return results


# --- the catalog under an Istio upgrade -----------------------------------------------------------

PROBE_TIMEOUT_S = 5.0
MISSION = "http-via-egress-gateway"


class UpgradeCatalog:
    """``run_catalog`` and ``probe`` for a ``harness.upgrade.runner.UpgradeRun`` on the harness's cluster.

    ``base`` describes the cluster and the recorder (a :class:`RunState` without Istio yet); each
    phase attaches an :class:`E2ERun` to it with that phase's Istio version, runs every scenario
    through a :class:`ScenarioRunner` (namespaces ``u<run id>-<phase>-<scenario>``, labelled for
    the phase's control plane, e.g. ``istio.io/rev`` in a canary) and returns their results. The
    first phase also puts the relays (with the shared ingress Gateway) into the upgrade's workload
    namespace and applies the mission scenario there: the prober's requests then go
    ``client -> ingress -> proxy -> target -> external host`` through the egress gateway all through
    the upgrade, and the upgrade restarts those relays onto the new sidecars. The upgrade's cleanup
    deletes that namespace.
    """

    def __init__(
        self,
        scenarios: Sequence[Any],
        plan: Any,
        *,
        base: RunState,
        options: E2EOptions,
        run_dir: Path,
        mission: Any | None = None,
        run_factory: Callable[[E2EOptions, Path, RunState], Any] | None = None,
        runner_factory: Callable[..., Any] = ScenarioRunner,
    ) -> None:
        self.scenarios = list(scenarios)
        self.plan = plan
        self.base = base
        self.options = options
        self.run_dir = run_dir
        self.mission = mission
        self.run_factory = run_factory or (lambda o, d, s: E2ERun(o, d, state=s))
        self.runner_factory = runner_factory
        self.probe_url: str | None = None
        self.phases: list[tuple[str, str]] = []
        self._traffic: Traffic | None = None

    @property
    def namespace(self) -> str:
        return str(self.plan.namespaces[0])

    def state_for(self, version: str) -> RunState:
        return dataclasses.replace(
            self.base,
            istio_version=version,
            namespace=self.namespace,
            ingress_gateway=f"{self.namespace}/{INGRESS_GATEWAY_NAME}",
        )

    def __call__(self, phase: Phase, version: str) -> list[ScenarioResult]:
        self.phases.append((phase, version))
        with self.run_factory(
            self.options, self.run_dir / f"{phase}-{version}", self.state_for(version)
        ) as run:
            if self.probe_url is None:
                self.prepare(run)
            labels, _ = self.plan.namespace_labels(version)
            runner = self.runner_factory(
                run, phase=phase, namespace_labels=labels, namespace_prefix=f"u{self.base.run_id}-{phase}"
            )
            return catalog_results(
                self.scenarios,
                lambda s: runner.run_scenario(s, test_id=f"upgrade-{phase}-{version}-{s.name}").result,
                phase=phase,
                version=version,
            )

    def prepare(self, run: E2ERun) -> str:
        """The relays, the shared ingress Gateway and the mission in the upgrade namespace; the probe URL."""
        from harness.scenarios import render_request

        relays = RelayApps(run._kube(), run.namespace, image=run.relay_image, keep=True, ca_pem=run.ca_pem)
        relays.deploy()
        run.relay_manifest = relays.save(run.run_dir / "manifests")
        run.wait_chain_ready()
        destination = f"http://{run.external_host}:{run.options.external_port}/get"
        if self.mission is not None:
            reason = run.skip_reason(self.mission)
            if reason:
                raise E2EError(f"the prober's scenario {self.mission.name} cannot run here: {reason}")
            run.apply_scenario(self.mission)
            request = render_request(self.mission.requests[0], run.render_context(), source=self.mission.file)
            destination = request.url
        self.probe_url = chain_for(run.ingress_url, run.namespace, destination)
        progress(f"the prober will send {self.probe_url}")
        return self.probe_url

    def probe(self) -> ChainResponse:
        """One request down the mission's chain (for ``harness.upgrade.prober.Prober``)."""
        if self.probe_url is None:
            raise E2EError("the prober started before the catalog's first phase set up its chain")
        if self._traffic is None:
            self._traffic = Traffic(timeout=PROBE_TIMEOUT_S)
        return self._traffic.send(self.probe_url)

    def close(self) -> None:
        if self._traffic is not None:
            self._traffic.close()
            self._traffic = None


def upgrade_problems(result: RunResult, to_version: str) -> list[str]:
    """What an upgrade run's result says went wrong: a failed step, regressions, the prober below its
    threshold (or absent), proxies not on ``to_version`` after the upgrade, no scenario run after it."""
    problems: list[str] = []
    step = result.failed_step
    if step is not None:
        problems.append(f"phase {step.phase}, step {step.step} failed: {_first_line(step.message)}")
    for before, regressed in result.regressions():
        problems.append(
            f"{regressed.scenario} regressed: {before.outcome} on {before.istio_version}, "
            f"{regressed.outcome} on {regressed.istio_version}"
            + (f" at hop {regressed.hop!r}" if regressed.hop else "")
            + f": {_first_line(regressed.message)}"
        )
    if result.prober is None:
        problems.append("no traffic was probed during the upgrade")
    elif not result.prober.passed:
        problems.append(f"prober: {result.prober.verdict()}")
    after = result.phase_results("after")
    for item in after:
        stale = [v for v in item.proxy_versions if v != to_version and not v.startswith(f"{to_version}-")]
        if stale:
            problems.append(
                f"{item.scenario}: proxies report {', '.join(stale)} after the upgrade, not {to_version}"
            )
    if step is None and not any(r.outcome != "skipped" for r in after):
        problems.append("no scenario ran after the upgrade")
    return problems
