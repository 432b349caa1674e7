"""The state of a cluster run made by ``egress-harness e2e up``: :class:`RunState`, one JSON file.

``up`` writes it (``<run dir>/run-state.json``, atomically, readable by its owner only: mode 0600,
for it holds the run's ingress token); every pytest-xdist worker reads it and
attaches to the run (``E2ERun(..., state=RunState.load(path))``: nothing is created or deleted but
scenario namespaces); ``down`` removes what it says was created. Reading is strict: a file that is
not such a state raises :class:`RunStateError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from harness.cluster.errors import RunStateError
from harness.cluster.external import AttachedRecorder, RecorderClient, RecorderContainer
from harness.cluster.hosts import EXTERNAL_ALIAS
from harness.cluster.kube import ObjectRef
from harness.cluster.options import EXTERNAL_MODES, E2EOptions
from harness.cluster.providers.kind import ExistingCluster, KindCluster
from harness.cluster.requirements import RECORDER_SERVES_DEFAULT, recorder_serves
from harness.common import tools, versions

RUN_STATE_SCHEMA: Final = "istio-egress-harness/run-state"
RUN_STATE_VERSION: Final = 1
RUN_STATE_FILE: Final = "run-state.json"
RUN_STATE_ENV: Final = "EGRESS_HARNESS_RUN_STATE"


class _StateReader:
    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def _fail(self, name: str, what: str) -> RunStateError:
        return RunStateError(f"{self.where}: field {name!r}: {what}")

    def text(self, name: str, *, optional: bool = False) -> str:
        value = self.data.get(name)
        if optional and value in (None, ""):
            return ""
        if not isinstance(value, str) or not value:
            raise self._fail(name, f"expected a non-empty string, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            raise self._fail(name, f"expected true or false, got {value!r}")
        return value

    def integer(self, name: str) -> int:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(name, f"expected an integer, got {value!r}")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.integer(name)

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def choice(self, name: str, choices: Sequence[str]) -> str:
        value = self.text(name)
        if value not in choices:
            raise self._fail(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def mapping(self, name: str) -> Mapping[str, Any] | None:
        value = self.data.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise self._fail(name, f"expected an object or null, got {value!r}")
        return value


@dataclass(frozen=True)
class RecorderState:
    """The recorder container of a run: enough to read its records from another process."""

    name: str
    image: str
    network: str
    port: int
    aliases: tuple[str, ...]
    serves: tuple[str, ...] = RECORDER_SERVES_DEFAULT
    #: where it serves HTTPS (None: plain HTTP only)
    tls_port: int | None = None
    #: its control API from this machine when it is not a container (the netns provider's recorder)
    control_url: str | None = None
    #: the processes of a recorder that is not a container (pid, binary), for ``e2e down``
    processes: tuple[tuple[int, str], ...] = ()
    #: the address pods reach a recorder that is not a container at (a container's is asked of Docker)
    address: str | None = None
    #: where it echoes plain TCP (None: it does not, or the state was written before it could)
    tcp_port: int | None = None

    def handle(self, run_dir: Path | None = None) -> RecorderClient:
        """A handle on the running recorder (nothing is started; do not enter it). A netns run's
        recorder (reached at ``control_url``) logs to ``<run_dir>/<name>/<name>.log``."""
        if self.control_url is not None:
            return AttachedRecorder(
                self.control_url,
                name=self.name,
                alias=self.aliases[0] if self.aliases else EXTERNAL_ALIAS,
                aliases=self.aliases,
                port=self.port,
                tls_port=self.tls_port,
                log_file=run_dir / self.name / f"{self.name}.log" if run_dir is not None else None,
                address=self.address,
                tcp_port=self.tcp_port,
            )
        recorder = RecorderContainer(
            self.image, network=self.network, alias=self.aliases[0] if self.aliases else EXTERNAL_ALIAS,
            port=self.port, name=self.name,
        )  # fmt: skip
        recorder.aliases = list(self.aliases)
        recorder.tls_port = self.tls_port
        recorder.tcp_port = self.tcp_port
        return recorder

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "network": self.network,
            "port": self.port,
            "aliases": list(self.aliases),
            "serves": list(self.serves),
            "tls_port": self.tls_port,
            "control_url": self.control_url,
            "processes": [list(p) for p in self.processes],
            "address": self.address,
            "tcp_port": self.tcp_port,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str, what: str = "recorder") -> RecorderState:
        r = _StateReader(data, f"{where}: {what}")
        return cls(
            name=r.text("name"),
            image=r.text("image"),
            network=r.text("network"),
            port=r.integer("port"),
            aliases=r.texts("aliases"),
            serves=r.texts("serves") or RECORDER_SERVES_DEFAULT,
            tls_port=r.optional_integer("tls_port"),
            control_url=r.text("control_url", optional=True) or None,
            processes=tuple((int(p[0]), str(p[1])) for p in data.get("processes") or ()),
            address=r.text("address", optional=True) or None,
            tcp_port=r.optional_integer("tcp_port"),
        )


#: what a netns run's recorder state names as its "image": the program, run as a process
RECORDER_APP_NAME = "apps/recorder/recorder.py"


def recorder_state(recorder: Any) -> RecorderState:
    """What another process needs to read ``recorder``'s records (and what it serves)."""
    from harness.cluster.providers.netns.external import NetnsRecorder

    if isinstance(recorder, NetnsRecorder):
        return RecorderState(
            name=recorder.name,
            image=f"process:{RECORDER_APP_NAME}",
            network=f"netns:{recorder.netns}",
            port=recorder.port,
            aliases=tuple(recorder.aliases),
            serves=recorder_serves(recorder),
            tls_port=recorder.tls_port,
            control_url=recorder.url,
            processes=tuple((r.pid, r.binary) for r in recorder.records_of_processes),
            address=recorder.ip,
            tcp_port=recorder.tcp_port,
        )
    return RecorderState(
        name=recorder.name,
        image=recorder.image,
        network=recorder.network_name,
        port=recorder.port,
        aliases=tuple(recorder.aliases),
        serves=recorder_serves(recorder),
        tls_port=recorder.tls_port,
        tcp_port=recorder.tcp_port,
    )


