"""harness.upgrade against fake istioctl binaries (one per Istio version) and a fake cluster API.

Both write into the fakebin call log, together with the catalog runner, so each test reads one
timeline: which istioctl ran which command, which API call came between, when the catalog ran. The
polling waits run the real ``wait_until`` on a fake clock, so nothing here sleeps.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import image_tag
from harness.cluster.kube import WaitTimeoutError
from harness.report.results import Phase, RunResult, ScenarioResult, load_results
from harness.upgrade import (
    INJECTION_LABEL,
    RESTARTED_AT,
    REV_LABEL,
    KubeUpgradeApi,
    ProxyStatus,
    ProxyStatusError,
    UpgradePlan,
    UpgradeRun,
    label_patch,
    parse_proxy_status,
    pod_image_problems,
    proxy_problems,
    restart_patch,
    revision_name,
)

pytestmark = pytest.mark.unit

OLD, NEW = "1.29.6", "1.30.3"
NS = "egress-harness-upgrade"
SCENARIOS = ("http-via-egress-gateway", "registry-only-blocks-unregistered")


# --- fakes ------------------------------------------------------------------------------------------


def _log(log: Path, tool: str, *args: str) -> None:
    with log.open("a") as fh:
        fh.write(json.dumps({"tool": tool, "args": list(args), "rule": None}) + "\n")


class FakeApi:
    """The cluster: namespaces, deployments, pods whose istio-proxy image follows what was upgraded."""

    def __init__(self, log: Path, *, deployments: Sequence[str] = ("proxy", "target")) -> None:
        self.log = log
        self.namespaces: dict[str, dict[str, str]] = {}
        self.deployments = {NS: list(deployments)}
        self.restarted: set[str] = set()
        self.fail_rollout: str | None = None
        self.preexisting: set[str] = set()  # deployments in istio-system before the run
        self.gone_after = 0  # looks after `uninstall --revision` that still see the old istiod
        self.looks_after_uninstall = 0

    def _calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def _gateway_version(self) -> str:
        upgraded = any(
            c["tool"] == f"istioctl-{NEW}" and c["args"][:1] in (["install"], ["upgrade"])
            for c in self._calls()
        )
        return NEW if upgraded else OLD

    def deployment_exists(self, namespace: str, name: str) -> bool:
        _log(self.log, "api", "deployment_exists", namespace, name)
        uninstalled = any(c["args"][:2] == ["uninstall", "--revision"] for c in self._calls())
        if not uninstalled:
            return name in self.preexisting
        self.looks_after_uninstall += 1
        return self.looks_after_uninstall <= self.gone_after

    def wait_rollout(self, namespace: str, name: str, *, deadline_s: float, interval_s: float = 2.0) -> Any:
        _log(self.log, "api", "wait_rollout", namespace, name)
        if name == self.fail_rollout:
            raise WaitTimeoutError(f"rollout of {namespace}/{name}", deadline_s, f"'{name}': 0 of 1 updated")
        return {}

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        _log(self.log, "api", "list_pods", namespace, selector)
        if namespace == "istio-system":
            name = (
                "istio-egressgateway-5d9c-abcde" if "egress" in selector else "istio-ingressgateway-7d6-xyz"
            )
            return [_pod(namespace, name, self._gateway_version())]
        return [
            _pod(namespace, f"{d}-abc", NEW if d in self.restarted else OLD)
            for d in self.deployments.get(namespace, [])
        ]

    def namespace_exists(self, name: str) -> bool:
        _log(self.log, "api", "namespace_exists", name)
        return name in self.namespaces

    def create_namespace(self, name: str, labels: Any = None) -> None:
        _log(self.log, "api", "create_namespace", name, *(f"{k}={v}" for k, v in (labels or {}).items()))
        self.namespaces[name] = dict(labels or {})

    def delete_namespace(self, name: str, *, deadline_s: float = 180.0, interval_s: float = 1.0) -> None:
        _log(self.log, "api", "delete_namespace", name)
        self.namespaces.pop(name, None)

    def label_namespace(self, name: str, labels: Any, remove: Sequence[str] = ()) -> None:
        _log(
            self.log,
            "api",
            "label_namespace",
            name,
            *(f"{k}={v}" for k, v in labels.items()),
            *(f"-{k}" for k in remove),
        )
        current = self.namespaces.setdefault(name, {})
        for key in remove:
            current.pop(key, None)
        current.update(labels)

    def list_deployments(self, namespace: str) -> list[str]:
        _log(self.log, "api", "list_deployments", namespace)
        return list(self.deployments.get(namespace, []))

    def restart_deployment(self, namespace: str, name: str, restarted_at: str) -> None:
        assert restarted_at.endswith("Z")
        _log(self.log, "api", "restart_deployment", namespace, name)
        self.restarted.add(name)


def _pod(namespace: str, name: str, version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "containers": [
                {"name": "app"},
                {"name": "istio-proxy", "image": f"docker.io/istio/proxyv2:{version}"},
            ]
        },
        "status": {"phase": "Running"},
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Catalog:
    """The catalog runner: logs its call, answers with one result per scenario (outcomes per phase)."""

    def __init__(self, log: Path, outcomes: dict[str, str] | None = None) -> None:
        self.log = log
        self.outcomes = outcomes or {}

    def __call__(self, phase: Phase, version: str) -> list[ScenarioResult]:
        _log(self.log, "catalog", phase, version)
        outcome: Any = self.outcomes.get(phase, "passed")
        return [ScenarioResult(s, phase, version, outcome, proxy_versions=[version]) for s in SCENARIOS]


# --- proxy-status output as istioctl prints it (a tabwriter: minwidth 0, padding 5) ------------------


def tabwrite(rows: Sequence[Sequence[str]], padding: int = 5) -> str:
    widths = [max(len(row[i]) for row in rows) + padding for i in range(len(rows[0]))]
    lines = [
        "".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)) + row[-1] for row in rows
    ]
    return "\n".join(lines) + "\n"


def proxy_table(proxies: Sequence[tuple[str, str, str]]) -> str:
    """The 1.2x table: NAME CLUSTER CDS LDS EDS RDS ECDS ISTIOD VERSION (a status may hold spaces)."""
    rows = [["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"]]
    for name, istiod, version in proxies:
        rows.append(
            [
                name,
                "Kubernetes",
                "SYNCED (2m3s)",
                "SYNCED (2m3s)",
                "SYNCED (2m1s)",
                "NOT SENT",
                "IGNORED",
                istiod,
                version,
            ]
        )
    return tabwrite(rows)


def mesh(version: str, istiod: str, workloads: Sequence[str] = ("proxy", "target")) -> str:
    proxies = [
        ("istio-egressgateway-5d9c-abcde.istio-system", istiod, version),
        ("istio-ingressgateway-7d6-xyz.istio-system", istiod, version),
        *((f"{w}-abc.{NS}", istiod, version) for w in workloads),
    ]
    return proxy_table(proxies)


ISTIOD_NEW = "istiod-1-30-3-7f6fc6cfd6-s8zfg"
ISTIOD_OLD = "istiod-1-29-6-bdf5948d5-n72r2"


def version_rule(version: str) -> dict[str, Any]:
    out = {
        "clientVersion": {"version": version, "revision": "x", "golang_version": "go1.25", "status": "Clean"}
    }
    return {
        "tool": f"istioctl-{version}",
        "args": ["version", "--remote=false", "-o", "json"],
        "stdout": json.dumps(out),
    }


def base_rules(proxy_status: str | None = None) -> list[dict[str, Any]]:
    return [
        version_rule(OLD),
        version_rule(NEW),
        {"tool": f"istioctl-{OLD}", "args": ["install"], "stdout": "✔ Installation complete\n"},
        {
            "tool": f"istioctl-{NEW}",
            "args": ["x", "precheck"],
            "stdout": "✔ No issues found when checking the cluster.\n",
        },
        {"tool": f"istioctl-{NEW}", "args": ["install"], "stdout": "✔ Installation complete\n"},
        {"tool": f"istioctl-{NEW}", "args": ["upgrade"], "stdout": "✔ Installation complete\n"},
        {
            "tool": f"istioctl-{NEW}",
            "args": ["proxy-status"],
            "stdout": proxy_status or mesh(NEW, ISTIOD_NEW),
        },
        {"tool": f"istioctl-{NEW}", "args": ["uninstall", "--revision"], "stdout": "✔ Uninstall complete\n"},
        {"tool": f"istioctl-{NEW}", "args": ["tag", "set", "default"], "stdout": ""},
        {"tool": f"istioctl-{NEW}", "args": ["uninstall", "--purge"], "stdout": "✔ Uninstall complete\n"},
        {"tool": f"istioctl-{OLD}", "args": ["uninstall", "--purge"], "stdout": "✔ Uninstall complete\n"},
    ]


@pytest.fixture
def setup(fakebin: Any, tmp_path: Path) -> dict[str, Any]:
    for version in (OLD, NEW):
        (fakebin.bin_dir / f"istioctl-{version}").symlink_to("_fake.py")
    fakebin.log.write_text("")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    return {"fakebin": fakebin, "kubeconfig": kubeconfig, "run_dir": tmp_path / "run", "clock": FakeClock()}


def make_run(
    setup: dict[str, Any], plan: UpgradePlan, api: FakeApi, catalog: Catalog, **kwargs: Any
) -> UpgradeRun:
    bins = setup["fakebin"].bin_dir
    clock = setup["clock"]
    return UpgradeRun(
        plan,
        setup["kubeconfig"],
        setup["run_dir"],
        run_catalog=catalog,
        istioctl_for=lambda v: bins / f"istioctl-{v}",
        api=api,
        clock=clock,
        sleep=clock.sleep,
        run_id="unit",
        **kwargs,
    )


def commands(fakebin: Any) -> list[str]:
    return [" ".join([c["tool"], *c["args"]]) for c in fakebin.calls()]


def control_plane(istiod: str) -> list[str]:
    return [
        f"api wait_rollout istio-system {istiod}",
        "api wait_rollout istio-system istio-ingressgateway",
        "api wait_rollout istio-system istio-egressgateway",
        "api list_pods istio-system istio=egressgateway",
    ]


def restart_and_verify() -> list[str]:
    """Workloads one at a time (each rollout done before the next), then the gateways."""
    return [
        f"api list_deployments {NS}",
        f"api restart_deployment {NS} proxy",
        f"api wait_rollout {NS} proxy",
        f"api restart_deployment {NS} target",
        f"api wait_rollout {NS} target",
        "api restart_deployment istio-system istio-ingressgateway",
        "api wait_rollout istio-system istio-ingressgateway",
        "api restart_deployment istio-system istio-egressgateway",
        "api wait_rollout istio-system istio-egressgateway",
    ]


def verify_round(k: str, revision: str | None = None) -> list[str]:
    """proxy-status of B's istiod: in a canary named by its revision (issue 10 item 1)."""
    return [
        f"istioctl-{NEW} proxy-status -o json --kubeconfig {k}"
        + (f" --revision {revision}" if revision else ""),
        "api list_pods istio-system istio=egressgateway",
        "api list_pods istio-system istio=ingressgateway",
        f"api list_pods {NS} ",
    ]


