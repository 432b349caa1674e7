"""Installing Istio with its egress gateway for a run, and removing it again if the harness installed it.

The overlay manifests/istio/egress.yaml is rendered into the run directory and given to
``istioctl install -y -f <overlay> --kubeconfig K [--context C] --readiness-timeout Ns``; then the
harness waits for istiod and both gateways the way ``kubectl rollout status`` does and checks that
egress gateway pods (label istio=egressgateway) exist. Removal is ``istioctl uninstall --purge -y``
followed by deleting the istio-system namespace, and happens only for an install this object made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from harness.cluster.kube import render_file
from harness.cluster.providers.kind import INGRESS_NODE_PORT
from harness.common import versions
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, interrupts_deferred, progress, run
from harness.common.tools import parse_istioctl_version
from harness.scenarios.model import EGRESS_GATEWAY_TCP_PORT

OVERLAY_TEMPLATE = REPO_ROOT / "manifests" / "istio" / "egress.yaml"
ISTIO_NAMESPACE = "istio-system"
DEPLOYMENTS = ("istiod", "istio-ingressgateway", "istio-egressgateway")
EGRESS_GATEWAY_SELECTOR = "istio=egressgateway"

AccessLogEncoding = Literal["TEXT", "JSON"]
OutboundTrafficPolicy = Literal["ALLOW_ANY", "REGISTRY_ONLY"]
ACCESS_LOG_ENCODINGS: tuple[str, ...] = ("TEXT", "JSON")
OUTBOUND_POLICIES: tuple[str, ...] = ("ALLOW_ANY", "REGISTRY_ONLY")

VERSION_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 900.0
READINESS_TIMEOUT_S = 600.0
UNINSTALL_TIMEOUT_S = 300.0
NAMESPACE_DELETE_S = 180.0
HEARTBEAT_S = 30.0


class IstioError(RuntimeError):
    pass


class ClusterApi(Protocol):
    """The few cluster reads and writes the install needs (harness.cluster.kube.Kube provides them)."""

    def deployment_exists(self, namespace: str, name: str) -> bool: ...

    def wait_rollout(
        self, namespace: str, name: str, *, deadline_s: float, interval_s: float = ...
    ) -> Any: ...

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    def delete_namespace(self, name: str, *, deadline_s: float = ..., interval_s: float = ...) -> None: ...


#: how often the harness's own installs have Envoy flush its access logs (ProxyConfig
#: ``fileFlushInterval``, Istio 1.29+; Envoy's default is one second), so that evidence waits a tenth
FILE_FLUSH_INTERVAL_S = 0.1
FILE_FLUSH_INTERVAL = f"{round(FILE_FLUSH_INTERVAL_S * 1000)}ms"
#: the node label of the harness's own clusters that the egress gateway is pinned to: kind's worker
#: (manifests/kind/cluster.yaml) and the netns provider's worker carry it, no other cluster does
EGRESS_GATEWAY_NODE_LABEL = ("egress-harness.io/egress-gateway", "true")
#: the first Istio minor whose ProxyConfig has ``fileFlushInterval``
FILE_FLUSH_INTERVAL_SINCE = (1, 29)


def flush_interval_s(*istio_versions: str) -> float:
    """How often proxies of an install of ``istio_versions`` (all of them: an upgrade's two) flush
    their access logs: :data:`FILE_FLUSH_INTERVAL_S` when every version has ``fileFlushInterval``,
    else Envoy's default (1 s)."""
    return (
        FILE_FLUSH_INTERVAL_S
        if istio_versions and all(_has_flush_interval(v) for v in istio_versions)
        else 1.0
    )


def _has_flush_interval(version: str) -> bool:
    parts = version.split("-", 1)[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= FILE_FLUSH_INTERVAL_SINCE
    except (IndexError, ValueError):
        return False


def render_overlay(
    dest: Path,
    *,
    access_log_encoding: str = "TEXT",
    outbound_traffic_policy: str = "ALLOW_ANY",
    ingress_node_port: int = INGRESS_NODE_PORT,
    template: Path = OVERLAY_TEMPLATE,
    istio_versions: Sequence[str] = (),
    pin_egress_gateway: bool = True,
) -> Path:
    """The install overlay for a run of ``istio_versions`` (an upgrade: both); where every one of them
    has ProxyConfig ``fileFlushInterval`` (1.29+), ``meshConfig.defaultConfig`` sets it to
    :data:`FILE_FLUSH_INTERVAL` (istioctl of an older Istio would reject the field).

    ``pin_egress_gateway``: the egress gateway's pods select the node labelled
    :data:`EGRESS_GATEWAY_NODE_LABEL`, which only the harness's own clusters have; on any other
    cluster (``False``) they would stay Pending and ``istioctl install`` would time out."""
    if access_log_encoding not in ACCESS_LOG_ENCODINGS:
        raise ValueError(
            f"access_log_encoding must be one of {ACCESS_LOG_ENCODINGS}, not {access_log_encoding!r}"
        )
    if outbound_traffic_policy not in OUTBOUND_POLICIES:
        raise ValueError(
            f"outbound_traffic_policy must be one of {OUTBOUND_POLICIES}, not {outbound_traffic_policy!r}"
        )
    flush = flush_interval_s(*istio_versions) < 1.0
    out = render_file(
        template,
        {
            "access_log_encoding": access_log_encoding,
            "outbound_traffic_policy": outbound_traffic_policy,
            "ingress_node_port": ingress_node_port,
            "default_config": f"{{fileFlushInterval: {FILE_FLUSH_INTERVAL}}}" if flush else "{}",
            "egress_gateway_tcp_port": EGRESS_GATEWAY_TCP_PORT,
            "egress_gateway_node_selector": (
                '{{{}: "{}"}}'.format(*EGRESS_GATEWAY_NODE_LABEL) if pin_egress_gateway else "{}"
            ),
        },
        dest,
    )
    if not flush:  # no ProxyConfig of ours at all: the chart's own stays as it is
        out.write_text(re.sub(r"(?m)^ *defaultConfig: \{\}\n", "", out.read_text()))
    return out


def kube_target_args(kubeconfig: Path, context: str | None) -> list[str]:
    """istioctl's flags naming the cluster: the run's own kubeconfig, and a context when given."""
    args = ["--kubeconfig", str(kubeconfig)]
    if context:
        args += ["--context", context]
    return args


class IstioInstall:
    """Istio (default profile + egress gateway) on one cluster, as a context manager.

    On entry: refuse a cluster that already has istiod unless ``use_existing`` (then it is used as it
    is and never removed), check the istioctl version, install, wait, verify the egress gateway (on
    its own node with ``pin_egress_gateway``, only on the harness's own cluster: :func:`render_overlay`). A
    failed or interrupted install is removed again. On exit: uninstall, unless ``keep`` or unless
    ``remove()`` says no (the run's own kind cluster is deleted next: uninstalling and waiting for
    istio-system to go would only delay that).
    """

    def __init__(
        self,
        kubeconfig: Path,
        run_dir: Path,
        *,
        context: str | None = None,
        istioctl: str | os.PathLike[str] = "istioctl",
        version: str | None = None,
        access_log_encoding: AccessLogEncoding = "TEXT",
        outbound_traffic_policy: OutboundTrafficPolicy = "ALLOW_ANY",
        ingress_node_port: int = INGRESS_NODE_PORT,
        api: ClusterApi | None = None,
        use_existing: bool = False,
        keep: bool = False,
        install_timeout_s: float = INSTALL_TIMEOUT_S,
        readiness_timeout_s: float = READINESS_TIMEOUT_S,
        extra_overlays: Sequence[Path] = (),
        remove: Callable[[], bool] = lambda: True,
        pin_egress_gateway: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.run_dir = run_dir
        self.context = context
        self.istioctl = str(istioctl)
        # a label the netns provider builds (1.31-dev) is taken as it is; others must be supported
        self.version = (
            version if version in versions.ISTIO_MODULE_VERSIONS else versions.istio_version(version)
        )
        #: rendered overlays applied after the harness's own (a node provider's, e.g. netns.yaml)
        self.extra_overlays = tuple(extra_overlays)
        self.access_log_encoding = access_log_encoding
        self.outbound_traffic_policy = outbound_traffic_policy
        self.ingress_node_port = ingress_node_port
        #: the egress gateway on the harness's own node for it (only its own clusters have one)
        self.pin_egress_gateway = pin_egress_gateway
        self._api = api
        self._owns_api = api is None
        self.use_existing = use_existing
        self.keep = keep
        #: asked on exit: whether Istio must be uninstalled (not when its cluster is deleted anyway)
        self.remove = remove
        self.install_timeout_s = install_timeout_s
        self.readiness_timeout_s = readiness_timeout_s
        self.installed_by_us = False
        self.egress_gateway_pods: list[str] = []

    @property
    def api(self) -> ClusterApi:
        if self._api is None:
            from harness.cluster.kube import Kube

            self._api = Kube(self.kubeconfig, self.context)
        return self._api

    @property
    def overlay_path(self) -> Path:
        return self.run_dir / "istio-overlay.yaml"

    def _target(self) -> list[str]:
        return kube_target_args(self.kubeconfig, self.context)

    def render(self) -> Path:
        return render_overlay(
            self.overlay_path,
            access_log_encoding=self.access_log_encoding,
            outbound_traffic_policy=self.outbound_traffic_policy,
            ingress_node_port=self.ingress_node_port,
            istio_versions=(self.version,) if self.version else (),
            pin_egress_gateway=self.pin_egress_gateway,
        )

    def check_istioctl(self) -> None:
        done = run([self.istioctl, "version", "--remote=false", "-o", "json"], timeout=VERSION_TIMEOUT_S)
        found = parse_istioctl_version(done.stdout)
        if found != self.version:
            raise IstioError(
                f"{self.istioctl} is Istio {found or 'of an unknown version'}, but this run installs Istio "
                f"{self.version}; run `make tools` (or set EGRESS_HARNESS_ISTIO_VERSION to match)"
            )

    def install(self) -> IstioInstall:
        if self.api.deployment_exists(ISTIO_NAMESPACE, "istiod"):
            if not self.use_existing:
                raise IstioError(
                    f"Istio is already installed on this cluster ({ISTIO_NAMESPACE}/istiod exists); use it as it "
                    "is (use_existing) or uninstall it first"
                )
            progress(f"using the Istio already installed in {ISTIO_NAMESPACE} (it will not be removed)")
        else:
            self.check_istioctl()
            overlay = self.render()
            progress(
                f"installing Istio {self.version} (egress gateway on, access log {self.access_log_encoding}, "
                f"outbound {self.outbound_traffic_policy}); this takes a few minutes"
            )
            self.installed_by_us = True
            try:
                run(
                    [
                        self.istioctl, "install", "-y", "-f", str(overlay),
                        *(a for extra in self.extra_overlays for a in ("-f", str(extra))), *self._target(),
                        "--readiness-timeout", f"{self.readiness_timeout_s:g}s",
                    ],
                    timeout=self.install_timeout_s,
                    echo=True,
                    heartbeat_s=HEARTBEAT_S,
                )  # fmt: skip
            except BaseException as exc:
                self._remove_after_failure(exc)
                raise
        try:
            self.wait_ready()
        except BaseException as exc:
            if self.installed_by_us:
                self._remove_after_failure(exc)
            raise
        return self

    def wait_ready(self) -> list[str]:
        for name in DEPLOYMENTS:
            self.api.wait_rollout(ISTIO_NAMESPACE, name, deadline_s=self.readiness_timeout_s)
        return self.verify_egress_gateway()

    def verify_egress_gateway(self) -> list[str]:
        """Names of the running egress gateway pods; an error when there are none."""
        pods = self.api.list_pods(ISTIO_NAMESPACE, EGRESS_GATEWAY_SELECTOR)
        running = [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            phases = ", ".join(
                f"{p['metadata']['name']}={(p.get('status') or {}).get('phase')}" for p in pods
            )
            raise IstioError(
                f"no running egress gateway pod (label {EGRESS_GATEWAY_SELECTOR}) in {ISTIO_NAMESPACE}"
                + (f"; found {phases}" if phases else "; found none")
            )
        progress(f"egress gateway running: {', '.join(running)}")
        self.egress_gateway_pods = running
        return running

    def _remove_after_failure(self, exc: BaseException) -> None:
        progress(f"Istio install did not complete ({type(exc).__name__}); removing what was installed")
        try:
            self.uninstall()
        except (CommandError, RuntimeError) as cleanup_error:
            progress(f"could not remove the partial Istio install: {cleanup_error}")

    def uninstall(self) -> None:
        """Remove Istio, only if this object installed it."""
        if not self.installed_by_us:
            return
        with interrupts_deferred("removing Istio"):
            progress("removing Istio (istioctl uninstall --purge)")
            run(
                [self.istioctl, "uninstall", "--purge", "-y", *self._target()],
                timeout=UNINSTALL_TIMEOUT_S,
                heartbeat_s=HEARTBEAT_S,
            )
            self.api.delete_namespace(ISTIO_NAMESPACE, deadline_s=NAMESPACE_DELETE_S)
            self.installed_by_us = False

    def close(self) -> None:
        if self._owns_api and self._api is not None:
            close = getattr(self._api, "close", None)
            if callable(close):
                close()
            self._api = None

    def __enter__(self) -> IstioInstall:
        try:
            return self.install()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.keep:
                if self.installed_by_us:
                    progress("keeping Istio installed (keep is on)")
                return
            if self.installed_by_us and not self.remove():
                progress("not uninstalling Istio: its cluster is deleted with it")
                return
            if exc_type is None:
                self.uninstall()
                return
            try:
                self.uninstall()
            except (CommandError, RuntimeError) as uninstall_error:
                progress(f"could not remove Istio: {uninstall_error}")
        finally:
            self.close()
