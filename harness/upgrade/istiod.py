"""An Istio upgrade for real on the netns cluster: ``egress-harness upgrade run --tier istiod``.

    egress-harness upgrade run --tier istiod --from 1.30-dev --to 1.31-dev [--mode in-place|canary]
                               [NAME ...] [--scenarios-dir DIR] [--results-dir DIR] [--to-overlay FILE]
                               [--workers N] [--keep] [--run-dir DIR]

The netns cluster comes up with images of both versions mapped (``<hub>/proxyv2:<label>`` runs that
label's pilot-agent, ``<hub>/pilot:<label>`` its pilot-discovery: each pod runs exactly the version its
spec names), the Gateway API CRDs, the run's PKI and the recorders, and no Istio. Then
``harness.upgrade.runner.UpgradeRun`` does what it does on kind, with each version's own istioctl
(built by the netns provider from the same commit as istiod) and the provider's overlay naming that
version's images: A installed, the catalog (before), the upgrade while the prober sends the mission's
chain through the ingress, the catalog again (after), and the cluster removed (unless ``--keep``).

``--to-overlay FILE`` is one more IstioOperator overlay given to B's install only: a mesh-wide setting
that B applies and A did not (how a test proves that a scenario routing differently on B is reported
as regressed).

The result is ``results.json``, ``report.md`` (regressions first) and ``junit.xml`` in the results
directory; the console ends with the prober's line and the verdict. Exit 0 iff no step failed, no
scenario regressed, the prober held its threshold and every proxy reported B after the upgrade.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.common import versions
from harness.common.paths import REPO_ROOT
from harness.common.proc import progress
from harness.report.results import RunResult
from harness.upgrade.plan import UPGRADE_MODES, UpgradePlan

_PROG = "egress-harness upgrade run"
#: scenarios at a time in each phase, as ``scenarios run --tier istiod``
DEFAULT_WORKERS = 3


@dataclass(frozen=True)
class UpgradeOutcome:
    """An upgrade run's result, where it was written, and what went wrong (empty: it passed)."""

    result: RunResult
    results: Path
    report: Path
    junit: list[Path]
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


def add_commands(sub: Any) -> Any:
    """``egress-harness upgrade run``."""
    group = sub.add_parser("upgrade", help="Istio upgrades under the scenario catalog").add_subparsers(
        dest="upgrade_command", metavar="COMMAND", required=True
    )
    cmd = group.add_parser(
        "run",
        help="install Istio A, run the catalog, upgrade to B (in place or canary) under traffic, run it again",
        description="On the netns cluster (--tier istiod: real Kubernetes, real istiod of both versions): "
        "install A, run the catalog, upgrade to B while a prober sends the mission's chain, verify every "
        "proxy reports B, run the catalog again, and report regressions. The kind tier runs the same "
        "upgrade through `make e2e UPGRADE_FROM=... UPGRADE_TO=... UPGRADE_MODE=...`.",
    )
    cmd.add_argument("names", nargs="*", metavar="NAME", help="scenarios to run (default: all)")
    cmd.add_argument("--tier", choices=("istiod",), default="istiod", help="where (default: istiod)")
    labels = ", ".join(versions.ISTIO_BUILDABLE_LABELS)
    cmd.add_argument(
        "--from", dest="from_version", required=True, metavar="A", help=f"Istio before ({labels})"
    )
    cmd.add_argument("--to", dest="to_version", required=True, metavar="B", help=f"Istio after ({labels})")
    cmd.add_argument("--mode", choices=UPGRADE_MODES, default="canary", help="how (default: canary)")
    cmd.add_argument(
        "--scenarios-dir", type=Path, default=REPO_ROOT / "scenarios", metavar="DIR", help="the catalog"
    )
    cmd.add_argument(
        "--results-dir",
        type=Path,
        metavar="DIR",
        help="where results.json, report.md and junit.xml go (default: artifacts/upgrade-<run id>)",
    )
    cmd.add_argument(
        "--to-overlay",
        type=Path,
        metavar="FILE",
        help="one more IstioOperator overlay for B's install only (a mesh-wide setting A did not have)",
    )
    cmd.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N", help="scenarios at a time")
    cmd.add_argument("--keep", action="store_true", help="leave the cluster and Istio B up afterwards")
    cmd.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="where the run keeps its files (default: a temp dir)"
    )
    cmd.set_defaults(handler=_handle)
    return group


