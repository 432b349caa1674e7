"""The pytest side of the cluster tier: options, the ``e2e_run``, ``scenario_namespace``,
``e2e_results`` and ``upgrade_plan`` fixtures, result files, and diagnostics for failed e2e tests.

Register it in the root conftest (``pytest_plugins = ["harness.pytest_plugin"]``); a test module may
also list it in its own ``pytest_plugins`` (then the fixtures work, but options on the command line
are only known once the root conftest registers the plugin; their environment variables always work).

Options (each with its environment variable, used when the option is not given):

=======================================  ==========================================  ==================================
``--istio-version V``                    the Istio to install (1.28.10, 1.29.6,       EGRESS_HARNESS_ISTIO_VERSION
                                         1.30.3)
``--reuse-cluster``                      use the kind cluster if it exists (never     EGRESS_HARNESS_REUSE_CLUSTER=1
                                         deleted)
``--keep-cluster``                       keep cluster, Istio, namespace and apps      (always; failed runs:
                                                                                      EGRESS_HARNESS_KEEP_CLUSTER=1)
``--kubeconfig FILE --context NAME``     an existing cluster instead of kind          EGRESS_HARNESS_KUBECONFIG
``--access-log-encoding text|json``      meshConfig.accessLogEncoding                 EGRESS_HARNESS_ACCESS_LOG_ENCODING
``--outbound-traffic-policy MODE``       ALLOW_ANY or REGISTRY_ONLY                   EGRESS_HARNESS_OUTBOUND_POLICY
``--external container|internet``        the recorder on kind's network, or a real    EGRESS_HARNESS_EXTERNAL
                                         host
``--external-host HOST``                 the external host's name                     EGRESS_HARNESS_EXTERNAL_HOST
``--gateway-api``                        install the Gateway API CRDs                 EGRESS_HARNESS_GATEWAY_API=1
``--run-state FILE``                     attach to a run of ``egress-harness e2e up`` EGRESS_HARNESS_RUN_STATE
``--results-dir DIR``                    write ``<run id>[-<worker>].json`` there     EGRESS_HARNESS_RESULTS_DIR
``--upgrade-from V --upgrade-to V``      an upgrade run (tests/e2e/test_upgrade.py)   EGRESS_HARNESS_UPGRADE_FROM/_TO
``--upgrade-mode in-place|canary``       how to upgrade (default canary)              EGRESS_HARNESS_UPGRADE_MODE
=======================================  ==========================================  ==================================

An existing cluster also needs ``EGRESS_HARNESS_INGRESS_URL`` and ``EGRESS_HARNESS_RELAY_IMAGE``.

``e2e_run`` (session) is skipped, with what is missing and how to get it, on a machine that cannot run
the tier. With a run state it attaches to that run (nothing is created or deleted); without one it
makes its own run for the session, which a pytest-xdist worker must not do (one cluster per worker):
under xdist without ``--run-state`` it fails at once and says to use ``make e2e``. When a test that
used it fails, the diagnostics are collected under ``artifacts/<test id>/`` and the failure report
ends with ``diagnostics: artifacts/<test id>/``; the first failure of a session also exports the kind
node's logs to ``artifacts/kind-logs`` (also when the test collected its own diagnostics, as a catalog
scenario does). A test's pytest-timeout covers its body only (``func_only``), never the setup of
``e2e_run``, whose steps have deadlines of their own.

``e2e_results`` (session) collects ``harness.report.results.ScenarioResult`` items; at the end of the
session they are written as one ``RunResult`` to ``<results dir>/<run id>.json`` (under xdist one
file per worker, ``<run id>-<worker>.json``; ``egress-harness report`` merges them).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.common import tools, versions

if TYPE_CHECKING:  # imported when used: registering the plugin stays cheap for the other tiers
    from harness.cluster import E2EOptions, E2ERun, RunState
    from harness.report.results import Outcome, RunResult, ScenarioResult
    from harness.upgrade import UpgradePlan

RUN_KEY = pytest.StashKey["E2ERun | None"]()
KIND_LOGS_KEY = pytest.StashKey[bool]()
RESULTS_KEY = pytest.StashKey["E2EResults"]()
STATE_KEY = pytest.StashKey["RunState | None"]()
#: set on a test item whose diagnostics were collected by the test itself (a catalog scenario)
DIAGNOSED_KEY = pytest.StashKey[Path]()
_TRUE = {"1", "true", "yes", "on"}
RUN_STATE_ENV = "EGRESS_HARNESS_RUN_STATE"
RESULTS_DIR_ENV = "EGRESS_HARNESS_RESULTS_DIR"
XDIST_WITHOUT_RUN_STATE = (
    "the cluster tier under pytest-xdist needs one shared cluster: start it with `egress-harness e2e up` "
    "and pass its run state (`--run-state <run dir>/run-state.json` or EGRESS_HARNESS_RUN_STATE), or just "
    "run `make e2e`, which does up -> pytest -n auto --run-state -> down; without xdist (no -n) the "
    "session makes its own cluster"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("egress-harness", "egress harness: the cluster tier (tests/e2e)")
    group.addoption("--istio-version", default=None, choices=versions.SUPPORTED_ISTIO_VERSIONS)
    group.addoption("--reuse-cluster", action="store_true", default=None, help="reuse the kind cluster")
    group.addoption(
        "--keep-cluster", action="store_true", default=None, help="never delete what the run made"
    )
    group.addoption("--kubeconfig", default=None, metavar="FILE", help="an existing cluster instead of kind")
    group.addoption("--context", default=None, metavar="NAME", help="the kubeconfig context to use")
    group.addoption("--access-log-encoding", default=None, choices=("text", "json"))
    group.addoption("--outbound-traffic-policy", default=None, choices=("ALLOW_ANY", "REGISTRY_ONLY"))
    group.addoption("--external", default=None, choices=("container", "internet"))
    group.addoption("--external-host", default=None, metavar="HOST")
    group.addoption(
        "--gateway-api",
        action="store_true",
        default=None,
        help="install the Gateway API CRDs (pinned release)",
    )
    group.addoption(
        "--allow-gateway-secrets",
        action="store_true",
        default=None,
        help="on an existing cluster, let TLS scenarios create and delete their credential Secrets in istio-system",
    )
    group.addoption(
        "--run-state",
        default=None,
        metavar="FILE",
        help="attach to the run of `egress-harness e2e up` (needed under pytest-xdist)",
    )
    group.addoption("--results-dir", default=None, metavar="DIR", help="write the session's RunResult here")
    group.addoption(
        "--upgrade-from", default=None, metavar="V", help="an upgrade run: the Istio installed first"
    )
    group.addoption("--upgrade-to", default=None, metavar="V", help="an upgrade run: the Istio upgraded to")
    group.addoption("--upgrade-mode", default=None, choices=("in-place", "canary"))


def _option(config: pytest.Config, name: str, env: str | None = None) -> Any:
    value = config.getoption(name, default=None)
    if value is None and env:
        value = os.environ.get(env) or None
    return value


def _flag(config: pytest.Config, name: str, env: str) -> bool:
    value = config.getoption(name, default=None)
    if value is None:
        return os.environ.get(env, "").strip().lower() in _TRUE
    return bool(value)


def options_from(config: pytest.Config, artifacts_dir: Path | None = None) -> E2EOptions:
    """The run's options: command line first, then the environment, then the defaults."""
    from harness.cluster import E2EOptions

    kubeconfig = _option(config, "--kubeconfig", "EGRESS_HARNESS_KUBECONFIG")
    encoding = str(_option(config, "--access-log-encoding", "EGRESS_HARNESS_ACCESS_LOG_ENCODING") or "text")
    external = str(_option(config, "--external", "EGRESS_HARNESS_EXTERNAL") or "container")
    root = Path(str(config.rootpath))
    return E2EOptions(
        istio_version=versions.istio_version(_option(config, "--istio-version")),
        reuse_cluster=_flag(config, "--reuse-cluster", "EGRESS_HARNESS_REUSE_CLUSTER"),
        keep_cluster=bool(config.getoption("--keep-cluster", default=None)),
        keep_on_failure=os.environ.get("EGRESS_HARNESS_KEEP_CLUSTER", "").strip().lower() in _TRUE,
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        context=_option(config, "--context", "EGRESS_HARNESS_CONTEXT"),
        access_log_encoding=encoding.upper(),
        outbound_traffic_policy=str(
            _option(config, "--outbound-traffic-policy", "EGRESS_HARNESS_OUTBOUND_POLICY") or "ALLOW_ANY"
        ),
        external="internet" if external == "internet" else "container",
        external_host=_option(config, "--external-host", "EGRESS_HARNESS_EXTERNAL_HOST"),
        ingress_url=os.environ.get("EGRESS_HARNESS_INGRESS_URL") or None,
        relay_image=os.environ.get("EGRESS_HARNESS_RELAY_IMAGE") or None,
        artifacts_dir=artifacts_dir or root / "artifacts",
        gateway_api=_flag(config, "--gateway-api", "EGRESS_HARNESS_GATEWAY_API"),
        recorder_aliases=tuple(catalog_aliases(root / "scenarios")),
        mtls_aliases=tuple(catalog_mtls_aliases(root / "scenarios")),
        allow_gateway_secrets=_flag(
            config, "--allow-gateway-secrets", "EGRESS_HARNESS_ALLOW_GATEWAY_SECRETS"
        ),
    )


