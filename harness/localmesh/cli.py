"""``egress-harness scenarios local``: the catalog on the local Envoy tier, from the command line.

The local tier adds this command to the catalog's ``scenarios`` group (``harness/cli.py`` wires
:func:`add_scenario_commands` to the group ``harness.scenarios.cli.add_commands`` returns). Each
scenario runs on a ``LocalTier`` through the one scenario runner (``harness.runner``) and is
reported as it ends: ``SKIP`` with the reason for one the tier has no image of, a ``PASS``/``FAIL``
line per request sent. A scenario the tier could not run (a mesh that did not start) ends the
command with that error.

Exit codes: 0 every scenario run passed, 1 one failed (or could not run), 2 usage (an unknown scenario).
"""

from __future__ import annotations

import argparse
from typing import Any

from harness.localmesh.tier import LocalTier
from harness.runner import ScenarioRun, run_catalog
from harness.scenarios.cli import catalog_options, selection


def add_scenario_commands(scenarios: Any) -> None:
    """Add ``local`` to the CLI's ``scenarios`` group (the sub-parsers of ``scenarios``)."""
    local = scenarios.add_parser(
        "local",
        parents=[catalog_options()],
        help="run scenarios on the local Envoy tier (no cluster): those it can emulate",
        description="Translate each scenario's manifests into the local mesh's routing, send its requests "
        "through real Envoy processes on loopback and judge them by its expectations. Scenarios the "
        "local tier has no image of (TLS, AuthorizationPolicy, Gateway API...) are skipped with the reason.",
    )
    local.add_argument("names", nargs="*", metavar="NAME", help="scenarios to run (default: all)")
    local.add_argument("--encoding", choices=("text", "json"), default="text", help="access-log encoding")
    local.set_defaults(handler=run_local)


def run_local(args: argparse.Namespace) -> int:
    """Run the catalog's scenarios (``args.names``, default all) on a local tier, printing each as it ends."""
    chosen = selection(args, "egress-harness scenarios local")
    if isinstance(chosen, int):
        return chosen
    _, selected = chosen
    failed = 0

    def report(run: ScenarioRun) -> None:
        nonlocal failed
        if run.result.outcome == "error" and run.error is not None:
            raise run.error  # the tier could not run it: the command ends with why
        failed += run.result.outcome == "failed"
        for line in run.lines():
            print(line)

    with LocalTier(encoding=args.encoding) as tier:
        # "Istio 1.30.3 (emulated), Envoy ...": no istiod runs here, the routing is an image of it
        print(tier.versions().header(), flush=True)
        run_catalog(tier, selected, each=report)
    return 1 if failed else 0
