"""The cluster a run uses: a kind cluster the harness manages, or an existing cluster it only visits.

``KindCluster`` creates the cluster from manifests/kind/cluster.yaml with a kubeconfig file of its
own in the run directory (``kind ... --kubeconfig PATH``; ~/.kube/config is never read or written),
and deletes it afterwards, also when the run fails or is interrupted, unless told to keep it. A
cluster that already existed is reused only when asked and is never deleted: the harness deletes
only what it created.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import TracebackType
from typing import Protocol

from harness.cluster.kube import render_file
from harness.common import versions
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, format_argv, interrupts_deferred, progress, run

KIND_CONFIG_TEMPLATE = REPO_ROOT / "manifests" / "kind" / "cluster.yaml"
# The ingress gateway's Service gets this NodePort (manifests/istio/egress.yaml) and kind maps it here.
INGRESS_NODE_PORT = 30080
DEFAULT_INGRESS_HOST_PORT = 18080

GET_TIMEOUT_S = 60.0
CREATE_TIMEOUT_S = 900.0
DELETE_TIMEOUT_S = 300.0
LOAD_TIMEOUT_S = 600.0
EXPORT_TIMEOUT_S = 300.0
HEARTBEAT_S = 30.0
# kind names its node containers and kubeconfig context after the cluster: keep to DNS label characters.
_CLUSTER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?")


class ClusterError(RuntimeError):
    pass


class Cluster(Protocol):
    """What the rest of the harness needs from a cluster."""

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def context(self) -> str | None: ...

    def load_image(self, image: str) -> Cluster: ...


class KindCluster:
    """A kind cluster, created on entry and deleted on exit (unless reused or kept).

    Fluent: ``KindCluster("egress", run_dir).with_image(img).reusing().keeping_on_failure()``.
    ``reuse``: use a cluster of that name if one exists (it is then never deleted).
    ``keep``: never delete; ``keep_on_failure``: keep it when the ``with`` body raised (not on Ctrl-C).
    """

    def __init__(
        self,
        name: str,
        run_dir: Path,
        *,
        kind: str | os.PathLike[str] = "kind",
        image: str = versions.KIND_NODE_IMAGE,
        ingress_host_port: int = DEFAULT_INGRESS_HOST_PORT,
        reuse: bool = False,
        keep: bool = False,
        keep_on_failure: bool = False,
        config_template: Path = KIND_CONFIG_TEMPLATE,
        wait: str = "120s",
        create_timeout_s: float = CREATE_TIMEOUT_S,
    ) -> None:
        if not _CLUSTER_NAME.fullmatch(name):
            raise ValueError(
                f"kind cluster name {name!r}: use lower-case letters, digits and '-' (at most 50)"
            )
        self.name = name
        self.run_dir = run_dir
        self.kind = str(kind)
        self.image = image
        self.ingress_host_port = ingress_host_port
        self.reuse = reuse
        self.keep = keep
        self.keep_on_failure = keep_on_failure
        self.config_template = config_template
        self.wait = wait
        self.create_timeout_s = create_timeout_s
        self.created = False
        self.ready = False

    # fluent settings

    def with_image(self, image: str) -> KindCluster:
        self.image = image
        return self

    def with_ingress_host_port(self, port: int) -> KindCluster:
        self.ingress_host_port = port
        return self

    def reusing(self, reuse: bool = True) -> KindCluster:
        self.reuse = reuse
        return self

    def keeping(self, keep: bool = True) -> KindCluster:
        self.keep = keep
        return self

    def keeping_on_failure(self, keep: bool = True) -> KindCluster:
        self.keep_on_failure = keep
        return self

    # facts

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def context(self) -> str:
        return f"kind-{self.name}"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "kind-config.yaml"

    @property
    def delete_command(self) -> str:
        return format_argv(
            [self.kind, "delete", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig]
        )

    def _kind(
        self, *args: str | os.PathLike[str], timeout: float, echo: bool = False, heartbeat: bool = False
    ) -> str:
        done = run(
            [self.kind, *args],
            timeout=timeout,
            env={"KUBECONFIG": str(self.kubeconfig)},
            echo=echo,
            heartbeat_s=HEARTBEAT_S if heartbeat else None,
        )
        return done.stdout

    def exists(self) -> bool:
        """Whether ``kind get clusters`` lists this name."""
        out = self._kind("get", "clusters", timeout=GET_TIMEOUT_S)
        return self.name in {line.strip() for line in out.splitlines()}

    # lifecycle

    def up(self) -> KindCluster:
        """Create the cluster, or reuse it when it exists and ``reuse`` is on."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.exists():
            if not self.reuse:
                raise ClusterError(
                    f"a kind cluster named {self.name!r} already exists and reuse is off: reuse it, or delete "
                    f"it with `kind delete cluster --name {self.name}`"
                )
            progress(f"reusing the existing kind cluster {self.name!r} (it will not be deleted)")
            self._write_kubeconfig(
                self._kind("get", "kubeconfig", "--name", self.name, timeout=GET_TIMEOUT_S)
            )
            self.ready = True
            return self
        render_file(
            self.config_template,
            {
                "cluster_name": self.name,
                "node_image": self.image,
                "ingress_node_port": INGRESS_NODE_PORT,
                "ingress_host_port": self.ingress_host_port,
            },
            self.config_path,
        )
        progress(f"creating kind cluster {self.name!r} with {self.image} (this takes a minute or two)")
        # From here on a cluster with this name is ours: it did not exist a moment ago.
        self.created = True
        try:
            self._kind(
                "create", "cluster",
                "--name", self.name,
                "--image", self.image,
                "--config", self.config_path,
                "--kubeconfig", self.kubeconfig,
                "--wait", self.wait,
                timeout=self.create_timeout_s,
                echo=True,
                heartbeat=True,
            )  # fmt: skip
            if not self.kubeconfig.is_file() or self.kubeconfig.stat().st_size == 0:
                raise ClusterError(
                    f"`kind create cluster` succeeded but wrote no kubeconfig at {self.kubeconfig}"
                )
            self.kubeconfig.chmod(0o600)
        except BaseException as exc:
            self._clean_after_failed_create(exc)
            raise
        self.ready = True
        progress(f"kind cluster {self.name!r} is up; kubeconfig {self.kubeconfig}")
        return self

    def _write_kubeconfig(self, text: str) -> None:
        if not text.strip():
            raise ClusterError(f"`kind get kubeconfig --name {self.name}` printed nothing")
        fd = os.open(self.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def _clean_after_failed_create(self, exc: BaseException) -> None:
        """kind removes a cluster whose creation failed; if anything is left (Ctrl-C, timeout), remove it."""
        with interrupts_deferred("removing the partly created cluster"):
            try:
                if self.exists():
                    progress(
                        f"creation failed ({type(exc).__name__}); deleting what kind left of {self.name!r}"
                    )
                    self.delete()
                else:
                    progress(f"creation failed ({type(exc).__name__}); kind left no cluster behind")
                    self.created = False
                    self.kubeconfig.unlink(missing_ok=True)
            except CommandError as cleanup_error:
                progress(f"could not clean up after the failed creation: {cleanup_error}")
                progress(f"delete it by hand: {self.delete_command}")

    def delete(self) -> None:
        """Delete the cluster, only if this object created it."""
        if not self.created:
            return
        with interrupts_deferred(f"deleting kind cluster {self.name!r}"):
            progress(f"deleting kind cluster {self.name!r}")
            self._kind(
                "delete", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig,
                timeout=DELETE_TIMEOUT_S,
                heartbeat=True,
            )  # fmt: skip
            self.created = False
            self.ready = False
            self.kubeconfig.unlink(missing_ok=True)

    def __enter__(self) -> KindCluster:
        return self.up()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.created:
            return
        failed = exc_type is not None and not issubclass(exc_type, KeyboardInterrupt)
        if self.keep or (self.keep_on_failure and failed):
            why = "keep is on" if self.keep else "the run failed and keep-on-failure is on"
            progress(
                f"keeping kind cluster {self.name!r} ({why}); kubeconfig {self.kubeconfig}; "
                f"delete it with: {self.delete_command}"
            )
            return
        if exc_type is None:
            self.delete()
            return
        # Already failing: report a failed delete without hiding the original error.
        try:
            self.delete()
        except CommandError as delete_error:
            progress(f"could not delete kind cluster {self.name!r}: {delete_error}")
            progress(f"delete it by hand: {self.delete_command}")

    # helpers for a live cluster

    def load_image(self, image: str) -> KindCluster:
        """Copy a local Docker image into the cluster's node (``kind load docker-image``)."""
        progress(f"loading image {image} into kind cluster {self.name!r}")
        self._kind("load", "docker-image", image, "--name", self.name, timeout=LOAD_TIMEOUT_S, heartbeat=True)
        return self

    def export_logs(self, directory: Path) -> Path:
        """Write the node's logs (kubelet, containerd, pods) under ``directory`` (``kind export logs``)."""
        directory.mkdir(parents=True, exist_ok=True)
        self._kind("export", "logs", directory, "--name", self.name, timeout=EXPORT_TIMEOUT_S, heartbeat=True)
        return directory


class ExistingCluster:
    """A cluster the harness does not own: nothing is created or deleted here except per-run namespaces."""

    def __init__(self, kubeconfig: Path, context: str | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self.created = False

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig

    @property
    def context(self) -> str | None:
        return self._context

    def __enter__(self) -> ExistingCluster:
        if not self._kubeconfig.is_file():
            raise ClusterError(f"kubeconfig {self._kubeconfig} does not exist")
        where = f"context {self._context!r} of " if self._context else ""
        progress(
            f"using the existing cluster at {where}{self._kubeconfig} (nothing but per-run namespaces is changed)"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def load_image(self, image: str) -> ExistingCluster:
        raise ClusterError(
            f"cannot load {image} into an existing cluster; push it to a registry the cluster pulls from "
            "and point the manifests at it"
        )
