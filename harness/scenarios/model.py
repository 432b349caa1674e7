"""The scenario catalog's data model: frozen dataclasses, no I/O.

A scenario is a folder ``scenarios/<name>/`` holding ``scenario.yaml`` and the manifest templates it
lists. ``harness.scenarios.loader`` turns the YAML into these classes (strictly, with file:line
errors); ``harness.scenarios.render`` fills the templates from a :class:`RenderContext`.

``scenario.yaml`` (``*`` required; anything else is an error)::

    name*: http-via-egress-gateway      # a DNS label, equal to the folder name
    description*: what the scenario proves
    istio*: {min*: "1.23", max: "1.31"}  # quoted; both bounds inclusive, see VersionRange
    requires:
      outbound_traffic_policy: REGISTRY_ONLY  # or ALLOW_ANY; absent: runs under either
      gateway_api: false                      # true: manifests may use gateway.networking.k8s.io
      access_log_encoding: [TEXT, JSON]       # the encodings it runs in (default: both)
      external: http                # what the external host serves: http (default), tls or mtls
      client_credential: false      # true: the run creates Secret {{ client_credential_name }}
      server_ca_credential: false   # true: the run creates Secret {{ ca_credential_name }}
      untrusted_ca_credential: false  # true: the run creates Secret {{ untrusted_ca_credential_name }}
    manifests*: [service-entry.yaml, ...]     # file names beside scenario.yaml, applied in order
    requests*:
      - name*: via-gateway                  # a DNS label, unique in the scenario
        chain: [ingress, proxy, target]     # the hops it passes (default: all three)
        scheme: http                        # or https, or tcp (see below)
        method: GET                         # not for tcp
        bytes: 1024                         # tcp only: the payload's size (256 to 1 MiB)
        host*: "{{ external_host }}"        # templates allowed
        port: 80                            # or "{{ external_port }}"; default by scheme
        path: /get                          # starts with '/'
        expect*:
          status*: 200
          via_gateway*: true
          blocked: false                    # or sidecar | gateway
          external_caller: not-gateway      # only with via_gateway: false: see below
          external_attempts: 3              # the external host got the request this many times
          tcp_bytes: 1024                   # tcp only: bytes each way at every hop (see below)
          sidecar: {upstream_cluster: "outbound|80|external|{{ egress_gateway_service }}"}
          gateway: {upstream_cluster: "outbound|80||{{ external_host }}", response_flags: null}
    caller: {sidecar: injected}               # or none | excludes-external: see below
    tags: [egress-gateway, http]

``caller.sidecar`` says how the calling workload (the chain's last hop, ``target``) is deployed:

* ``injected`` (the default): with Istio's sidecar, which captures all its outbound traffic;
* ``none``: without a sidecar (its pod carries the label ``sidecar.istio.io/inject: "false"``);
* ``excludes-external``: with a sidecar whose capture leaves out the external host's address (the
  pod annotation ``traffic.sidecar.istio.io/excludeOutboundIPRanges: <address>/32``).

A caller that is not ``injected`` bypasses whatever the mesh says of the external host: each of its
requests must expect ``via_gateway: false``, ``sidecar: absent`` (the calling workload's sidecar has
no entry of it, or there is none) and ``external_caller: workload``, and no ``blocked``. ``sidecar:
absent`` in a scenario whose caller is ``injected`` is an error: a sidecar that captures the request
logs it.

``external_caller: not-gateway`` (a request with ``via_gateway: false``, not blocked) asks for the
external host's record of the request too: it must be there, from a caller that is not the egress
gateway (the workload itself), and over TLS with the host as SNI when the last leg is TLS (the
sidecar's expected ``upstream_cluster`` is on the external TLS port). Without it such a request is
judged by the hop logs alone; a request via the gateway is always witnessed at the external host.
``external_caller: workload`` says more: the caller the external host recorded is the calling
workload's own address (its pod's, or its node's where pods are source-NATed), which must differ
from every egress gateway address.

``external_attempts: N`` (a request the external host witnesses: via the gateway, or with
``external_caller``) says how many times the request reached the external host: every record of it
(by its path token) counts, all from the same kind of caller; a retry policy's attempts show there.

``scheme: tcp``: no HTTP on the last leg. The calling workload opens a TCP connection to the
external host's TCP echo port (``external_tcp_port``, the default port) and sends ``bytes`` bytes:
the path with its query as the first line (the harness adds its request token there), padded; the
external host echoes every byte and records the connection (caller, bytes each way, first line).
The proxies log TCP entries (no method, response code 0, written when the connection closes),
found by the time the request was sent and answered. ``expect.tcp_bytes: N`` (tcp only, not for a
blocked request; sets ``bytes`` when that is absent, must equal it otherwise) asks every TCP entry
of it (the sidecar's; via the gateway, the gateway's) for ``bytes_received`` and ``bytes_sent`` N,
and the external host's record of the connection for N received and N echoed.

``sidecar``/``gateway`` keys are Istio's JSON access-log keys (``harness.accesslog.FIELDS``); the
sidecar is that of the last hop of the chain, the workload that calls the external host. ``null``
means the field is absent (``-``).

The external host and its certificates (``harness.common.certs`` makes a CA, a server certificate and a
client certificate per run):

* ``external: http``: it serves plain HTTP on ``external_port``.
* ``external: tls``: it also serves HTTPS on ``external_tls_port`` with a server certificate for its
  name signed by the run's CA; the workloads that call it over HTTPS themselves (the relays) trust
  that CA. Every scenario with an ``https`` request needs ``tls`` or ``mtls``.
* ``external: mtls``: as ``tls``, and it requires a client certificate signed by the run's CA; a
  caller without one fails the TLS handshake.
* ``client_credential: true``: before applying, the run creates the Secret named
  ``{{ client_credential_name }}`` in the gateway's namespace with keys ``tls.crt``, ``tls.key``
  (the client certificate and key) and ``ca.crt`` (the run's CA, which verifies the server): what a
  DestinationRule ``credentialName`` needs for mutual TLS origination at the egress gateway.
* ``server_ca_credential: true``: the run creates the Secret ``{{ ca_credential_name }}`` in the
  gateway's namespace with the one key ``ca.crt``: what ``credentialName`` needs for SIMPLE TLS
  origination that verifies the server (Istio reads ``<name>-cacert``, then ``<name>``).

* ``untrusted_ca_credential: true``: the run creates the Secret ``{{ untrusted_ca_credential_name }}``
  like ``{{ ca_credential_name }}``, but its ``ca.crt`` is a second CA of the run that signed nothing:
  TLS origination that verifies the external host with it must fail (a negative control).

A manifest may use ``{{ client_credential_name }}`` (``{{ ca_credential_name }}``,
``{{ untrusted_ca_credential_name }}``) only when its scenario declares ``client_credential``
(``server_ca_credential``, ``untrusted_ca_credential``), and a scenario that declares one must use
it: the loader checks both ways.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from harness.accesslog import FIELDS as ACCESS_LOG_FIELDS

__all__ = [
    "ACCESS_LOG_ENCODINGS",
    "ACCESS_LOG_FIELDS",
    "BLOCKED_AT",
    "CALLER_SIDECARS",
    "CREDENTIAL_VARIABLES",
    "DEFAULT_CHAIN",
    "EGRESS_GATEWAY_TCP_PORT",
    "EXTERNAL_CALLERS",
    "EXTERNAL_KINDS",
    "EXTERNAL_TCP_PORT",
    "HOPS",
    "LOG_HOPS",
    "OUTBOUND_TRAFFIC_POLICIES",
    "SCHEMES",
    "SIDECAR_ABSENT",
    "TCP_BYTES_DEFAULT",
    "TCP_BYTES_MAX",
    "TCP_BYTES_MIN",
    "TCP_BYTES_PARAM",
    "TEMPLATE_VARIABLES",
    "Caller",
    "Catalog",
    "Expectation",
    "IstioVersion",
    "LogValue",
    "RenderContext",
    "RequestSpec",
    "Requirements",
    "ResolvedRequest",
    "Scenario",
    "VersionRange",
    "tcp_payload_size",
]

#: The hops a request can pass through, in the order of the chain client -> ingress -> proxy -> target.
HOPS: tuple[str, ...] = ("ingress", "proxy", "target")
DEFAULT_CHAIN: tuple[str, ...] = HOPS
#: ``tcp``: the calling workload opens a TCP connection to the external host's TCP echo port and
#: sends ``bytes`` bytes (no HTTP on that leg: ``RequestSpec.bytes``)
SCHEMES: tuple[str, ...] = ("http", "https", "tcp")
#: The bounds of a TCP request's payload (``RequestSpec.bytes``): room for its first line (the path
#: with the harness's query parameters), at most what the external host echoes (1 MiB).
TCP_BYTES_MIN, TCP_BYTES_MAX = 256, 1 << 20
#: A TCP request's payload size when the scenario does not say.
TCP_BYTES_DEFAULT = 1024
#: The query parameter that tells the relay how many bytes to send (apps/relay: ``egh-bytes``).
TCP_BYTES_PARAM = "egh-bytes"


def tcp_payload_size(scheme: str, size: int | None, tcp_bytes: int | None) -> int | None:
    """How many bytes a request sends: for tcp its ``bytes`` (``size``), else its expectation's
    ``tcp_bytes``, else :data:`TCP_BYTES_DEFAULT`; None for http and https."""
    if scheme != "tcp":
        return None
    if size is not None:
        return size
    return tcp_bytes if tcp_bytes is not None else TCP_BYTES_DEFAULT


#: Where the external host echoes plain TCP (the recorder's ``--tcp-port`` in a run).
EXTERNAL_TCP_PORT = 9000
#: The egress gateway Service's plain TCP port, which the harness's install adds
#: (manifests/istio/egress.yaml) for the scenarios' Gateway TCP servers.
EGRESS_GATEWAY_TCP_PORT = 7777
#: Istio's meshConfig.accessLogEncoding values.
ACCESS_LOG_ENCODINGS: tuple[str, ...] = ("TEXT", "JSON")
#: Istio's meshConfig.outboundTrafficPolicy.mode values.
OUTBOUND_TRAFFIC_POLICIES: tuple[str, ...] = ("ALLOW_ANY", "REGISTRY_ONLY")
#: What the external host serves: plain HTTP, also HTTPS, or also HTTPS that requires client certificates.
EXTERNAL_KINDS: tuple[str, ...] = ("http", "tls", "mtls")
#: The template variables naming a Secret the run creates, and the ``requires`` key that asks for it.
CREDENTIAL_VARIABLES: Mapping[str, str] = {
    "client_credential_name": "client_credential",
    "ca_credential_name": "server_ca_credential",
    "untrusted_ca_credential_name": "untrusted_ca_credential",
}
#: What ``expect.external_caller`` can say of the external host's record of a request.
EXTERNAL_CALLERS: tuple[str, ...] = ("not-gateway", "workload")
#: How the calling workload (the chain's last hop) is deployed: with a sidecar that captures all its
#: outbound traffic, without one, or with one that does not capture the external host's address.
CALLER_SIDECARS: tuple[str, ...] = ("injected", "none", "excludes-external")
#: What ``expect.sidecar`` says when the calling workload's sidecar must have no entry of the request.
SIDECAR_ABSENT = "absent"
#: Where a request can be refused.
BLOCKED_AT: tuple[str, ...] = ("sidecar", "gateway")
#: The proxies whose access-log entry an expectation can match: the sidecar of the workload that
#: calls the external host (the last hop of the chain), and the egress gateway.
LOG_HOPS: tuple[str, ...] = ("sidecar", "gateway")

#: One expected access-log value: a string (templates allowed), an integer, or ``None`` for "absent"
#: (Envoy's ``-`` in TEXT, ``null`` in JSON).
LogValue = str | int | None

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-([0-9A-Za-z][0-9A-Za-z.-]*))?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


def _prerelease_key(pre: str) -> tuple[tuple[int, int, str], ...]:
    # semver: numeric identifiers compare as numbers and sort before alphanumeric ones
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))


@dataclass(frozen=True)
class IstioVersion:
    """An Istio version: ``1.28.10``, ``1.31-dev``, ``1.31.0-alpha.0``, or a bare minor ``1.23``.

    Ordering follows semver: a pre-release sorts before its release (``1.31.0-alpha`` < ``1.31.0``)
    and a missing patch counts as ``0`` (``1.31-dev`` is a pre-release of ``1.31.0``).
    """

    major: int
    minor: int
    patch: int | None = None
    prerelease: str | None = None

    @classmethod
    def parse(cls, text: str) -> IstioVersion:
        m = _VERSION_RE.match(text.strip())
        if not m:
            raise ValueError(
                f"not an Istio version: {text!r} (expected MAJOR.MINOR[.PATCH][-PRERELEASE], e.g. 1.28.10, 1.31-dev)"
            )
        patch = int(m.group(3)) if m.group(3) is not None else None
        return cls(int(m.group(1)), int(m.group(2)), patch, m.group(4))

    @property
    def minor_key(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def sort_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        if self.prerelease is None:
            return (self.major, self.minor, self.patch or 0, 1, ())
        return (self.major, self.minor, self.patch or 0, 0, _prerelease_key(self.prerelease))

    @property
    def is_bare_minor(self) -> bool:
        """``1.23``: no patch, no pre-release; as a bound it covers every 1.23 build."""
        return self.patch is None and self.prerelease is None

    def __lt__(self, other: IstioVersion) -> bool:
        return self.sort_key < other.sort_key

    def __le__(self, other: IstioVersion) -> bool:
        return self.sort_key <= other.sort_key

    def __gt__(self, other: IstioVersion) -> bool:
        return self.sort_key > other.sort_key

    def __ge__(self, other: IstioVersion) -> bool:
        return self.sort_key >= other.sort_key

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.patch is not None:
            text += f".{self.patch}"
        if self.prerelease is not None:
            text += f"-{self.prerelease}"
        return text


@dataclass(frozen=True)
class VersionRange:
    """The Istio versions a scenario supports, both bounds inclusive.

    A bare-minor bound (``1.23``) covers every build of that minor, pre-releases included: ``min:
    "1.31"`` admits ``1.31-dev``, ``max: "1.30"`` admits ``1.30.3``. A bound with a patch or a
    pre-release compares exactly.
    """

    min: IstioVersion
    max: IstioVersion | None = None

    def __post_init__(self) -> None:
        if self.max is not None and self._above_max(self.min):
            raise ValueError(f"min {self.min} is above max {self.max}")

    def _below_min(self, v: IstioVersion) -> bool:
        if self.min.is_bare_minor:
            return v.minor_key < self.min.minor_key
        return v < self.min

    def _above_max(self, v: IstioVersion) -> bool:
        if self.max is None:
            return False
        if self.max.is_bare_minor:
            return v.minor_key > self.max.minor_key
        return v > self.max

    def applies_to(self, version: str | IstioVersion) -> tuple[bool, str]:
        """Whether ``version`` is in range, and why (for a skip reason or a log line)."""
        v = IstioVersion.parse(version) if isinstance(version, str) else version
        if self._below_min(v):
            return False, f"Istio {v} is older than the scenario's minimum {self.min}"
        if self._above_max(v):
            return False, f"Istio {v} is newer than the scenario's maximum {self.max}"
        return True, f"Istio {v} is in range {self}"

    def __str__(self) -> str:
        return f">={self.min}" if self.max is None else f"{self.min}..{self.max}"


@dataclass(frozen=True)
class Requirements:
    """What the mesh must look like for a scenario to run."""

    #: ``None``: the scenario runs under either mode.
    outbound_traffic_policy: str | None = None
    gateway_api: bool = False
    access_log_encoding: tuple[str, ...] = ACCESS_LOG_ENCODINGS
    #: what the external host must serve: ``http``, ``tls`` or ``mtls`` (see the module docstring)
    external: str = "http"
    #: the run creates Secret ``client_credential_name`` (tls.crt, tls.key, ca.crt) in the gateway namespace
    client_credential: bool = False
    #: the run creates Secret ``ca_credential_name`` (ca.crt) in the gateway namespace
    server_ca_credential: bool = False
    #: the run creates Secret ``untrusted_ca_credential_name`` (ca.crt: a CA that signed nothing) there
    untrusted_ca_credential: bool = False

    @property
    def external_tls(self) -> bool:
        """The external host must serve TLS (``tls`` or ``mtls``)."""
        return self.external in ("tls", "mtls")


@dataclass(frozen=True)
class Expectation:
    """What must happen to one request.

    ``sidecar`` and ``gateway`` map Istio JSON access-log keys to the value that proxy's entry for the
    request must have (strings may hold ``{{ var }}`` placeholders until rendered).
    """

    status: int
    via_gateway: bool
    blocked: Literal["sidecar", "gateway"] | None = None
    sidecar: Mapping[str, LogValue] = field(default_factory=dict)
    gateway: Mapping[str, LogValue] = field(default_factory=dict)
    #: ``not-gateway``: the external host recorded the request from a caller that is not the gateway;
    #: ``workload``: from the calling workload's own address
    external_caller: Literal["not-gateway", "workload"] | None = None
    #: how many records of the request the external host must have (its attempts); None: at least one
    external_attempts: int | None = None
    #: ``sidecar: absent``: the calling workload's sidecar has no entry of the request (it has no
    #: sidecar, or its sidecar did not capture the request: ``Caller``)
    sidecar_absent: bool = False
    #: a TCP request (``scheme: tcp``): the bytes each way that every TCP entry of it (the sidecar's,
    #: the gateway's) and the external host's record of its connection must show
    tcp_bytes: int | None = None


@dataclass(frozen=True)
class Caller:
    """How the calling workload (the chain's last hop, ``target``) is deployed: ``sidecar`` is one of
    :data:`CALLER_SIDECARS` (see the module docstring)."""

    sidecar: str = "injected"

    def __post_init__(self) -> None:
        if self.sidecar not in CALLER_SIDECARS:
            raise ValueError(
                f"Caller.sidecar: expected one of {', '.join(CALLER_SIDECARS)}, got {self.sidecar!r}"
            )

    @property
    def captured(self) -> bool:
        """Its sidecar captures everything it sends (the mesh's routing applies to it)."""
        return self.sidecar == "injected"

    @property
    def has_sidecar(self) -> bool:
        return self.sidecar != "none"


@dataclass(frozen=True)
class RequestSpec:
    """One request of a scenario, as written: ``host``, ``path`` and a string ``port`` are templates."""

    name: str
    host: str
    expect: Expectation
    chain: tuple[str, ...] = DEFAULT_CHAIN
    scheme: str = "http"
    method: str = "GET"
    #: ``None``: the context's ``external_port`` (http), ``external_tls_port`` (https) or
    #: ``external_tcp_port`` (tcp).
    port: int | str | None = None
    path: str = "/"
    line: int = 0
    #: ``scheme: tcp`` only: how many bytes the calling workload sends (the path's line, padded);
    #: None: ``TCP_BYTES_DEFAULT`` for tcp
    bytes: int | None = None


@dataclass(frozen=True)
class ResolvedRequest:
    """A :class:`RequestSpec` with every template filled in and the port decided."""

    name: str
    chain: tuple[str, ...]
    scheme: str
    method: str
    host: str
    port: int
    path: str
    expect: Expectation
    #: ``tcp``: the payload's size in bytes (``RequestSpec.bytes``); None for http and https
    bytes: int | None = None

    @property
    def target_path(self) -> str:
        """The path the calling workload asks for; for tcp with the payload size in its query
        (``egh-bytes``, which the relay reads and keeps in the payload's first line)."""
        if self.scheme == "tcp" and self.bytes is not None:
            return f"{self.path}{'&' if '?' in self.path else '?'}{TCP_BYTES_PARAM}={self.bytes}"
        return self.path

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.target_path}"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    #: the scenario's ``scenario.yaml``
    file: Path
    istio: VersionRange
    requires: Requirements
    #: the manifest templates, absolute paths, in apply order
    manifests: tuple[Path, ...]
    requests: tuple[RequestSpec, ...]
    tags: tuple[str, ...] = ()
    #: how the calling workload is deployed (``caller:``)
    caller: Caller = field(default_factory=Caller)

    @property
    def directory(self) -> Path:
        return self.file.parent


@dataclass(frozen=True)
class Catalog:
    scenarios: tuple[Scenario, ...]
    roots: tuple[Path, ...] = ()

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scenarios)

    def get(self, name: str) -> Scenario:
        for s in self.scenarios:
            if s.name == name:
                return s
        raise KeyError(f"no scenario named {name!r}; the catalog has: {', '.join(self.names()) or '(none)'}")

    def __len__(self) -> int:
        return len(self.scenarios)


