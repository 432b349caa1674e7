"""The istiod tier's upgrade run (issue 19) without a cluster: the plan takes the netns provider's
labels, the catalog of a phase runs several scenarios at a time in the catalog's order, the console's
summary ends with the prober's line and the verdict, and the command refuses bad input before it
starts anything. The run itself is tests/netns/test_netns_upgrade.py."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import main
from harness.cluster.runner import catalog_results
from harness.report.results import ProberStats, RunResult, ScenarioResult
from harness.upgrade.istiod import UpgradeOutcome, summary
from harness.upgrade.plan import UpgradePlan, revision_name

pytestmark = pytest.mark.unit


def test_the_plan_takes_the_netns_labels_and_orders_them_by_their_istio_line() -> None:
    plan = UpgradePlan("1.30-dev", "1.31-dev", "canary")
    assert (plan.from_revision, plan.to_revision) == ("1-30-dev", "1-31-dev")
    assert plan.istiod_deployment("1.31-dev") == "istiod-1-31-dev"
    assert UpgradePlan("1.30-dev", "1.31-dev", "in-place").from_revision is None
    with pytest.raises(ValueError, match=r"newer Istio: 1\.31-dev -> 1\.30-dev"):
        UpgradePlan("1.31-dev", "1.30-dev", "in-place")
    with pytest.raises(ValueError, match="not supported"):
        UpgradePlan("1.30-dev", "1.32-dev", "canary")
    assert revision_name("1.30.3") == "1-30-3"
    with pytest.raises(ValueError, match=r"X\.Y-dev"):
        revision_name("1.31-rc")


def test_a_phase_runs_scenarios_at_the_same_time_and_keeps_the_catalog_order() -> None:
    started: list[str] = []
    both_running = threading.Barrier(2, timeout=5)

    def run_one(scenario: SimpleNamespace) -> ScenarioResult:
        started.append(scenario.name)
        if scenario.name in ("a", "b"):
            both_running.wait()  # only passes when a and b run at once
        if scenario.name == "c":
            raise RuntimeError("the cluster went away")
        time.sleep(0.01 if scenario.name == "a" else 0)
        return ScenarioResult(scenario.name, "before", "1.30-dev", "passed")

    scenarios = [SimpleNamespace(name=n) for n in ("a", "b", "c")]
    results = catalog_results(scenarios, run_one, phase="before", version="1.30-dev", workers=2)
    assert [r.scenario for r in results] == ["a", "b", "c"]
    assert [r.outcome for r in results] == ["passed", "passed", "error"]
    assert results[2].message == "RuntimeError: the cluster went away"


def _outcome(after: str, *, successes: int = 1996, problems: tuple[str, ...] = ()) -> UpgradeOutcome:
    result = RunResult(
        run_id="upgrade-canary-1.30-dev-1.31-dev-abc",
        started="2026-12-07T07:00:00Z",
        istio_versions=["1.30-dev", "1.31-dev"],
        mode="canary",
        prober=ProberStats("mission", 2000, successes, 0.95, 0.2, "2026-12-07T07:01:00Z", 400.0),
        scenarios=[
            ScenarioResult("http-via-egress-gateway", "before", "1.30-dev", "passed"),
            ScenarioResult("http-via-egress-gateway", "after", "1.31-dev", after),
        ],
    )
    return UpgradeOutcome(result, Path("r/results.json"), Path("r/report.md"), [], problems)


def test_the_summary_ends_with_the_prober_and_the_verdict() -> None:
    lines = summary(_outcome("passed")).splitlines()
    assert lines[0] == "http-via-egress-gateway: passed -> passed"
    assert lines[-2:] == [
        "prober: 0.998 (1996/2000)",
        "PASS 1.30-dev -> 1.31-dev (canary): no scenario regressed, traffic held",
    ]
    failed = summary(_outcome("failed", problems=("http-via-egress-gateway regressed: ...",))).splitlines()
    assert failed[-2:] == ["FAIL 1.30-dev -> 1.31-dev (canary):", "  http-via-egress-gateway regressed: ..."]
    assert "http-via-egress-gateway: passed -> failed" in failed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "1.31-dev", "--to", "1.30-dev"], "newer Istio"),
        (["--from", "1.30-dev", "--to", "1.31-dev", "--workers", "0"], "--workers must be at least 1"),
        (["--from", "1.30-dev", "--to", "1.31-dev", "--to-overlay", "/nonexistent.yaml"], "no such file"),
    ],
)
def test_the_command_refuses_bad_input_before_it_starts_anything(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["upgrade", "run", "--tier", "istiod", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_failed_probe_names_the_hop_that_failed() -> None:
    import httpx

    from harness.common.traffic import ChainResponse
    from harness.upgrade.prober import judge

    def answer(status: int, body: object, text: str) -> ChainResponse:
        return ChainResponse("http://x/proxy", "rid", status, httpx.Headers(), text, body, 0.1, ())

    # the ingress gateway's own answer: no relay was reached
    assert judge(answer(503, None, "no healthy upstream")) == (
        False,
        "HTTP 503 (failed hop ingress gateway -> proxy: no healthy upstream)",
    )
    # a relay's answer names the hop it could not reach
    relayed = answer(502, {"failed_hop": "target", "error": "refused"}, "{}")
    assert judge(relayed) == (False, "HTTP 502 (failed hop target)")
    assert judge(answer(200, {}, "{}")) == (True, "HTTP 200")


# --- issue 10 item 1: proxy-status in a canary, against output recorded mid-upgrade ------------------

ISTIOCTL_DATA = Path(__file__).parent / "data" / "istioctl"


def _recorded(name: str) -> str:
    return (ISTIOCTL_DATA / name).read_text()


class _GatewayPods:
    """The cluster's gateway pods as the recorded B istiod lists them (proxyv2 of B)."""

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, object]]:
        if namespace != "istio-system":
            return []
        name = "istio-egressgateway-56ffb497c7-fcd7w" if "egress" in selector else "istio-ingressgateway-x"
        image = "egress-harness.local/istio/proxyv2:1.31-dev"
        return [
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "istio-proxy", "image": image}]},
                "status": {"phase": "Running"},
            }
        ]