def cleanup(k: str, istioctl: str = f"istioctl-{NEW}") -> list[str]:
    return [
        f"{istioctl} uninstall --purge -y --kubeconfig {k}",
        "api delete_namespace istio-system",
        f"api delete_namespace {NS}",
    ]


# --- whole runs ---------------------------------------------------------------------------------------


def test_canary_command_sequence(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    api = FakeApi(fakebin.log)
    api.gone_after = 1  # the old istiod is still there on the first look after the uninstall
    result = make_run(setup, UpgradePlan(OLD, NEW, "canary"), api, Catalog(fakebin.log)).execute()
    k = setup["kubeconfig"]
    overlay = setup["run_dir"] / "istio-overlay.yaml"
    assert commands(fakebin) == [
        f"istioctl-{OLD} version --remote=false -o json",
        f"istioctl-{NEW} version --remote=false -o json",
        "api deployment_exists istio-system istiod",
        "api deployment_exists istio-system istiod-1-29-6",
        "api deployment_exists istio-system istiod-1-30-3",
        f"istioctl-{OLD} install -y -f {overlay} --set revision=1-29-6 --kubeconfig {k} --readiness-timeout 600s",
        *control_plane("istiod-1-29-6"),
        f"api namespace_exists {NS}",
        f"api create_namespace {NS} istio.io/rev=1-29-6",
        f"catalog before {OLD}",
        f"istioctl-{NEW} x precheck --kubeconfig {k}",
        f"istioctl-{NEW} install -y -f {overlay} --set revision=1-30-3 --kubeconfig {k} --readiness-timeout 600s",
        *control_plane("istiod-1-30-3"),
        f"api namespace_exists {NS}",
        f"api label_namespace {NS} istio.io/rev=1-30-3 -istio-injection",
        *restart_and_verify(),
        *verify_round(str(k), "1-30-3"),
        f"istioctl-{NEW} tag set default --revision 1-30-3 --overwrite --kubeconfig {k}",
        f"istioctl-{NEW} uninstall --revision 1-29-6 -y --kubeconfig {k}",
        "api deployment_exists istio-system istiod-1-29-6",
        "api deployment_exists istio-system istiod-1-29-6",
        f"catalog after {NEW}",
        *cleanup(str(k)),
    ]
    assert result.ok, result.steps
    assert result.mode == "canary"
    assert result.istio_versions == [OLD, NEW]
    assert [(s.phase, s.step) for s in result.steps if s.phase == "upgrade"] == [
        ("upgrade", "precheck"),
        ("upgrade", "install Istio 1.30.3 as revision 1-30-3"),
        ("upgrade", "wait for the control plane and gateways"),
        ("upgrade", "relabel namespaces"),
        ("upgrade", "restart workloads"),
        ("upgrade", "restart gateways"),
        ("upgrade", "verify gateway and proxies"),
        ("upgrade", "move the default tag to 1-30-3"),
        ("upgrade", "uninstall revision 1-29-6"),
        ("upgrade", "verify revision 1-29-6 is gone"),
    ]
    assert {s.outcome for s in result.steps} == {"passed"}
    assert [(s.phase, s.istio_version) for s in result.scenarios] == [("before", OLD)] * 2 + [
        ("after", NEW)
    ] * 2
    assert setup["clock"].slept == [5.0]  # one poll for the old istiod to go
    assert api.namespaces == {}, "the namespace this run created was deleted"


def test_in_place_command_sequence(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules(mesh(NEW, "istiod-6cf8d4f9cb-wm7x6")))
    api = FakeApi(fakebin.log)
    api.namespaces[NS] = {"team": "egress"}  # exists already: labelled, and not deleted afterwards
    result = make_run(setup, UpgradePlan(OLD, NEW, "in-place"), api, Catalog(fakebin.log)).execute()
    k = setup["kubeconfig"]
    overlay = setup["run_dir"] / "istio-overlay.yaml"
    assert commands(fakebin) == [
        f"istioctl-{OLD} version --remote=false -o json",
        f"istioctl-{NEW} version --remote=false -o json",
        "api deployment_exists istio-system istiod",
        f"istioctl-{OLD} install -y -f {overlay} --kubeconfig {k} --readiness-timeout 600s",
        *control_plane("istiod"),
        f"api namespace_exists {NS}",
        f"api label_namespace {NS} istio-injection=enabled -istio.io/rev",
        f"catalog before {OLD}",
        f"istioctl-{NEW} x precheck --kubeconfig {k}",
        f"istioctl-{NEW} upgrade -y -f {overlay} --kubeconfig {k} --readiness-timeout 600s",
        *control_plane("istiod"),
        *restart_and_verify(),
        *verify_round(str(k)),
        f"catalog after {NEW}",
        *cleanup(str(k))[:2],
    ]
    assert result.ok
    assert api.namespaces == {NS: {"team": "egress", INJECTION_LABEL: "enabled"}}
    overlay_text = overlay.read_text()
    assert "egressGateways" in overlay_text
    assert "{{" not in overlay_text


def test_context_is_passed_to_every_istioctl_call(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    run = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), Catalog(fakebin.log), context="kind-x"
    )
    assert run.execute().ok
    istioctl = [c for c in fakebin.calls() if c["tool"].startswith("istioctl") and c["args"][0] != "version"]
    assert istioctl
    for call in istioctl:
        at = call["args"].index("--kubeconfig")
        assert call["args"][at : at + 4] == ["--kubeconfig", str(setup["kubeconfig"]), "--context", "kind-x"]