class _Derived(str):
    """A RenderContext value computed from the others (not given), so recomputed on a replace()."""

    __slots__ = ()


@dataclass(frozen=True, kw_only=True)
class RenderContext:
    """The values ``{{ name }}`` placeholders take. The defaults are offline placeholders for rendering
    and validation without a cluster; a run sets the real ones."""

    istio_version: str
    namespace: str = "egress-harness"
    external_host: str = "external.egress-harness.test"
    external_port: int = 80
    external_tls_port: int = 443
    #: where the external host echoes plain TCP (``scheme: tcp`` requests)
    external_tcp_port: int = EXTERNAL_TCP_PORT
    #: the egress gateway Service's plain TCP port (the harness's install adds it: manifests/istio/egress.yaml)
    egress_gateway_tcp_port: int = EGRESS_GATEWAY_TCP_PORT
    #: a name that resolves in the cluster but has no ServiceEntry (REGISTRY_ONLY must block it)
    unregistered_host: str = "unregistered.egress-harness.test"
    gateway_namespace: str = "istio-system"
    egress_gateway_service: str = "istio-egressgateway.istio-system.svc.cluster.local"
    egress_gateway_selector: str = "istio: egressgateway"
    run_id: str = "offline"
    #: the external host's domain, for wildcard hosts (``*.{{ external_host_domain }}``); empty:
    #: ``external_host`` without its first label (``external.egress-harness.test`` ->
    #: ``egress-harness.test``; a single-label host has none, and a template using it then fails)
    external_host_domain: str = ""
    #: the Secret for mutual TLS origination (``requires.client_credential``); empty:
    #: ``egress-harness-client-<run_id>``
    client_credential_name: str = ""
    #: the Secret with the CA that verifies the external host (``requires.server_ca_credential``);
    #: empty: ``egress-harness-server-ca-<run_id>``
    ca_credential_name: str = ""
    #: the Secret with a CA that did not sign the external host's certificate
    #: (``requires.untrusted_ca_credential``); empty: ``egress-harness-untrusted-ca-<run_id>``
    untrusted_ca_credential_name: str = ""

    def __post_init__(self) -> None:
        derived = {
            "external_host_domain": self.external_host.partition(".")[2],
            "client_credential_name": f"egress-harness-client-{self.run_id}",
            "ca_credential_name": f"egress-harness-server-ca-{self.run_id}",
            "untrusted_ca_credential_name": f"egress-harness-untrusted-ca-{self.run_id}",
        }
        for name, value in derived.items():
            # derived again when empty or derived before (dataclasses.replace passes the old value)
            if getattr(self, name) == "" or isinstance(getattr(self, name), _Derived):
                object.__setattr__(self, name, _Derived(value))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "external_host_domain" and value == "":
                continue  # a single-label external host: no domain (see render_text)
            if isinstance(value, str) and ("\n" in value or "{{" in value or not value.strip()):
                raise ValueError(
                    f"RenderContext.{f.name}: must be one non-empty line without '{{{{', got {value!r}"
                )
        IstioVersion.parse(self.istio_version)
        for name in ("namespace", "gateway_namespace", "run_id"):
            if not _DNS_LABEL.match(getattr(self, name)):
                raise ValueError(f"RenderContext.{name}: not a DNS label: {getattr(self, name)!r}")
        for name in ("external_host", "unregistered_host", "egress_gateway_service"):
            if not _DNS_NAME.match(getattr(self, name)):
                raise ValueError(f"RenderContext.{name}: not a DNS name: {getattr(self, name)!r}")
        self._check_derived()
        for name in ("external_port", "external_tls_port", "external_tcp_port", "egress_gateway_tcp_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"RenderContext.{name}: not a port number: {port!r}")
        if ": " not in self.egress_gateway_selector:
            raise ValueError(
                f"RenderContext.egress_gateway_selector: expected 'key: value', got {self.egress_gateway_selector!r}"
            )

    def _check_derived(self) -> None:
        if self.external_host_domain and not _DNS_NAME.match(self.external_host_domain):
            raise ValueError(
                f"RenderContext.external_host_domain: not a DNS name: {self.external_host_domain!r}"
            )
        for name in CREDENTIAL_VARIABLES:
            value = getattr(self, name)
            if not _DNS_NAME.match(value):
                raise ValueError(f"RenderContext.{name}: not a Kubernetes Secret name: {value!r}")
            if value.startswith(("istio", "prometheus")) or value.endswith("-cacert"):
                raise ValueError(
                    f"RenderContext.{name}: Istio does not take {value!r} for a credential (names "
                    "starting with 'istio' or 'prometheus' or ending in '-cacert' are reserved)"
                )

    def variables(self) -> dict[str, str]:
        """Every placeholder name and the text it renders to."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


#: The names a ``{{ name }}`` placeholder may use.
TEMPLATE_VARIABLES: frozenset[str] = frozenset(f.name for f in fields(RenderContext))