def test_empty_sync_status_of_an_istiod_without_proxies_reads_as_no_proxies() -> None:
    from harness.upgrade.proxies import parse_proxy_status

    # recorded: the old revision's istiod once every gateway moved to the new one
    assert parse_proxy_status(_recorded("proxy-status-canary-restarted-default.json")) == []


@pytest.mark.parametrize(
    ("default_answer", "problem"),
    [
        # B beside A: the default tag still points at A, whose istiod lists the old gateways
        ("proxy-status-canary-default.json", "reports 1.30-dev, not 1.31-dev"),
        # the gateways restarted onto B: A's istiod has no proxy left
        ("proxy-status-canary-restarted-default.json", "no egress gateway proxy"),
    ],
)
def test_a_canary_verifies_the_proxies_with_the_new_revisions_istiod(
    fakebin: object, tmp_path: Path, default_answer: str, problem: str
) -> None:
    from harness.upgrade.runner import UpgradeRun

    bins = fakebin.bin_dir  # type: ignore[attr-defined]
    fakebin.rules(  # type: ignore[attr-defined]
        [
            # what the real istioctl answered with and without --revision (record_canary.py)
            {
                "tool": "istioctl",
                "args": ["proxy-status", "-o", "json"],
                "contains": ["--revision", "1-31-dev"],
                "stdout": _recorded("proxy-status-canary-restarted-revision-b.json"),
            },
            {"tool": "istioctl", "args": ["proxy-status", "-o", "json"], "stdout": _recorded(default_answer)},
        ]
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    plan = UpgradePlan("1.30-dev", "1.31-dev", "canary", proxy_wait_s=10, poll_interval_s=5)
    now = [0.0]
    upgrade = UpgradeRun(
        plan,
        kubeconfig,
        tmp_path / "run",
        run_catalog=lambda phase, version: [],
        istioctl_for=lambda version: bins / "istioctl",
        api=_GatewayPods(),  # type: ignore[arg-type]
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    upgrade.verify_proxies("1.31-dev")  # passes: asked with --revision 1-31-dev
    args = [c["args"] for c in fakebin.calls()]  # type: ignore[attr-defined]
    assert args and all(a[-2:] == ["--revision", "1-31-dev"] for a in args)
    # what the same check says when it asks the default revision (the defect this guards against)
    from harness.upgrade.proxies import parse_proxy_status, proxy_problems

    stale = proxy_problems(
        parse_proxy_status(_recorded(default_answer)),
        version="1.31-dev",
        namespaces=plan.namespaces,
        istiod_prefix="istiod-1-31-dev-",
    )
    assert any(problem in p for p in stale), stale


def test_a_scenario_too_new_for_a_is_new_on_b_not_a_regression() -> None:
    from harness.cluster.runner import upgrade_problems

    def run(after: str) -> RunResult:
        return RunResult(
            run_id="u",
            started="2026-12-07T07:00:00Z",
            istio_versions=["1.30-dev", "1.31-dev"],
            mode="in-place",
            prober=ProberStats("mission", 100, 100, 0.95, 0.2, "2026-12-07T07:01:00Z", 20.0),
            scenarios=[
                ScenarioResult("needs-1-31", "before", "1.30-dev", "skipped", "needs Istio >= 1.31"),
                ScenarioResult("needs-1-31", "after", "1.31-dev", after, proxy_versions=["1.31-dev"]),
                ScenarioResult("mission", "before", "1.30-dev", "passed", proxy_versions=["1.30-dev"]),
                ScenarioResult("mission", "after", "1.31-dev", "passed", proxy_versions=["1.31-dev"]),
            ],
        )

    assert upgrade_problems(run("passed"), "1.31-dev") == []
    assert run("failed").regressions() == []
    regressed = dataclasses.replace(run("passed"))
    regressed.scenarios[3] = ScenarioResult("mission", "after", "1.31-dev", "failed", "hop 'egress gateway'")
    assert upgrade_problems(regressed, "1.31-dev") == [
        "mission regressed: passed on 1.30-dev, failed on 1.31-dev: hop 'egress gateway'"
    ]
