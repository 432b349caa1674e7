"""The catalog across an Istio upgrade: install A, run the catalog, upgrade to B (in place or canary)
while a prober sends the mission's chain through the ingress, check every proxy is on B, run the
catalog again.

Runs only when an upgrade is asked for (``--upgrade-from V --upgrade-to V [--upgrade-mode M]``, or
``make e2e UPGRADE_FROM=... UPGRADE_TO=... UPGRADE_MODE=...``); otherwise it is skipped and says how
to ask. It makes its own kind cluster (name ``egress-upgrade-<id>``, ingress on host port
``UPGRADE_INGRESS_PORT`` so that its cluster can sit beside a cluster of ``e2e up``), its own PKI and
recorders (HTTP and HTTPS, and the one that requires client certificates, as ``e2e up`` makes them;
they take the same names on kind's Docker network as a run's recorders, so while an ``e2e up`` run's
recorders are up the test stops at once naming them: ``harness.cluster.hosts.check_run_names_free``), and no
Istio: ``harness.upgrade.runner.UpgradeRun`` installs and upgrades Istio itself, and calls
``harness.cluster.runner.UpgradeCatalog`` for each phase, which runs every applicable scenario through the
same per-scenario runner as tests/e2e/test_catalog.py.

The run's RunResult is written to ``artifacts/upgrade-<id>/results.json`` with its Markdown report
``report.md`` (and to $EGRESS_HARNESS_RESULTS_DIR when set). The test passes when no upgrade step
failed, no scenario regressed (passed before, failed after), the prober's success ratio reached the
plan's threshold, and every proxy reports the new version after the upgrade.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness.cluster import (
    EXTERNAL_ALIAS,
    INGRESS_GATEWAY_NAME,
    MISSION,
    PKI_DIR,
    E2EOptions,
    GatewayApiCrds,
    RunState,
    UpgradeCatalog,
    check_run_names_free,
    mtls_recorder_aliases,
    mtls_recorder_container,
    new_run_id,
    pki_server_names,
    recorder_aliases,
    recorder_container,
    recorder_state,
    run_recorder_names,
    upgrade_problems,
)
from harness.cluster.apps import RECORDER_IMAGE, build_app_image, prepare_relay_image
from harness.cluster.providers.kind import KindCluster
from harness.common import tools, versions
from harness.common.certs import generate_pki
from harness.pytest_plugin import RESULTS_DIR_ENV
from harness.report.render import render_markdown
from harness.report.results import RunResult
from harness.scenarios import load_catalog
from harness.upgrade import UpgradePlan, UpgradeRun

REPO = Path(__file__).resolve().parents[2]
#: beside the default 18080 of a cluster made by `e2e up`
UPGRADE_INGRESS_PORT = 18081
#: two installs, an upgrade and the catalog twice
UPGRADE_TIMEOUT_S = 7200


def _missing(plan: UpgradePlan) -> list[str]:
    missing = tools.missing_prerequisites(tools=True, istio=plan.from_version)
    if tools.find_tool("istioctl", plan.to_version) is None:
        missing.append(f"istioctl {plan.to_version}: run `make tools ISTIO_VERSION={plan.to_version}`")
    return missing


@pytest.fixture
def upgrade_cluster(
    upgrade_plan: UpgradePlan | None, e2e_options: E2EOptions, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[UpgradePlan, RunState, E2EOptions]]:
    """A kind cluster with the relay image and the recorder, and no Istio; removed afterwards."""
    if upgrade_plan is None:
        pytest.skip(
            "no upgrade asked for: pass --upgrade-from V --upgrade-to V [--upgrade-mode in-place|canary] "
            "(make e2e UPGRADE_FROM=1.29.6 UPGRADE_TO=1.30.3)"
        )
    missing = _missing(upgrade_plan)
    if missing:
        pytest.skip("the upgrade run cannot run here; missing: " + " | ".join(missing))
    plan = upgrade_plan
    run_id = new_run_id()
    run_dir = tmp_path_factory.mktemp("upgrade")
    options = dataclasses.replace(
        e2e_options,
        istio_version=plan.from_version,
        access_log_encoding=plan.access_log_encoding,
        outbound_traffic_policy=plan.outbound_traffic_policy,
    )
    catalog = load_catalog(REPO / "scenarios")
    aliases = recorder_aliases(catalog.names())
    mtls_aliases = mtls_recorder_aliases(catalog.scenarios)
    # before minutes of cluster work: no other run's recorder answers to these names on kind's network
    check_run_names_free(run_recorder_names(EXTERNAL_ALIAS, aliases, mtls_aliases, mtls=True), run_id=run_id)
    with ExitStack() as stack:
        cluster = stack.enter_context(
            KindCluster(
                f"egress-upgrade-{run_id}",
                run_dir,
                kind=tools.ensure_tool("kind", versions.KIND_VERSION),
                ingress_host_port=UPGRADE_INGRESS_PORT,
                keep_on_failure=options.keep_on_failure,
            )
        )
        relay_image = prepare_relay_image(cluster)
        stack.callback(shutil.rmtree, run_dir / PKI_DIR, ignore_errors=True)  # the keys go with the test
        pki = generate_pki(run_dir / PKI_DIR, pki_server_names(EXTERNAL_ALIAS, aliases, mtls_aliases))
        image = build_app_image("recorder", RECORDER_IMAGE)
        recorder = stack.enter_context(recorder_container(image, run_id=run_id, aliases=aliases, pki=pki))
        mtls = stack.enter_context(mtls_recorder_container(image, pki, run_id=run_id, aliases=mtls_aliases))
        gateway_api = False
        if options.gateway_api:
            from harness.cluster.kube import Kube

            kube = stack.enter_context(Kube(cluster.kubeconfig, cluster.context))
            # the cluster goes with the test: the CRDs need no removal of their own
            stack.enter_context(GatewayApiCrds(kube, remove=lambda: False))
            gateway_api = True
        namespace = plan.namespaces[0]
        base = RunState(
            run_id=run_id,
            run_dir=run_dir,
            kubeconfig=cluster.kubeconfig,
            context=cluster.context,
            cluster="kind",
            cluster_name=cluster.name,
            cluster_created=False,  # owned by this fixture, not by an `e2e up`
            istio_version=plan.from_version,
            istio_installed=False,
            access_log_encoding=plan.access_log_encoding,
            outbound_traffic_policy=plan.outbound_traffic_policy,
            ingress_url=f"http://127.0.0.1:{UPGRADE_INGRESS_PORT}",
            namespace=namespace,
            namespace_created=False,
            ingress_gateway=f"{namespace}/{INGRESS_GATEWAY_NAME}",
            relay_image=relay_image,
            external="container",
            external_host=EXTERNAL_ALIAS,
            pod_source_nat=True,
            gateway_api=gateway_api,
            recorder=recorder_state(recorder),
            mtls_recorder=recorder_state(mtls),
            pki_dir=pki.directory,
        )
        yield plan, base, options


def _write(result: RunResult, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    results = result.save(directory / "results.json")
    report = directory / "report.md"
    report.write_text(render_markdown([result], title=f"Upgrade {result.label()}"), encoding="utf-8")
    extra = os.environ.get(RESULTS_DIR_ENV)
    if extra:
        result.save(REPO / extra / f"{result.run_id}.json")
    return results, report


@pytest.mark.timeout(UPGRADE_TIMEOUT_S)
def test_the_catalog_survives_the_upgrade(
    upgrade_cluster: tuple[UpgradePlan, RunState, E2EOptions], tmp_path: Path
) -> None:
    plan, base, options = upgrade_cluster
    catalog = load_catalog(REPO / "scenarios")
    scenarios = UpgradeCatalog(
        catalog.scenarios,
        plan,
        base=base,
        options=options,
        run_dir=tmp_path / "catalog",
        mission=catalog.get(MISSION),
    )
    try:
        result = UpgradeRun(
            plan,
            base.kubeconfig,
            tmp_path / "upgrade",
            run_catalog=scenarios,
            context=base.context,
            probe=scenarios.probe,
            probe_target=f"{MISSION} through {base.ingress_url}",
            keep=options.keep_cluster,
        ).execute()
    finally:
        scenarios.close()
    results, report = _write(result, options.artifacts_dir / f"upgrade-{base.run_id}")
    problems = upgrade_problems(result, plan.to_version)
    assert not problems, (
        f"{plan.describe()}:\n  " + "\n  ".join(problems) + f"\nresults: {results}\nreport: {report}"
    )
    assert [phase for phase, _ in scenarios.phases] == ["before", "after"]
    print(f"{plan.describe()}: {result.prober.verdict() if result.prober else '-'}; report {report}")
