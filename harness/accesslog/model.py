"""One model of an Envoy access-log entry, whatever encoding it was written in.

Field names are Istio's JSON access-log keys, so a TEXT line and a JSON line of the same request parse
into equal entries. Envoy prints ``-`` for an absent value in TEXT and ``null`` in JSON: both become
``None``. Codes, counts and durations become ``int``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

#: Istio's JSON access-log keys, in the order of Istio's TEXT format.
FIELDS: tuple[str, ...] = (
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "route_name",
)

#: The shared empty mapping of entries with no extra keys (read-only).
EMPTY: Mapping[str, Any] = MappingProxyType({})

#: Fields whose values are integers.
INT_FIELDS: frozenset[str] = frozenset(
    {"response_code", "bytes_received", "bytes_sent", "duration", "upstream_service_time"}
)


class AccessLogEntry(NamedTuple):
    """One access-log entry: an immutable record. Every field is ``None`` when the log lacked it.

    A ``NamedTuple`` rather than a frozen dataclass because a parser builds millions of them and a
    frozen dataclass costs ten times as much to construct.
    """

    start_time: str | None = None
    method: str | None = None
    path: str | None = None
    protocol: str | None = None
    response_code: int | None = None
    response_flags: str | None = None
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received: int | None = None
    bytes_sent: int | None = None
    duration: int | None = None
    upstream_service_time: int | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None
    #: Values of operators or keys outside Istio's set (custom formats, extra JSON keys), by key.
    extra: Mapping[str, Any] = EMPTY
    #: Where the entry came from (a pod, a file), when the reader knows.
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as Istio's JSON keys (``None`` for absent), extra keys after them."""
        out: dict[str, Any] = dict(zip(FIELDS, self, strict=False))
        out.update(self.extra)
        return out

    @property
    def is_tcp(self) -> bool:
        """A TCP/TLS proxy entry: no HTTP method, no protocol (Envoy prints ``"- - -"``)."""
        return self.method is None and self.protocol is None

    @property
    def flags(self) -> frozenset[str]:
        """The response flags as a set (Envoy joins several with commas)."""
        if not self.response_flags:
            return frozenset()
        return frozenset(self.response_flags.split(","))

    def short(self) -> str:
        """A one-line summary for failure messages."""
        what = "TCP" if self.is_tcp else f"{self.method} {self.path}"
        return (
            f"[{self.start_time}] {what} {self.response_code} {self.response_flags or '-'} "
            f"{self.response_code_details or '-'} authority={self.authority} "
            f"sni={self.requested_server_name} cluster={self.upstream_cluster} "
            f"route={self.route_name} id={self.request_id}" + (f" ({self.source})" if self.source else "")
        )


if AccessLogEntry._fields[: len(FIELDS)] != FIELDS:  # pragma: no cover - a guard for editors
    raise RuntimeError("AccessLogEntry fields drifted from FIELDS")


def clean_value(key: str, value: object) -> str | int | float | bool | None:
    """Normalise one raw value: ``-``/empty/null to ``None``, integer fields to ``int``.

    A value that should be an integer but is not one stays a string: the parser never raises.
    """
    if value is None or (isinstance(value, str) and value in {"-", ""}):
        return None  # a list or object (any JSON value) is no set member: it would raise here
    if key in INT_FIELDS:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return value
        return None
    if key == "upstream_cluster" and isinstance(value, str) and value.endswith(";"):
        # %UPSTREAM_CLUSTER% on Istio 1.23+ clusters prints the alt stat name with a trailing ';'.
        return value.rstrip(";") or None  # only ';' is no cluster (as TEXT's "-"), not the text "None"
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
