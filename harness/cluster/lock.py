"""The run's scenario lock: shared by most scenarios, held alone by those that reach beyond their
namespace.

The catalog runs each scenario in a namespace of its own, several at a time (pytest-xdist workers
attached to one run). A scenario whose objects reach beyond its namespace (a wildcard host exported
everywhere, a policy in the gateway's namespace; :func:`exclusive_reason`) holds the run's
:class:`ScenarioLock` alone, the others share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.cluster.errors import LockTimeoutError
from harness.common.proc import progress

#: how long a scenario waits for the run's scenario lock (an exclusive scenario waits for the others)
LOCK_TIMEOUT_S = 1800.0
LOCK_INTERVAL_S = 0.2


def _hosts_of(doc: Mapping[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    hosts = [str(h) for h in spec.get("hosts") or []]
    for server in spec.get("servers") or []:
        hosts += [str(h).split("/", 1)[-1] for h in (server or {}).get("hosts") or []]
    return hosts


def exclusive_reason(documents: Sequence[Mapping[str, Any]], namespace: str) -> str | None:
    """Why a scenario cannot share the cluster with others while it runs, or None.

    Objects in another namespace (a policy or rule in the gateway's namespace applies to everything
    through the gateway), and wildcard hosts exported beyond the scenario's namespace (they take
    over the hosts of other scenarios in the same domain).
    """
    for doc in documents:
        meta = doc.get("metadata") or {}
        kind, name = doc.get("kind", "?"), meta.get("name", "?")
        ns = meta.get("namespace") or namespace
        if ns != namespace:
            return f"{kind}/{name} is in namespace {ns}, outside the scenario's own"
        if not str(doc.get("apiVersion", "")).startswith("networking.istio.io/"):
            continue
        export_to = (doc.get("spec") or {}).get("exportTo")
        if export_to and set(export_to) <= {".", namespace}:
            continue
        wild = [h for h in _hosts_of(doc) if h.startswith("*")]
        if wild:
            return f"{kind}/{name} has the wildcard host {wild[0]} and is visible to every namespace"
    return None


class ScenarioLock:
    """A readers-writer lock over a file, across processes (pytest-xdist workers) on one machine.

    ``hold(exclusive=False)`` is shared; ``hold(exclusive=True)`` waits until nobody holds it. A
    writer first takes the turnstile file, which new readers must pass, so a steady stream of
    readers cannot starve it. Waits poll with a deadline (``flock`` itself has none).
    """

    def __init__(
        self, directory: Path, *, timeout_s: float = LOCK_TIMEOUT_S, interval_s: float = LOCK_INTERVAL_S
    ) -> None:
        self.path = directory / "scenario.lock"
        self.turnstile = directory / "scenario.turnstile"
        self.timeout_s = timeout_s
        self.interval_s = interval_s

    def _acquire(self, fd: int, operation: int, what: str, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeoutError(
                    f"{what}: the scenario lock {self.path} was not free within {self.timeout_s:g}s "
                    "(a scenario that needs the cluster alone, or a stuck process, holds it)"
                )
            time.sleep(min(self.interval_s, remaining))

    def _open(self, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool, what: str = "scenario") -> Iterator[float]:
        """Hold the lock; yields how many seconds the wait took."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        gate = self._open(self.turnstile)
        fd = -1
        try:
            self._acquire(gate, fcntl.LOCK_EX, what, deadline)
            try:
                fd = self._open(self.path)
                self._acquire(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, what, deadline)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            waited = round(time.monotonic() - started, 3)
            if exclusive:
                progress(f"{what}: holding the cluster alone (waited {waited:.1f}s)")
            yield waited
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            os.close(gate)
