"""The whole catalog on a cluster run, one scenario namespace each; and the catalog under an upgrade.

:class:`ScenarioRunner` runs catalog scenarios on a :class:`harness.cluster.tier.ClusterTier` of a
started run through the one scenario runner (``harness.runner``): each scenario in a namespace of
its own (``e<run id>-<scenario>``, labelled with the run id) with its own ``proxy`` and ``target``
and its own external host names, reached through the shared ingress Gateway of the run namespace.
Each scenario ends as a ``harness.report.results.ScenarioResult`` in a :class:`ScenarioReport`;
its namespace is removed whatever happened, unless keep-on-failure is on and it failed.

:class:`UpgradeCatalog` runs the catalog for each phase of a ``harness.upgrade.UpgradeRun`` on the
harness's cluster and sets up the prober's chain; :func:`upgrade_problems` says what an upgrade
run's result says went wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cluster.chain import CHAIN_READY_TIMEOUT_S, INGRESS_GATEWAY_NAME, chain_for
from harness.cluster.convergence import CONVERGE_TIMEOUT_S
from harness.cluster.errors import E2EError
from harness.cluster.lock import ScenarioLock
from harness.cluster.options import E2EOptions
from harness.cluster.run import E2ERun
from harness.cluster.state import RunState
from harness.cluster.tier import SCENARIO_WAIT, ClusterTier
from harness.common.proc import progress
from harness.common.traffic import ChainResponse, Traffic
from harness.evidence import Wait
from harness.report.results import Phase, RunResult, ScenarioResult
from harness.runner import run_scenario
from harness.scenarios.model import Scenario

__all__ = [
    "MISSION",
    "SCENARIO_FAILURES",
    "SCENARIO_WAIT",
    "ScenarioReport",
    "ScenarioRunner",
    "UpgradeCatalog",
    "catalog_results",
    "upgrade_problems",
]

#: Exceptions that mean "the scenario's claim does not hold" (outcome ``failed``); anything else that
#: goes wrong while a scenario runs is an ``error`` (the harness or the cluster could not run it).
SCENARIO_FAILURES: tuple[type[BaseException], ...] = (AssertionError, *ClusterTier.failures)


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

    The scenarios run on a :class:`ClusterTier` of the run (its options are the keyword arguments
    here), through the one scenario runner, ``harness.runner.run_scenario``: the tier's skip reason;
    then, under the run's scenario lock, the scenario's namespace, relays and objects, every request
    sent and judged until the first that fails, and the namespace removed again (kept when it
    failed with keep-on-failure). :meth:`run_scenario` never raises but for Ctrl-C: the outcome,
    the message and the hop where the path diverged are in the :class:`ScenarioReport`.
    """

    def __init__(
        self,
        run: E2ERun,
        *,
        phase: Phase = "single",
        namespace_labels: Mapping[str, str] | None = None,
        namespace_prefix: str | None = None,
        wait: Wait | None = None,
        lock: ScenarioLock | None = None,
        keep_on_failure: bool | None = None,
        collect_diagnostics: bool = True,
        chain_deadline_s: float = CHAIN_READY_TIMEOUT_S,
        converge_s: float = CONVERGE_TIMEOUT_S,
    ) -> None:
        self.run = run
        self.phase = phase
        self.tier = ClusterTier(
            run,
            namespace_labels=namespace_labels,
            namespace_prefix=namespace_prefix,
            wait=wait,
            lock=lock,
            keep_on_failure=keep_on_failure,
            collect_diagnostics=collect_diagnostics,
            chain_deadline_s=chain_deadline_s,
            converge_s=converge_s,
        )

    def run_all(self, scenarios: Iterable[Scenario]) -> list[ScenarioResult]:
        return [self.run_scenario(s).result for s in scenarios]

    def run_scenario(self, scenario: Scenario, *, test_id: str | None = None) -> ScenarioReport:
        """Run one scenario (see the class docstring); never raises but for Ctrl-C. ``test_id`` names
        its diagnostics (default ``<phase>-<Istio version>-<scenario>``)."""
        with self.tier as tier:
            run = run_scenario(
                tier, scenario, phase=self.phase, test_id=test_id, keep_going=False, progress=progress
            )
        return ScenarioReport(run.result, tier.namespace_for(scenario), run.diagnostics, run.kept)


def catalog_results(
    scenarios: Iterable[Any],
    run_one: Callable[[Any], ScenarioResult],
    *,
    phase: Phase,
    version: str,
    workers: int = 1,
) -> list[ScenarioResult]:
    """``run_one`` over ``scenarios``, ``workers`` at a time, in the catalog's order; one that raises
    is recorded as an ``error`` and the rest still run."""

    def one(scenario: Any) -> ScenarioResult:
        try:
            return run_one(scenario)
        except Exception as exc:
            return ScenarioResult(scenario.name, phase, version, "error", f"{type(exc).__name__}: {exc}")

    listed = list(scenarios)
    if workers <= 1 or len(listed) < 2:
        return [one(s) for s in listed]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scenario") as pool:
        return list(pool.map(one, listed))


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
        workers: int = 1,
    ) -> None:
        self.scenarios = list(scenarios)
        self.plan = plan
        self.base = base
        self.options = options
        self.run_dir = run_dir
        self.mission = mission
        self.run_factory = run_factory or (lambda o, d, s: E2ERun(o, d, state=s))
        self.runner_factory = runner_factory
        #: scenarios at a time in each phase (each in its own namespace; see harness.cluster.lock)
        self.workers = workers
        self.probe_url: str | None = None
        #: what the prober sends the ingress besides the URL (the run's ingress host)
        self.probe_headers: dict[str, str] = {}
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
        options = dataclasses.replace(self.options, istio_revision=self.plan.revision(version))
        with self.run_factory(options, self.run_dir / f"{phase}-{version}", self.state_for(version)) as run:
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
                workers=self.workers,
            )

    def prepare(self, run: E2ERun) -> str:
        """The relays, the shared ingress Gateway and the mission in the upgrade namespace; the probe URL."""
        from harness.scenarios import render_request

        # issue 14: the run's relays (token on the ingress route, fetching the run's hosts only)
        relays = run.relay_apps(keep=True, pin_to_control_plane=run.own_cluster)
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
        self.probe_headers = run.ingress_headers
        progress(f"the prober will send {self.probe_url}")
        return self.probe_url

    def probe(self) -> ChainResponse:
        """One request down the mission's chain (for ``harness.upgrade.prober.Prober``)."""
        if self.probe_url is None:
            raise E2EError("the prober started before the catalog's first phase set up its chain")
        if self._traffic is None:
            self._traffic = Traffic(timeout=PROBE_TIMEOUT_S, headers=self.probe_headers)
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