def test_failed_upgrade_step_is_named_and_cleanup_runs(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    failing = {
        "tool": f"istioctl-{NEW}",
        "args": ["upgrade"],
        "stderr": "✘ Istiod encountered an error: failed to wait for resource: resources not ready after 10m0s\n",
        "exit": 1,
    }
    fakebin.rules([failing, *base_rules()])
    results_path = setup["run_dir"] / "results" / "upgrade.json"
    run = make_run(
        setup,
        UpgradePlan(OLD, NEW, "in-place"),
        FakeApi(fakebin.log),
        Catalog(fakebin.log),
        results_path=results_path,
    )
    result = run.execute()
    k = setup["kubeconfig"]
    assert not result.ok
    step = result.failed_step
    assert step is not None
    assert (step.phase, step.step) == ("upgrade", "istioctl upgrade to 1.30.3")
    assert "exited with code 1" in step.message
    assert "resources not ready after 10m0s" in step.message
    cmds = commands(fakebin)
    assert not any(c.startswith("api restart_deployment") or c.startswith("catalog after") for c in cmds)
    # B's istioctl ran last, so B's istioctl removes everything; the created namespace goes too.
    assert cmds[-3:] == cleanup(str(k))
    after = result.phase_results("after")
    assert [s.outcome for s in after] == ["skipped", "skipped"]
    assert (
        after[0].message
        == "not run: the upgrade failed in phase 'upgrade' at step 'istioctl upgrade to 1.30.3'"
    )
    assert [s.step for s in result.steps if s.phase == "cleanup"] == [
        "uninstall Istio",
        "delete namespace istio-system",
        f"delete namespace {NS}",
    ]
    # The result file says the same, and the report names phase and step.
    [saved] = load_results([results_path])
    assert saved == result
    from harness.report.render import render_markdown

    assert "phase **upgrade**, step **istioctl upgrade to 1.30.3** failed" in render_markdown([saved])


def test_failed_install_of_a_cleans_up_with_a_istioctl(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(
        [
            {"tool": f"istioctl-{OLD}", "args": ["install"], "exit": 1, "stderr": "Error: boom\n"},
            *base_rules(),
        ]
    )
    result = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), Catalog(fakebin.log)
    ).execute()
    assert result.failed_step is not None
    assert (result.failed_step.phase, result.failed_step.step) == (
        "install",
        "install Istio 1.29.6 as revision 1-29-6",
    )
    assert result.scenarios == []
    assert commands(fakebin)[-2:] == [
        f"istioctl-{OLD} uninstall --purge -y --kubeconfig {setup['kubeconfig']}",
        "api delete_namespace istio-system",
    ]


