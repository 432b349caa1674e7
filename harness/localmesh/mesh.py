"""The mission's request chain through real Envoy processes laid out like an Istio mesh, on loopback.

No cluster runs here, but Istio's data plane does: Envoy. ``LocalMesh`` starts

- the external host: the recorder (``apps/recorder``) on its own loopback address;
- an egress gateway Envoy whose routes send each registered external host to a cluster named as
  Istio names it (``outbound|80||<host>``), connecting from the gateway's own address;
- a sidecar Envoy for each relay, the outbound listener the relay reaches through ``HTTP_PROXY``;
  the ``target`` sidecar's routes are where the modes differ (see ``Mode``);
- the two relays (``apps/relay``) as ``proxy`` and ``target``: client -> proxy -> target -> external.

The relays follow the cluster's rules (issue 14): each fetches only what the mesh routes
(``Topology.relay_upstreams``: the target service, the external host, the plan's hosts and what the
caller adds), and ``proxy``, which the client reaches directly (there is no ingress here), answers
404 to a request without the mesh's token (``LocalMesh.headers``, made at start). They listen on
their own loopback address only.

Each part has its own 127.0.0.x address, as each pod has its own IP, so the external host's record
of the caller tells the gateway from the workload. Every Envoy writes Istio's access-log format
(TEXT or JSON) to a file, flushed every second as Istio's proxies do.

The configuration is generated from a ``Topology``; nothing is hand-kept. Linux routes all of
127.0.0.0/8 to loopback; on macOS only 127.0.0.1 exists unless aliases are added.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args

import httpx

from harness.accesslog import ISTIO_JSON_LABELS, ISTIO_TEXT_FORMAT
from harness.common.paths import REPO_ROOT
from harness.common.traffic import TOKEN_HEADER, chain_url, new_token
from harness.evidence import EntryLog, FileLogSource, RequestRef, new_canary_token
from harness.localmesh import envoyconfig as ec
from harness.localmesh.envoy import EnvoyError, EnvoyProcess

ROOT = REPO_ROOT
RELAY_APP = ROOT / "apps" / "relay" / "relay.py"
RECORDER_APP = ROOT / "apps" / "recorder" / "recorder.py"

Mode = Literal["via-gateway", "direct", "registry-only", "gateway-no-route"]
MODES: tuple[Mode, ...] = get_args(Mode)
LogEncoding = Literal["text", "json"]

#: What each mode is the local image of.
MODE_DESCRIPTIONS: dict[Mode, str] = {
    "via-gateway": "ServiceEntry + Gateway + VirtualService: sidecar -> egress gateway -> external host",
    "direct": "ALLOW_ANY, no egress routing: the sidecar sends it to PassthroughCluster, straight out",
    "registry-only": "REGISTRY_ONLY, host not registered: the sidecar answers 502 on route block_all",
    "gateway-no-route": "the sidecar sends it to the gateway, which has no route for the host: 404 NR",
}

GATEWAY_SERVICE = "istio-egressgateway.istio-system.svc.cluster.local"
GATEWAY_SUBSET = "external"


@dataclass(frozen=True, slots=True)
class SidecarRoute:
    """A host the target's sidecar knows: sent to the egress gateway (with a subset) or straight out."""

    host: str
    port: int = 80
    via_gateway: bool = True
    subset: str = ""


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """A host the egress gateway routes (``*.domain`` allowed), to ``outbound|port||destination``."""

    host: str
    destination: str
    port: int = 80


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """What the proxies route: the local image of the Istio configuration in force.

    ``sidecar_routes`` are the hosts the target's sidecar has routes for; anything else takes the
    ``catch_all`` (``allow_any``: PassthroughCluster, ALLOW_ANY; ``block_all``: 502, REGISTRY_ONLY).
    ``gateway_routes`` are the hosts the egress gateway routes to an external host's outbound cluster.
    """

    sidecar_routes: tuple[SidecarRoute, ...] = ()
    catch_all: Literal["allow_any", "block_all"] = "allow_any"
    gateway_routes: tuple[GatewayRoute, ...] = ()


