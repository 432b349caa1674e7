"""What every tier shares, below them all: no module here imports a tier, the catalog or the evidence.

- ``paths``: ``REPO_ROOT``, where the project's own files (``manifests/``, ``apps/``) are;
- ``proc``: ``run`` (subprocesses with timeouts, tails of their output, Ctrl-C handled), ``progress``;
- ``versions``: every pinned version (Istio releases, kind, istioctl, the Gateway API);
- ``tools``: finding, downloading and verifying the pinned tools (``egress-harness tools``);
- ``certs``: the test PKI (a CA, server and client certificates made with ``openssl``);
- ``traffic``: chain URLs and the HTTP client that sends requests with fresh x-request-ids.

Only ``paths`` and ``proc`` (the standard library alone) are re-exported here; import the others as
modules (``from harness.common import versions``), so that using one never loads the HTTP client.
"""

from __future__ import annotations

from harness.common.paths import REPO_ROOT
from harness.common.proc import (
    CommandError,
    CommandTimeout,
    Completed,
    format_argv,
    interrupts_deferred,
    progress,
    run,
    tail,
)

__all__ = [
    "REPO_ROOT",
    "CommandError",
    "CommandTimeout",
    "Completed",
    "format_argv",
    "interrupts_deferred",
    "progress",
    "run",
    "tail",
]