def _handle(args: argparse.Namespace) -> int:
    from harness.cluster.errors import E2EError
    from harness.cluster.providers.netns.cluster import unavailable_reason

    try:
        plan = UpgradePlan(args.from_version, args.to_version, args.mode)
    except ValueError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"{_PROG}: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.to_overlay is not None and not args.to_overlay.is_file():
        print(f"{_PROG}: --to-overlay {args.to_overlay}: no such file", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        print(f"{_PROG}: {reason}", file=sys.stderr)
        return 1
    try:
        outcome = run_upgrade(
            plan,
            scenarios_dir=args.scenarios_dir,
            names=args.names,
            results_dir=args.results_dir,
            to_overlay=args.to_overlay,
            workers=args.workers,
            keep=args.keep,
            run_dir=args.run_dir,
        )
    except (E2EError, ValueError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    print(summary(outcome), flush=True)
    return 0 if outcome.passed else 1


def summary(outcome: UpgradeOutcome) -> str:
    """The console's last lines: per scenario before/after, the report, the prober, the verdict."""
    result = outcome.result
    lines = []
    before = {s.scenario: s for s in result.phase_results("before")}
    for after in result.phase_results("after"):
        prior = before.get(after.scenario)
        was = prior.outcome if prior is not None else "-"
        lines.append(f"{after.scenario}: {was} -> {after.outcome}")
    lines.append(f"results: {outcome.results}")
    lines.append(f"report: {outcome.report}")
    prober = result.prober
    if prober is not None and prober.ratio is not None:
        lines.append(f"prober: {prober.ratio:.3f} ({prober.successes}/{prober.total})")
    else:
        lines.append("prober: no probe completed")
    if outcome.passed:
        lines.append(f"PASS {result.label()}: no scenario regressed, traffic held")
    else:
        lines.append(f"FAIL {result.label()}:")
        lines += [f"  {p}" for p in outcome.problems]
    return "\n".join(lines)


def run_upgrade(
    plan: UpgradePlan,
    *,
    scenarios_dir: Path = REPO_ROOT / "scenarios",
    names: Sequence[str] = (),
    results_dir: Path | None = None,
    to_overlay: Path | None = None,
    workers: int = DEFAULT_WORKERS,
    keep: bool = False,
    run_dir: Path | None = None,
) -> UpgradeOutcome:
    """The upgrade of ``plan`` on a netns cluster of its own (see the module docstring)."""
    from harness.cluster.catalog_cli import netns_options
    from harness.cluster.providers.netns.binaries import istio_binaries
    from harness.cluster.run import E2ERun, netns_overlay
    from harness.cluster.runner import MISSION, UpgradeCatalog, upgrade_problems
    from harness.scenarios import load_catalog
    from harness.upgrade.runner import UpgradeRun

    catalog = load_catalog(scenarios_dir)
    unknown = [n for n in names if n not in catalog.names()]
    if unknown:
        raise ValueError(
            f"no scenario {', '.join(unknown)} in {scenarios_dir} (have {', '.join(catalog.names())})"
        )
    selected = [catalog.get(n) for n in names] if names else list(catalog.scenarios)
    # both versions' binaries before anything starts: a missing one names the make target
    istioctl = {v: str(istio_binaries(v).path("istioctl")) for v in (plan.from_version, plan.to_version)}

    made_dir = run_dir is None
    run_dir = (run_dir or Path(tempfile.mkdtemp(prefix="egress-harness-upgrade-"))).resolve()
    # what `scenarios run --tier istiod` brings up, A's images and B's, and no Istio
    up = argparse.Namespace(
        istio_version=plan.from_version, encoding=plan.access_log_encoding.lower(), keep=False
    )
    options = dataclasses.replace(
        netns_options(up, catalog.scenarios),
        outbound_traffic_policy=plan.outbound_traffic_policy,
        install_istio=False,
        more_istio_versions=(plan.to_version,),
        keep_cluster=keep,
    )

    def overlays_for(version: str) -> list[Path]:
        out = [netns_overlay(version, run_dir / f"istio-overlay-netns-{version}.yaml")]
        if to_overlay is not None and version == plan.to_version:
            out.append(to_overlay.resolve())
        return out

    progress(f"{plan.describe()} on a netns cluster; run dir {run_dir}")
    try:
        with E2ERun(options, run_dir) as run:
            base = run.to_state()
            scenarios = UpgradeCatalog(
                selected,
                plan,
                base=base,
                options=run.options,
                run_dir=run_dir / "catalog",
                mission=catalog.get(MISSION),
                workers=workers,
            )
            try:
                result = UpgradeRun(
                    plan,
                    run.kubeconfig,
                    run_dir / "upgrade",
                    run_catalog=scenarios,
                    istioctl_for=istioctl.__getitem__,
                    overlays_for=overlays_for,
                    cluster_goes=not keep,
                    probe=scenarios.probe,
                    probe_target=f"{MISSION} through {run.ingress_url}",
                    keep=keep,
                    run_id=f"upgrade-{plan.mode}-{plan.from_version}-{plan.to_version}-{base.run_id}",
                ).execute()
            finally:
                scenarios.close()
            if keep:
                from harness.cluster.cli import state_path

                base.save(state_path(run_dir))
                run.detach()
                progress(
                    f"the cluster stays up with Istio {plan.to_version}: kubectl --kubeconfig {run.kubeconfig} "
                    f"get pods -A; remove it with: egress-harness e2e down --run-dir {run_dir}"
                )
    finally:
        if made_dir and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    out_dir = results_dir or REPO_ROOT / "artifacts" / result.run_id
    results, report, junit = write_results(result, out_dir)
    return UpgradeOutcome(result, results, report, junit, tuple(upgrade_problems(result, plan.to_version)))


def write_results(result: RunResult, directory: Path) -> tuple[Path, Path, list[Path]]:
    """``results.json``, ``report.md`` (regressions first) and the JUnit files (``junit/``) of ``result``."""
    from harness.report.render import render_markdown, write_junit

    directory.mkdir(parents=True, exist_ok=True)
    results = result.save(directory / "results.json")
    report = directory / "report.md"
    report.write_text(render_markdown([result], title=f"Upgrade {result.label()}"), encoding="utf-8")
    return results, report, write_junit([result], directory / "junit")