@dataclass(frozen=True)
class RunState:
    """What ``e2e up`` made and how to reach it; ``e2e down`` removes what it says was created."""

    run_id: str
    run_dir: Path
    kubeconfig: Path
    context: str | None
    #: ``kind``: the harness's kind cluster (``cluster_name``); ``netns``: the harness's netns cluster
    #: (its state in ``<run dir>/netns``); ``existing``: a cluster only visited
    cluster: Literal["kind", "netns", "existing"]
    cluster_name: str | None
    cluster_created: bool
    istio_version: str
    istio_installed: bool
    access_log_encoding: str
    outbound_traffic_policy: str
    ingress_url: str
    #: the run namespace: the relays behind ``/proxy`` and the shared ingress Gateway
    namespace: str
    namespace_created: bool
    ingress_gateway: str
    relay_image: str
    external: str
    external_host: str
    pod_source_nat: bool
    #: the Gateway API CRDs are on the cluster; ``gateway_api_objects`` were installed by ``up``
    gateway_api: bool = False
    gateway_api_objects: tuple[ObjectRef, ...] = ()
    recorder: RecorderState | None = None
    created: str = ""
    #: the run's PKI (harness.common.certs files), which attached workers read for Secrets and evidence
    pki_dir: Path | None = None
    #: the recorder that requires client certificates (``requires.external: mtls``)
    mtls_recorder: RecorderState | None = None
    #: the run's token: its ingress routes answer a request without it 404 (``harness.cluster.apps``);
    #: kept here only ("" for a state written before the harness had one)
    ingress_token: str = ""

    @property
    def path(self) -> Path:
        return self.run_dir / RUN_STATE_FILE

    def options(self, base: E2EOptions | None = None) -> E2EOptions:
        """``base`` (default options) with what this run was made with."""
        return dataclasses.replace(
            base or E2EOptions(istio_version=self.istio_version),
            istio_version=self.istio_version,
            access_log_encoding=self.access_log_encoding,
            outbound_traffic_policy=self.outbound_traffic_policy,
            external="internet" if self.external == "internet" else "container",
            external_host=self.external_host,
            pod_source_nat=self.pod_source_nat,
            relay_image=self.relay_image,
            ingress_url=self.ingress_url,
            gateway_api=False,
        )

    def cluster_handle(self) -> KindCluster | ExistingCluster:
        """The cluster as an object that does not own it (never created or deleted through it)."""
        if self.cluster == "kind" and self.cluster_name and self.kubeconfig.name == "kubeconfig":
            cached = tools.cached_path("kind", versions.KIND_VERSION)
            kind = str(cached) if cached.is_file() else "kind"
            return KindCluster(self.cluster_name, self.kubeconfig.parent, kind=kind)
        return ExistingCluster(self.kubeconfig, self.context)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RUN_STATE_SCHEMA,
            "schema_version": RUN_STATE_VERSION,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "kubeconfig": str(self.kubeconfig),
            "context": self.context,
            "cluster": self.cluster,
            "cluster_name": self.cluster_name,
            "cluster_created": self.cluster_created,
            "istio_version": self.istio_version,
            "istio_installed": self.istio_installed,
            "access_log_encoding": self.access_log_encoding,
            "outbound_traffic_policy": self.outbound_traffic_policy,
            "ingress_url": self.ingress_url,
            "namespace": self.namespace,
            "namespace_created": self.namespace_created,
            "ingress_gateway": self.ingress_gateway,
            "relay_image": self.relay_image,
            "external": self.external,
            "external_host": self.external_host,
            "pod_source_nat": self.pod_source_nat,
            "gateway_api": self.gateway_api,
            "gateway_api_objects": [
                {"api_version": r.api_version, "kind": r.kind, "name": r.name}
                for r in self.gateway_api_objects
            ],
            "recorder": self.recorder.to_dict() if self.recorder is not None else None,
            "mtls_recorder": self.mtls_recorder.to_dict() if self.mtls_recorder is not None else None,
            "pki_dir": str(self.pki_dir) if self.pki_dir is not None else None,
            "created": self.created,
            "ingress_token": self.ingress_token,
        }

    def to_json(self, *, redact_token: bool = False) -> str:
        """The state as JSON; ``redact_token`` for showing it (a terminal, a CI log): the token is
        replaced by where it is kept."""
        data = self.to_dict()
        if redact_token and self.ingress_token:
            data["ingress_token"] = f"<redacted: in {self.path}>"
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "run state") -> RunState:
        if not isinstance(data, Mapping):
            raise RunStateError(f"{where}: a run state is one JSON object, not {type(data).__name__}")
        if data.get("schema") != RUN_STATE_SCHEMA:
            raise RunStateError(
                f"{where}: field 'schema': expected {RUN_STATE_SCHEMA!r}, got {data.get('schema')!r}"
            )
        if data.get("schema_version") != RUN_STATE_VERSION:
            raise RunStateError(
                f"{where}: field 'schema_version': {data.get('schema_version')!r} is not supported "
                f"(this harness reads version {RUN_STATE_VERSION})"
            )
        r = _StateReader(data, where)
        objects = []
        raw = data.get("gateway_api_objects", [])
        if not isinstance(raw, list):
            raise RunStateError(f"{where}: field 'gateway_api_objects': expected a list, got {raw!r}")
        for index, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise RunStateError(f"{where}: field 'gateway_api_objects[{index}]': expected an object")
            o = _StateReader(item, f"{where}: gateway_api_objects[{index}]")
            objects.append(ObjectRef(o.text("api_version"), o.text("kind"), o.text("name"), None))
        recorder = r.mapping("recorder")
        mtls_recorder = r.mapping("mtls_recorder")
        pki_dir = r.text("pki_dir", optional=True)
        cluster = r.choice("cluster", ("kind", "netns", "existing"))
        return cls(
            run_id=r.text("run_id"),
            run_dir=Path(r.text("run_dir")),
            kubeconfig=Path(r.text("kubeconfig")),
            context=r.text("context", optional=True) or None,
            cluster="kind" if cluster == "kind" else "netns" if cluster == "netns" else "existing",
            cluster_name=r.text("cluster_name", optional=True) or None,
            cluster_created=r.flag("cluster_created"),
            istio_version=r.text("istio_version"),
            istio_installed=r.flag("istio_installed"),
            access_log_encoding=r.choice("access_log_encoding", ("TEXT", "JSON")),
            outbound_traffic_policy=r.choice("outbound_traffic_policy", ("ALLOW_ANY", "REGISTRY_ONLY")),
            ingress_url=r.text("ingress_url"),
            namespace=r.text("namespace"),
            namespace_created=r.flag("namespace_created"),
            ingress_gateway=r.text("ingress_gateway"),
            relay_image=r.text("relay_image"),
            external=r.choice("external", EXTERNAL_MODES),
            external_host=r.text("external_host"),
            pod_source_nat=r.flag("pod_source_nat"),
            gateway_api=r.flag("gateway_api"),
            gateway_api_objects=tuple(objects),
            recorder=RecorderState.from_dict(recorder, where) if recorder is not None else None,
            created=r.text("created", optional=True),
            pki_dir=Path(pki_dir) if pki_dir else None,
            mtls_recorder=RecorderState.from_dict(mtls_recorder, where, "mtls_recorder")
            if mtls_recorder is not None
            else None,
            ingress_token=r.text("ingress_token", optional=True),
        )

    @classmethod
    def load(cls, path: Path) -> RunState:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunStateError(f"{path}: cannot read the run state: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RunStateError(f"{path}: not JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    def save(self, path: Path | None = None) -> Path:
        """Write the state atomically (a reader never sees half a file), readable and writable by its
        owner only (mode 0600: it holds the run's token)."""
        target = path or self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
