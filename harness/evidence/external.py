"""Evidence from the external host itself: the recorder's record of who called it.

The access logs say where each proxy sent the request; the external host's record says where the
request actually came from. Through the egress gateway, the caller is a gateway address; a direct
call comes from the workload's own address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

#: One request as the recorder saw it (``apps/recorder``): ``client_ip``, ``host``, ``headers``...
Record = Mapping[str, Any]


class ExternalEvidenceError(AssertionError):
    """The external host's record does not show what was expected."""

    def __init__(self, message: str, *, hop: str, records: Sequence[Record]) -> None:
        self.hop = hop
        self.records = list(records)
        super().__init__(message)


def _is_the_request(record: Record, request_id: str, path_token: str | None) -> bool:
    if path_token:
        return path_token in str(record.get("target") or record.get("path") or "")
    return bool((record.get("headers") or {}).get("x-request-id") == request_id)


def _callers(records: Sequence[Record]) -> str:
    """``ip:port, ...`` of the callers of ``records``."""
    return ", ".join(f"{r.get('client_ip')}:{r.get('client_port', '?')}" for r in records)


def _named(request_id: str, path_token: str | None) -> str:
    return f"with path token {path_token!r}" if path_token else f"x-request-id={request_id}"


def expect_no_external_record(
    fetch: Callable[[], Sequence[Record]],
    request_id: str,
    *,
    path_token: str | None = None,
    hop: str = "external host",
    window: float = 0.0,
    interval: float = 0.05,
) -> None:
    """The external host has no record of ``request_id`` (or, with ``path_token``, of the request
    whose path holds that token): a request refused on the way never reached it.

    The recorder writes a request's record before it answers, and the refusal's answer has already
    come back, so what the host has now is what it got; ``window`` seconds more are watched when
    given. Raises ``ExternalEvidenceError`` naming the hop and the callers it did record.
    """
    deadline = time.monotonic() + window
    while True:
        mine = [r for r in fetch() if _is_the_request(r, request_id, path_token)]
        if mine:
            callers = _callers(mine)
            raise ExternalEvidenceError(
                f"hop {hop!r}: the refused request {_named(request_id, path_token)} reached the external "
                f"host anyway (called from {callers})",
                hop=hop,
                records=mine,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(interval, remaining))


def expect_external_record(
    fetch: Callable[[], Sequence[Record]],
    request_id: str,
    *,
    from_ips: Collection[str] | None = None,
    not_from_ips: Collection[str] | None = None,
    hop: str = "external host",
    timeout: float = 5.0,
    interval: float = 0.05,
    path_token: str | None = None,
    expected_caller: str = "the egress gateway",
) -> Record:
    """The record of ``request_id`` (or, with ``path_token``, of the request whose path holds that
    token) at the external host, whose caller is one of ``from_ips`` (the addresses of
    ``expected_caller``, for the messages) or, with ``not_from_ips`` instead, none of those (a direct
    call: not from the egress gateway's addresses).

    ``fetch`` returns the host's records (the recorder's ``/__recorder/requests``). The record of a
    request is written before its response, so the wait is short; it covers a slow fetch.
    """
    if (from_ips is None) == (not_from_ips is None):
        raise ValueError("expect_external_record: give from_ips or not_from_ips (one of them)")
    if not_from_ips is not None and not not_from_ips:
        raise ValueError(
            "expect_external_record: not_from_ips is empty: no address to tell the gateway by, so any "
            "caller would pass"
        )

    def wanted(record: Record) -> bool:
        if from_ips is not None:
            return record.get("client_ip") in from_ips
        return record.get("client_ip") not in (not_from_ips or ())

    deadline = time.monotonic() + timeout
    mine: list[Record] = []
    while True:
        mine = [r for r in fetch() if _is_the_request(r, request_id, path_token)]
        for record in mine:
            if wanted(record):
                return record
        if mine or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if from_ips is not None:
        expected = f"from {', '.join(sorted(from_ips))}"
        wrong = f"not from {expected_caller} ({', '.join(sorted(from_ips))})"
    else:
        gateway = ", ".join(sorted(not_from_ips or ()))
        expected = f"from anyone but the egress gateway ({gateway})"
        wrong = f"from the egress gateway ({gateway}), expected a direct call"
    if not mine:
        raise ExternalEvidenceError(
            f"hop {hop!r}: the request {_named(request_id, path_token)} never reached the external host "
            f"(waited {timeout:g}s; expected it {expected})",
            hop=hop,
            records=[],
        )
    callers = _callers(mine)
    raise ExternalEvidenceError(
        f"hop {hop!r}: the request {_named(request_id, path_token)} reached the external host from {callers}, "
        f"{wrong}",
        hop=hop,
        records=mine,
    )