def catalog_aliases(scenarios_dir: Path) -> list[str]:
    """The recorder aliases for every scenario of the catalog (none when it does not load: the
    catalog's own tests say why)."""
    from harness.cluster import recorder_aliases
    from harness.scenarios import ScenarioError, load_catalog

    try:
        names = load_catalog(scenarios_dir).names()
    except (ScenarioError, OSError):
        return recorder_aliases([])
    return recorder_aliases(names)


def catalog_mtls_aliases(scenarios_dir: Path) -> list[str]:
    """The mTLS recorder's aliases for the catalog's scenarios that need a client certificate."""
    from harness.cluster import mtls_recorder_aliases
    from harness.scenarios import ScenarioError, load_catalog

    try:
        scenarios = load_catalog(scenarios_dir).scenarios
    except (ScenarioError, OSError):
        return mtls_recorder_aliases([])
    return mtls_recorder_aliases(scenarios)


def run_state_path(config: pytest.Config) -> Path | None:
    """``--run-state`` or $EGRESS_HARNESS_RUN_STATE: the state file of a run made by ``e2e up``."""
    value = _option(config, "--run-state", RUN_STATE_ENV)
    return Path(str(value)) if value else None


def load_run_state(config: pytest.Config) -> RunState | None:
    """The run state named by the options; a file that cannot be read is a usage error naming it."""
    from harness.cluster import RunState, RunStateError

    path = run_state_path(config)
    if path is None:
        return None
    try:
        return RunState.load(path)
    except RunStateError as exc:
        raise pytest.UsageError(f"--run-state: {exc}") from exc


