"""Traffic through the relay chain: nested chain URLs, and a small httpx client that reads the hops.

A chain URL nests each next URL in the `url` query parameter of the hop before it:

    >>> chain_url(["http://ingress:80/proxy", "http://target:8080/proxy"], "http://ext.example/p?q=1")
    'http://ingress:80/proxy?url=http%3A%2F%2Ftarget%3A8080%2Fproxy%3Furl%3Dhttp%253A%252F%252Fext.example%252Fp%253Fq%253D1'

Each level is encoded with `quote(..., safe="")`, so every relay's query parsing removes exactly one
level and the last hop fetches the target exactly as given. `unwrap_chain` is the inverse.

The client (`send`, `Traffic`) gives every request a fresh `x-request-id` (uuid4) unless one is
given, so the request can be found afterwards in access logs and in a recorder. It does not read
HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment (`trust_env=False`) unless asked: the
harness talks to the mesh's ingress directly (a port-forward or a kind node port), and a proxy
configured for the developer's machine would otherwise carry, or break, that traffic.

DEFAULT_TIMEOUT (30 s) bounds each phase of a request (connect, write, each read), and is set above
the relays' own upstream timeout (10 s by default) so that a hop failing deep in the chain is reported
by the relays (502 with `failed_hop`) instead of surfacing as a client-side timeout.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, unquote_plus, urlsplit

import httpx

DEFAULT_TIMEOUT: Final = 30.0
REQUEST_ID_HEADER: Final = "x-request-id"
#: the header carrying a run's token: its ingress route (and a relay with REQUIRED_TOKEN) answers a
#: request without it 404; the relays never pass it on (apps/relay's TOKEN_HEADER)
TOKEN_HEADER: Final = "x-egress-harness-token"  # noqa: S105 (a header name, not a secret)
URL_PARAM: Final = "url"


def new_request_id() -> str:
    """A fresh x-request-id: a random UUID (version 4) in its canonical text form."""
    return str(uuid.uuid4())


def new_token() -> str:
    """A fresh per-run token for :data:`TOKEN_HEADER`: 256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def chain_url(hops: Sequence[str], target: str, *, param: str = URL_PARAM) -> str:
    """Nest `target` inside `hops` (outermost first): each hop gets `?url=<encoded next URL>`.

    A hop must be an absolute http(s) URL without a fragment; it may already carry other query
    parameters (then `&url=` is appended) but not `param` itself. `target` is passed
    through untouched apart from the encoding, so any string a last hop can fetch is allowed.
    """
    url = target
    for hop in reversed(hops):
        _check_hop(hop, param)
        url = f"{hop}{'&' if '?' in hop else '?'}{param}={quote(url, safe='')}"
    return url


#: the query parameter that carries a request's path token to the last hop
PATH_TOKEN_PARAM = "egh-token"  # noqa: S105 (a query parameter name, not a secret)


def with_path_token(url: str, token: str) -> str:
    """``url`` with ``egh-token=<token>`` added to its query: every hop's access log (which records
    the path with its query) and the external host's record then name the request, whatever a proxy
    does to its headers. Route matches on the path ignore the query (Envoy's and Istio's uri rules)."""
    if "#" in url:
        raise ValueError(f"{url!r}: a URL with a fragment cannot carry a path token")
    return f"{url}{'&' if '?' in url else '?'}{PATH_TOKEN_PARAM}={quote(token, safe='')}"


def unwrap_chain(url: str, *, levels: int | None = None, param: str = URL_PARAM) -> list[str]:
    """The URLs each hop of a chain URL sees, outermost first, ending with the target.

    `unwrap_chain(chain_url(hops, target)) == [*hops, target]`, decoding one level per hop as a
    relay does. Without `levels` it unwraps while a `param` parameter is present, which also unwraps
    a target that itself has a `url=` parameter; give `levels=len(hops)` for an exact inverse then.
    """
    urls: list[str] = []
    current = url
    while levels is None or len(urls) < levels:
        split = _split_param(current, param)
        if split is None:
            if levels is not None:
                raise ValueError(f"{current!r} has no {param}= parameter (level {len(urls) + 1} of {levels})")
            break
        hop, current = split
        urls.append(hop)
    return [*urls, current]


def _check_hop(hop: str, param: str) -> None:
    parts = urlsplit(hop)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"a hop must be an absolute http(s) URL, not {hop!r}")
    if "#" in hop:
        raise ValueError(f"a hop must not carry a fragment: {hop!r}")
    if _split_param(hop, param) is not None:
        raise ValueError(f"a hop must not carry its own {param}= parameter: {hop!r}")


def _split_param(url: str, param: str) -> tuple[str, str] | None:
    """(url without its last `param` parameter, that parameter's decoded value), or None.

    chain_url appends the parameter last, so cutting it off restores the hop exactly, even one
    ending in "?" or "&".
    """
    base, question, query = url.partition("?")
    if not question:
        return None
    fields = query.split("&")
    for index in range(len(fields) - 1, -1, -1):
        key, _, value = fields[index].partition("=")
        if unquote_plus(key) == param:
            rest = fields[:index] + fields[index + 1 :]
            hop = f"{base}?{'&'.join(rest)}" if index > 0 or rest else base
            return hop, unquote_plus(value)
    return None