def mode_plan(mode: Mode, host: str) -> RoutingPlan:
    """The routing of one of the preset modes."""
    if mode == "via-gateway":
        return RoutingPlan(
            (SidecarRoute(host, subset=GATEWAY_SUBSET),), "allow_any", (GatewayRoute(host, host),)
        )
    if mode == "gateway-no-route":
        return RoutingPlan((SidecarRoute(host, subset=GATEWAY_SUBSET),), "allow_any", ())
    if mode == "registry-only":
        return RoutingPlan((), "block_all", ())
    return RoutingPlan((), "allow_any", ())


@dataclass(frozen=True, slots=True)
class Topology:
    """What the local mesh looks like: the mode, the log encoding, names and addresses."""

    mode: Mode = "via-gateway"
    encoding: LogEncoding = "text"
    external_host: str = "external.egress-harness.test"
    namespace: str = "egress-harness"
    flush_interval_ms: int = 1000
    # One loopback address per "pod": the caller address the external host records tells them apart.
    external_ip: str = "127.0.0.20"
    gateway_ip: str = "127.0.0.7"
    proxy_ip: str = "127.0.0.11"
    target_ip: str = "127.0.0.12"
    start_timeout: float = 30.0
    #: The routing; when left out, the preset of ``mode`` for ``external_host``.
    plan: RoutingPlan | None = None
    #: what the relays may fetch besides :attr:`relay_upstreams`' own (``host:port``: a scenario's requests)
    upstreams: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.encoding not in ("text", "json"):
            raise ValueError(f"encoding must be text or json, not {self.encoding!r}")

    @property
    def routing(self) -> RoutingPlan:
        return self.plan if self.plan is not None else mode_plan(self.mode, self.external_host)

    @property
    def target_service(self) -> str:
        return f"target.{self.namespace}.svc.cluster.local"

    @property
    def relay_upstreams(self) -> list[str]:
        """What the relays may fetch (their ``ALLOWED_UPSTREAMS``): the target service, the external
        host, every host the plan routes (wildcards aside) and :attr:`upstreams`."""
        plan = self.routing
        hosts = [
            f"{self.target_service}:8080",
            f"{self.external_host}:80",
            *(f"{r.host}:{r.port}" for r in plan.sidecar_routes),
            *(f"{r.host}:{r.port}" for r in plan.gateway_routes),
            *self.upstreams,
        ]
        return [h for h in dict.fromkeys(hosts) if "*" not in h]

    def access_log(self, path: Path) -> ec.Config:
        if self.encoding == "json":
            return ec.file_access_log(path, json_labels=ISTIO_JSON_LABELS)
        return ec.file_access_log(path, text_format=ISTIO_TEXT_FORMAT)


def _bound_cluster(name: str, endpoint: tuple[str, int], source_ip: str) -> ec.Config:
    """A STATIC cluster whose connections leave from ``source_ip`` (the calling pod's address)."""
    cluster = ec.static_cluster(name, [endpoint])
    cluster["upstream_bind_config"] = {"source_address": {"address": source_ip, "port_value": 0}}
    return cluster


def _hosts(host: str) -> list[str]:
    return [host, f"{host}:*"]


def gateway_config(topo: Topology, external: tuple[str, int], log: Path, *, port: int = 0) -> ec.Config:
    """The egress gateway: a route per host of the plan to its outbound cluster, all to the external host."""
    vhosts, clusters, names = [], [], set()
    for r in topo.routing.gateway_routes:
        outbound = ec.outbound_cluster(r.destination, r.port)
        vhosts.append(
            ec.virtual_host(f"{r.host}:{r.port}", [ec.route(outbound, name="default")], _hosts(r.host))
        )
        if outbound not in names:
            names.add(outbound)
            clusters.append(_bound_cluster(outbound, external, topo.gateway_ip))
    listener = ec.http_listener(
        "gateway_http",
        ec.route_config("http.8080", vhosts),
        address=topo.gateway_ip,
        port=port,
        access_logs=[topo.access_log(log)],
    )
    return ec.bootstrap(listeners=[listener], clusters=clusters)


