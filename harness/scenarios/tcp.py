"""The loader's checks of a TCP request (``scheme: tcp``): its payload size (``bytes``) and what its
expectation counts (``expect.tcp_bytes``), against the rest of the request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, cast

from harness.scenarios.issues import FieldPath
from harness.scenarios.model import TCP_BYTES_MAX, TCP_BYTES_MIN, Expectation, tcp_payload_size


class _Reader(Protocol):
    """What these checks use of the loader's reader (``harness.scenarios.loader._Reader``)."""

    def issue(self, path: FieldPath, message: str) -> None: ...

    def expect(self, path: FieldPath, value: object, kind: type, hint: str = "") -> bool: ...


def expected_tcp_bytes(r: _Reader, path: FieldPath, data: Mapping[str, object]) -> int | None:
    """``tcp_bytes`` of an ``expect:`` block at ``path``, checked alone (an integer in range)."""
    if "tcp_bytes" not in data or not r.expect((*path, "tcp_bytes"), data["tcp_bytes"], int):
        return None
    return _in_range(r, (*path, "tcp_bytes"), cast(int, data["tcp_bytes"]))


def _in_range(r: _Reader, path: FieldPath, size: int, why: str = "") -> int:
    """``size``, with an issue at ``path`` unless a TCP payload can be that large."""
    if not TCP_BYTES_MIN <= size <= TCP_BYTES_MAX:
        r.issue(path, f"{size}: a TCP payload is {TCP_BYTES_MIN} to {TCP_BYTES_MAX} bytes{why}")
    return size


def tcp_payload(
    r: _Reader, path: FieldPath, data: Mapping[str, object], *, scheme: str | None, expect: Expectation | None
) -> int | None:
    """A request's ``bytes`` and its ``expect.tcp_bytes``, against its scheme: both belong to
    ``scheme: tcp`` only; a TCP request says no method (there is no HTTP on its last leg) and has one
    connection (no ``external_attempts``). Returns the payload size (``bytes``, else
    ``expect.tcp_bytes``, else ``TCP_BYTES_DEFAULT``) of a tcp request, None otherwise."""
    size: int | None = None
    if "bytes" in data and r.expect((*path, "bytes"), data["bytes"], int):
        size = _in_range(
            r,
            (*path, "bytes"),
            cast(int, data["bytes"]),
            " (its first line, the path with the harness's query, must fit; the external host echoes "
            "at most 1 MiB)",
        )
    if scheme != "tcp":
        if "bytes" in data:
            r.issue(
                (*path, "bytes"), f"the payload size of a TCP request: only with scheme: tcp (not {scheme})"
            )
        if expect is not None and expect.tcp_bytes is not None:
            r.issue(
                (*path, "expect", "tcp_bytes"),
                f"counts a TCP connection's bytes: only for a request with scheme: tcp (not {scheme})",
            )
        return None
    if "method" in data:
        r.issue((*path, "method"), "a TCP request sends bytes, not an HTTP request: drop method")
    if expect is None:
        return size
    if expect.external_attempts is not None:
        r.issue(
            (*path, "expect", "external_attempts"),
            "a TCP request is one connection (no proxy retries it once it is open): drop external_attempts",
        )
    if expect.tcp_bytes is not None and expect.blocked is not None:
        r.issue(
            (*path, "expect", "tcp_bytes"),
            f"a connection blocked at the {expect.blocked} carries nothing to the external host: drop tcp_bytes",
        )
    if expect.tcp_bytes is not None and size is not None and expect.tcp_bytes != size:
        r.issue(
            (*path, "expect", "tcp_bytes"),
            f"{expect.tcp_bytes}, but the request sends {size} bytes and the external host echoes every "
            "byte: they must be equal (or drop the request's bytes: tcp_bytes sets it)",
        )
    return tcp_payload_size(scheme, size, expect.tcp_bytes)
