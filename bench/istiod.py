"""The istiod tier's speed: a netns cluster with real istiod brought up, the catalog run on it, removed.

Four figures (issue 18 item 8), each against its target:

1. ``e2e up`` wall time with warm binaries, by step (``E2ERun.timings``); "to Istio ready" is the
   cluster, the Gateway API CRDs and Istio. Target: Istio ready within 30 s.
2. the catalog's wall time: every scenario through ``run_all`` with the default workers on the
   cluster just brought up, the tier's exit (waiting for the scenario namespaces to go) included.
   Target: within 60 s.
3. per scenario, from its manifests applied to istiod's last push every proxy it reaches ACKed
   (``AppliedScenario.acked_s``, recorded as ``acked:<namespace>:<scenario>`` in the run's
   timings, which the tier's views share), as a ratio to istiod's push debounce
   (``PILOT_DEBOUNCE_AFTER``, 100 ms by default in pilot/pkg/features/tuning.go; the harness's
   install does not set it). Target: within 5 debounce intervals.
4. the p95 time from a response reaching the client to its hop-log judgement passing
   (``RequestOutcome.judged_s``). Target: 0.25 s.

The cluster is always removed (``e2e down``), also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: istiod's PILOT_DEBOUNCE_AFTER default (pilot/pkg/features/tuning.go); manifests/istio leave it be
DEBOUNCE_AFTER_S = 0.1
#: the steps of ``E2ERun.start`` until istiod and its gateways are ready
ISTIO_READY_STEPS = ("cluster", "gateway api", "istio")
UP_TARGET_S = 30.0
CATALOG_TARGET_S = 60.0
ACKED_TARGET_DEBOUNCES = 5.0
JUDGED_P95_TARGET_S = 0.25


@contextlib.contextmanager
def _cached_binaries_only() -> Iterator[None]:
    """While inside, a binary set that is neither configured nor cached raises instead of being built
    (a cold build takes minutes: not something a bench should start)."""
    from harness.cluster.providers.netns import binaries

    find_or_build = binaries._find_or_build

    def cached(spec: Any, build: Any, *, rebuild: bool = False) -> Any:
        import os

        if not os.environ.get(spec.env_var) and binaries._missing(spec.cache_dir, spec.binaries):
            raise binaries.BinariesError(
                f"the {spec.name} {spec.version} binaries are not built ({spec.cache_dir}): "
                "make kube-bin istio-bin kubelet-bin"
            )
        return find_or_build(spec, build, rebuild=rebuild)

    binaries._find_or_build = cached  # type: ignore[assignment]
    try:
        yield
    finally:
        binaries._find_or_build = find_or_build


def unavailable(istio_version: str | None = None) -> str | None:
    """Why this machine cannot run the section now (no root, no namespaces, binaries not built), or None."""
    from harness.cluster.providers.netns import binaries
    from harness.cluster.providers.netns.cluster import unavailable_reason
    from harness.common import versions
    from harness.localmesh.envoy import EnvoyNotFoundError, envoy_binary

    reason = unavailable_reason()
    if reason:
        return reason
    try:
        with _cached_binaries_only():
            binaries.kube_binaries()
            binaries.kubelet_binaries()
            binaries.istio_binaries(istio_version or versions.DEFAULT_NETNS_ISTIO_VERSION)
    except binaries.BinariesError as exc:
        return f"netns cluster binaries: {exc}"
    try:
        envoy_binary()
    except EnvoyNotFoundError as exc:
        return f"the proxies' Envoy: {exc}"
    return None


def p95(values: list[float]) -> float:
    """The 95th percentile, within the values seen (inclusive method)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