def pytest_configure(config: pytest.Config) -> None:
    # a run state that cannot be read stops the session at once, naming the file and the field
    config.stash[STATE_KEY] = load_run_state(config)


#: fixtures that bring up a cluster: each step bounds itself (kind's create, istioctl's install and
#: readiness, the rollouts), so a test's pytest-timeout covers its own body, never their setup
CLUSTER_FIXTURES = ("e2e_run",)


def cluster_tests_time_their_body_only(items: list[pytest.Item]) -> None:
    """Give every test that uses a cluster fixture pytest-timeout's ``func_only``: its timeout (its own
    marker's, else the configured one) no longer includes creating the cluster and installing Istio."""
    for item in items:
        if not set(CLUSTER_FIXTURES) & set(getattr(item, "fixturenames", ())):
            continue
        marker = item.get_closest_marker("timeout")
        if marker is not None and "func_only" in marker.kwargs:
            continue  # the test said itself
        args, kwargs = (marker.args, dict(marker.kwargs)) if marker is not None else ((), {})
        # the closest marker wins: this one, with the test's own timeout and method kept
        item.add_marker(pytest.mark.timeout(*args, **kwargs, func_only=True), append=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.pluginmanager.hasplugin("timeout"):
        cluster_tests_time_their_body_only(items)


def session_run_state(config: pytest.Config) -> RunState | None:
    if STATE_KEY not in config.stash:
        config.stash[STATE_KEY] = load_run_state(config)
    return config.stash[STATE_KEY]


def run_encoding(config: pytest.Config) -> str:
    """The access-log encoding the session's run has (TEXT or JSON), known at collection time: the
    run state's when attaching, else the option's."""
    path = run_state_path(config)
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            encoding = json.loads(path.read_text(encoding="utf-8")).get("access_log_encoding")
            if encoding in ("TEXT", "JSON"):
                return str(encoding)
    return str(
        _option(config, "--access-log-encoding", "EGRESS_HARNESS_ACCESS_LOG_ENCODING") or "text"
    ).upper()


def xdist_worker(config: pytest.Config) -> str | None:
    """This process's pytest-xdist worker id (``gw0``...), or None outside xdist."""
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict) and workerinput.get("workerid"):
        return str(workerinput["workerid"])
    return os.environ.get("PYTEST_XDIST_WORKER") or None


