"""One run of the cluster tier: cluster, Istio, external host, relay apps; its state, its views.

``E2ERun(options, run_dir)`` is a context manager composed of smaller ones, entered in this order and
left in reverse (also on failure or Ctrl-C; each part removes only what it made):

1. the cluster: a ``KindCluster`` (manifests/kind/cluster.yaml, own kubeconfig) or, with
   ``kubeconfig``, an ``ExistingCluster`` that is only visited;
2. the Gateway API CRDs when asked for (``harness.cluster.gatewayapi``), then Istio with its egress
   gateway (``IstioInstall``; an Istio already there is used as it is);
3. the external host: with ``external="container"`` the run's PKI (``harness.cluster.credentials``)
   in ``<run dir>/pki`` and the recorders on kind's Docker network under their aliases
   (``harness.cluster.hosts``), each checked from the node; with ``"internet"`` a real host
   (``external_host``), no recorder and no PKI;
4. the run namespace ``egress-<run id>`` labelled ``istio-injection=enabled``;
5. the relay apps ``proxy`` and ``target`` and the ingress route ``/proxy`` (``harness.cluster.apps``),
   then a wait until the chain answers through the ingress (``harness.cluster.chain``).

On the harness's own cluster (:attr:`E2ERun.own_cluster`) the egress gateway runs alone on the worker
labelled for it and the relays on the control-plane node; on a cluster given by ``kubeconfig`` the
scheduler places both, since its nodes carry neither label nor schedulable control plane.

What a test does with a started run (the chain, scenarios, evidence) is its
``harness.cluster.namespace.RunNamespace`` side; :meth:`E2ERun.scoped` makes a view of the run for
another namespace of it (a scenario namespace of the catalog, ``harness.cluster.runner``).

A run made by ``egress-harness e2e up`` is described by a ``harness.cluster.state.RunState`` file
(:meth:`E2ERun.to_state`); ``E2ERun(..., state=RunState.load(path))`` attaches to it (nothing is
created or deleted but scenario namespaces), which is how every pytest-xdist worker shares one
cluster; :meth:`E2ERun.detach` leaves a run's parts running when it exits.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from harness.cluster.apps import RECORDER_IMAGE, RELAY_IMAGE, RelayApps, build_app_image, prepare_relay_image
from harness.cluster.chain import (
    INGRESS_GATEWAY_NAME,
    INGRESS_PATH,
    ingress_prefix,
)
from harness.cluster.convergence import (
    CONVERGE_INTERVAL_S,
)
from harness.cluster.credentials import (
    PKI_DIR,
    load_pki,
    pki_server_names,
)
from harness.cluster.errors import E2EError
from harness.cluster.external import RecorderContainer, RecorderTLS
from harness.cluster.gatewayapi import (
    GATEWAY_API_PROBE_CRD,
    GatewayApiCrds,
    crd_exists,
    gateway_api_cache,
    gateway_api_from_go_module,
    gateway_api_url,
)
from harness.cluster.hosts import (
    MTLS_ALIAS,
    RUN_LABEL,
    UNREGISTERED_ALIAS,
    check_alias_resolves,
    check_run_names_free,
    close_docker_client,
    mtls_recorder_container,
    recorder_container,
    run_recorder_names,
)
from harness.cluster.istio import IstioInstall
from harness.cluster.kube import INJECTION_LABELS, Kube, render_file
from harness.cluster.namespace import RunNamespace
from harness.cluster.options import E2EOptions, new_run_id
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.cluster.providers.netns.binaries import istio_binaries
from harness.cluster.providers.netns.cluster import NetnsCluster
from harness.cluster.providers.netns.external import NetnsRecorder
from harness.cluster.providers.netns.images import ISTIO_HUB
from harness.cluster.providers.netns.layout import EXTERNAL_HOST_IP, EXTERNAL_MTLS_IP, RUN_SUBDIR
from harness.cluster.state import RunState, recorder_state
from harness.common import tools, versions
from harness.common.certs import PkiError, TestPKI, generate_pki
from harness.common.paths import REPO_ROOT
from harness.common.proc import progress
from harness.common.traffic import Traffic, new_token
from harness.report.results import utc_now

#: the netns provider's Istio install overlay, applied after the harness's own
NETNS_OVERLAY = REPO_ROOT / "manifests" / "istio" / "netns.yaml"


def netns_overlay(version: str, dest: Path) -> Path:
    """The netns provider's Istio overlay for ``version`` (its image hub, the version's label as tag,
    upstream Envoy's filters), rendered to ``dest``."""
    return render_file(NETNS_OVERLAY, {"hub": ISTIO_HUB, "tag": version}, dest)