@pytest.mark.parametrize("existing", ["istiod", "istiod-1-29-6", "istiod-1-30-3"])
def test_a_cluster_with_istio_is_refused_and_left_alone(setup: dict[str, Any], existing: str) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    api = FakeApi(fakebin.log)
    api.preexisting = {existing}
    result = make_run(setup, UpgradePlan(OLD, NEW, "canary"), api, Catalog(fakebin.log)).execute()
    assert result.failed_step is not None
    assert (result.failed_step.phase, result.failed_step.step) == (
        "install",
        "check that no Istio is installed",
    )
    assert f"already installed on this cluster (istio-system/{existing})" in result.failed_step.message
    cmds = commands(fakebin)
    assert not any(" install " in c or "uninstall" in c or "delete_namespace" in c for c in cmds), cmds


def test_wrong_istioctl_installs_nothing(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    wrong = version_rule(NEW)
    wrong["tool"] = f"istioctl-{OLD}"
    fakebin.rules([wrong, *base_rules()])
    result = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), Catalog(fakebin.log)
    ).execute()
    assert result.failed_step is not None
    assert result.failed_step.step == f"check istioctl {OLD}"
    assert "is Istio 1.30.3, not 1.29.6" in result.failed_step.message
    assert commands(fakebin) == [f"istioctl-{OLD} version --remote=false -o json"]
    assert not any(s.phase == "cleanup" for s in result.steps)


