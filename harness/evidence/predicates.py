"""Small composable checks on one access-log entry, in the spirit of Istio's ``check.And(...)``.

A ``Predicate`` is a callable with a description; ``&``, ``|`` and ``~`` compose them, and
``mismatches(entry)`` says which parts an entry failed, in words, for failure messages::

    ok = status(200) & cluster("outbound|80||example.com") & ~flags("NR")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from harness.accesslog import FIELDS, AccessLogEntry

_ANY = object()


class Predicate:
    """A check on one entry with a description of what it expects."""

    __slots__ = ("_test", "description")

    def __init__(self, description: str, test: Callable[[AccessLogEntry], bool]) -> None:
        self.description = description
        self._test = test

    def __call__(self, entry: AccessLogEntry) -> bool:
        return self._test(entry)

    def __repr__(self) -> str:
        return f"<{self.description}>"

    def __str__(self) -> str:
        return self.description

    def __and__(self, other: Predicate) -> Predicate:
        return all_of(self, other)

    def __or__(self, other: Predicate) -> Predicate:
        return any_of(self, other)

    def __invert__(self) -> Predicate:
        return not_(self)

    def mismatches(self, entry: AccessLogEntry) -> list[str]:
        """Why ``entry`` fails this check (empty when it passes)."""
        return [] if self(entry) else [self.description]


class _Field(Predicate):
    __slots__ = ("_name",)

    def __init__(self, name: str, description: str, test: Callable[[Any], bool]) -> None:
        if name not in FIELDS:
            raise ValueError(f"unknown access-log field {name!r}; fields are: {', '.join(FIELDS)}")
        self._name = name
        super().__init__(description, lambda e: test(getattr(e, name)))

    def mismatches(self, entry: AccessLogEntry) -> list[str]:
        if self(entry):
            return []
        return [f"{self.description} (got {getattr(entry, self._name)!r})"]


class _All(Predicate):
    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Predicate]) -> None:
        self.parts = tuple(parts)
        super().__init__(" and ".join(_paren(p) for p in self.parts), lambda e: all(p(e) for p in self.parts))

    def mismatches(self, entry: AccessLogEntry) -> list[str]:
        return [m for p in self.parts for m in p.mismatches(entry)]


class _Any(Predicate):
    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Predicate]) -> None:
        self.parts = tuple(parts)
        super().__init__(" or ".join(_paren(p) for p in self.parts), lambda e: any(p(e) for p in self.parts))

    def mismatches(self, entry: AccessLogEntry) -> list[str]:
        if self(entry):
            return []
        return ["none of: " + "; ".join("/".join(p.mismatches(entry)) or str(p) for p in self.parts)]


def _paren(p: Predicate) -> str:
    return f"({p.description})" if isinstance(p, _Any) and len(p.parts) > 1 else p.description


def all_of(*parts: Predicate) -> Predicate:
    """Every part holds (flattens nested ``all_of``)."""
    flat: list[Predicate] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, _All) else (p,))
    return flat[0] if len(flat) == 1 else _All(flat)


def any_of(*parts: Predicate) -> Predicate:
    """At least one part holds."""
    flat: list[Predicate] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, _Any) else (p,))
    return flat[0] if len(flat) == 1 else _Any(flat)


def not_(part: Predicate) -> Predicate:
    """The part does not hold."""
    return Predicate(f"not ({part.description})", lambda e: not part(e))


def always() -> Predicate:
    """Holds for every entry."""
    return Predicate("any entry", lambda e: True)


def field(name: str, expected: object) -> Predicate:
    """Field ``name`` equals ``expected`` (``None`` for absent)."""
    return _Field(name, f"{name} == {expected!r}", lambda v: v == expected)


def field_matches(name: str, pattern: str) -> Predicate:
    """Field ``name`` is present and matches the regular expression (whole value)."""
    rx = re.compile(pattern)
    return _Field(name, f"{name} ~ /{pattern}/", lambda v: isinstance(v, str) and rx.fullmatch(v) is not None)


def field_contains(name: str, text: str) -> Predicate:
    """Field ``name`` is present and contains ``text``."""
    return _Field(name, f"{name} contains {text!r}", lambda v: isinstance(v, str) and text in v)


def status(code: int) -> Predicate:
    """The response code (0 for a TCP entry or a reset before any response)."""
    return field("response_code", code)


def details(text: str) -> Predicate:
    """The response code details (``via_upstream``, ``direct_response``, ``route_not_found``...)."""
    return field("response_code_details", text)


def flags(*names: str) -> Predicate:
    """Every one of the response flags is set (``flags()`` means: no flag at all)."""
    want = frozenset(names)
    if not want:
        return _Field("response_flags", "no response flags", lambda v: v is None)
    desc = f"response_flags has {','.join(sorted(want))}"
    return _Field("response_flags", desc, lambda v: isinstance(v, str) and want <= set(v.split(",")))


def cluster(name: str) -> Predicate:
    """The upstream cluster is exactly ``name``."""
    return field("upstream_cluster", name)


def outbound_cluster(host: str, port: int | None, subset: str | object | None = _ANY) -> Predicate:
    """The upstream cluster is Istio's outbound cluster of ``host:port``: ``outbound|P|SUBSET|H``.

    ``subset`` left out accepts any subset (or none); ``None`` demands no subset. ``port=None``
    accepts any port.
    """
    if subset is _ANY or port is None:
        port_rx, port_desc = (r"\d+", "*") if port is None else (str(port), str(port))
        subset_rx = r"[^|]*" if subset is _ANY else re.escape(str(subset or ""))
        subset_desc = "*" if subset is _ANY else str(subset or "")
        pattern = rf"outbound\|{port_rx}\|{subset_rx}\|{re.escape(host)}"
        desc = f"upstream_cluster == outbound|{port_desc}|{subset_desc}|{host}"
        return _Field(
            "upstream_cluster", desc, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None
        )
    return cluster(f"outbound|{port}|{subset or ''}|{host}")


def authority(host: str, port: int | None = None) -> Predicate:
    """The request's authority is ``host``.

    With ``port``, ``host:port`` is accepted, and bare ``host`` too when the port is 80 or 443 (a
    client leaves the default port out). Without it, any port or none is accepted.
    """
    if port is None:
        rx = re.compile(rf"{re.escape(host)}(:\d+)?")
        return _Field(
            "authority", f"authority == {host}", lambda v: isinstance(v, str) and rx.fullmatch(v) is not None
        )
    accepted = {f"{host}:{port}"} | ({host} if port in (80, 443) else set())
    return _Field("authority", f"authority == {host}:{port}", lambda v: v in accepted)


def details_prefix(text: str) -> Predicate:
    """The response code details start with ``text`` (``rbac_access_denied`` of any policy...)."""
    return _Field(
        "response_code_details",
        f"response_code_details starts with {text!r}",
        lambda v: isinstance(v, str) and v.startswith(text),
    )


def inbound() -> Predicate:
    """An inbound entry (upstream cluster ``inbound|...``): a proxy receiving for its own workload."""
    return Predicate(
        "an inbound entry",
        lambda e: isinstance(e.upstream_cluster, str) and e.upstream_cluster.startswith("inbound|"),
    )


def sni(name: str) -> Predicate:
    """The TLS server name the downstream asked for."""
    return field("requested_server_name", name)


def route(name: str) -> Predicate:
    """The route name (``block_all``, ``allow_any``, a VirtualService route's name...)."""
    return field("route_name", name)


def path(value: str) -> Predicate:
    """The request path is exactly ``value`` (query included)."""
    return field("path", value)


def path_contains(token: str) -> Predicate:
    """The request path contains ``token`` (a unique token correlates one request)."""
    return field_contains("path", token)


def request_id(value: str) -> Predicate:
    """The x-request-id is ``value``."""
    return field("request_id", value)


def tcp() -> Predicate:
    """A TCP/TLS proxy entry (no HTTP method and protocol)."""
    return Predicate("a TCP entry", lambda e: e.is_tcp)


def http() -> Predicate:
    """An HTTP entry."""
    return Predicate("an HTTP entry", lambda e: not e.is_tcp)