class E2ERun(RunNamespace):
    """One run of the cluster tier (see the module docstring); use as a context manager. It is also
    its run namespace (:class:`harness.cluster.namespace.RunNamespace`).

    With ``state`` it attaches to a run made by ``egress-harness e2e up``: it connects to that
    cluster and recorder and creates or deletes nothing but what scenarios make.
    """

    def __init__(
        self, options: E2EOptions, run_dir: Path, *, run_id: str | None = None, state: RunState | None = None
    ) -> None:
        if state is not None:
            options = state.options(options)
            run_id = state.run_id
        self.options = options
        self.state = state
        self.run_dir = run_dir
        self.run_id = run_id or new_run_id()
        self.namespace = state.namespace if state is not None else f"egress-{self.run_id}"
        self.started_at = datetime.now(UTC)
        self.cluster = None
        self.istio: IstioInstall | None = None
        self.kube = None
        self.recorder = None
        self.mtls_recorder = None
        self.pki = None
        self.relays: RelayApps | None = None
        self.gateway_api_crds: GatewayApiCrds | None = None
        self.istioctl = None
        self.ingress_url = ""
        self.timings = {}
        self.applied = []
        self.failed = False
        self.converge_interval_s = CONVERGE_INTERVAL_S
        self.external_host = options.host
        self.unregistered_host = UNREGISTERED_ALIAS
        self.mtls_host = MTLS_ALIAS
        self.ingress_path = INGRESS_PATH
        self.ingress_gateway = (
            state.ingress_gateway if state is not None else f"{self.namespace}/{INGRESS_GATEWAY_NAME}"
        )
        self.relay_image = options.relay_image or RELAY_IMAGE
        self.relay_manifest = None
        # made with the run, kept in its state only (a state from before the harness had one: a fresh one
        # for what this process makes)
        self.ingress_token = (state.ingress_token if state is not None else "") or new_token()
        self.gateway_api_present = False
        #: the run this one is a view of (:meth:`scoped`), None for the run itself
        self.parent = None
        self._detached = False
        self._traffic = None
        self._recorder_image: str | None = None
        #: the netns cluster's external names: address -> aliases
        self._netns_hosts: dict[str, list[str]] = {}
        self._stack = contextlib.ExitStack()

    # lifecycle

    def __enter__(self) -> E2ERun:
        if self.parent is not None:
            raise E2EError("a scoped view of a run is not a context manager; enter the run itself")
        try:
            self.start()
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.mark_failed()
        self._stack.__exit__(exc_type, exc, tb)

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[step] = round(time.monotonic() - started, 3)
        progress(f"{step}: {self.timings[step]:.1f}s")

    @property
    def own_cluster(self) -> bool:
        """Whether the run's cluster is the harness's own (a kind cluster of manifests/kind/cluster.yaml
        or the netns provider's), whose nodes the harness labelled: only there are the relays pinned to
        the control-plane node and the egress gateway to its worker. Not a cluster given by
        ``kubeconfig``, whose nodes the harness knows nothing of."""
        if self.state is not None:
            return self.state.cluster in ("kind", "netns")
        return not self.options.existing_cluster

    @property
    def attached(self) -> bool:
        return self.state is not None

    def start(self) -> E2ERun:
        if self.state is not None:
            return self._attach(self.state)
        o = self.options
        problems = o.problems()
        if problems:
            raise E2EError("cannot run the cluster tier with these options: " + "; ".join(problems))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        progress(
            f"e2e run {self.run_id}: Istio {o.istio_version}, namespace {self.namespace}, run dir {self.run_dir}"
        )
        self.istioctl = self._istioctl(o.istio_version)
        if o.external == "container" and o.provider == "kind" and not o.existing_cluster:
            check_run_names_free(
                run_recorder_names(o.host, o.recorder_aliases, o.mtls_aliases, mtls=o.external_tls),
                run_id=self.run_id,
            )
        with self._timed("cluster"):
            cluster = self.make_cluster()
            self._stack.enter_context(cluster)
            self.cluster = cluster
        self.kube = self._stack.enter_context(Kube(cluster.kubeconfig, cluster.context))
        if o.gateway_api:
            # before Istio, so that istiod finds the Gateway API kinds when it starts
            with self._timed("gateway api"):
                self.gateway_api_crds = self._stack.enter_context(
                    GatewayApiCrds(
                        self.kube,
                        cache=gateway_api_cache(gateway_api_url()),
                        keep=o.keep_cluster,
                        remove=self._remove_cluster_objects,
                        # no release download on the netns provider's machines: the Go module's files
                        source=gateway_api_from_go_module if o.provider == "netns" else None,
                    )
                )
        if not o.install_istio:
            progress("no Istio, no run namespace and no relays: the caller installs Istio itself")
        else:
            self._enter_istio()
        self.gateway_api_present = self.gateway_api_crds is not None or self._probe_gateway_api()
        if o.external == "container":
            self._enter_external()
        if isinstance(self.cluster, NetnsCluster):
            self.ingress_url = o.ingress_url or self.cluster.ingress_url
        else:
            self.ingress_url = (
                o.ingress_url or f"http://127.0.0.1:{getattr(self.cluster, 'ingress_host_port', 80)}"
            )
        if not o.install_istio:
            return self
        self._stack.enter_context(self.run_namespace())
        with self._timed("relay apps"):
            if isinstance(self.cluster, NetnsCluster):
                # no image to build: the harness kubelet maps the relay image to apps/relay
                self.relay_image = o.relay_image or RELAY_IMAGE
            else:
                self.relay_image = o.relay_image or prepare_relay_image(
                    self.cluster if isinstance(self.cluster, KindCluster) else None,
                    tag=RELAY_IMAGE,
                    mode=o.image_build_mode,
                )
            self.relays = self._stack.enter_context(
                RelayApps(
                    self.kube,
                    self.namespace,
                    image=self.relay_image,
                    keep=o.keep_cluster,
                    ca_pem=self.ca_pem,
                    pin_to_control_plane=self.own_cluster,
                    token=self.ingress_token,
                    upstreams=self.run_upstreams(),
                    labels={RUN_LABEL: self.run_id},
                    callers=True,
                )
            )
            self.relay_manifest = self.relays.save(self.run_dir / "manifests")
        self._traffic = self._stack.enter_context(Traffic(headers=self.ingress_headers))
        with self._timed("chain ready"):
            ready = self.wait_chain_ready()
        progress(f"the chain answers through {self.ingress_url} (after {ready.attempts} attempts)")
        return self

    def _enter_external(self) -> None:
        """The run's PKI (with external TLS) and its recorders, each checked to resolve."""
        if self.options.external_tls:
            with self._timed("certificates"):
                self._stack.callback(self._remove_pki)
                self.pki = self.make_pki()
        with self._timed("external host"):
            self.recorder = self._stack.enter_context(self._owned_recorder(self.make_recorder()))
            self.check_alias_resolves(self.recorder.alias)
            if self.pki is not None:
                self.mtls_recorder = self._stack.enter_context(
                    self._owned_recorder(self.make_mtls_recorder())
                )
                self.check_alias_resolves(self.mtls_recorder.alias)

    def _enter_istio(self) -> None:
        o = self.options
        assert self.cluster is not None
        assert self.istioctl is not None
        with self._timed("istio"):
            self.istio = self._stack.enter_context(
                IstioInstall(
                    self.cluster.kubeconfig,
                    self.run_dir,
                    context=self.cluster.context,
                    istioctl=self.istioctl,
                    version=o.istio_version,
                    access_log_encoding="JSON" if o.access_log_encoding == "JSON" else "TEXT",
                    outbound_traffic_policy="REGISTRY_ONLY"
                    if o.outbound_traffic_policy == "REGISTRY_ONLY"
                    else "ALLOW_ANY",
                    use_existing=o.reuse_cluster or o.existing_cluster,
                    keep=o.keep_cluster,
                    extra_overlays=self._provider_overlays(),
                    # no uninstall and no wait for istio-system when the run's cluster goes anyway
                    remove=self._remove_cluster_objects,
                    # the egress gateway's own node exists only on the harness's own cluster
                    pin_egress_gateway=self.own_cluster,
                )
            )

    def _probe_gateway_api(self) -> bool:
        try:
            return crd_exists(self._kube(), GATEWAY_API_PROBE_CRD)
        except Exception as exc:  # e.g. no right to read CRDs on a shared cluster
            progress(
                f"could not tell whether the Gateway API CRDs are installed ({type(exc).__name__}: {exc}); "
                "the Gateway API scenarios will be skipped"
            )
            return False

    def _attach(self, state: RunState) -> E2ERun:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        progress(
            f"e2e run {self.run_id}: attaching to the run in {state.run_dir} (Istio {state.istio_version}, "
            f"namespace {self.namespace}, ingress {state.ingress_url}); nothing of it is created or deleted here"
        )
        self.istioctl = self._istioctl(state.istio_version)
        self.cluster = state.cluster_handle()
        self.kube = self._stack.enter_context(Kube(state.kubeconfig, state.context))
        if state.recorder is not None:
            self.recorder = state.recorder.handle(state.run_dir)
            self._stack.callback(close_docker_client, self.recorder)
        if state.mtls_recorder is not None:
            self.mtls_recorder = state.mtls_recorder.handle(state.run_dir)
            self._stack.callback(close_docker_client, self.mtls_recorder)
        if state.pki_dir is not None:
            self.pki = load_pki(state.pki_dir)
        self._traffic = self._stack.enter_context(Traffic(headers=self.ingress_headers))
        self.ingress_url = state.ingress_url
        self.gateway_api_present = state.gateway_api
        return self

    def _istioctl(self, version: str) -> str:
        """istioctl of ``version``: the pinned download, or for a label the netns provider builds,
        the one built from the same Istio commit as istiod and the proxies."""
        if self.options.provider == "netns" or (
            version in versions.ISTIO_BUILDABLE_LABELS and version not in versions.SUPPORTED_ISTIO_VERSIONS
        ):
            return str(istio_binaries(version).path("istioctl"))
        return str(tools.ensure_tool("istioctl", version))

    def _provider_overlays(self) -> list[Path]:
        """The node provider's own Istio overlay (netns: its image hub and tag, upstream Envoy)."""
        if not isinstance(self.cluster, NetnsCluster):
            return []
        return [netns_overlay(self.options.istio_version, self.run_dir / "istio-overlay-netns.yaml")]

    def make_cluster(self) -> KindCluster | ExistingCluster | NetnsCluster:
        o = self.options
        if o.kubeconfig is not None:
            return ExistingCluster(o.kubeconfig, o.context)
        if o.provider == "netns":
            return NetnsCluster(
                self.run_dir / RUN_SUBDIR,
                keep=o.keep_cluster,
                keep_on_failure=o.keep_on_failure,
                istio_versions=tuple(dict.fromkeys((o.istio_version, *o.more_istio_versions))),
            )
        kind = tools.ensure_tool("kind", versions.KIND_VERSION)
        return KindCluster(
            o.cluster_name,
            self.run_dir,
            kind=kind,
            reuse=o.reuse_cluster,
            keep=o.keep_cluster,
            keep_on_failure=o.keep_on_failure,
        )

    def make_pki(self) -> TestPKI:
        """The run's CA, server and client certificates in ``<run dir>/pki``: the server certificate
        names every alias of both recorders and ``*.<domain>`` (:func:`pki_server_names`)."""
        o = self.options
        names = pki_server_names(o.host, o.recorder_aliases, o.mtls_aliases)
        progress(f"making the run's certificates ({len(names)} server names) in {self.run_dir / PKI_DIR}")
        try:
            return generate_pki(self.run_dir / PKI_DIR, names)
        except PkiError as exc:
            raise E2EError(
                f"the run's certificates could not be made: {exc} (without them: `e2e up --no-external-tls`, "
                "and the TLS scenarios are skipped)"
            ) from exc

    def _remove_pki(self) -> None:
        """The run's keys go with the run, unless it is kept or left running (``e2e up``)."""
        if self._detached or self._keeping():
            return
        shutil.rmtree(self.run_dir / PKI_DIR, ignore_errors=True)

    def _image(self) -> str:
        if self._recorder_image is None:
            self._recorder_image = build_app_image(
                "recorder", RECORDER_IMAGE, mode=self.options.image_build_mode
            )
        return self._recorder_image

    def make_recorder(self) -> RecorderContainer | NetnsRecorder:
        """The external host (:func:`recorder_container`) under the host's alias, the unregistered
        alias and the catalog's; with the PKI it also serves HTTPS."""
        o = self.options
        if isinstance(self.cluster, NetnsCluster):
            return self._netns_recorder(
                "recorder", EXTERNAL_HOST_IP, [o.host, UNREGISTERED_ALIAS, *o.recorder_aliases], mutual=False
            )
        return recorder_container(
            self._image(),
            run_id=self.run_id,
            host=o.host,
            port=o.external_port,
            aliases=[UNREGISTERED_ALIAS, *o.recorder_aliases],
            pki=self.pki,
        )

    def make_mtls_recorder(self) -> RecorderContainer | NetnsRecorder:
        """The external host that requires client certificates (:func:`mtls_recorder_container`)."""
        if self.pki is None:
            raise E2EError("the mutual-TLS recorder needs the run's PKI")
        if isinstance(self.cluster, NetnsCluster):
            return self._netns_recorder(
                "mtls-recorder", EXTERNAL_MTLS_IP, [MTLS_ALIAS, *self.options.mtls_aliases], mutual=True
            )
        return mtls_recorder_container(
            self._image(),
            self.pki,
            run_id=self.run_id,
            port=self.options.external_port,
            aliases=self.options.mtls_aliases,
        )

    def _netns_recorder(self, name: str, address: str, aliases: list[str], *, mutual: bool) -> NetnsRecorder:
        """A recorder process in the netns cluster's external namespace; its aliases resolve to
        ``address`` in every pod (the kubelet's hosts file)."""
        assert isinstance(self.cluster, NetnsCluster)
        self._netns_hosts[address] = list(dict.fromkeys(aliases))
        self.cluster.set_external_hosts(self._netns_hosts)
        return NetnsRecorder(
            self.cluster.external_netns,
            address,
            self.run_dir,
            name=name,
            alias=aliases[0],
            aliases=aliases[1:],
            port=self.options.external_port,
            tls=RecorderTLS.from_pki(self.pki, mutual=mutual) if self.pki is not None else None,
        )

    @contextlib.contextmanager
    def _owned_recorder(
        self, recorder: RecorderContainer | NetnsRecorder
    ) -> Iterator[RecorderContainer | NetnsRecorder]:
        """The recorder, removed on exit unless the run was detached (``e2e up`` leaves it running)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(recorder)
            try:
                yield recorder
            finally:
                if self._detached:
                    stack.pop_all()
                    close_docker_client(recorder)

    def check_alias_resolves(self, alias: str) -> None:
        """The alias resolves on the kind node (the resolver CoreDNS forwards to); else fail early."""
        if isinstance(self.cluster, KindCluster):
            check_alias_resolves(f"{self.cluster.name}-control-plane", alias)

    @contextlib.contextmanager
    def run_namespace(self) -> Iterator[str]:
        kube = self._kube()
        kube.create_namespace(self.namespace, {**INJECTION_LABELS, RUN_LABEL: self.run_id})
        try:
            yield self.namespace
        finally:
            if self._keeping() or self._detached:
                progress(f"keeping namespace {self.namespace}")
            else:
                kube.delete_namespace(self.namespace)

    def _keeping(self) -> bool:
        return self.options.keep_cluster or (self.failed and self.options.keep_on_failure)

    def _remove_cluster_objects(self) -> bool:
        """Whether cluster-wide objects of the run must be removed one by one on exit: not when kept,
        and not when the run's own kind cluster is deleted anyway."""
        if self._keeping() or self._detached:
            return False
        if isinstance(self.cluster, NetnsCluster):
            return self.cluster.keep
        return not (isinstance(self.cluster, KindCluster) and self.cluster.created and not self.cluster.keep)

    def mark_failed(self) -> None:
        """A test of this run failed: with keep-on-failure, keep everything for a look."""
        self.failed = True
        if self.options.keep_on_failure:
            if isinstance(self.cluster, KindCluster | NetnsCluster):
                self.cluster.keep = True
            for part in (self.istio, self.relays, self.gateway_api_crds):
                if part is not None:
                    part.keep = True

    def detach(self) -> None:
        """Leave everything of this run in place when it exits (``e2e up``); only connections close."""
        if self.attached or self.parent is not None:
            raise E2EError("only a run that made its parts can be detached from them")
        self._detached = True
        if isinstance(self.cluster, KindCluster | NetnsCluster):
            self.cluster.keep = True
        for part in (self.istio, self.relays, self.gateway_api_crds):
            if part is not None:
                part.keep = True

    def to_state(self) -> RunState:
        """What this (started) run made, for ``e2e up`` to hand over to other processes."""
        if self.cluster is None:
            raise E2EError("the run has not started")
        cluster = self.cluster
        recorder = recorder_state(self.recorder) if self.recorder is not None else None
        mtls = recorder_state(self.mtls_recorder) if self.mtls_recorder is not None else None
        return RunState(
            run_id=self.run_id,
            run_dir=self.run_dir.resolve(),
            kubeconfig=cluster.kubeconfig.resolve(),
            context=cluster.context,
            cluster="kind"
            if isinstance(cluster, KindCluster)
            else "netns"
            if isinstance(cluster, NetnsCluster)
            else "existing",
            cluster_name=cluster.name if isinstance(cluster, KindCluster) else None,
            cluster_created=isinstance(cluster, NetnsCluster) or bool(getattr(cluster, "created", False)),
            istio_version=self.options.istio_version,
            istio_installed=bool(self.istio is not None and self.istio.installed_by_us),
            access_log_encoding=self.options.access_log_encoding,
            outbound_traffic_policy=self.options.outbound_traffic_policy,
            ingress_url=self.ingress_url,
            namespace=self.namespace,
            namespace_created=True,
            ingress_gateway=self.ingress_gateway,
            relay_image=self.relay_image,
            external=self.options.external,
            external_host=self.options.host,
            pod_source_nat=self.source_nat,
            gateway_api=self.gateway_api_present,
            gateway_api_objects=tuple(self.gateway_api_crds.refs) if self.gateway_api_crds else (),
            recorder=recorder,
            created=utc_now(),
            pki_dir=self.pki.directory.resolve() if self.pki is not None else None,
            mtls_recorder=mtls,
            ingress_token=self.ingress_token,
        )

    # views: another namespace of the run

    def scoped(
        self,
        namespace: str,
        *,
        external_host: str,
        unregistered_host: str,
        mtls_host: str | None = None,
        ingress_path: str | None = None,
    ) -> E2ERun:
        """A view of this run for another namespace of it: same cluster, recorders, PKI and client,
        its own namespace, hosts and ingress path, and its own list of applied scenarios. It owns
        nothing."""
        root = self.parent if isinstance(self.parent, E2ERun) else self
        view = copy.copy(root)
        view.parent = root
        view.namespace = namespace
        view.external_host = external_host
        view.unregistered_host = unregistered_host
        view.mtls_host = mtls_host or root.mtls_host
        view.ingress_path = ingress_path or ingress_prefix(namespace)
        view.applied = []
        view.relays = None
        view.relay_manifest = None
        view._stack = contextlib.ExitStack()
        return view

    def write_timings(self) -> Path:
        path = self.run_dir / "timings.json"
        path.write_text(json.dumps(self.timings, indent=1, sort_keys=True) + "\n")
        return path