def test_rollout_timeout_of_a_workload_fails_restart_step(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    api = FakeApi(fakebin.log)
    api.fail_rollout = "target"
    result = make_run(setup, UpgradePlan(OLD, NEW, "canary"), api, Catalog(fakebin.log)).execute()
    assert result.failed_step is not None
    assert (result.failed_step.phase, result.failed_step.step) == ("upgrade", "restart workloads")
    assert "rollout of egress-harness-upgrade/target: not done after 300s" in result.failed_step.message
    assert not any("uninstall --revision" in c for c in commands(fakebin))
    assert commands(fakebin)[-3:] == cleanup(str(setup["kubeconfig"]))


def test_proxies_still_old_are_waited_for_then_pass(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    # The first look still sees the old target pod (terminating, connected to the old istiod).
    stale = proxy_table(
        [
            ("istio-egressgateway-5d9c-abcde.istio-system", ISTIOD_NEW, NEW),
            (f"target-old.{NS}", ISTIOD_OLD, OLD),
            (f"target-abc.{NS}", ISTIOD_NEW, NEW),
        ]
    )
    fakebin.rules(
        [{"tool": f"istioctl-{NEW}", "args": ["proxy-status"], "stdout": stale, "times": 1}, *base_rules()]
    )
    result = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), Catalog(fakebin.log)
    ).execute()
    assert result.ok, result.failed_step
    assert sum(1 for c in commands(fakebin) if " proxy-status " in c) == 2
    assert setup["clock"].slept[0] == 5.0


def test_proxies_that_stay_old_fail_the_verify_step(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    # The gateway reports the new version but still talks to the old istiod; the target stays old.
    stuck = proxy_table(
        [
            ("istio-egressgateway-5d9c-abcde.istio-system", ISTIOD_OLD, NEW),
            (f"target-abc.{NS}", ISTIOD_OLD, OLD),
        ]
    )
    fakebin.rules(base_rules(stuck))
    plan = UpgradePlan(OLD, NEW, "canary", proxy_wait_s=30, poll_interval_s=10)
    result = make_run(setup, plan, FakeApi(fakebin.log), Catalog(fakebin.log)).execute()
    step = result.failed_step
    assert step is not None
    assert (step.phase, step.step) == ("upgrade", "verify gateway and proxies")
    assert step.message.startswith("proxies at Istio 1.30.3: not done after 30s; last state: ")
    assert (
        f"istio-egressgateway-5d9c-abcde.istio-system is connected to {ISTIOD_OLD}, not istiod-1-30-3-*"
        in step.message
    )
    assert f"target-abc.{NS} reports 1.29.6, not 1.30.3" in step.message
    assert f"no proxy of namespace {NS}" not in step.message
    assert setup["clock"].slept == [10.0, 10.0, 10.0]
    assert not any("uninstall --revision" in c for c in commands(fakebin))
    assert commands(fakebin)[-1] == f"api delete_namespace {NS}"


def test_catalog_results_must_match_the_phase(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())

    def confused(phase: Phase, version: str) -> list[ScenarioResult]:
        return [ScenarioResult("s", "single", version, "passed")]

    run = make_run(setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), Catalog(fakebin.log))
    run.run_catalog = confused
    result = run.execute()
    assert result.failed_step is not None
    assert (result.failed_step.phase, result.failed_step.step) == ("before", "run the catalog")
    assert (
        "returned s as phase single on 1.29.6, but this is phase before on 1.29.6"
        in result.failed_step.message
    )


def test_no_workloads_to_restart_is_a_failure(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    result = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log, deployments=()), Catalog(fakebin.log)
    ).execute()
    assert result.failed_step is not None
    assert result.failed_step.step == "restart workloads"
    assert "no deployment in egress-harness-upgrade" in result.failed_step.message


