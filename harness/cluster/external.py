"""The external host as a real container on a named Docker network, reached by a (dotted) alias.

    with RecorderContainer(image, network="egress-harness-test-1a2b") as rec:
        ...  # other containers on that network reach http://external.egress-harness.test/
        rec.records(request_id="abc")  # what the recorder saw: client_ip, host, headers, ...

Built on the Docker SDK (``docker.from_env``, every API call under a client timeout; a dependency of
the harness by name), not on testcontainers: its reaper (Ryuk) removes a session's containers when
the process that made them ends, which is what ``egress-harness e2e up`` must not have (its recorders
outlive it, for the pytest workers and ``e2e down``), and its image would have to be pulled. Clean-up
is ours instead: every container and network made here carries the label ``io.egress-harness.owner``
(plus any labels you pass), and leaving the context (normally, on an error, on Ctrl-C) removes the
container and, if this object created it, the network. A failed start removes both too and raises
:class:`ContainerStartError` naming the container, its exit code and the tail of its log.

Names are exclusive on a network: Docker's DNS answers a name with the address of every running
container carrying it (as its name or one of its aliases), so two runs on one machine sharing kind's
network would each reach the other's recorder. A container refuses to start when another one on the
network already answers to one of its names (:class:`NameTakenError`, naming the holder and its
owner label), and checks again once it joined the network: of two that started at the same moment,
the one created later removes itself and fails.

The recorder's control API is read from the host through a port published on 127.0.0.1 (a random
host port), so it works wherever the engine publishes ports to the host.

TCP echo: the recorder also echoes plain TCP on ``tcp_port`` (:data:`DEFAULT_TCP_PORT`, 9000; not
published: its callers are on the network). :meth:`RecorderClient.connections` reads what it saw of
each connection (caller, bytes each way, the first line, which carries a request's token).

HTTPS and mutual TLS: with ``tls=RecorderTLS.from_pki(pki)`` (``harness.common.certs``) the recorder also
serves HTTPS on ``tls_port`` (443) with the server certificate; ``from_pki(pki, mutual=True)`` makes
it require client certificates signed by the run's CA. The files are copied into the container
(``files=``: ``put_archive`` between create and start, so no bind mount and no host path is
involved) under :data:`TLS_DIR`. One container answers under several network aliases (``alias``
plus ``aliases``), e.g. one per scenario; the server certificate must name each alias a client
reaches it by over TLS (a wildcard SAN such as ``*.egress-harness.test`` covers a domain).

    pki = generate_pki(run_dir / "pki", [DEFAULT_ALIAS, "*.egress-harness.test"])
    with RecorderContainer(image, network, aliases=["a.egress-harness.test"],
                           tls=RecorderTLS.from_pki(pki)) as rec:
        ...  # https://a.egress-harness.test/ from the network; rec.records()[0]["tls"]["sni"]
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import re
import secrets
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import httpx

from harness.common.proc import tail
from harness.scenarios.model import EXTERNAL_TCP_PORT

if TYPE_CHECKING:
    from harness.common.certs import TestPKI

DEFAULT_ALIAS = "external.egress-harness.test"
OWNER_LABEL = "io.egress-harness.owner"
API_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
REMOVE_TIMEOUT_S = 15.0
#: where the recorder's TLS files go in its container
TLS_DIR = "/etc/egress-harness/tls"
TLS_CERT = f"{TLS_DIR}/server.crt"
TLS_KEY = f"{TLS_DIR}/server.key"
TLS_CLIENT_CA = f"{TLS_DIR}/client-ca.crt"
DEFAULT_TLS_PORT = 443
#: where the recorder echoes plain TCP (``--tcp-port``; its connections under /__recorder/connections):
#: the scenarios' ``external_tcp_port``
DEFAULT_TCP_PORT = EXTERNAL_TCP_PORT
_ALIAS_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


class DockerUnavailableError(RuntimeError):
    """No Docker engine answers."""


class NameTakenError(RuntimeError):
    """Another running container on the network answers to a name a container (or a run's
    recorders) would take."""

    def __init__(self, what: str, network: str, taken: Mapping[str, Sequence[str]], holders: str) -> None:
        #: what would take the names: a container, a run's recorders
        self.what = what
        self.network = network
        #: name -> the containers that answer to it already
        self.taken = {name: list(owners) for name, owners in taken.items()}
        listed = "; ".join(f"{name} (by {', '.join(owners)})" for name, owners in self.taken.items())
        super().__init__(
            f"{what} cannot take these names on the Docker network {network!r}: {listed}. "
            "Docker's DNS would answer each with the addresses of every container carrying it, so two "
            f"runs would see each other's external host. Running there: {holders}. Stop that run first "
            "(`egress-harness e2e down --run-dir DIR` for a run `e2e up` left running, or `docker rm -f "
            "NAME`), then start again."
        )


class ContainerStartError(RuntimeError):
    """A container exited or did not become ready; carries its name and log tail."""

    def __init__(self, name: str, reason: str, log_tail: str) -> None:
        self.name = name
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(f"container {name!r} {reason}; last lines of its log:\n{log_tail or '(empty log)'}")


def docker_client(timeout: float = API_TIMEOUT_S) -> Any:
    """A Docker SDK client whose every API call times out after `timeout` s; checks the engine."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(
            "no Docker engine answers (start it: `dockerd >/tmp/dockerd.log 2>&1 &`, "
            f"or install Debian's docker.io first): {exc}"
        ) from exc
    return client


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers, else why not (for a pytest skip)."""
    try:
        docker_client(timeout=10).close()
    except DockerUnavailableError as exc:
        return str(exc)
    return None


def _labels(owner: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    return {OWNER_LABEL: owner, **(extra or {})}


def _wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} after {timeout:g}s")
        time.sleep(POLL_INTERVAL_S)


@dataclass(frozen=True)
class NetworkPeer:
    """A running container on a network and the names Docker's DNS answers with its address there."""

    id: str
    name: str
    names: tuple[str, ...]
    image: str
    created: str
    labels: Mapping[str, str]

    def describe(self) -> str:
        owner = self.labels.get(OWNER_LABEL)
        return f"{self.name} (image {self.image}" + (f", {OWNER_LABEL}={owner})" if owner else ")")


