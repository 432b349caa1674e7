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

This module is the run: its steps, the two procedures and the cleanup. The plan and its checks are
``harness.upgrade.plan``, the cluster reads and writes ``harness.upgrade.api``, and what the proxies
report ``harness.upgrade.proxies``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from harness.cluster.istio import EGRESS_GATEWAY_SELECTOR, ISTIO_NAMESPACE, kube_target_args, render_overlay
from harness.cluster.kube import RolloutCheck, wait_until
from harness.common.proc import interrupts_deferred, progress, run
from harness.common.tools import parse_istioctl_version
from harness.report.results import Phase, ProberStats, RunResult, ScenarioResult, StepResult, utc_now
from harness.upgrade.api import KubeUpgradeApi, UpgradeApi
from harness.upgrade.plan import UpgradePlan
from harness.upgrade.proxies import ProxyStatus, parse_proxy_status, pod_image_problems, proxy_problems

T = TypeVar("T")

GATEWAY_SELECTORS: Final = (EGRESS_GATEWAY_SELECTOR, "istio=ingressgateway")
GATEWAY_DEPLOYMENTS: Final = ("istio-ingressgateway", "istio-egressgateway")

VERSION_TIMEOUT_S: Final = 30.0
PRECHECK_TIMEOUT_S: Final = 180.0
PROXY_STATUS_TIMEOUT_S: Final = 60.0
UNINSTALL_TIMEOUT_S: Final = 300.0
NAMESPACE_DELETE_S: Final = 180.0
HEARTBEAT_S: Final = 30.0


class UpgradeError(RuntimeError):
    """An upgrade step could not be done or its check did not hold."""


class StepFailedError(UpgradeError):
    """A step failed; ``phase`` and ``step`` say which, ``cause`` why."""

    def __init__(self, phase: str, step: str, cause: BaseException) -> None:
        self.phase, self.step, self.cause = phase, step, cause
        super().__init__(f"phase {phase!r}, step {step!r} failed: {cause}")


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
        overlays_for: Callable[[str], Sequence[Path]] | None = None,
        cluster_goes: bool = False,
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
        #: more ``-f`` overlays for a version's install (the netns provider's image hub and tag)
        self._overlays_for = overlays_for or (lambda _version: ())
        #: the cluster is removed right after this run: no uninstall, no wait for istio-system
        self.cluster_goes = cluster_goes
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
            istio_versions=(self.plan.from_version, self.plan.to_version),
        )

    def install(self, version: str, verb: str = "install") -> None:
        """``istioctl install`` (or ``upgrade``) of ``version`` with the overlay, and its revision in a canary."""
        args = [self.istioctl(version), verb, "-y", "-f", str(self.overlay_path)]
        for overlay in self._overlays_for(version):
            args += ["-f", str(overlay)]
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
        """``kubectl rollout restart deployment -n NS NAME`` for each deployment of the namespaces,
        through the API, one at a time: each rollout done before the next starts (Istio's upgrade
        docs restart workloads gradually, so the rest keep serving)."""
        listed = {ns: self.api.list_deployments(ns) for ns in self.plan.namespaces}
        if not any(listed.values()):
            raise UpgradeError(
                f"no deployment in {', '.join(self.plan.namespaces)}: no workload would carry the new sidecar"
            )
        for ns, names in listed.items():
            for name in names:
                self._restart(ns, name)
        return listed

    def restart_gateways(self) -> list[str]:
        """The ingress and egress gateways restarted one at a time (after the workloads, as Istio's
        canary docs order it), so their pods are injected by the new control plane."""
        for name in GATEWAY_DEPLOYMENTS:
            self._restart(ISTIO_NAMESPACE, name)
        return list(GATEWAY_DEPLOYMENTS)

    def _restart(self, namespace: str, name: str) -> None:
        progress(f"{self.plan.describe()}: restarting {namespace}/{name}")
        self.api.restart_deployment(namespace, name, utc_now())
        self.api.wait_rollout(namespace, name, deadline_s=self.plan.rollout_timeout_s)

    def proxy_status(self, version: str) -> list[ProxyStatus]:
        """``istioctl proxy-status -o json`` of ``version``'s control plane (every istiod's sync
        status, each proxy's node metadata with its ISTIO_VERSION). In a canary it names the
        revision: since Istio 1.28 proxy-status asks only the default revision's istiod without
        ``--revision`` (``RevisionOrDefault`` in istioctl/pkg/proxystatus), which after the upgrade
        is the old one or, once that is uninstalled with its tag, none."""
        argv = [self.istioctl(version), "proxy-status", "-o", "json", *self._target()]
        rev = self.plan.revision(version)
        if rev:
            argv += ["--revision", rev]
        done = run(argv, timeout=PROXY_STATUS_TIMEOUT_S)
        return parse_proxy_status(done.stdout)

    def move_default_tag(self, version: str, rev: str) -> None:
        """``istioctl tag set default --revision REV --overwrite``: namespaces injected through the
        default tag (``istio-injection=enabled``) follow the new revision, and uninstalling the old
        revision (which prunes the tags pointing at it) leaves the default tag in place."""
        run(
            [
                self.istioctl(version),
                "tag",
                "set",
                "default",
                "--revision",
                rev,
                "--overwrite",
                *self._target(),
            ],
            timeout=PROXY_STATUS_TIMEOUT_S,
        )

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
            self._step("upgrade", "restart gateways", self.restart_gateways)
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
        self._step("upgrade", "restart gateways", self.restart_gateways)
        self._step(
            "upgrade",
            "verify gateway and proxies",
            lambda: self.verify_proxies(new, expect_proxies_in=[ns for ns, d in restarted.items() if d]),
        )
        self._step("upgrade", f"move the default tag to {rev}", lambda: self.move_default_tag(new, rev))
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
        if self.cluster_goes:
            self._state.steps.append(
                StepResult("cleanup", "uninstall Istio", "skipped", "the cluster is removed next")
            )
            self._state.installed_with = None
            self._state.created_namespaces.clear()
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