def test_keep_skips_cleanup(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    result = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), Catalog(fakebin.log), keep=True
    ).execute()
    assert not any("uninstall --purge" in c or "delete_namespace" in c for c in commands(fakebin))
    assert result.steps[-1].phase == "cleanup"
    assert result.steps[-1].outcome == "skipped"
    assert result.ok


def test_ctrl_c_during_the_upgrade_still_cleans_up(setup: dict[str, Any], main_thread: None) -> None:
    fakebin = setup["fakebin"]
    interrupted = {"tool": f"istioctl-{NEW}", "args": ["install"], "interrupt_parent": True, "sleep": 30}
    fakebin.rules([interrupted, *base_rules()])
    results_path = setup["run_dir"] / "r.json"
    run = make_run(
        setup,
        UpgradePlan(OLD, NEW, "canary"),
        FakeApi(fakebin.log),
        Catalog(fakebin.log),
        results_path=results_path,
    )
    with pytest.raises(KeyboardInterrupt):
        run.execute()
    assert commands(fakebin)[-3:] == cleanup(str(setup["kubeconfig"]))
    [saved] = load_results([results_path])
    assert saved.failed_step is not None
    assert (saved.failed_step.step, saved.failed_step.message) == (
        "install Istio 1.30.3 as revision 1-30-3",
        "interrupted",
    )