def network_peers(api: Any, network: str) -> list[NetworkPeer]:
    """The running containers attached to ``network`` with their DNS names there: the container's
    name and its network aliases (and ``DNSNames`` where the engine reports them, Docker 26+)."""
    out: list[NetworkPeer] = []
    for summary in api.containers(filters={"network": network}):
        try:
            info = api.inspect_container(summary["Id"])
        except docker.errors.NotFound:  # gone between the list and the inspect
            continue
        endpoint = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(network)
        if endpoint is None or not (info.get("State") or {}).get("Running"):
            continue
        name = str(info.get("Name") or "").lstrip("/")
        names = [name, *(endpoint.get("Aliases") or []), *(endpoint.get("DNSNames") or [])]
        config = info.get("Config") or {}
        out.append(
            NetworkPeer(
                id=str(info["Id"]),
                name=name,
                names=tuple(dict.fromkeys(n for n in names if n)),
                image=str(config.get("Image") or "?"),
                created=str(info.get("Created") or ""),
                labels=dict(config.get("Labels") or {}),
            )
        )
    return out


def raise_if_taken(what: str, network: str, names: Sequence[str], peers: Sequence[NetworkPeer]) -> None:
    """:class:`NameTakenError` for ``what`` when one of ``peers`` answers to one of ``names``."""
    taken: dict[str, list[str]] = {}
    holders: list[str] = []
    for peer in peers:
        clash = [n for n in names if n in peer.names]
        for name in clash:
            taken.setdefault(name, []).append(peer.name)
        if clash:
            holders.append(peer.describe())
    if taken:
        raise NameTakenError(what, network, {n: taken[n] for n in names if n in taken}, "; ".join(holders))


