"""``egress-harness scenarios run --tier istiod|local``: the catalog judged by real istiod, from the command line.

    egress-harness scenarios run --tier istiod [NAME ...] [--scenarios-dir DIR] [--istio-version V]
                                 [--encoding text|json] [--keep] [--run-state FILE | --kubeconfig PATH]
                                 [--workers N]

``--tier istiod`` brings up the netns cluster (``e2e up --provider netns --gateway-api``: a real
Kubernetes API server, the harness kubelet, real istiod and proxies) in a temporary run directory, or
attaches to a run that is up already (``--run-state``, or ``--kubeconfig`` of a kept netns run: its
run state is found beside it). It prints a header naming the Kubernetes, istiod and Envoy versions,
then, as each scenario ends, one ``PASS|FAIL <scenario>/<request>`` line per request sent or a
``SKIP`` line with the reason. Scenarios run ``--workers`` at a time (each in its own namespace with
its own external host names; one whose objects reach beyond its namespace holds the run alone:
``harness.cluster.lock``). Afterwards the cluster is removed (also after a failure or Ctrl-C) unless
``--keep``, which prints how to look at it and how to remove it. ``--tier local`` runs the same
command on the emulated local mesh (``scenarios local``).

Exit codes: 0 nothing failed, 1 a scenario failed or could not run, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.common import versions
from harness.common.proc import progress
from harness.scenarios.cli import catalog_options, selection

if TYPE_CHECKING:
    from harness.cluster.options import E2EOptions
    from harness.cluster.state import RunState
    from harness.cluster.tier import ClusterTier
    from harness.runner import ScenarioRun
    from harness.scenarios.model import Scenario
    from harness.tier import Tier

TIERS = ("istiod", "local")
#: scenarios at a time on the istiod tier (most of a scenario's time is waiting for proxies)
DEFAULT_WORKERS = 3
_PROG = "egress-harness scenarios run"


def add_scenario_commands(scenarios: Any) -> None:
    """Add ``run`` to the CLI's ``scenarios`` group (the sub-parsers of ``scenarios``)."""
    cmd = scenarios.add_parser(
        "run",
        parents=[catalog_options()],
        help="run scenarios on a tier: istiod (a netns cluster with real istiod) or local (emulated)",
        description="Bring up the netns cluster with real Istio (or attach to one that is up), apply each "
        "scenario, send its requests down client -> ingress -> proxy -> target -> external host and judge "
        "them from the real proxies' access logs and the external host's record.",
    )
    cmd.add_argument("names", nargs="*", metavar="NAME", help="scenarios to run (default: all)")
    cmd.add_argument("--tier", choices=TIERS, default="istiod", help="where (default: istiod)")
    cmd.add_argument(
        "--istio-version",
        metavar="V",
        help=f"a label the netns provider builds ({', '.join(versions.ISTIO_BUILDABLE_LABELS)}; "
        f"default {versions.DEFAULT_NETNS_ISTIO_VERSION})",
    )
    cmd.add_argument("--encoding", choices=("text", "json"), default="text", help="access-log encoding")
    cmd.add_argument(
        "--keep", action="store_true", help="leave the cluster up afterwards (and failed scenarios in place)"
    )
    attach = cmd.add_mutually_exclusive_group()
    attach.add_argument("--run-state", type=Path, metavar="FILE", help="attach to a run that is up")
    attach.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="attach to the kept netns run this kubeconfig belongs to",
    )
    cmd.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="where the run keeps its files (default: a temp dir)"
    )
    cmd.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N", help="scenarios at a time")
    cmd.set_defaults(handler=run_scenarios)


def run_scenarios(args: argparse.Namespace) -> int:
    """The handler: the selected scenarios on the chosen tier, each reported as it ends."""
    chosen = selection(args, _PROG)
    if isinstance(chosen, int):
        return chosen
    catalog, selected = chosen
    if args.workers < 1:
        print(f"{_PROG}: --workers must be at least 1", file=sys.stderr)
        return 2
    report = Report()
    if args.tier == "local":
        from harness.localmesh.tier import LocalTier

        with LocalTier(encoding=args.encoding) as local:
            print(local.versions().header(), flush=True)
            run_all(local, selected, workers=1, each=report)
        return report.code
    from harness.cluster.errors import E2EError

    try:
        with istiod_tier(args, catalog.scenarios) as tier:
            print(istiod_header(tier), flush=True)
            run_all(tier, selected, workers=args.workers, each=report)
    except (E2EError, ValueError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    return report.code


class Report:
    """Prints each scenario's lines as it ends (one at a time), and counts what failed."""

    def __init__(self) -> None:
        self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, run: ScenarioRun) -> None:
        with self._lock:
            self.failed += run.result.outcome in ("failed", "error")
            for line in run.lines():
                print(line, flush=True)

    @property
    def code(self) -> int:
        return 1 if self.failed else 0