def upgrade_plan_from(config: pytest.Config) -> UpgradePlan | None:
    """The upgrade asked for by --upgrade-from/--upgrade-to/--upgrade-mode (or their variables)."""
    from harness.upgrade import FROM_ENV, MODE_ENV, TO_ENV, UpgradePlan

    env = dict(os.environ)
    for option, var in (("--upgrade-from", FROM_ENV), ("--upgrade-to", TO_ENV), ("--upgrade-mode", MODE_ENV)):
        value = config.getoption(option, default=None)
        if value:
            env[var] = str(value)
    policy = _option(config, "--outbound-traffic-policy", "EGRESS_HARNESS_OUTBOUND_POLICY") or "ALLOW_ANY"
    encoding = str(_option(config, "--access-log-encoding", "EGRESS_HARNESS_ACCESS_LOG_ENCODING") or "text")
    try:
        return UpgradePlan.from_env(
            env, access_log_encoding=encoding.upper(), outbound_traffic_policy=str(policy)
        )
    except ValueError as exc:
        raise pytest.UsageError(f"the upgrade options: {exc}") from exc


def missing_for(options: E2EOptions) -> list[str]:
    """What this machine lacks for a run with ``options`` (empty: it can run)."""
    missing = list(options.problems())
    if options.existing_cluster:
        assert options.kubeconfig is not None
        if not options.kubeconfig.is_file():
            missing.append(f"kubeconfig {options.kubeconfig} does not exist")
        missing += istioctl_missing(options.istio_version)
        return missing
    return missing + tools.missing_prerequisites(tools=True, istio=options.istio_version)


def missing_for_state(state: RunState) -> list[str]:
    """What this machine lacks to attach to the run of ``state`` (empty: it can)."""
    missing = []
    if not state.kubeconfig.is_file():
        missing.append(
            f"the run's kubeconfig {state.kubeconfig} does not exist (is the run still up? `egress-harness "
            f"e2e up --run-dir {state.run_dir}`)"
        )
    missing += istioctl_missing(state.istio_version, built=state.cluster == "netns")
    return missing


def istioctl_missing(version: str, *, built: bool = False) -> list[str]:
    """What lacks for istioctl ``version``: a download (`make tools`), or for a label the netns
    provider builds (``built``, or a label no release has), the binaries built with Go."""
    if built or (
        version in versions.ISTIO_BUILDABLE_LABELS and version not in versions.SUPPORTED_ISTIO_VERSIONS
    ):
        from harness.cluster.providers.netns.binaries import BinariesError, istio_binaries

        try:
            istio_binaries(version)
        except BinariesError as exc:
            return [f"istioctl {version} built with Go: {exc} (make istio-bin ISTIO_VERSION={version})"]
        return []
    if tools.find_tool("istioctl", version) is None:
        return [f"istioctl {version}: run `make tools`"]
    return []


def skip_reason(options: E2EOptions, state: RunState | None = None) -> str | None:
    missing = missing_for_state(state) if state is not None else missing_for(options)
    if not missing:
        return None
    return "the cluster tier cannot run here; missing: " + " | ".join(missing)


# --- results --------------------------------------------------------------------------------------


@dataclass
class Recording:
    """What a test adds to its ScenarioResult while it runs (see :meth:`E2EResults.recording`)."""

    convergence_s: float | None = None
    proxy_versions: list[str] = field(default_factory=list)
    message: str = ""