def check_names_free(network: str, names: Sequence[str], *, what: str, client: Any | None = None) -> None:
    """No running container on ``network`` answers to one of ``names`` (else :class:`NameTakenError`
    for ``what``); a network that does not exist yet holds no name."""
    own = client is None
    client = client or docker_client()
    try:
        raise_if_taken(what, network, list(names), network_peers(client.api, network))
    finally:
        if own:
            client.close()


def _files_archive(files: Mapping[str, bytes]) -> bytes:
    """A tar of ``files`` (absolute path -> content), relative to ``/``, each readable by any user.

    No directory entries: the engine creates missing parents (root, 0755) and leaves existing ones
    (``/etc``, ``/tmp``) as they are.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, content in files.items():
            if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
                raise ValueError(f"container file {path!r}: expected an absolute, normalised file path")
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class Network:
    """A named bridge network; created on enter if missing, removed on exit if created here."""

    def __init__(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        owner: str = "harness",
        client: Any | None = None,
    ) -> None:
        self.name = name
        self.labels = _labels(owner, labels)
        self.created = False
        self._client = client
        self._own_client = client is None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def create(self) -> Self:
        api = self.client.api
        # the name filter matches substrings: look for the exact name
        if not any(n.get("Name") == self.name for n in api.networks(names=[self.name])):
            api.create_network(self.name, driver="bridge", labels=self.labels, check_duplicate=True)
            self.created = True
        return self

    def remove(self) -> None:
        """Remove the network if this object created it (waits for endpoints to go, bounded)."""
        if not self.created:
            return
        api = self.client.api

        def gone() -> bool:
            try:
                api.remove_network(self.name)
            except docker.errors.NotFound:
                return True
            except docker.errors.APIError as exc:
                if "active endpoints" in str(exc):
                    return False
                raise
            return True

        _wait_until(gone, REMOVE_TIMEOUT_S, f"network {self.name!r} still has endpoints")
        self.created = False

    def close(self) -> None:
        try:
            self.remove()
        finally:
            if self._own_client and self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> Self:
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Container:
    """A container on a named network with aliases; a context manager that always removes it.

    Subclasses decide readiness (:meth:`ready`); the base is ready once running.
    """

    def __init__(
        self,
        image: str,
        network: str,
        *,
        command: Sequence[str] | None = None,
        aliases: Sequence[str] = (),
        publish: Sequence[int] = (),
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        owner: str = "harness",
        ready_timeout: float = READY_TIMEOUT_S,
        client: Any | None = None,
        files: Mapping[str, bytes] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.image = image
        self.network_name = network
        self.command = list(command) if command is not None else None
        self.aliases = list(aliases)
        self.publish = list(publish)
        #: absolute path in the container -> content, copied in before the container starts
        self.files = dict(files or {})
        self.environment = dict(environment or {})
        _files_archive(self.files)  # a bad path fails here, before anything is created
        self.name = name or f"egress-harness-{secrets.token_hex(4)}"
        self.labels = _labels(owner, labels)
        self.ready_timeout = ready_timeout
        self.id: str | None = None
        self._own_client = client is None
        self._client = client
        self._network: Network | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Self:
        try:
            self._network = Network(
                self.network_name, labels=self.labels, owner=self.labels[OWNER_LABEL], client=self.client
            ).create()
            self.check_names_free()
            api = self.client.api
            host_config = api.create_host_config(
                network_mode=self.network_name,
                port_bindings={p: ("127.0.0.1", None) for p in self.publish},
            )
            networking = api.create_networking_config(
                {self.network_name: api.create_endpoint_config(aliases=self.aliases or None)}
            )
            created = api.create_container(
                self.image,
                command=self.command,
                name=self.name,
                labels=self.labels,
                ports=self.publish or None,
                environment=self.environment or None,
                host_config=host_config,
                networking_config=networking,
            )
            self.id = str(created["Id"])
            if self.files and not api.put_archive(self.id, "/", _files_archive(self.files)):
                raise ContainerStartError(
                    self.name, f"(image {self.image}): copying {', '.join(self.files)} into it failed", ""
                )
            api.start(self.id)
            self.check_names_kept()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    # names ---------------------------------------------------------------------------------------
    @property
    def dns_names(self) -> list[str]:
        """The names Docker's DNS answers with this container's address on its network."""
        return list(dict.fromkeys([self.name, *self.aliases]))

    def _check_names(self, *, older_only: bool) -> None:
        """Raise :class:`NameTakenError` when another running container on the network answers to
        one of :attr:`dns_names` (with ``older_only``: one created before this container)."""
        peers = network_peers(self.client.api, self.network_name)
        me = next((p for p in peers if p.id == self.id), None)
        others = [p for p in peers if p.id != self.id]
        if older_only:
            if me is None:  # not running: the readiness wait reports how it ended
                return
            others = [p for p in others if (p.created, p.id) < (me.created, me.id)]
        raise_if_taken(f"container {self.name!r}", self.network_name, self.dns_names, others)

    def check_names_free(self) -> None:
        """Before the container is made: no running container on the network answers to its names."""
        self._check_names(older_only=False)

    def check_names_kept(self) -> None:
        """After it joined the network: a container that started at the same time and carries one of
        its names, created earlier, keeps them; this one fails (and is removed by :meth:`start`)."""
        self._check_names(older_only=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            state = self.inspect()["State"]
            if not state.get("Running"):
                raise ContainerStartError(
                    self.name,
                    f"(image {self.image}) exited with code {state.get('ExitCode')} before it was ready"
                    + (f": {state['Error']}" if state.get("Error") else ""),
                    tail(self.logs()),
                )
            if self.ready():
                return
            if time.monotonic() >= deadline:
                raise ContainerStartError(
                    self.name,
                    f"(image {self.image}) was not ready within {self.ready_timeout:g}s",
                    tail(self.logs()),
                )
            time.sleep(POLL_INTERVAL_S)

    def ready(self) -> bool:
        return True

    def stop(self) -> None:
        """Remove the container (forcefully) and the network if created here; idempotent."""
        try:
            if self._client is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    self._client.api.remove_container(self.id or self.name, force=True, v=True)
            if self._network is not None:
                self._network.remove()
                self._network = None
        finally:
            if self._own_client and self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # facts ---------------------------------------------------------------------------------------
    def inspect(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.client.api.inspect_container(self.id or self.name))

    @property
    def container_ip(self) -> str:
        """This container's IP address on the named network."""
        networks = self.inspect()["NetworkSettings"]["Networks"]
        return str(networks[self.network_name]["IPAddress"])

    def logs(self) -> str:
        """stdout and stderr so far ('' if the container is gone)."""
        try:
            raw = self.client.api.logs(self.id or self.name, stdout=True, stderr=True)
        except docker.errors.NotFound:
            return ""
        return bytes(raw).decode("utf-8", errors="replace")

    def host_port(self, port: int) -> int:
        bindings = self.inspect()["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                return int(binding["HostPort"])
        raise LookupError(f"container {self.name!r} publishes no host port for {port}/tcp")

    def exec(self, argv: Sequence[str]) -> tuple[int, str]:
        """Run `argv` in the container; (exit code, stdout+stderr). Bound it with `timeout N ...`."""
        result = self.client.api.exec_create(self.id or self.name, list(argv), stdout=True, stderr=True)
        output = bytes(self.client.api.exec_start(result["Id"])).decode("utf-8", errors="replace")
        code = self.client.api.exec_inspect(result["Id"]).get("ExitCode")
        return (int(code) if code is not None else -1), output


@dataclass(frozen=True)
class RecorderTLS:
    """What the recorder serves HTTPS with: PEM certificate (chain) and key, and with
    ``client_ca_pem`` the CA whose client certificates it requires (mutual TLS)."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None

    @classmethod
    def from_pki(cls, pki: TestPKI, *, mutual: bool = False) -> RecorderTLS:
        """The server certificate of ``pki``; ``mutual``: require client certificates of its CA."""
        return cls(pki.server.cert_pem, pki.server.key_pem, pki.ca.cert_pem if mutual else None)

    @property
    def mutual(self) -> bool:
        return self.client_ca_pem is not None

    def files(self) -> dict[str, bytes]:
        """The files to copy into the container (see :data:`TLS_DIR`)."""
        out = {TLS_CERT: self.cert_pem, TLS_KEY: self.key_pem}
        if self.client_ca_pem is not None:
            out[TLS_CLIENT_CA] = self.client_ca_pem
        return out

    def flags(self, port: int) -> list[str]:
        """The recorder's command-line flags for these files."""
        out = ["--tls-port", str(port), "--cert", TLS_CERT, "--key", TLS_KEY]
        if self.client_ca_pem is not None:
            out += ["--client-ca", TLS_CLIENT_CA]
        return out


class RecorderClient:
    """The recorder's control API (apps/recorder), whatever runs it: a container here, a process in
    a network namespace on the netns provider. Subclasses set ``alias``, ``port``, ``tls_port``,
    ``tcp_port`` (its TCP echo; None: none, or a run state written before it existed) and ``name``
    and provide ``url`` (the control API's base URL from the harness)."""

    alias: str
    aliases: list[str]
    port: int
    tls_port: int | None
    tcp_port: int | None
    name: str

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def address(self) -> str:
        """The IP address the cluster's pods reach the recorder at (what its aliases resolve to)."""
        raise NotImplementedError(f"recorder {self.name!r} does not say which address it listens on")

    def network_url(self, alias: str | None = None, *, scheme: str = "http") -> str:
        """The base URL other containers on the network use, e.g. ``https://<alias>`` (the port
        only when it is not the scheme's default)."""
        host = alias or self.alias
        if scheme == "https":
            if self.tls_port is None:
                raise ValueError(f"recorder {self.name!r} serves no TLS")
            port, default = self.tls_port, 443
        else:
            port, default = self.port, 80
        return f"{scheme}://{host}" + ("" if port == default else f":{port}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/__recorder/healthz", timeout=1.0).status_code == 200
        except (httpx.HTTPError, LookupError):
            return False

    def records(
        self, request_id: str | None = None, *, path_contains: str | None = None, since: int | None = None
    ) -> list[dict[str, Any]]:
        """What the recorder saw, oldest first (filters as in apps/recorder)."""
        return self._listed("requests", request_id=request_id, path_contains=path_contains, since=since)

    def connections(
        self, *, path_contains: str | None = None, since: int | None = None
    ) -> list[dict[str, Any]]:
        """The connections to the recorder's TCP echo port, oldest first: ``client_ip``/``client_port``,
        ``bytes_received``/``bytes_sent``, ``head`` (the first line), ``time``, ``closed`` (None
        while open); ``path_contains`` looks in the head, ``since`` takes seq after it."""
        return self._listed("connections", path_contains=path_contains, since=since)

    def _listed(self, what: str, **filters: str | int | None) -> list[dict[str, Any]]:
        """``GET /__recorder/<what>`` with the filters that are set."""
        params = {key: str(value) for key, value in filters.items() if value is not None}
        response = httpx.get(f"{self.url}/__recorder/{what}", params=params, timeout=10.0)
        response.raise_for_status()
        return cast(list[dict[str, Any]], response.json())

    def handshake_failures(self) -> list[dict[str, Any]]:
        """The TLS handshakes that failed at the recorder (client without certificate, unknown CA...)."""
        response = httpx.get(f"{self.url}/__recorder/handshake-failures", timeout=10.0)
        response.raise_for_status()
        return cast(list[dict[str, Any]], response.json())

    def wait_for_records(
        self, request_id: str, *, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Poll until `count` records of `request_id` are there; TimeoutError at the deadline."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal found
            found = self.records(request_id)
            return len(found) >= count

        try:
            _wait_until(enough, timeout, "records")
        except TimeoutError:
            raise TimeoutError(
                f"{len(found)} of {count} records of x-request-id={request_id} at {self.url} after {timeout:g}s"
            ) from None
        return found


class AttachedRecorder(RecorderClient):
    """A recorder another process started, reached at ``url`` (a netns run's loopback forwarder):
    reads its records, owns nothing."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        alias: str,
        aliases: Sequence[str],
        port: int,
        tls_port: int | None,
        log_file: Path | None = None,
        address: str | None = None,
        tcp_port: int | None = None,
    ) -> None:
        self._url = url
        self._address = address
        self.log_file = log_file
        self.name = name
        self.alias = alias
        self.aliases = list(aliases)
        self.port = port
        self.tls_port = tls_port
        self.tcp_port = tcp_port

    @property
    def url(self) -> str:
        return self._url

    @property
    def address(self) -> str:
        if self._address is None:
            raise LookupError(
                f"the run state names no address of recorder {self.name!r} (a run brought up before the "
                "state kept it): `egress-harness e2e down`, then `up` again"
            )
        return self._address

    def logs(self) -> str:
        """The recorder's log, read from the file the process that started it writes."""
        if self.log_file is None:
            return f"(the log of recorder {self.name} is with the process that started it)\n"
        try:
            return self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(the log of recorder {self.name} could not be read: {exc})\n"


class RecorderContainer(RecorderClient, Container):
    """The recorder (apps/recorder) as the external host, on `network` under `alias` (and `aliases`).

    With `tls` it also serves HTTPS (mutual TLS if `tls.mutual`) on `tls_port`; it echoes plain TCP
    on `tcp_port` (always, by the default command); the control API stays on the HTTP `port`, which
    is the one published to the host.
    """

    def __init__(
        self,
        image: str,
        network: str,
        alias: str = DEFAULT_ALIAS,
        port: int = 80,
        *,
        aliases: Sequence[str] = (),
        tls: RecorderTLS | None = None,
        tls_port: int = DEFAULT_TLS_PORT,
        tcp_port: int = DEFAULT_TCP_PORT,
        command: Sequence[str] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        owner: str = "harness",
        ready_timeout: float = READY_TIMEOUT_S,
        client: Any | None = None,
    ) -> None:
        names = list(dict.fromkeys([alias, *aliases]))
        bad = [n for n in names if not _ALIAS_RE.match(n)]
        if bad:
            raise ValueError(f"network aliases must be lower-case DNS names: {', '.join(map(repr, bad))}")
        if tls is not None and tls_port == port:
            raise ValueError(f"the TLS port {tls_port} is the HTTP port too")
        if tcp_port == port or (tls is not None and tcp_port == tls_port):
            raise ValueError(
                f"the TCP port {tcp_port} is the {'HTTP' if tcp_port == port else 'TLS'} port too"
            )
        default_command = [
            *("python", "recorder.py", "--bind", "0.0.0.0", "--port", str(port)),
            *("--tcp-port", str(tcp_port)),
        ]
        if tls is not None:
            default_command += tls.flags(tls_port)
        super().__init__(
            image,
            network,
            command=command if command is not None else default_command,
            aliases=names,
            publish=[port],
            name=name or f"egress-harness-recorder-{secrets.token_hex(4)}",
            labels=labels,
            owner=owner,
            ready_timeout=ready_timeout,
            client=client,
            files=tls.files() if tls is not None else None,
        )
        self.alias = alias
        self.port = port
        self.tls = tls
        self.tls_port: int | None = tls_port if tls is not None else None
        self.tcp_port: int | None = tcp_port
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The recorder's base URL from the host (published port on 127.0.0.1)."""
        if self._url is None:
            self._url = f"http://127.0.0.1:{self.host_port(self.port)}"
        return self._url

    @property
    def address(self) -> str:
        """Its address on the network (where kind's pods reach it, source-NATed by their node)."""
        return self.container_ip
