"""``egress-harness scenarios list|render|validate|fetch-crds``: the catalog from the command line.

The catalog knows no tier: a tier adds its own ``scenarios`` commands (``scenarios local`` is the
local Envoy tier's, ``harness.localmesh.cli``) to the group :func:`add_commands` returns, with the
catalog's options (:func:`catalog_options`) and loading (:func:`catalog_of`); ``harness/cli.py``
wires them.

Exit codes: 0 ok, 1 failures (listed on stderr), 2 usage (an unknown scenario, a bad option value).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.scenarios.loader import DEFAULT_SCENARIOS_DIR, ScenarioError, display_path, load_catalog
from harness.scenarios.model import TEMPLATE_VARIABLES, Catalog, IstioVersion, RenderContext

_PROG = "egress-harness scenarios"


def catalog_options() -> argparse.ArgumentParser:
    """The options every ``scenarios`` command has (``--scenarios-dir``), as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--scenarios-dir",
        action="append",
        type=Path,
        metavar="DIR",
        help=f"a catalog folder (repeatable; default: {display_path(DEFAULT_SCENARIOS_DIR)})",
    )
    return common


def add_commands(sub: Any) -> Any:
    """Register the ``scenarios`` group with the catalog's commands; returns the group's sub-parsers,
    to which a tier adds its own (``harness.localmesh.cli.add_scenario_commands``)."""
    scenarios = sub.add_parser("scenarios", help="the scenario catalog: list, render, validate offline")
    cmds = scenarios.add_subparsers(dest="scenarios_command", metavar="SUBCOMMAND", required=True)
    common = catalog_options()

    listing = cmds.add_parser(
        "list", parents=[common], help="list the scenarios with their Istio range and needs"
    )
    listing.set_defaults(handler=run_list)

    render = cmds.add_parser(
        "render",
        parents=[common],
        help="print a scenario's manifests, rendered, as one YAML stream",
        description="Fill the scenario's manifest templates with offline placeholder values (or --set ones).",
    )
    render.add_argument("name", metavar="NAME")
    render.add_argument("--istio-version", metavar="V", help="default: the scenario's minimum version")
    render.add_argument(
        "--set",
        dest="values",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help=f"a template variable (repeatable): {', '.join(sorted(TEMPLATE_VARIABLES))}",
    )
    render.set_defaults(handler=run_render)

    validate = cmds.add_parser(
        "validate",
        parents=[common],
        help="validate every rendered manifest against the Istio (and Gateway API) CRD schemas, offline",
    )
    validate.add_argument(
        "--istio-version",
        dest="istio_versions",
        action="append",
        metavar="V",
        help="repeatable; default: every version the CRD folder has a bundle for",
    )
    validate.add_argument(
        "--crd-dir",
        type=Path,
        metavar="DIR",
        help="Istio CRD bundles named <version>.yaml (default: $EGRESS_HARNESS_CRD_DIR, ../shared/istio/crds, "
        ".cache/crds)",
    )
    validate.add_argument(
        "--gateway-api-crd-dir",
        type=Path,
        metavar="DIR",
        help="Gateway API CRD bundles (default: $EGRESS_HARNESS_GATEWAY_API_CRD_DIR, ../shared/gateway-api/crds)",
    )
    validate.add_argument(
        "-v", "--verbose", action="store_true", help="list every document and unchecked CEL rule"
    )
    validate.set_defaults(handler=run_validate)

    fetch = cmds.add_parser(
        "fetch-crds",
        help="download Istio CRD bundles into the cache that `validate` falls back to",
    )
    fetch.add_argument("versions", nargs="+", metavar="VERSION", help="e.g. 1.30.3, or 1.31-dev for master")
    fetch.add_argument("--dest", type=Path, metavar="DIR", help="default: .cache/crds")
    fetch.add_argument("--base-url", metavar="URL", help="default: raw.githubusercontent.com/istio/istio")
    fetch.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    fetch.set_defaults(handler=run_fetch)
    return cmds


def catalog_of(args: argparse.Namespace) -> Catalog | None:
    """The catalog of ``--scenarios-dir`` (default: the repository's); None, its problems printed on
    stderr, when it does not load."""
    try:
        return load_catalog(args.scenarios_dir or [DEFAULT_SCENARIOS_DIR])
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return None