def run_all(
    tier: Tier, scenarios: Sequence[Scenario], *, workers: int, each: Callable[[ScenarioRun], None]
) -> list[ScenarioRun]:
    """``harness.runner.run_scenario`` over ``scenarios``, ``workers`` at a time, ``each`` called as
    one ends. Ctrl-C waits for the running scenarios to remove what they applied."""
    from harness.runner import run_catalog, run_scenario

    if workers == 1 or len(scenarios) < 2:
        return run_catalog(tier, scenarios, each=each, progress=progress)

    def one(scenario: Scenario) -> ScenarioRun:
        run = run_scenario(tier, scenario, progress=progress)
        each(run)
        return run

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scenario") as pool:
        return list(pool.map(one, scenarios))


@contextlib.contextmanager
def istiod_tier(args: argparse.Namespace, catalog: Sequence[Scenario]) -> Iterator[ClusterTier]:
    """The cluster tier on a netns cluster: attached to a run that is up, or brought up here (and
    removed on the way out, whatever happened, unless ``--keep``)."""
    from harness.cluster.cli import bring_down, bring_up
    from harness.cluster.run import E2ERun
    from harness.cluster.tier import ClusterTier

    state_file = args.run_state or (find_run_state(args.kubeconfig) if args.kubeconfig else None)
    if state_file is not None:
        from harness.cluster.state import RunState

        state = RunState.load(state_file)
        options = attached_options(state, args)
        progress(f"attaching to run {state.run_id} ({state_file})")
        with (
            E2ERun(options, state.run_dir, state=state) as run,
            ClusterTier(run, keep_on_failure=args.keep) as tier,
        ):
            yield tier  # the tier's exit waits for the scenario namespaces it deleted
        return
    options = netns_options(args, catalog)
    made_dir = args.run_dir is None
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="egress-harness-istiod-"))
    state = bring_up(options, run_dir)  # a failed or interrupted up removes what it made
    try:
        with (
            E2ERun(options, run_dir, state=state) as run,
            ClusterTier(run, keep_on_failure=args.keep) as tier,
        ):
            yield tier
    finally:
        if args.keep:
            progress(
                f"the cluster stays up: kubectl --kubeconfig {state.kubeconfig} get pods -A; "
                f"remove it with: egress-harness e2e down --run-dir {run_dir}"
            )
        else:
            problems = bring_down(run_dir)
            if problems:
                progress(
                    f"e2e down left problems: {'; '.join(problems)} (run it again: e2e down --run-dir {run_dir})"
                )
            elif made_dir:  # the temporary folder this command made: its cluster is gone
                shutil.rmtree(run_dir, ignore_errors=True)


def istiod_header(tier: ClusterTier) -> str:
    """``Kubernetes v1.36.3, istiod 1.31-dev, Envoy 1.39.3``: the API server's own version, the
    version istiod reports (``pilot-discovery version`` of the binary its pod runs) and the Envoy the
    netns provider runs as every proxy."""
    from harness.cluster.providers.netns import binaries
    from harness.localmesh.envoy import envoy_binary, envoy_version

    kubernetes = tier.run._kube().server_version()
    netns = tier.run.options.provider == "netns"
    istiod = binaries.istio_binaries(tier.istio_version).version if netns else None
    envoy = envoy_version(envoy_binary()) if netns else None
    parts = [f"Kubernetes {kubernetes}", f"istiod {istiod or tier.istio_version}"]
    if envoy:
        parts.append(f"Envoy {envoy}")
    return ", ".join(parts)


def netns_options(args: argparse.Namespace, catalog: Sequence[Scenario]) -> E2EOptions:
    """The options of ``e2e up --provider netns --gateway-api`` with the recorders answering to every
    host of ``catalog`` (the catalog's own, whichever scenarios run)."""
    from harness.cluster.cli import options_for_up

    up = argparse.Namespace(
        provider="netns",
        istio_version=args.istio_version,
        access_log_encoding=args.encoding,
        outbound_traffic_policy="ALLOW_ANY",
        gateway_api=True,
        cluster_name="egress-harness",
        reuse_cluster=False,
        keep_on_failure=args.keep,
        artifacts_dir=str(Path("artifacts").resolve()),
    )
    return options_for_up(up, catalog)


def attached_options(state: RunState, args: argparse.Namespace) -> E2EOptions:
    """What attaching to ``state`` runs with: what the run was made with, and the keep flag."""
    from harness.cluster.options import E2EOptions

    base = E2EOptions(
        istio_version=state.istio_version,
        provider="netns" if state.cluster == "netns" else "kind",
        keep_on_failure=args.keep,
    )
    return state.options(base)


def find_run_state(kubeconfig: Path) -> Path:
    """The run state of the kept run ``kubeconfig`` belongs to: ``run-state.json`` in its folder or
    a parent folder, naming that kubeconfig."""
    from harness.cluster.errors import E2EError
    from harness.cluster.state import RUN_STATE_FILE, RunState

    wanted = kubeconfig.resolve()
    for folder in [wanted.parent, *wanted.parents][:4]:
        candidate = folder / RUN_STATE_FILE
        if candidate.is_file() and RunState.load(candidate).kubeconfig.resolve() == wanted:
            return candidate
    raise E2EError(
        f"{kubeconfig} belongs to no harness run (no {RUN_STATE_FILE} beside it that names it): attach to a "
        "kept run with --run-state FILE, or visit another cluster with `egress-harness e2e up --kubeconfig`"
    )