class E2EResults:
    """The session's ScenarioResults, written as one RunResult when the session ends."""

    def __init__(self, directory: Path | None = None, worker: str | None = None) -> None:
        from harness.report.results import utc_now

        self.directory = directory
        self.worker = worker
        self.started = utc_now()
        self.run_id: str | None = None
        self.istio_version: str | None = None
        self.results: list[ScenarioResult] = []

    def bind(self, run_id: str, istio_version: str) -> None:
        self.run_id = run_id
        self.istio_version = istio_version

    def record(self, result: ScenarioResult) -> ScenarioResult:
        self.results.append(result)
        return result

    @contextlib.contextmanager
    def recording(self, scenario: str, *, istio_version: str | None = None) -> Iterator[Recording]:
        """Record the ``with`` body as one scenario: passed, skipped (pytest.skip), failed (an
        assertion, with the hop it names) or error (anything else); the exception goes on."""
        started = time.monotonic()
        note = Recording()
        outcome: Outcome = "passed"
        message = ""
        hop = None
        try:
            yield note
        except BaseException as exc:
            if isinstance(exc, pytest.skip.Exception):
                outcome, message = "skipped", str(getattr(exc, "msg", "") or exc)
            elif isinstance(exc, AssertionError | pytest.fail.Exception):
                outcome, message, hop = (
                    "failed",
                    str(getattr(exc, "msg", "") or exc),
                    getattr(exc, "hop", None),
                )
            elif isinstance(exc, Exception):
                outcome, message = "error", f"{type(exc).__name__}: {exc}"
            else:
                raise  # Ctrl-C and pytest's own exits are not a result of the scenario
            self._record(
                scenario,
                istio_version=istio_version,
                outcome=outcome,
                message=message or note.message,
                hop=hop,
                note=note,
                started=started,
            )
            raise
        self._record(
            scenario,
            istio_version=istio_version,
            outcome=outcome,
            message=note.message,
            hop=hop,
            note=note,
            started=started,
        )

    def _record(
        self,
        scenario: str,
        *,
        istio_version: str | None,
        outcome: Outcome,
        message: str,
        hop: str | None,
        note: Recording,
        started: float,
    ) -> None:
        from harness.report.results import ScenarioResult

        version = istio_version or self.istio_version
        if version is None:
            return  # no run was bound: nothing ran on a cluster
        self.record(
            ScenarioResult(
                scenario=scenario,
                phase="single",
                istio_version=version,
                outcome=outcome,
                message=message,
                convergence_s=note.convergence_s,
                proxy_versions=list(note.proxy_versions),
                duration_s=round(time.monotonic() - started, 3),
                hop=hop,
            )
        )

    def run_result(self) -> RunResult | None:
        from harness.report.results import RunResult

        if not self.results or self.run_id is None:
            return None
        versions_seen = list(dict.fromkeys(r.istio_version for r in self.results))
        return RunResult(
            run_id=self.run_id,
            started=self.started,
            istio_versions=versions_seen,
            mode="single",
            scenarios=list(self.results),
        )

    @property
    def path(self) -> Path | None:
        if self.directory is None or self.run_id is None:
            return None
        suffix = f"-{self.worker}" if self.worker else ""
        return self.directory / f"{self.run_id}{suffix}.json"

    def write(self) -> Path | None:
        """Write the RunResult (nothing when no directory was given or nothing was recorded)."""
        result = self.run_result()
        path = self.path
        if result is None or path is None:
            return None
        return result.save(path)


def results_for(config: pytest.Config) -> E2EResults:
    """The session's collector (made on first use)."""
    found = config.stash.get(RESULTS_KEY, None)
    if found is None:
        directory = _option(config, "--results-dir", RESULTS_DIR_ENV)
        root = Path(str(config.rootpath))
        found = E2EResults(
            (root / str(directory)) if directory else None,
            xdist_worker(config),
        )
        config.stash[RESULTS_KEY] = found
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    collector = session.config.stash.get(RESULTS_KEY, None)
    if collector is None:
        return
    path = collector.write()
    if path is not None:
        print(f"\n>> e2e results: {path}")


@pytest.fixture(scope="session")
def e2e_options(pytestconfig: pytest.Config) -> E2EOptions:
    return options_from(pytestconfig)


def session_state_or_stop(config: pytest.Config, options: E2EOptions) -> RunState | None:
    """The run state to attach to (None: the session makes its own run). Skips the test where the
    tier cannot run; fails it under pytest-xdist without a run state (one cluster per worker)."""
    state = session_run_state(config)
    reason = skip_reason(options, state)
    if reason:
        pytest.skip(reason)
    if state is None and xdist_worker(config) is not None:
        pytest.fail(XDIST_WITHOUT_RUN_STATE, pytrace=False)
    return state


