"""harness.proc and harness.tools: commands with timeouts, and pinned tools fetched and verified.

Downloads go to a real HTTP server on 127.0.0.1 serving files made here; version probes and
``docker info`` go to the fake executables of tests/unit/fakebin.
"""

from __future__ import annotations

LINUX = ("linux", "amd64")