def expect_external_attempts(
    fetch: Callable[[], Sequence[Record]],
    request_id: str,
    attempts: int,
    *,
    from_ips: Collection[str] | None = None,
    not_from_ips: Collection[str] | None = None,
    path_token: str | None = None,
    hop: str = "external host",
) -> list[Record]:
    """Exactly ``attempts`` records of the request at the external host, each from one of
    ``from_ips`` or, with ``not_from_ips`` instead, from none of those (a retry policy's attempts). Its answer has come back, so every attempt is already
    recorded (the recorder writes a record before it answers): no waiting. Raises
    ``ExternalEvidenceError`` with the records it found."""
    if attempts < 1:
        raise ValueError(f"expect_external_attempts: attempts must be at least 1, got {attempts}")
    if (from_ips is None) == (not_from_ips is None):
        raise ValueError("expect_external_attempts: give from_ips or not_from_ips (one of them)")
    mine = [r for r in fetch() if _is_the_request(r, request_id, path_token)]
    if from_ips is not None:
        strangers = [r for r in mine if r.get("client_ip") not in from_ips]
        wanted = f"from {', '.join(sorted(from_ips))}"
    else:
        strangers = [r for r in mine if r.get("client_ip") in (not_from_ips or ())]
        wanted = f"from anyone but {', '.join(sorted(not_from_ips or ()))}"
    if strangers:
        who = _callers(strangers)
        raise ExternalEvidenceError(
            f"hop {hop!r}: {len(strangers)} of the {len(mine)} records of the request "
            f"{_named(request_id, path_token)} came from {who}, expected them {wanted}",
            hop=hop,
            records=mine,
        )
    if len(mine) != attempts:
        counts = [str((r.get("headers") or {}).get("x-envoy-attempt-count", "-")) for r in mine]
        raise ExternalEvidenceError(
            f"hop {hop!r}: the request {_named(request_id, path_token)} reached the external host "
            f"{len(mine)} time(s), expected {attempts} (x-envoy-attempt-count of each: "
            f"{', '.join(counts) or 'none'})",
            hop=hop,
            records=mine,
        )
    return mine


def check_tcp_record(record: Record, count: int | None, *, hop: str = "external host") -> str:
    """The external host's record of a TCP connection (apps/recorder's ``/__recorder/connections``)
    shows ``count`` bytes received and as many echoed (None: any number, at least one each way);
    what it showed, for the summary. Raises ``ExternalEvidenceError`` naming the hop."""
    received, sent = record.get("bytes_received"), record.get("bytes_sent")
    caller = _callers([record])
    if not isinstance(received, int) or not isinstance(sent, int):
        raise ExternalEvidenceError(
            f"hop {hop!r}: the record of the connection from {caller} is not a TCP connection's (no byte "
            "counts): was the request sent to the external host's TCP port?",
            hop=hop,
            records=[record],
        )
    wrong = (received, sent) != (count, count) if count is not None else min(received, sent) < 1
    if wrong:
        expected = f"{count} each way" if count is not None else "at least one byte each way"
        raise ExternalEvidenceError(
            f"hop {hop!r}: the TCP connection from {caller} carried {received} byte(s) in and {sent} "
            f"echoed, expected {expected}",
            hop=hop,
            records=[record],
        )
    return f"{received} bytes in, {sent} echoed"
