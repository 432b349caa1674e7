"""The pytest side of the cluster tier: options, the ``e2e_run`` and ``scenario_namespace`` fixtures,
and diagnostics for failed e2e tests.

Register it in the root conftest (``pytest_plugins = ["harness.pytest_plugin"]``); a test module may
also list it in its own ``pytest_plugins`` (then the fixtures work, but options on the command line
are only known once the root conftest registers the plugin; their environment variables always work).

Options (each with its environment variable, used when the option is not given):

====================================  ==============================================  ====================
``--istio-version V``                 the Istio to install (1.28.10, 1.29.6, 1.30.3)   EGRESS_HARNESS_ISTIO_VERSION
``--reuse-cluster``                   use the kind cluster if it exists (never deleted) EGRESS_HARNESS_REUSE_CLUSTER=1
``--keep-cluster``                    keep cluster, Istio, namespace and apps          (always; failed runs:
                                                                                       EGRESS_HARNESS_KEEP_CLUSTER=1)
``--kubeconfig FILE --context NAME``  an existing cluster instead of kind              EGRESS_HARNESS_KUBECONFIG
``--access-log-encoding text|json``   meshConfig.accessLogEncoding                     EGRESS_HARNESS_ACCESS_LOG_ENCODING
``--external container|internet``     the recorder on kind's network, or a real host   EGRESS_HARNESS_EXTERNAL
``--external-host HOST``              the external host's name                         EGRESS_HARNESS_EXTERNAL_HOST
====================================  ==============================================  ====================

An existing cluster also needs ``EGRESS_HARNESS_INGRESS_URL`` and ``EGRESS_HARNESS_RELAY_IMAGE``.

``e2e_run`` (session) is skipped, with what is missing and how to get it, on a machine that cannot run
the tier. When a test that used it fails, the diagnostics are collected under
``artifacts/<test id>/`` and the failure report ends with ``diagnostics: artifacts/<test id>/``; the
first failure of a session also exports the kind node's logs to ``artifacts/kind-logs``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness import tools, versions

if TYPE_CHECKING:  # imported when used: registering the plugin stays cheap for the other tiers
    from harness.e2e import E2EOptions, E2ERun

RUN_KEY = pytest.StashKey["E2ERun | None"]()
KIND_LOGS_KEY = pytest.StashKey[bool]()
_TRUE = {"1", "true", "yes", "on"}


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
    group.addoption("--external", default=None, choices=("container", "internet"))
    group.addoption("--external-host", default=None, metavar="HOST")


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
    from harness.e2e import E2EOptions

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
        outbound_traffic_policy=os.environ.get("EGRESS_HARNESS_OUTBOUND_POLICY", "ALLOW_ANY"),
        external="internet" if external == "internet" else "container",
        external_host=_option(config, "--external-host", "EGRESS_HARNESS_EXTERNAL_HOST"),
        ingress_url=os.environ.get("EGRESS_HARNESS_INGRESS_URL") or None,
        relay_image=os.environ.get("EGRESS_HARNESS_RELAY_IMAGE") or None,
        artifacts_dir=artifacts_dir or root / "artifacts",
    )


def missing_for(options: E2EOptions) -> list[str]:
    """What this machine lacks for a run with ``options`` (empty: it can run)."""
    missing = list(options.problems())
    if options.existing_cluster:
        assert options.kubeconfig is not None
        if not options.kubeconfig.is_file():
            missing.append(f"kubeconfig {options.kubeconfig} does not exist")
        if tools.find_tool("istioctl", options.istio_version) is None:
            missing.append(f"istioctl {options.istio_version}: run `make tools`")
        return missing
    return missing + tools.missing_prerequisites(tools=True, istio=options.istio_version)


def skip_reason(options: E2EOptions) -> str | None:
    missing = missing_for(options)
    if not missing:
        return None
    return "the cluster tier cannot run here; missing: " + " | ".join(missing)


@pytest.fixture(scope="session")
def e2e_options(pytestconfig: pytest.Config) -> E2EOptions:
    return options_from(pytestconfig)


@pytest.fixture(scope="session")
def e2e_run(
    request: pytest.FixtureRequest, e2e_options: E2EOptions, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2ERun]:
    """The cluster tier's run for the whole session (skipped where it cannot run)."""
    from harness.e2e import E2ERun

    reason = skip_reason(e2e_options)
    if reason:
        pytest.skip(reason)
    run_dir = tmp_path_factory.mktemp("e2e-run")
    with E2ERun(e2e_options, run_dir) as run:
        request.config.stash[RUN_KEY] = run
        try:
            yield run
        finally:
            request.config.stash[RUN_KEY] = None
            if request.session.testsfailed:
                run.mark_failed()
            run.write_timings()


@pytest.fixture
def scenario_namespace(e2e_run: E2ERun) -> Iterator[str]:
    """The run namespace for one test; every scenario the test applied is removed afterwards."""
    before = len(e2e_run.applied)
    yield e2e_run.namespace
    problems = []
    for applied in reversed(e2e_run.applied[before:]):
        try:
            e2e_run.delete_scenario(applied)
        except Exception as exc:
            problems.append(f"{applied.scenario.name}: {exc}")
    if problems:
        raise RuntimeError("removing the test's scenarios failed: " + "; ".join(problems))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


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
    try:
        diagnostics = run.diagnostics()
        directory = diagnostics.collect(item.nodeid)
        text = f"diagnostics: {_relative(directory, root)}/"
        if not item.config.stash.get(KIND_LOGS_KEY, False):
            item.config.stash[KIND_LOGS_KEY] = True
            try:
                exported = diagnostics.export_kind_logs()
            except Exception as exc:
                text += f"\nkind export logs failed: {exc}"
            else:
                if exported is not None:
                    text += f"\nkind logs: {_relative(exported, root)}/"
    except Exception as exc:
        text = f"diagnostics could not be collected: {type(exc).__name__}: {exc}"
    report.sections.append(("diagnostics", text))
    return report