def test_prober_runs_through_the_upgrade_phase(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    seen: list[int] = []

    def probe() -> int:
        seen.append(len(fakebin.calls()))
        return 200

    plan = UpgradePlan(OLD, NEW, "canary", prober_interval_s=0.01)
    result = make_run(
        setup, plan, FakeApi(fakebin.log), Catalog(fakebin.log), probe=probe, probe_target="url"
    ).execute()
    assert result.prober is not None
    assert result.prober.target == "url"
    assert result.prober.total >= 1
    assert result.prober.passed
    assert result.ok
    calls = commands(fakebin)
    first_probe_at = seen[0]
    # The prober starts after the catalog's before phase, and stops before the after phase.
    assert calls.index(f"catalog before {OLD}") < first_probe_at
    assert seen[-1] <= calls.index(f"catalog after {NEW}")


def test_prober_below_threshold_fails_the_run_not_a_step(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    plan = UpgradePlan(OLD, NEW, "canary", prober_interval_s=0.01)
    result = make_run(setup, plan, FakeApi(fakebin.log), Catalog(fakebin.log), probe=lambda: 503).execute()
    assert result.failed_step is None
    assert result.prober is not None
    assert not result.prober.passed
    assert not result.ok


def test_regression_recorded(setup: dict[str, Any]) -> None:
    fakebin = setup["fakebin"]
    fakebin.rules(base_rules())
    catalog = Catalog(fakebin.log, {"after": "failed"})
    result: RunResult = make_run(
        setup, UpgradePlan(OLD, NEW, "canary"), FakeApi(fakebin.log), catalog
    ).execute()
    assert [after.scenario for _, after in result.regressions()] == list(SCENARIOS)
    assert result.failed_step is None


# --- the plan -------------------------------------------------------------------------------------------


def test_revision_names() -> None:
    assert revision_name("1.30.3") == "1-30-3"
    assert revision_name("1.28.10") == "1-28-10"
    with pytest.raises(ValueError, match=re.escape("(X.Y.Z)")):
        revision_name("1.30")


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="not supported"):
        UpgradePlan("1.27.3", NEW)
    with pytest.raises(ValueError, match="an upgrade goes to a newer Istio"):
        UpgradePlan(NEW, OLD)
    with pytest.raises(
        ValueError,
        match=re.escape("in-place upgrades span at most 1 minor version; 1.28.10 -> 1.30.3 spans 2"),
    ):
        UpgradePlan("1.28.10", NEW, "in-place")
    assert UpgradePlan("1.28.10", NEW, "canary").from_revision == "1-28-10"
    with pytest.raises(ValueError, match="mode must be one of"):
        UpgradePlan(OLD, NEW, "blue-green")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a usable workload namespace"):
        UpgradePlan(OLD, NEW, namespaces=("istio-system",))
    with pytest.raises(ValueError, match="not a usable workload namespace"):
        UpgradePlan(OLD, NEW, namespaces=("Bad_Name",))


def test_plan_labels_and_deployments() -> None:
    canary = UpgradePlan(OLD, NEW, "canary")
    assert canary.namespace_labels(OLD) == ({REV_LABEL: "1-29-6"}, (INJECTION_LABEL,))
    assert canary.namespace_labels(NEW) == ({REV_LABEL: "1-30-3"}, (INJECTION_LABEL,))
    assert canary.istiod_deployment(NEW) == "istiod-1-30-3"
    in_place = UpgradePlan(OLD, NEW, "in-place")
    assert in_place.namespace_labels(NEW) == ({INJECTION_LABEL: "enabled"}, (REV_LABEL,))
    assert in_place.istiod_deployment(NEW) == "istiod"
    assert in_place.from_revision is None


def test_plan_from_env() -> None:
    assert UpgradePlan.from_env({}) is None
    plan = UpgradePlan.from_env(
        {
            "EGRESS_HARNESS_UPGRADE_FROM": OLD,
            "EGRESS_HARNESS_UPGRADE_TO": NEW,
            "EGRESS_HARNESS_UPGRADE_MODE": "in-place",
        }
    )
    assert plan == UpgradePlan(OLD, NEW, "in-place")
    assert UpgradePlan.from_env(
        {"EGRESS_HARNESS_UPGRADE_FROM": OLD, "EGRESS_HARNESS_UPGRADE_TO": NEW}
    ) == UpgradePlan(OLD, NEW, "canary")
    with pytest.raises(ValueError, match="set both"):
        UpgradePlan.from_env({"EGRESS_HARNESS_UPGRADE_TO": NEW})


# --- proxy-status parsing ---------------------------------------------------------------------------------


def test_parse_current_table_with_spaces_in_status_cells() -> None:
    text = "Warning: a line before the table\n" + mesh(NEW, ISTIOD_NEW)
    parsed = parse_proxy_status(text)
    assert parsed[0] == ProxyStatus("istio-egressgateway-5d9c-abcde.istio-system", ISTIOD_NEW, NEW)
    assert [p.name for p in parsed[2:]] == [f"proxy-abc.{NS}", f"target-abc.{NS}"]
    assert (parsed[2].pod, parsed[2].namespace) == ("proxy-abc", NS)


def test_parse_older_tables() -> None:
    # Istio 1.7's documented layout (no CLUSTER/ECDS), with the NOT SENT status
    old = tabwrite(
        [
            ["NAME", "CDS", "LDS", "EDS", "RDS", "ISTIOD", "VERSION"],
            [
                "details-v1-558b8b4b76-qzqsg.default",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "istiod-6cf8d4f9cb-wm7x6",
                "1.7.0",
            ],
            [
                "istio-ingressgateway-66c994c45c-cmb7x.istio-system",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "NOT SENT",
                "istiod-6cf8d4f9cb-wm7x6",
                "1.7.0",
            ],
        ]
    )
    assert [(p.name, p.version) for p in parse_proxy_status(old)] == [
        ("details-v1-558b8b4b76-qzqsg.default", "1.7.0"),
        ("istio-ingressgateway-66c994c45c-cmb7x.istio-system", "1.7.0"),
    ]
    # A version istioctl could only guess carries a `*`; an empty VERSION stays empty, not the istiod.
    odd = tabwrite(
        [
            ["NAME", "CLUSTER", "CDS", "ISTIOD", "VERSION"],
            ["a-1.ns", "c1", "STALE (Never Acknowledged)", "istiod-x", "1.30.3*"],
            ["b-1.ns", "c1", "SYNCED", "istiod-x", ""],
        ]
    )
    assert [(p.name, p.istiod, p.version) for p in parse_proxy_status(odd)] == [
        ("a-1.ns", "istiod-x", "1.30.3"),
        ("b-1.ns", "istiod-x", ""),
    ]


def test_parse_json_output() -> None:
    response = {
        "versionInfo": "1.1",
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.service.status.v3.ClientConfig",
                "node": {
                    "id": f"target-abc.{NS}",
                    "metadata": {"CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": NEW},
                },
                "genericXdsConfigs": [],
            }
        ],
        "controlPlane": {
            "identifier": json.dumps({"Component": "istiod", "ID": ISTIOD_NEW, "Info": {"version": NEW}})
        },
    }
    expected = [ProxyStatus(f"target-abc.{NS}", ISTIOD_NEW, NEW)]
    assert parse_proxy_status(json.dumps(response)) == expected
    assert parse_proxy_status(json.dumps([response])) == expected
    assert parse_proxy_status(json.dumps({ISTIOD_NEW: json.dumps(response)})) == expected


def test_parse_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ProxyStatusError, match="no proxy-status table header"):
        parse_proxy_status('Error: no running Istio pods in "istio-system"\n')
    with pytest.raises(ProxyStatusError, match="does not parse"):
        parse_proxy_status("{oops")
    with pytest.raises(ProxyStatusError, match="no node id"):
        parse_proxy_status('{"resources": [{"node": {}}]}')


def test_proxy_problems() -> None:
    good = parse_proxy_status(mesh(NEW, ISTIOD_NEW))
    assert (
        proxy_problems(
            good, version=NEW, namespaces=[NS], istiod_prefix="istiod-1-30-3-", expect_proxies_in=[NS]
        )
        == []
    )
    assert proxy_problems(good, version=NEW, namespaces=[NS], istiod_prefix="istiod-1-31-0-")[0].endswith(
        "not istiod-1-31-0-*"
    )
    # proxies outside the run's namespaces are not judged; a missing gateway or namespace is
    others = [ProxyStatus("x-1.elsewhere", "istiod-old", OLD)]
    assert proxy_problems(others, version=NEW, namespaces=[NS], expect_proxies_in=[NS]) == [
        "no egress gateway proxy (istio-egressgateway-*.istio-system) is listed",
        f"no proxy of namespace {NS} is listed",
    ]


