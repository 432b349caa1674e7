"""Long-running processes of a netns cluster (etcd, the API server, the kubelet, ...), each in a
network namespace, each in a process group of its own, logging to a file of the run.

They outlive the harness process when a cluster is kept (``e2e up --keep``), so a later
``e2e down`` stops them from the run's state: :func:`stop_pid` checks that a pid still runs the
command it was recorded with before it signals the group, so a reused pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.common.proc import tail

STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0
POLL_S = 0.1


class DaemonError(RuntimeError):
    """A daemon exited or did not get ready in time; the message holds its log's tail."""


@dataclass(frozen=True)
class DaemonRecord:
    """What the run's state keeps of a daemon: enough to stop it from another process."""

    name: str
    pid: int
    #: the first argument of the command inside the namespace (the binary), to recognise the pid
    binary: str
    log: str


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def is_running(record: DaemonRecord) -> bool:
    """The pid is alive and still runs ``record.binary`` (through ``ip netns exec`` or exec'd)."""
    return any(arg == record.binary for arg in _cmdline(record.pid))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(record: DaemonRecord, *, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the daemon's process group, SIGKILL it after ``grace_s``; False if it was not running."""
    if not is_running(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(record.pid) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(POLL_S)
    if _group_alive(record.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while _group_alive(record.pid) and time.monotonic() < deadline:
            _reap(record.pid)
            time.sleep(POLL_S)
    _reap(record.pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class Daemon:
    """One process started as ``ip netns exec <netns> <argv>`` in its own session."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        nsenter: bool = False,
    ) -> None:
        self.name = name
        #: enter the namespace with ``nsenter --net`` (network only) rather than ``ip netns exec``
        #: (which also gives the process a mount namespace of its own)
        self.nsenter = nsenter
        self.argv = [str(a) for a in argv]
        self.netns = netns
        self.log = log_dir / f"{name}.log"
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def record(self) -> DaemonRecord:
        if self.process is None:
            raise DaemonError(f"{self.name} was not started")
        return DaemonRecord(self.name, self.process.pid, self.argv[0], str(self.log))

    def start(self) -> Daemon:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.netns is None:
            argv = self.argv
        elif self.nsenter:
            argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", "--", *self.argv]
        else:
            argv = ["ip", "netns", "exec", self.netns, *self.argv]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        return self

    def log_tail(self, lines: int = 15) -> str:
        try:
            return tail(self.log.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def wait_ready(self, ready: Callable[[], bool], *, timeout_s: float, what: str) -> None:
        """Poll ``ready`` every 0.2 s until it is true; raise naming the log if the daemon exits or
        the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise DaemonError(
                    f"{self.name} exited with code {self.process.returncode} before {what}; "
                    f"last lines of {self.log}:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DaemonError(
                    f"{self.name}: {what} did not happen within {timeout_s:g} s; last lines of {self.log}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        stop_pid(self.record)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(KILL_WAIT_S)