class _Lines:
    """The scenarios' PASS/FAIL/SKIP lines on stderr as each ends (stdout keeps the bench's table)."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, run: Any) -> None:
        with self._lock:
            if run.result.outcome in ("failed", "error"):
                self.failed.append(run.result.scenario)
            for line in run.lines():
                print(line, file=sys.stderr, flush=True)


def run(*, istio_version: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Bring the cluster up, run the catalog on it, remove it; the four figures and where time went."""
    from harness.cluster.catalog_cli import DEFAULT_WORKERS, istiod_header, netns_options, run_all
    from harness.cluster.cli import bring_down, bring_up
    from harness.cluster.run import E2ERun
    from harness.cluster.tier import ClusterTier
    from harness.common.proc import progress
    from harness.scenarios import load_catalog

    root = Path(__file__).resolve().parent.parent
    catalog = load_catalog(root / "scenarios")
    workers = workers or DEFAULT_WORKERS
    args = argparse.Namespace(istio_version=istio_version, encoding="text", keep=False)
    options = netns_options(args, catalog.scenarios)
    run_dir = Path(tempfile.mkdtemp(prefix="egress-bench-istiod-"))
    made: list[E2ERun] = []

    def make_run(*a: Any, **kw: Any) -> E2ERun:
        e2e = E2ERun(*a, **kw)
        made.append(e2e)  # bring_up lets go of it; its timings are the up's steps
        return e2e

    section_started = time.perf_counter()
    out: dict[str, Any] = {"run_dir": str(run_dir), "workers": workers}
    try:
        started = time.perf_counter()
        state = bring_up(options, run_dir, make_run=make_run)
        up_s = time.perf_counter() - started
        steps = dict(made[0].timings)
        out["up"] = {
            "total_s": round(up_s, 3),
            "istio_ready_s": round(sum(steps.get(s, 0.0) for s in ISTIO_READY_STEPS), 3),
            "steps_s": steps,
            "untimed_s": round(up_s - sum(steps.values()), 3),
        }
        lines = _Lines()
        with E2ERun(options, run_dir, state=state) as e2e:
            tier = ClusterTier(e2e)
            header = istiod_header(tier)
            progress(
                f"bench: the catalog ({len(catalog.scenarios)} scenarios, {workers} at a time) on {header}"
            )
            started = time.perf_counter()
            with tier:  # its exit waits for the scenario namespaces to be gone
                runs = run_all(tier, catalog.scenarios, workers=workers, each=lines)
                exit_started = time.perf_counter()
            exit_s = time.perf_counter() - exit_started
            catalog_s = time.perf_counter() - started
            timings = dict(e2e.timings)  # the views' too: E2ERun.scoped shares the dict
        out["versions"] = header
        out["catalog"] = _catalog_figures(
            tier,
            list(catalog.scenarios),
            runs=runs,
            timings=timings,
            wall_s=catalog_s,
            exit_s=exit_s,
            failed=lines.failed,
        )
    finally:
        down_started = time.perf_counter()
        problems = bring_down(run_dir)
        out["down_s"] = round(time.perf_counter() - down_started, 3)
        if problems:
            progress(f"bench: e2e down left problems: {'; '.join(problems)} (e2e down --run-dir {run_dir})")
        else:  # the bench's own temp dir: the overlays and manifests of a cluster that is gone
            shutil.rmtree(run_dir, ignore_errors=True)
    out["section_s"] = round(time.perf_counter() - section_started, 3)
    return out


def _catalog_figures(
    tier: Any,
    scenarios: list[Any],
    *,
    runs: list[Any],
    timings: dict[str, float],
    wall_s: float,
    exit_s: float,
    failed: list[str],
) -> dict[str, Any]:
    """Per scenario: outcome, duration, the tier's convergence, ACK and removal times (from the run's
    timings, by the scenario's namespace), and the requests' judgement times; then the figures."""
    per: dict[str, dict[str, Any]] = {}
    judged: list[float] = []
    for scenario, done in zip(scenarios, runs, strict=True):
        ns = tier.namespace_for(scenario)
        acked = timings.get(f"acked:{ns}:{scenario.name}")
        mine = [o.judged_s for o in done.requests if o.judged_s is not None]
        judged += mine
        per[scenario.name] = {
            "outcome": done.result.outcome,
            "duration_s": round(done.result.duration_s, 3),
            "converged_s": timings.get(f"converge:{ns}:{scenario.name}"),
            "acked_s": acked,
            "acked_debounces": None if acked is None else round(acked / DEBOUNCE_AFTER_S, 2),
            "removed_s": timings.get(f"removed:{ns}:{scenario.name}"),
            "judged_s": mine,
        }
    ratios = [s["acked_debounces"] for s in per.values() if s["acked_debounces"] is not None]
    return {
        "wall_s": round(wall_s, 3),
        "tier_exit_s": round(exit_s, 3),
        "failed": failed,
        "debounce_after_s": DEBOUNCE_AFTER_S,
        "acked_debounces_max": max(ratios) if ratios else None,
        "acked_within_target": sum(r <= ACKED_TARGET_DEBOUNCES for r in ratios),
        "acked_measured": len(ratios),
        "judged_requests": len(judged),
        "judged_p95_s": round(p95(judged), 4) if judged else None,
        "judged_median_s": round(statistics.median(judged), 4) if judged else None,
        "judged_max_s": round(max(judged), 4) if judged else None,
        "scenarios": per,
        #: everything the run timed meanwhile (converge:, acked:, removed:, ... by namespace)
        "timings": {k: v for k, v in timings.items() if ":" in k},
    }