def target_sidecar_config(
    topo: Topology, gateway: tuple[str, int], external: tuple[str, int], log: Path
) -> ec.Config:
    """The target's sidecar: the plan's routes, then the catch-all."""
    plan = topo.routing
    vhosts, clusters, names = [], [], set()

    def cluster(name: str, endpoint: tuple[str, int]) -> None:
        if name not in names:
            names.add(name)
            clusters.append(_bound_cluster(name, endpoint, topo.target_ip))

    for r in plan.sidecar_routes:
        if r.via_gateway:
            name = ec.outbound_cluster(GATEWAY_SERVICE, 80, r.subset)
            cluster(name, gateway)
        else:
            # A ServiceEntry host without egress routing: the sidecar's own outbound cluster.
            name = ec.outbound_cluster(r.host, r.port)
            cluster(name, external)
        vhosts.append(ec.virtual_host(f"{r.host}:{r.port}", [ec.route(name, name="default")], _hosts(r.host)))
    if plan.catch_all == "allow_any":
        vhosts.append(
            ec.virtual_host("allow_any", [ec.route(ec.PASSTHROUGH_CLUSTER, name=ec.ROUTE_ALLOW_ANY)])
        )
        # Istio's PassthroughCluster connects to the original destination; here the external host's
        # address stands for it (the relay reaches the sidecar through HTTP_PROXY, not iptables).
        cluster(ec.PASSTHROUGH_CLUSTER, external)
    else:
        vhosts.append(ec.virtual_host("block_all", [ec.direct_response(502)]))
    listener = ec.http_listener(
        "sidecar_outbound",
        ec.route_config("80", vhosts),
        address=topo.target_ip,
        access_logs=[topo.access_log(log)],
    )
    return ec.bootstrap(
        listeners=[listener], clusters=clusters, node_id=f"sidecar~{topo.target_ip}~target.{topo.namespace}"
    )


def proxy_sidecar_config(topo: Topology, target: tuple[str, int], log: Path) -> ec.Config:
    """The proxy's sidecar: routes the target service to the target relay."""
    cluster = ec.outbound_cluster(topo.target_service, 8080)
    vhosts = [
        ec.virtual_host(
            f"{topo.target_service}:8080", [ec.route(cluster, name="default")], _hosts(topo.target_service)
        ),
        ec.virtual_host("block_all", [ec.direct_response(502)]),
    ]
    listener = ec.http_listener(
        "sidecar_outbound",
        ec.route_config("8080", vhosts),
        address=topo.proxy_ip,
        access_logs=[topo.access_log(log)],
    )
    return ec.bootstrap(
        listeners=[listener],
        clusters=[_bound_cluster(cluster, target, topo.proxy_ip)],
        node_id=f"sidecar~{topo.proxy_ip}~proxy.{topo.namespace}",
    )


class LocalMeshError(RuntimeError):
    """A part of the local mesh did not start; the message names it and shows its last log lines."""

    def __init__(self, part: str, problem: str, log_tail: str = "") -> None:
        self.part = part
        message = f"local mesh: {part}: {problem}"
        if log_tail.strip():
            message += "\n  last log lines:\n" + "\n".join(
                "    " + line for line in log_tail.rstrip().splitlines()
            )
        super().__init__(message)


class AppProcess:
    """A stdlib app (relay, recorder) as a child process on a loopback address; a context manager.

    It prints ``listening on HOST:PORT`` first; the port is read from there, then ``healthz`` polled.
    """

    def __init__(
        self,
        script: Path,
        name: str,
        *,
        bind: str,
        workdir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        health_path: str = "/healthz",
        start_timeout: float = 15.0,
    ) -> None:
        self.script, self.name, self.bind = script, name, bind
        self.args, self.env, self.health_path = tuple(args), env or {}, health_path
        self.start_timeout = start_timeout
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.bind, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        dropped = (
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "allowed_upstreams",
            "allowed_addresses",
            "required_token",
        )
        env = {k: v for k, v in os.environ.items() if k.lower() not in dropped}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        argv = [
            sys.executable,
            str(self.script),
            "--bind",
            self.bind,
            "--port",
            "0",
            *self.args,
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not self.port:
            if self._proc.poll() is not None:
                raise LocalMeshError(
                    self.name, f"exited with code {self._proc.returncode} at start", self.log_tail()
                )
            first = self.stdout_path.read_text(errors="replace").split("\n", 1)
            if len(first) == 2 and first[0].startswith("listening on "):
                self.port = int(first[0].rsplit(":", 1)[1])
                break
            if time.monotonic() > deadline:
                raise LocalMeshError(
                    self.name, f"did not print its address within {self.start_timeout:g}s", self.log_tail()
                )
            time.sleep(0.02)
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + self.health_path).status_code == 200:
                        return
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise LocalMeshError(
                        self.name,
                        f"{self.health_path} did not answer 200 within {self.start_timeout:g}s",
                        self.log_tail(),
                    )
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