@pytest.fixture(scope="session")
def e2e_results(pytestconfig: pytest.Config) -> E2EResults:
    """Collects the session's ScenarioResults; written to the results directory at the end."""
    return results_for(pytestconfig)


@pytest.fixture(scope="session")
def e2e_run(
    request: pytest.FixtureRequest,
    e2e_options: E2EOptions,
    e2e_results: E2EResults,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[E2ERun]:
    """The cluster tier's run for the whole session (skipped where it cannot run).

    Attached to the run of ``--run-state`` when given; else a run of its own, which a
    pytest-xdist worker must not make.
    """
    from harness.cluster import E2ERun

    state = session_state_or_stop(request.config, e2e_options)
    run_dir = tmp_path_factory.mktemp("e2e-run")
    with E2ERun(e2e_options, run_dir, state=state) as run:
        request.config.stash[RUN_KEY] = run
        e2e_results.bind(run.run_id, run.options.istio_version)
        try:
            yield run
        finally:
            request.config.stash[RUN_KEY] = None
            if request.session.testsfailed:
                run.mark_failed()
            run.write_timings()


@pytest.fixture
def scenario_namespace(e2e_run: E2ERun) -> Iterator[str]:
    """The run namespace for one test; every scenario the test applied is removed afterwards.

    The test holds the run's scenario lock shared, so a scenario that needs the cluster alone (see
    ``harness.cluster.lock.exclusive_reason``) does not run at the same time.
    """
    before = len(e2e_run.applied)
    with e2e_run.scenario_lock().hold(exclusive=False, what=f"a test in {e2e_run.namespace}"):
        yield e2e_run.namespace
        problems = []
        for applied in reversed(e2e_run.applied[before:]):
            try:
                e2e_run.delete_scenario(applied)
            except Exception as exc:
                problems.append(f"{applied.scenario.name}: {exc}")
        if problems:
            raise RuntimeError("removing the test's scenarios failed: " + "; ".join(problems))


@pytest.fixture(scope="session")
def upgrade_plan(pytestconfig: pytest.Config) -> UpgradePlan | None:
    """The upgrade of --upgrade-from/--upgrade-to/--upgrade-mode, or None when none was asked for."""
    return upgrade_plan_from(pytestconfig)


def mark_diagnosed(item: pytest.Item, directory: Path) -> None:
    """The test collected its own diagnostics (in ``directory``): the failure hook only names them."""
    item.stash[DIAGNOSED_KEY] = directory


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _kind_logs_once(config: pytest.Config, diagnostics: Any, root: Path) -> str:
    """``kind export logs`` with the session's first failure (a catalog scenario's too); the line
    for the report, empty after the first time."""
    if config.stash.get(KIND_LOGS_KEY, False):
        return ""
    config.stash[KIND_LOGS_KEY] = True
    try:
        exported = diagnostics.export_kind_logs()
    except Exception as exc:
        return f"\nkind export logs failed: {exc}"
    return f"\nkind logs: {_relative(exported, root)}/" if exported is not None else ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if not report.failed or report.when != "call" or "e2e_run" not in getattr(item, "fixturenames", ()):
        return report
    run = item.config.stash.get(RUN_KEY, None)
    if run is None:
        return report
    run.mark_failed()
    root = Path(str(item.config.rootpath))
    diagnosed = item.stash.get(DIAGNOSED_KEY, None)
    if diagnosed is not None:
        # the test collected its own diagnostics (a catalog scenario); the kind logs are still ours
        text = f"diagnostics: {_relative(diagnosed, root)}/"
        try:
            text += _kind_logs_once(item.config, run.diagnostics(), root)
        except Exception as exc:
            text += f"\nkind export logs failed: {type(exc).__name__}: {exc}"
        report.sections.append(("diagnostics", text))
        return report
    try:
        diagnostics = run.diagnostics()
        directory = diagnostics.collect(item.nodeid)
        text = f"diagnostics: {_relative(directory, root)}/"
        text += _kind_logs_once(item.config, diagnostics, root)
    except Exception as exc:
        text = f"diagnostics could not be collected: {type(exc).__name__}: {exc}"
    report.sections.append(("diagnostics", text))
    return report