def selection(args: argparse.Namespace, prog: str) -> tuple[Catalog, list[Any]] | int:
    """The catalog of ``--scenarios-dir`` and the scenarios ``args.names`` selects (default: all), in
    the catalog's order; or the exit code after saying why not (1: it does not load, 2: an unknown name)."""
    catalog = catalog_of(args)
    if catalog is None:
        return 1
    unknown = [n for n in args.names if n not in catalog.names()]
    if unknown:
        print(f"{prog}: no scenario {', '.join(unknown)}", file=sys.stderr)
        return 2
    return catalog, [s for s in catalog.scenarios if not args.names or s.name in args.names]


def run_list(args: argparse.Namespace) -> int:
    catalog = catalog_of(args)
    if catalog is None:
        return 1
    for s in catalog.scenarios:
        needs = []
        if s.requires.outbound_traffic_policy:
            needs.append(s.requires.outbound_traffic_policy)
        if s.requires.gateway_api:
            needs.append("gateway-api")
        needs.append("/".join(s.requires.access_log_encoding))
        print(f"{s.name}  istio {s.istio}  needs {', '.join(needs)}  tags {', '.join(s.tags) or '-'}")
        print(f"    {s.description.splitlines()[0] if s.description else ''}")
    print(f"{len(catalog)} scenarios", file=sys.stderr)
    return 0


def _context(args: argparse.Namespace, version: str) -> RenderContext | str:
    """The render context, or a usage message."""
    values: dict[str, Any] = {"istio_version": version}
    for item in args.values:
        key, sep, value = item.partition("=")
        if not sep or key not in TEMPLATE_VARIABLES:
            return (
                f"--set {item!r}: expected VAR=VALUE with VAR one of {', '.join(sorted(TEMPLATE_VARIABLES))}"
            )
        values[key] = int(value) if key.endswith("_port") and value.isdigit() else value
    try:
        return RenderContext(**values)
    except (TypeError, ValueError) as exc:
        return str(exc)


def run_render(args: argparse.Namespace) -> int:
    from harness.scenarios.render import render_scenario

    catalog = catalog_of(args)
    if catalog is None:
        return 1
    try:
        scenario = catalog.get(args.name)
    except KeyError as exc:
        print(f"{_PROG} render: {exc.args[0]}", file=sys.stderr)
        return 2
    version = args.istio_version or str(scenario.istio.min)
    try:
        applies, reason = scenario.istio.applies_to(version)
    except ValueError as exc:
        print(f"{_PROG} render: --istio-version: {exc}", file=sys.stderr)
        return 2
    if not applies:
        print(f"{_PROG} render: {scenario.name}: {reason}", file=sys.stderr)
        return 2
    context = _context(args, version)
    if isinstance(context, str):
        print(f"{_PROG} render: {context}", file=sys.stderr)
        return 2
    try:
        rendered = render_scenario(scenario, context)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(rendered.text)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from harness.scenarios.crds import default_crd_dir, default_gateway_api_dir, validate_catalog

    for version in args.istio_versions or ():
        try:
            IstioVersion.parse(version)
        except ValueError as exc:
            print(f"{_PROG} validate: --istio-version: {exc}", file=sys.stderr)
            return 2
    catalog = catalog_of(args)
    if catalog is None:
        return 1
    crd_dir = args.crd_dir or default_crd_dir()
    gateway_api_dir = args.gateway_api_crd_dir or default_gateway_api_dir()
    report = validate_catalog(catalog, args.istio_versions, crd_dir, gateway_api_dir)
    print(report.format(verbose=args.verbose), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def run_fetch(args: argparse.Namespace) -> int:
    from harness.scenarios.crds import CACHE_DIR, ISTIO_RAW_BASE, CrdError, download_istio_crds

    for version in args.versions:
        try:
            IstioVersion.parse(version)
        except ValueError as exc:
            print(f"{_PROG} fetch-crds: {exc}", file=sys.stderr)
            return 2
    failed = 0
    for version in args.versions:
        try:
            path = download_istio_crds(
                version,
                args.dest or CACHE_DIR,
                base_url=args.base_url or ISTIO_RAW_BASE,
                timeout=args.timeout,
            )
        except (CrdError, OSError) as exc:
            print(f"{_PROG} fetch-crds: {version}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"Istio {version}: {display_path(path)}")
    return 1 if failed else 0
