"""``egress-harness e2e up`` and ``e2e down``: one cluster run shared by many test processes.

``up`` makes what a session of the cluster tier needs -- the kind cluster (its own kubeconfig in the
run directory), Istio with its egress gateway, optionally the Gateway API CRDs, the run's PKI
(``<run dir>/pki``), the recorder on kind's network under an alias for every host of the catalog
(HTTP and HTTPS) and the mutual-TLS recorder under the names of the catalog's mTLS scenarios, the
run namespace with the relays and the shared ingress Gateway -- and leaves it running. It writes
``<run dir>/run-state.json`` (a :class:`harness.cluster.state.RunState`: kubeconfig, context, ingress URL,
recorder containers, PKI directory, run id, and what it created) and prints it on stdout. A failed
or interrupted ``up`` removes what it made and writes no state. ``--no-external-tls`` makes no
certificates and serves plain HTTP only (the TLS scenarios are then skipped).

Tests attach to it with ``pytest --run-state <run dir>/run-state.json`` (each pytest-xdist worker
does), creating and deleting nothing but their scenario namespaces.

``down`` removes what the state says ``up`` created: the recorder containers, then the kind cluster
(which takes everything in it along); on a cluster ``up`` did not create, the namespaces of the run,
credential Secrets of its scenarios left in istio-system, the Gateway API CRDs it installed and the
Istio it installed (the run's namespaces are found by the run's label, ``io.egress-harness.run``). It
lists what it removed on stdout, one ``removed ...`` line each. It is idempotent: what is gone
already counts as removed, and without a state file there is nothing to do. The state file and the run's PKI are deleted only when everything is
gone, so a failed ``down`` can be run again.

    egress-harness e2e up [--istio-version V] [--access-log-encoding text|json]
                          [--outbound-traffic-policy ALLOW_ANY|REGISTRY_ONLY] [--gateway-api] [--run-dir DIR]
    egress-harness e2e down [--run-dir DIR]

:func:`add_commands` registers the ``e2e`` group on the CLI: ``preflight`` and ``tools``
(``harness.common.tools``) and ``up`` and ``down`` (:func:`add_e2e_subcommands`); ``python -m
harness.cluster.cli up|down ...`` works on its own too.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.common import tools, versions
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, progress, run

if TYPE_CHECKING:  # the run is imported when a command runs: building the CLI stays cheap
    from harness.cluster.options import E2EOptions, ExternalMode, Provider
    from harness.cluster.run import E2ERun
    from harness.cluster.state import RunState

RUN_DIR_ENV = "EGRESS_HARNESS_RUN_DIR"
DEFAULT_RUN_DIR = REPO_ROOT / ".cache" / "e2e-run"
NAMESPACE_DELETE_S = 180.0
KIND_TIMEOUT_S = 300.0


def default_run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


def state_path(run_dir: Path) -> Path:
    from harness.cluster.state import RUN_STATE_FILE

    return run_dir / RUN_STATE_FILE


# --- up ---------------------------------------------------------------------------------------------


def options_for_up(args: argparse.Namespace, scenarios: Iterable[Any]) -> E2EOptions:
    """The run's options from the command line; the recorders' aliases from ``scenarios`` (the
    catalog's scenarios, or their names when no scenario needs mutual TLS)."""
    from harness.cluster.hosts import mtls_recorder_aliases, recorder_aliases
    from harness.cluster.options import E2EOptions

    listed = list(scenarios)
    names = [s if isinstance(s, str) else s.name for s in listed]
    provider: Provider = "netns" if getattr(args, "provider", "kind") == "netns" else "kind"
    kubeconfig = getattr(args, "kubeconfig", None)
    if provider == "netns":
        istio_version = args.istio_version or versions.DEFAULT_NETNS_ISTIO_VERSION
    elif kubeconfig and args.istio_version in versions.ISTIO_MODULE_VERSIONS:
        # an existing cluster runs whatever Istio it runs; a netns label is taken as it is
        istio_version = args.istio_version
    else:
        istio_version = versions.istio_version(args.istio_version)
    external: ExternalMode = (
        "internet" if getattr(args, "external", "container") == "internet" else "container"
    )
    return E2EOptions(
        istio_version=istio_version,
        provider=provider,
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        context=getattr(args, "context", None),
        ingress_url=getattr(args, "ingress_url", None),
        relay_image=getattr(args, "relay_image", None),
        external=external,
        external_host=getattr(args, "external_host", None),
        cluster_name=args.cluster_name,
        reuse_cluster=args.reuse_cluster,
        keep_on_failure=args.keep_on_failure or getattr(args, "keep", False),
        access_log_encoding=args.access_log_encoding.upper(),
        outbound_traffic_policy=args.outbound_traffic_policy,
        gateway_api=args.gateway_api,
        recorder_aliases=tuple(recorder_aliases(names)),
        mtls_aliases=tuple(mtls_recorder_aliases([s for s in listed if not isinstance(s, str)])),
        external_tls=not getattr(args, "no_external_tls", False),
        artifacts_dir=Path(args.artifacts_dir),
    )


def bring_up(
    options: E2EOptions, run_dir: Path, *, make_run: Callable[..., E2ERun] | None = None
) -> RunState:
    """Start a run, write its state, and leave it running. On any failure (Ctrl-C included) what was
    made is removed again and no state file is left."""
    from harness.cluster.errors import E2EError
    from harness.cluster.run import E2ERun

    make_run = make_run or E2ERun
    path = state_path(run_dir)
    if path.exists():
        raise E2EError(
            f"{path} exists: a run is up in {run_dir} already; tear it down first "
            f"(`egress-harness e2e down --run-dir {run_dir}`) or use another --run-dir"
        )
    e2e = make_run(options, run_dir)
    e2e.__enter__()  # a failed start removes what it made and raises
    try:
        state = e2e.to_state()
        state.save(path)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        e2e.__exit__(type(exc), exc, exc.__traceback__)
        raise
    e2e.detach()
    e2e.__exit__(None, None, None)
    progress(f"run {state.run_id} is up; its state: {path}")
    return state


def load_catalog_names(scenarios_dir: Path = REPO_ROOT / "scenarios") -> tuple[str, ...]:
    """The scenario names of the catalog (the recorder answers to each one's hosts)."""
    return tuple(s.name for s in load_catalog_scenarios(scenarios_dir))


def load_catalog_scenarios(scenarios_dir: Path = REPO_ROOT / "scenarios") -> tuple[Any, ...]:
    """The catalog's scenarios (their names and what their external hosts must serve)."""
    from harness.scenarios import load_catalog

    return load_catalog(scenarios_dir).scenarios


def _cmd_up(args: argparse.Namespace) -> int:
    from harness.cluster.errors import E2EError
    from harness.scenarios import ScenarioError

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir()
    try:
        scenarios = load_catalog_scenarios(Path(args.scenarios_dir))
    except (ScenarioError, OSError) as exc:
        print(
            f"egress-harness e2e up: the catalog {args.scenarios_dir} does not load: {exc}", file=sys.stderr
        )
        return 2
    try:
        options = options_for_up(args, scenarios)
        state = bring_up(options, run_dir)
    except (E2EError, ValueError) as exc:
        print(f"egress-harness e2e up: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(state.to_json(redact_token=True))
    progress(f"kubeconfig: {state.kubeconfig}")
    return 0


# --- down -------------------------------------------------------------------------------------------


def remove_container(name: str) -> None:
    """``docker rm -f -v NAME``; a container that is gone already is fine."""
    from harness.cluster.errors import E2EError
    from harness.cluster.hosts import DOCKER_RM_TIMEOUT_S

    done = run(["docker", "rm", "-f", "-v", name], timeout=DOCKER_RM_TIMEOUT_S, check=False)
    if done.returncode != 0 and "no such container" not in done.stderr.lower():
        raise E2EError(f"`docker rm -f -v {name}` failed (exit {done.returncode}): {done.stderr.strip()}")


def delete_kind_cluster(state: RunState) -> None:
    """``kind delete cluster`` of the run's cluster, when it still exists."""
    assert state.cluster_name is not None
    cluster = state.cluster_handle()
    kind = getattr(cluster, "kind", "kind")
    listed = run([kind, "get", "clusters"], timeout=KIND_TIMEOUT_S)
    if state.cluster_name not in {line.strip() for line in listed.stdout.splitlines()}:
        progress(f"kind cluster {state.cluster_name!r} is gone already")
        return
    progress(f"deleting kind cluster {state.cluster_name!r}")
    run(
        [kind, "delete", "cluster", "--name", state.cluster_name, "--kubeconfig", str(state.kubeconfig)],
        timeout=KIND_TIMEOUT_S,
        heartbeat_s=30.0,
    )


def stop_recorder(recorder: Any, run_dir: Path) -> None:
    """A netns recorder's processes (the recorder and its forwarder), from the run state; then its
    TLS files (its private key among them) in ``<run dir>/<recorder name>``."""
    from harness.cluster.providers.netns.daemons import DaemonRecord, stop_pid
    from harness.cluster.providers.netns.external import remove_keys

    for pid, binary in recorder.processes:
        if stop_pid(DaemonRecord(recorder.name, pid, binary, "")):
            progress(f"stopped {recorder.name} process {pid}")
    remove_keys(run_dir / recorder.name)


def remove_netns_cluster(state: RunState) -> None:
    """Everything of a netns run: its daemons, namespaces and tmpfs (its state in <run dir>/netns)."""

    from harness.cluster.providers.netns.layout import RUN_SUBDIR

    remove_netns_dir(state.run_dir / RUN_SUBDIR)


def remove_netns_dir(folder: Path) -> None:
    """Stop and remove the netns cluster whose state is in ``folder``, then the folder itself (its
    logs, certificates and kubeconfig belong to a cluster that is gone)."""
    from harness.cluster.providers.netns.cluster import down

    for line in down(folder):
        progress(f"removed {line}")
    shutil.rmtree(folder, ignore_errors=True)


def run_namespaces(kube: Any, run_id: str) -> list[str]:
    """The namespaces labelled with the run's id (the run namespace and scenario leftovers)."""
    from harness.cluster.hosts import RUN_LABEL
    from harness.cluster.kube import REQUEST_TIMEOUT_S

    listing = kube.core.list_namespace(
        label_selector=f"{RUN_LABEL}={run_id}", _request_timeout=REQUEST_TIMEOUT_S
    )
    items = kube.api_client.sanitize_for_serialization(listing).get("items") or []
    return sorted(str(item["metadata"]["name"]) for item in items)


def run_secrets(kube: Any, run_id: str, namespace: str) -> list[str]:
    """The Secrets in ``namespace`` labelled with the run's id (credentials scenarios left behind)."""
    from harness.cluster.hosts import RUN_LABEL
    from harness.cluster.kube import REQUEST_TIMEOUT_S

    listing = kube.core.list_namespaced_secret(
        namespace, label_selector=f"{RUN_LABEL}={run_id}", _request_timeout=REQUEST_TIMEOUT_S
    )
    items = kube.api_client.sanitize_for_serialization(listing).get("items") or []
    return sorted(str(item["metadata"]["name"]) for item in items)


def delete_run_secrets(kube: Any, run_id: str, namespace: str) -> list[str]:
    """Delete the run's Secrets in ``namespace`` (one gone already is fine); their names."""
    from harness.cluster.kube import REQUEST_TIMEOUT_S

    names = run_secrets(kube, run_id, namespace)
    for name in names:
        progress(f"deleting Secret {namespace}/{name} left by a scenario of run {run_id}")
        try:
            kube.core.delete_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
    return names


def clean_existing_cluster(state: RunState, kube: Any, removed: list[str] | None = None) -> None:
    """On a cluster ``up`` did not create: the run's namespaces (found by the run's label, with
    everything in them: relays, routes, scenarios), the credential Secrets its scenarios left in
    istio-system, its Gateway API CRDs, its Istio; each named in ``removed`` once it is gone."""
    from harness.cluster.istio import ISTIO_NAMESPACE

    done = removed if removed is not None else []
    names = set(run_namespaces(kube, state.run_id))
    if state.namespace_created:
        names.add(state.namespace)
    for name in sorted(names):
        progress(f"deleting namespace {name}")
        kube.delete_namespace(name, deadline_s=NAMESPACE_DELETE_S)
        done.append(f"namespace {name}")
    if state.pki_dir is not None:
        # only a run with certificates made credential Secrets
        for secret in delete_run_secrets(kube, state.run_id, ISTIO_NAMESPACE):
            done.append(f"Secret {ISTIO_NAMESPACE}/{secret}")
    if state.gateway_api_objects:
        progress("removing the Gateway API CRDs the run installed")
        kube.delete_objects(list(state.gateway_api_objects))
        done += [f"{r.kind} {r.name}" for r in state.gateway_api_objects]
    if state.istio_installed:
        from harness.cluster.istio import IstioInstall
        from harness.common.tools import ensure_tool

        install = IstioInstall(
            state.kubeconfig,
            state.run_dir,
            context=state.context,
            istioctl=ensure_tool("istioctl", state.istio_version),
            version=state.istio_version,
            api=kube,
        )
        install.installed_by_us = True
        install.uninstall()
        done.append(f"Istio {state.istio_version} (istioctl uninstall)")


def tear_down(
    state: RunState,
    *,
    kube_factory: Callable[[RunState], Any] | None = None,
    removed: list[str] | None = None,
) -> list[str]:
    """Remove what ``state`` says ``up`` created; each part on its own. Returns what failed; what was
    removed is added to ``removed``."""
    from harness.cluster.errors import E2EError

    problems: list[str] = []
    done = removed if removed is not None else []

    def step(what: str, action: Callable[[], None], gone: str | None = None) -> None:
        try:
            action()
        except (E2EError, CommandError, RuntimeError, OSError) as exc:
            problems.append(f"{what}: {exc}")
            progress(f"{what} failed: {exc}")
        else:
            if gone:
                done.append(gone)

    def remover(name: str) -> Callable[[], None]:
        return lambda: remove_container(name)

    for recorder in (state.recorder, state.mtls_recorder):
        if recorder is not None and recorder.processes:
            step(
                f"stopping the recorder {recorder.name}",
                functools.partial(stop_recorder, recorder, state.run_dir),
                f"recorder {recorder.name} (processes {', '.join(str(p) for p, _ in recorder.processes)})",
            )
        elif recorder is not None:
            step(
                f"removing the recorder container {recorder.name}",
                remover(recorder.name),
                f"recorder container {recorder.name}",
            )
    if state.cluster == "kind" and state.cluster_created:
        step(
            f"deleting kind cluster {state.cluster_name}",
            lambda: delete_kind_cluster(state),
            f"kind cluster {state.cluster_name} (with everything in it)",
        )
        return problems
    if state.cluster == "netns":
        step(
            f"removing netns cluster {state.run_id}",
            lambda: remove_netns_cluster(state),
            f"netns cluster of run {state.run_id} (its processes, network namespaces and files)",
        )
        return problems
    if not state.kubeconfig.is_file():
        problems.append(f"the kubeconfig {state.kubeconfig} is gone: cannot reach the cluster to clean it")
        return problems

    def clean() -> None:
        from harness.cluster.kube import Kube

        kube = kube_factory(state) if kube_factory is not None else Kube(state.kubeconfig, state.context)
        try:
            clean_existing_cluster(state, kube, done)
        finally:
            close = getattr(kube, "close", None)
            if callable(close):
                close()

    step("cleaning the cluster", clean)
    return problems


def bring_down(
    run_dir: Path,
    *,
    kube_factory: Callable[[RunState], Any] | None = None,
    removed: list[str] | None = None,
) -> list[str]:
    """``e2e down``: what failed (empty when the run is gone); the state file goes only then. What
    was removed is added to ``removed`` and listed at the end."""
    from harness.cluster.state import RunState

    path = state_path(run_dir)
    if not path.exists():
        from harness.cluster.providers.netns.layout import RUN_SUBDIR, STATE_FILE

        netns = run_dir / RUN_SUBDIR / STATE_FILE
        if netns.is_file():
            # an up that died before it wrote the run state: its netns cluster says what it made
            progress(f"no run state at {path}, but a netns cluster's state at {netns}: removing that cluster")
            remove_netns_dir(netns.parent)
            return []
        progress(f"nothing to tear down: no run state at {path}")
        return []
    state = RunState.load(path)
    progress(f"tearing down run {state.run_id} ({path})")
    done = removed if removed is not None else []
    problems = tear_down(state, kube_factory=kube_factory, removed=done)
    for item in done:
        progress(f"removed {item}")
    if problems:
        progress(f"the run state stays at {path}; run `egress-harness e2e down --run-dir {run_dir}` again")
        return problems
    path.unlink(missing_ok=True)
    kubeconfig = state.kubeconfig
    if state.cluster_created and kubeconfig.parent == run_dir.resolve():
        kubeconfig.unlink(missing_ok=True)
    if state.pki_dir is not None and state.pki_dir.resolve().parent == run_dir.resolve():
        # the run's keys: only a PKI directory of this run directory (never one elsewhere)
        shutil.rmtree(state.pki_dir, ignore_errors=True)
        done.append(f"the run's certificates and keys ({state.pki_dir})")
    done.append(f"the run state {path} (with the run's token)")
    progress(f"run {state.run_id} is down; removed: {'; '.join(done)}")
    return []


def _cmd_down(args: argparse.Namespace) -> int:
    from harness.cluster.errors import RunStateError

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir()
    removed: list[str] = []
    try:
        problems = bring_down(run_dir, removed=removed)
    except RunStateError as exc:
        print(f"egress-harness e2e down: {exc}", file=sys.stderr)
        return 2
    for item in removed:
        print(f"removed {item}")
    for problem in problems:
        print(f"egress-harness e2e down: {problem}", file=sys.stderr)
    return 1 if problems else 0


# --- the command line -------------------------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    """Register the ``e2e`` group on the CLI: ``preflight`` and ``tools`` (``harness.common.tools``),
    ``up`` and ``down``."""
    add_e2e_subcommands(tools.add_commands(subparsers))


def add_e2e_subcommands(e2e_subparsers: Any) -> None:
    """Add ``up`` and ``down`` to the CLI's ``e2e`` group (the sub-parsers of ``e2e``)."""
    up = e2e_subparsers.add_parser(
        "up",
        help="create kind + Istio + recorder for a run, write its run state and leave it running",
        description="Create the kind cluster, Istio with its egress gateway, the recorder and the run "
        "namespace; write <run dir>/run-state.json and print it. A failed up removes what it made.",
    )
    up.add_argument(
        "--provider",
        default="kind",
        choices=("kind", "netns"),
        help="kind (Docker containers as nodes) or netns (network namespaces as nodes, the harness as "
        "kubelet, binaries built with Go; needs root)",
    )
    up.add_argument(
        "--istio-version",
        default=None,
        choices=(*versions.SUPPORTED_ISTIO_VERSIONS, *versions.ISTIO_BUILDABLE_LABELS),
        help=f"kind: a release (default {versions.DEFAULT_ISTIO_VERSION}); netns: a label it builds "
        f"(default {versions.DEFAULT_NETNS_ISTIO_VERSION})",
    )
    up.add_argument("--keep", action="store_true", help="keep what up made even when it fails (for a look)")
    existing = up.add_argument_group(
        "an existing cluster (visited, never created or deleted; e.g. a kept netns cluster)"
    )
    existing.add_argument("--kubeconfig", default=None, metavar="PATH", help="run on this cluster instead")
    existing.add_argument("--context", default=None, metavar="NAME")
    existing.add_argument(
        "--ingress-url", default=None, metavar="URL", help="where the client reaches the ingress gateway"
    )
    existing.add_argument(
        "--relay-image", default=None, metavar="IMAGE", help="a relay image the cluster runs"
    )
    up.add_argument(
        "--external",
        default="container",
        choices=("container", "internet"),
        help="the external host: the harness's recorder (default) or a real host (--external-host)",
    )
    up.add_argument("--external-host", default=None, metavar="HOST", help="the external host's name")
    up.add_argument("--access-log-encoding", default="text", type=str.lower, choices=("text", "json"))
    up.add_argument(
        "--outbound-traffic-policy",
        default="ALLOW_ANY",
        type=str.upper,
        choices=("ALLOW_ANY", "REGISTRY_ONLY"),
    )
    up.add_argument(
        "--gateway-api", action="store_true", help="install the Gateway API CRDs (pinned release)"
    )
    up.add_argument(
        "--run-dir", default=None, metavar="DIR", help=f"default ${RUN_DIR_ENV} or .cache/e2e-run"
    )
    up.add_argument("--cluster-name", default="egress-harness", metavar="NAME")
    up.add_argument(
        "--reuse-cluster", action="store_true", help="use a kind cluster of that name if it exists"
    )
    up.add_argument("--keep-on-failure", action="store_true", help="keep what a failed up made, for a look")
    up.add_argument(
        "--no-external-tls",
        action="store_true",
        help="make no certificates: the recorder serves plain HTTP only and the TLS scenarios are skipped",
    )
    up.add_argument("--scenarios-dir", default=str(REPO_ROOT / "scenarios"), metavar="DIR")
    up.add_argument("--artifacts-dir", default=str(REPO_ROOT / "artifacts"), metavar="DIR")
    up.set_defaults(handler=_cmd_up)
    down = e2e_subparsers.add_parser(
        "down",
        help="tear down what `e2e up` made (idempotent)",
        description="Remove what the run state says `e2e up` created; nothing to do without a state file.",
    )
    down.add_argument(
        "--run-dir", default=None, metavar="DIR", help=f"default ${RUN_DIR_ENV} or .cache/e2e-run"
    )
    down.set_defaults(handler=_cmd_down)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.cluster.cli up|down ...`` (the same as ``egress-harness e2e up|down``)."""
    parser = argparse.ArgumentParser(prog="egress-harness e2e")
    add_e2e_subcommands(parser.add_subparsers(dest="e2e_command", metavar="STEP", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("egress-harness e2e: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