@dataclass
class LocalMesh:
    """The whole chain, started by ``with LocalMesh(Topology(...)) as mesh:`` and stopped on exit.

    On a failure to start, on an exception inside the block and on Ctrl-C, every process is stopped
    and the work directory removed (``keep_workdir=True`` keeps the logs for a look).
    """

    topology: Topology = field(default_factory=Topology)
    keep_workdir: bool = False
    progress: bool = False
    workdir: Path | None = None
    recorder: AppProcess | None = None
    gateway: EnvoyProcess | None = None
    target_sidecar: EnvoyProcess | None = None
    proxy_sidecar: EnvoyProcess | None = None
    target: AppProcess | None = None
    proxy: AppProcess | None = None
    _stack: contextlib.ExitStack | None = None
    _gateway_config: Any = None
    #: what the client must send ``proxy`` (:attr:`headers`); a fresh one per mesh
    token: str = field(default_factory=new_token)

    @property
    def headers(self) -> dict[str, str]:
        """What a client sends with every request down the chain: the mesh's token."""
        return {TOKEN_HEADER: self.token}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _say(self, text: str) -> None:
        if self.progress:
            print(f">> local mesh: {text}", file=sys.stderr, flush=True)

    def start(self) -> None:
        topo = self.topology
        self.workdir = Path(tempfile.mkdtemp(prefix="egress-localmesh-"))
        stack = contextlib.ExitStack()
        self._stack = stack
        try:
            logs = self.workdir / "logs"
            logs.mkdir()
            self._say(f"starting {topo.mode} ({MODE_DESCRIPTIONS[topo.mode]}), {topo.encoding} logs")
            self.recorder = stack.enter_context(
                self._app(RECORDER_APP, "external", topo.external_ip, health_path="/__recorder/healthz")
            )
            external = self.recorder.address
            self._gateway_config = lambda port: (
                lambda e: gateway_config(topo, external, logs / "egress-gateway.log", port=port)
            )
            self.gateway = stack.enter_context(self._envoy("egress-gateway", self._gateway_config(0)))
            gw = self.gateway.address("gateway_http")
            self.target_sidecar = stack.enter_context(
                self._envoy(
                    "target-sidecar",
                    lambda e: target_sidecar_config(topo, gw, external, logs / "target-sidecar.log"),
                )
            )
            target_proxy = "http://{}:{}".format(*self.target_sidecar.address("sidecar_outbound"))
            upstreams = ",".join(topo.relay_upstreams)
            self.target = stack.enter_context(
                self._app(
                    RELAY_APP,
                    "target",
                    topo.target_ip,
                    env={"HTTP_PROXY": target_proxy, "ALLOWED_UPSTREAMS": upstreams},
                    args=["--name", "target"],
                )
            )
            target_addr = self.target.address
            self.proxy_sidecar = stack.enter_context(
                self._envoy(
                    "proxy-sidecar",
                    lambda e: proxy_sidecar_config(topo, target_addr, logs / "proxy-sidecar.log"),
                )
            )
            proxy_proxy = "http://{}:{}".format(*self.proxy_sidecar.address("sidecar_outbound"))
            self.proxy = stack.enter_context(
                self._app(
                    RELAY_APP,
                    "proxy",
                    topo.proxy_ip,
                    # the chain's entry: without an ingress here, the relay requires the token itself
                    env={
                        "HTTP_PROXY": proxy_proxy,
                        "ALLOWED_UPSTREAMS": upstreams,
                        "REQUIRED_TOKEN": self.token,
                    },
                    args=["--name", "proxy"],
                )
            )
            self._say("all parts ready")
        except BaseException:
            self.stop()
            raise

    def _app(
        self,
        script: Path,
        name: str,
        ip: str,
        *,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        health_path: str = "/healthz",
    ) -> AppProcess:
        assert self.workdir is not None
        self._say(f"starting {name} on {ip}")
        return AppProcess(
            script,
            name,
            bind=ip,
            workdir=self.workdir,
            env=env,
            args=args,
            health_path=health_path,
            start_timeout=self.topology.start_timeout,
        )

    def _envoy(self, name: str, config: Any) -> EnvoyProcess:
        assert self.workdir is not None
        self._say(f"starting Envoy {name}")
        envoy = EnvoyProcess(
            config,
            name,
            flush_interval_ms=self.topology.flush_interval_ms,
            workdir=self.workdir,
            start_timeout=self.topology.start_timeout,
        )
        return _EnvoyPart(envoy)  # type: ignore[return-value]

    def stop(self) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            if self.workdir is not None and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- using it ----------------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        assert self.workdir is not None, "the local mesh is not started"
        return self.workdir / "logs"

    def entry_log(self, part: str) -> EntryLog:
        """A fresh reader of one part's access log: ``egress-gateway``, ``target-sidecar``, ``proxy-sidecar``."""
        hop = {
            "egress-gateway": "egress gateway",
            "target-sidecar": "target sidecar",
            "proxy-sidecar": "proxy sidecar",
        }[part]
        return EntryLog(FileLogSource(self.log_dir / f"{part}.log"), hop=hop, encoding=self.topology.encoding)

    def chain_url(self, path: str = "/", *, host: str | None = None, port: int = 80) -> str:
        """client -> proxy -> target -> external host, nested as the relays expect (send it with
        :attr:`headers`)."""
        assert self.proxy is not None
        authority = host or self.topology.external_host
        if port != 80:
            authority += f":{port}"
        return chain_url(
            [f"{self.proxy.url}/proxy", f"http://{self.topology.target_service}:8080/proxy"],
            f"http://{authority}{path}",
        )

    def canary(self, *, timeout: float = 5.0) -> RequestRef:
        """A canary to the egress gateway: ``GET /egh-live-<uuid>`` for the gateway service's own name,
        sent to the gateway's listener. No route of the gateway is for that name, so it answers 404
        ``NR`` and logs it (any answer would do: the entry proves the gateway's log live). Returns how
        to find its entry; raises ``httpx.HTTPError`` when the gateway does not answer at all."""
        assert self.gateway is not None, "the local mesh is not started"
        token = new_canary_token()
        host, port = self.gateway.address("gateway_http")
        httpx.get(
            f"http://{host}:{port}/{token}",
            headers={"host": GATEWAY_SERVICE},
            timeout=timeout,
            trust_env=False,
        )
        return RequestRef(path_token=token, host=GATEWAY_SERVICE)

    def restart_gateway(self) -> None:
        """Stop the egress gateway Envoy and start a new one on the same address and port.

        The sidecar keeps pointing at the gateway's address: requests fail while it is down, as they
        would while a gateway pod is replaced. The access log is appended to, not replaced.
        """
        if self.gateway is None or self._stack is None:
            raise LocalMeshError("egress-gateway", "the local mesh is not started")
        port = self.gateway.port("gateway_http")
        self._say(f"restarting Envoy egress-gateway on port {port}")
        self.gateway.stop()
        self.gateway = self._stack.enter_context(self._envoy("egress-gateway", self._gateway_config(port)))

    def external_records(self) -> list[dict[str, Any]]:
        """What the external host recorded (its ``/__recorder/requests``)."""
        assert self.recorder is not None
        answer = httpx.get(self.recorder.url + "/__recorder/requests", timeout=5.0, trust_env=False)
        answer.raise_for_status()
        records: list[dict[str, Any]] = answer.json()
        return records

    def processes(self) -> Iterator[tuple[str, int | None]]:
        """(name, pid) of every process the mesh started."""
        for part in (
            self.recorder,
            self.gateway,
            self.target_sidecar,
            self.target,
            self.proxy_sidecar,
            self.proxy,
        ):
            if part is not None:
                yield part.name, part.pid


class _EnvoyPart:
    """Turns an Envoy start failure into a ``LocalMeshError`` naming the part, as the apps' are."""

    def __init__(self, envoy: EnvoyProcess) -> None:
        self.envoy = envoy

    def __enter__(self) -> EnvoyProcess:
        try:
            return self.envoy.start()
        except EnvoyError as exc:
            raise LocalMeshError(self.envoy.name, str(exc)) from exc

    def __exit__(self, *exc: object) -> None:
        self.envoy.stop()