def test_pod_image_problems() -> None:
    terminating = _pod(NS, "old", OLD)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-28T07:00:00Z"
    native = {
        "metadata": {"name": "n", "namespace": NS},
        "spec": {
            "initContainers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.3-distroless"}]
        },
    }
    assert pod_image_problems([terminating, native, _pod(NS, "new", NEW)], NEW) == []
    digest = {
        "metadata": {"name": "d", "namespace": NS},
        "spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2@sha256:abc"}]},
    }
    assert pod_image_problems([digest, _pod(NS, "old", OLD)], NEW) == [
        f"pod {NS}/d runs istio/proxyv2@sha256:abc",
        f"pod {NS}/old runs docker.io/istio/proxyv2:1.29.6",
    ]
    assert image_tag("localhost:5000/istio/proxyv2:1.30.3") == "1.30.3"
    assert image_tag("localhost:5000/istio/proxyv2") is None


# --- the Kubernetes adapter ---------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return {"items": [{"metadata": {"name": "b"}}, {"metadata": {"name": "a"}}]}

        return call


class _FakeKube:
    def __init__(self) -> None:
        self.core = _Recorder()
        self.apps = _Recorder()
        self.api_client = type("C", (), {"sanitize_for_serialization": staticmethod(lambda obj: obj)})()


def test_kube_adapter_sends_the_patches_kubectl_would() -> None:
    kube = _FakeKube()
    api = KubeUpgradeApi(kube)
    api.label_namespace(NS, {REV_LABEL: "1-30-3"}, [INJECTION_LABEL])
    api.restart_deployment(NS, "target", "2026-11-28T07:00:00.000Z")
    assert api.list_deployments(NS) == ["a", "b"]
    [(name, kwargs)] = kube.core.calls
    assert name == "patch_namespace"
    assert kwargs["body"] == {"metadata": {"labels": {INJECTION_LABEL: None, REV_LABEL: "1-30-3"}}}
    assert kwargs["_content_type"] == "application/strategic-merge-patch+json"
    assert kwargs["_request_timeout"] > 0
    (patch, patch_kwargs), (listing, _) = kube.apps.calls
    assert patch == "patch_namespaced_deployment"
    assert patch_kwargs["body"] == {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2026-11-28T07:00:00.000Z"}}}}
    }
    assert listing == "list_namespaced_deployment"
    assert label_patch({"a": "1"}, ["b"]) == {"metadata": {"labels": {"b": None, "a": "1"}}}
    assert restart_patch("t")["spec"]["template"]["metadata"]["annotations"] == {RESTARTED_AT: "t"}


def _harness_imports(path: Path) -> set[str]:
    """The ``harness.*`` modules a source file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("harness"))
    return found


def test_the_package_exports_its_api_and_the_parts_below_the_run_know_nothing_of_it() -> None:
    import harness.upgrade as package

    assert len(package.__all__) == len(set(package.__all__))
    for name in package.__all__:
        assert hasattr(package, name), name
    assert package.UpgradeRun is UpgradeRun
    assert package.UpgradePlan is UpgradePlan
    folder = Path(package.__file__).parent
    for module in ("plan", "api", "proxies", "prober"):
        imported = _harness_imports(folder / f"{module}.py")
        assert not {m for m in imported if m.startswith("harness.upgrade")}, (module, imported)
    assert {m for m in _harness_imports(folder / "runner.py") if m.startswith("harness.upgrade")} == {
        "harness.upgrade.api",
        "harness.upgrade.plan",
        "harness.upgrade.prober",
        "harness.upgrade.proxies",
    }


def test_the_proxy_container_and_image_tag_are_defined_once_below_the_upgrade() -> None:
    from harness.cluster import convergence
    from harness.upgrade import proxies

    root = Path(proxies.__file__).parents[1]
    defined: dict[str, list[str]] = {"PROXY_CONTAINER": [], "image_tag": []}
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [node.name] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            for name in set(names) & set(defined):
                defined[name].append(path.relative_to(root.parent).as_posix())
    assert defined == {
        "PROXY_CONTAINER": ["harness/cluster/convergence.py"],
        "image_tag": ["harness/cluster/convergence.py"],
    }
    assert proxies.PROXY_CONTAINER is convergence.PROXY_CONTAINER
    assert proxies.image_tag is convergence.image_tag
    # the upgrade may import from the cluster, not the reverse
    cluster = root / "cluster"
    assert not [
        (p.relative_to(root).as_posix(), m)
        for p in sorted(cluster.rglob("*.py"))
        for m in _harness_imports(p)
        if m.startswith("harness.upgrade")
    ]
