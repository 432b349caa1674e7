"""The `egress-harness` command line.

Each concern registers its own sub-commands through a small ``add_commands(subparsers)`` function,
so this module stays a table of contents: ``logs`` (access-log parsing), ``local`` (the Envoy mesh
on loopback), ``scenarios`` (the catalog), ``e2e`` (the cluster path: ``harness.cluster.cli``, which
adds the tool commands of ``harness.common.tools``), ``report``. The catalog knows no tier: a tier
adds its own ``scenarios`` commands with ``add_scenario_commands(scenarios_subparsers)`` (``scenarios
local``: ``harness.localmesh.cli``; ``scenarios run``: ``harness.cluster.catalog_cli``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# module path -> the function in it that adds that concern's sub-commands
_COMMAND_MODULES: tuple[str, ...] = (
    "harness.accesslog.cli",
    "harness.localmesh.run",
    "harness.scenarios.cli",
    "harness.cluster.cli",
    "harness.upgrade.istiod",
    "harness.report.render",
)
#: the catalog's module, whose ``add_commands`` returns the ``scenarios`` group's sub-parsers
_CATALOG_MODULE = "harness.scenarios.cli"
# module path -> the function in it that adds a tier's commands to the ``scenarios`` group
_SCENARIO_COMMAND_MODULES: tuple[str, ...] = ("harness.localmesh.cli", "harness.cluster.catalog_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egress-harness",
        description="Prove that an Istio mesh sends external traffic through its egress gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        group = module.add_commands(sub)
        if name == _CATALOG_MODULE:
            for tier in _SCENARIO_COMMAND_MODULES:
                importlib.import_module(tier).add_scenario_commands(group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        print("egress-harness: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # The harness's own errors (a failed download, a command that exited non-zero, a part that did
        # not start) already say what went wrong: one line, no traceback. Anything else is a bug.
        if not type(exc).__module__.startswith("harness."):
            raise
        print(f"egress-harness {args.command}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