@dataclass(frozen=True)
class Hop:
    """One relay's record of its upstream call."""

    service: str
    url: str
    status: int | None  # None when the call failed without an answer
    elapsed_ms: float | None
    error: str | None = None
    body: str | None = None  # the (truncated) body of a non-relay upstream, i.e. the last hop


@dataclass(frozen=True)
class ChainResponse:
    """What came back for one request: status, body and the hops the relays reported."""

    url: str
    #: the x-request-id the mesh's hops carried: the first relay's report of what it received, which
    #: differs from the one sent when an edge proxy replaced it (Istio's ingress gateway treats a
    #: client outside the mesh as external and gives the request a fresh id); else the one sent
    request_id: str
    status: int
    headers: httpx.Headers
    text: str
    json: Any  # the parsed JSON body, None when the body is not JSON
    elapsed: float  # seconds, from sending the request to reading the whole body
    hops: tuple[Hop, ...]
    #: the x-request-id the client sent
    sent_request_id: str = ""
    #: the token the sender put in the request's path (:func:`with_path_token`), "" for none
    path_token: str = ""

    @property
    def replaced_request_id(self) -> bool:
        """An edge proxy gave the request another x-request-id than the client's."""
        return bool(self.sent_request_id) and self.sent_request_id != self.request_id

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def services(self) -> list[str]:
        """Service names of the hops, in order (e.g. ["proxy", "target"])."""
        return [hop.service for hop in self.hops]

    @property
    def failed_hop(self) -> str | None:
        """The deepest hop that failed to reach its upstream, as the relays reported it."""
        value = self.json.get("failed_hop") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None

    @property
    def error(self) -> str | None:
        value = self.json.get("error") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None


class TrafficError(Exception):
    """A request got no HTTP answer (refused, DNS, timeout, protocol error); names URL and request id."""

    def __init__(self, url: str, request_id: str, cause: Exception) -> None:
        self.url = url
        self.request_id = request_id
        self.cause = cause
        detail = str(cause) or type(cause).__name__
        super().__init__(f"{type(cause).__name__} for GET {url} (x-request-id {request_id}): {detail}")

    @property
    def timed_out(self) -> bool:
        return isinstance(self.cause, httpx.TimeoutException)


def parse_hops(body: Any) -> tuple[Hop, ...]:
    """The `hops` of a relay's JSON answer; () when there are none. Malformed entries are skipped."""
    raw = body.get("hops") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        return ()
    hops: list[Hop] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("service"), str):
            continue
        status, elapsed, error, text = (item.get(k) for k in ("status", "elapsed_ms", "error", "body"))
        hops.append(
            Hop(
                service=item["service"],
                url=str(item.get("url", "")),
                status=status if isinstance(status, int) else None,
                elapsed_ms=float(elapsed) if isinstance(elapsed, int | float) else None,
                error=error if isinstance(error, str) else None,
                body=text if isinstance(text, str) else None,
            )
        )
    return tuple(hops)


class Traffic:
    """An httpx client for sending many requests; a context manager that closes the client.

    `headers` are sent with every request; `timeout` (seconds) bounds each phase of a request.
    `trust_env=False` keeps proxy settings of the environment out (see the module docstring).
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        trust_env: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._client = httpx.Client(
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout),
            trust_env=trust_env,
            follow_redirects=False,
            transport=transport,
        )

    @property
    def client(self) -> httpx.Client:
        return self._client

    def send(
        self,
        url: str,
        *,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ChainResponse:
        """GET `url` with an x-request-id: `request_id`, else one in `headers`, else a fresh one.

        Any HTTP status is returned as a ChainResponse; no answer at all raises TrafficError.
        """
        merged = httpx.Headers(headers or {})
        rid = request_id or merged.get(REQUEST_ID_HEADER) or new_request_id()
        merged[REQUEST_ID_HEADER] = rid
        started = time.monotonic()
        try:
            response = self._client.get(
                url, headers=merged, timeout=httpx.Timeout(timeout) if timeout is not None else self.timeout
            )
        except (httpx.RequestError, httpx.InvalidURL) as err:
            raise TrafficError(url, rid, err) from err
        elapsed = time.monotonic() - started
        body = _json_or_none(response)
        reported = body.get("request_id") if isinstance(body, dict) else None
        return ChainResponse(
            url=url,
            request_id=reported if isinstance(reported, str) and reported else rid,
            sent_request_id=rid,
            status=response.status_code,
            headers=response.headers,
            text=response.text,
            json=body,
            elapsed=elapsed,
            hops=parse_hops(body),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Traffic:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def send(
    url: str,
    *,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    trust_env: bool = False,
) -> ChainResponse:
    """One GET with a fresh client; see Traffic.send. Use Traffic for many requests."""
    with Traffic(timeout=timeout, trust_env=trust_env) as traffic:
        return traffic.send(url, request_id=request_id, headers=headers)


def _json_or_none(response: httpx.Response) -> Any:
    text = response.text.lstrip()
    if "json" not in response.headers.get("content-type", "") and not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
