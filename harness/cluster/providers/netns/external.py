"""The external host of a netns cluster: the recorder as a process in the run's external namespace.

It listens on its own address in ``egh-<run>-ext`` (routed from the node, no NAT: it records the
calling pod's own address) and answers for every alias the kubelet's hosts file maps to that
address. Its control API is reached from the harness through a loopback forwarder into that
namespace, so the same :class:`~harness.cluster.external.RecorderClient` methods as the container's
read its records. As in the container, it always echoes plain TCP on ``tcp_port`` (9000 unless
given) on that same address.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harness.cluster.external import (
    DEFAULT_ALIAS,
    DEFAULT_TCP_PORT,
    DEFAULT_TLS_PORT,
    RecorderClient,
    RecorderTLS,
)
from harness.cluster.providers.netns.daemons import Daemon, DaemonRecord, stop_pid
from harness.cluster.providers.netns.forward import Forwarder
from harness.common.paths import REPO_ROOT

RECORDER_APP = REPO_ROOT / "apps" / "recorder" / "recorder.py"
READY_TIMEOUT_S = 20.0
#: the recorder's control port stays plain HTTP, as in the container
CONTROL_PORT = 80


class NetnsRecorder(RecorderClient):
    """``with NetnsRecorder(netns, ip, run_dir, aliases=[...], tls=...) as rec: rec.records(...)``."""

    def __init__(
        self,
        netns: str,
        ip: str,
        run_dir: Path,
        *,
        name: str = "recorder",
        alias: str = DEFAULT_ALIAS,
        aliases: Sequence[str] = (),
        port: int = CONTROL_PORT,
        tls: RecorderTLS | None = None,
        tls_port: int = DEFAULT_TLS_PORT,
        tcp_port: int = DEFAULT_TCP_PORT,
    ) -> None:
        self.netns = netns
        self.ip = ip
        self.name = name
        self.alias = alias
        self.aliases = list(dict.fromkeys([alias, *aliases]))
        self.port = port
        self.tls = tls
        self.tls_port: int | None = tls_port if tls is not None else None
        #: its TCP echo (always on, as in the container)
        self.tcp_port: int | None = tcp_port
        self.dir = run_dir / name
        self.daemon: Daemon | None = None
        self.forwarder: Forwarder | None = None

    @property
    def address(self) -> str:
        """Its own address in the external namespace (what its aliases resolve to in every pod)."""
        return self.ip

    @property
    def url(self) -> str:
        if self.forwarder is None:
            raise RuntimeError(f"recorder {self.name} is not started")
        return f"http://127.0.0.1:{self.forwarder.ports['control']}"

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        files = {"cert": self.tls.cert_pem, "key": self.tls.key_pem}
        if self.tls.client_ca_pem is not None:
            files["client-ca"] = self.tls.client_ca_pem
        flags = ["--tls-port", str(self.tls_port)]
        for flag, pem in files.items():
            path = self.dir / f"{flag}.pem"
            path.write_bytes(pem)
            path.chmod(0o600)
            flags += [f"--{flag}", str(path)]
        return flags

    def start(self) -> NetnsRecorder:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            str(RECORDER_APP),
            "--bind",
            self.ip,
            "--port",
            str(self.port),
            "--tcp-port",
            str(self.tcp_port),
            *self._tls_flags(),
        ]
        self.daemon = Daemon(
            self.name, argv, netns=self.netns, log_dir=self.dir, env={"PYTHONUNBUFFERED": "1"}
        )
        self.daemon.start()
        self.forwarder = Forwarder(self.netns, {"control": (self.ip, self.port)}, self.dir).start()
        self.daemon.wait_ready(self.ready, timeout_s=READY_TIMEOUT_S, what="its control API answered")
        return self

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.daemon is not None:
            self.daemon.stop()
        remove_keys(self.dir)

    @property
    def records_of_processes(self) -> list[DaemonRecord]:
        """The recorder's processes, for a later ``e2e down`` of a kept run."""
        out = []
        if self.daemon is not None and self.daemon.process is not None:
            out.append(self.daemon.record)
        forwarder = self.forwarder.record if self.forwarder is not None else None
        if forwarder is not None:
            out.append(forwarder)
        return out

    def __enter__(self) -> NetnsRecorder:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_recorder_processes(records: Sequence[DaemonRecord]) -> list[str]:
    removed = []
    for record in records:
        with contextlib.suppress(OSError):
            if stop_pid(record):
                removed.append(f"process {record.name} (pid {record.pid})")
    return removed


def remove_keys(folder: Path) -> None:
    """The recorder's TLS files (its private key among them) go with it; its log stays."""
    for pem in folder.glob("*.pem"):
        pem.unlink(missing_ok=True)
