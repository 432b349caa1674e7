"""A throw-away PKI for one run: a CA, a server certificate for the external host, a client certificate.

    pki = generate_pki(run_dir / "pki", ["external.egress-harness.test", "*.egress-harness.test"])
    pki.ca.cert_path, pki.server.key_pem, pki.client.subject      # paths, PEM bytes, "CN=...,O=..."
    pki.client_credential_data()   # {"tls.crt": b64, "tls.key": b64, "ca.crt": b64}: a Secret's data
    pki.server_ca_credential_data()  # {"ca.crt": b64}
    pki.untrusted_ca_credential_data()  # {"ca.crt": b64} of a second CA that signed nothing here

Everything is made with the ``openssl`` command line tool (no Python dependency), each call through
:func:`harness.common.proc.run` with a timeout, with configuration files written here: the system's
``openssl.cnf`` plays no part. Keys are EC P-256 (fast to make; Envoy, Python's ``ssl`` and Go all
accept them). The file layout in ``directory`` is fixed (:data:`FILES`); the directory is the
caller's (a run directory) and so is its removal. The private keys are written with mode 0600.

The server certificate carries the given names as subjectAltName entries (``DNS:`` for names,
wildcards such as ``*.egress-harness.test`` included, ``IP:`` for addresses) and extendedKeyUsage
serverAuth; the client certificate has clientAuth and the subject ``CN=<client name>,O=<org>``.
Validity starts when the certificate is made and lasts ``days`` days (the containers and kind nodes
that use them share this machine's clock). Serial numbers are random, so two runs never issue the
same certificate.

Beside them, in ``untrusted/``, a second CA (``untrusted/ca.crt``) that signs nothing: a client that
trusts only it must refuse the server certificate (the TLS origination negative control).

:class:`PkiError` says which step failed and why (``openssl`` missing, a bad name, openssl's stderr).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.common.proc import CommandError, run

__all__ = [
    "DEFAULT_CA_NAME",
    "DEFAULT_CLIENT_NAME",
    "DEFAULT_ORGANIZATION",
    "DEFAULT_UNTRUSTED_CA_NAME",
    "FILES",
    "UNTRUSTED_DIR",
    "CertificateAuthority",
    "Issued",
    "PkiError",
    "TestPKI",
    "b64",
    "configmap_manifest",
    "generate_pki",
    "openssl_unavailable_reason",
    "secret_data",
    "secret_manifest",
]

OPENSSL_TIMEOUT_S = 30.0
DEFAULT_DAYS = 7
DEFAULT_ORGANIZATION = "istio-egress-harness"
DEFAULT_CA_NAME = "egress-harness test CA"
DEFAULT_CLIENT_NAME = "egress-harness-client"
DEFAULT_UNTRUSTED_CA_NAME = "egress-harness untrusted CA"
#: the folder under a PKI's directory holding the CA that signed nothing (``TestPKI.untrusted_ca``)
UNTRUSTED_DIR = "untrusted"
#: the files :func:`generate_pki` writes, always these names
FILES: tuple[str, ...] = (
    "ca.cnf",
    "ca.key",
    "ca.csr",
    "ca.crt",
    "server.cnf",
    "server.key",
    "server.csr",
    "server.crt",
    "client.cnf",
    "client.key",
    "client.csr",
    "client.crt",
)

_DNS_NAME = re.compile(
    r"^(\*\.)?(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
#: characters a subject attribute may hold here (no ',', '=', '/', quotes, newlines: the config
#: file and the subject string stay unambiguous; ':' for Kubernetes groups such as system:masters)
_SUBJECT_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,63}$")


class PkiError(RuntimeError):
    """Certificates could not be made: the step, and openssl's own words."""


@dataclass(frozen=True)
class Issued:
    """One key pair and its certificate, as files and as PEM bytes."""

    cert_path: Path
    key_path: Path
    cert_pem: bytes
    key_pem: bytes
    #: ``CN=...,O=...``, attributes in certificate order (the recorder reports client subjects so)
    subject: str
    #: the subjectAltName entries, ``("DNS:a.test", "IP:10.0.0.1")``; empty for the CA and client
    alt_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestPKI:
    """A CA and the server and client certificates it signed, in ``directory``; ``untrusted_ca``: a
    second CA that signed none of them (None in a PKI made without one)."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca: Issued
    server: Issued
    client: Issued
    untrusted_ca: Issued | None = None

    @property
    def server_names(self) -> tuple[str, ...]:
        """The names and addresses the server certificate is valid for, without ``DNS:``/``IP:``."""
        return tuple(n.split(":", 1)[1] for n in self.server.alt_names)

    def client_credential_data(self) -> dict[str, str]:
        """A Secret's ``data`` for Istio's mutual TLS origination (DestinationRule ``credentialName``,
        mode MUTUAL): the client certificate and key, and the CA that verifies the server."""
        return secret_data(
            {"tls.crt": self.client.cert_pem, "tls.key": self.client.key_pem, "ca.crt": self.ca.cert_pem}
        )

    def server_ca_credential_data(self) -> dict[str, str]:
        """A Secret's ``data`` holding only the CA (``ca.crt``): verifies the server in SIMPLE TLS
        origination (DestinationRule ``credentialName``, mode SIMPLE)."""
        return secret_data({"ca.crt": self.ca.cert_pem})

    def untrusted_ca_credential_data(self) -> dict[str, str]:
        """A Secret's ``data`` holding only the CA that signed nothing here (``ca.crt``): SIMPLE TLS
        origination that verifies the server with it must fail. Raises PkiError without one."""
        if self.untrusted_ca is None:
            raise PkiError(
                f"the PKI in {self.directory} has no untrusted CA ({UNTRUSTED_DIR}/ca.crt): it was made "
                "before the harness made one; make it again (`egress-harness e2e down`, then `up`)"
            )
        return secret_data({"ca.crt": self.untrusted_ca.cert_pem})


def b64(data: bytes | str) -> str:
    """Standard base64 (as Kubernetes Secret ``data`` values are), as text."""
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def secret_data(values: Mapping[str, bytes | str]) -> dict[str, str]:
    """``{key: base64(value)}``, keys in the given order."""
    return {key: b64(value) for key, value in values.items()}


def secret_manifest(
    name: str,
    namespace: str,
    data: Mapping[str, str],
    *,
    labels: Mapping[str, str] | None = None,
    type_name: str = "Opaque",
) -> dict[str, object]:
    """A Kubernetes Secret (as a dict, ready for ``json.dumps`` and server-side apply) with
    already base64-encoded ``data`` (:func:`secret_data`)."""
    metadata: dict[str, object] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": type_name,
        "data": dict(data),
    }


def configmap_manifest(
    name: str, namespace: str, data: Mapping[str, str], *, labels: Mapping[str, str] | None = None
) -> dict[str, object]:
    """A Kubernetes ConfigMap (as a dict) with text ``data``, e.g. ``{"ca.crt": pki.ca.cert_pem.decode()}``
    for workloads that must trust the run's CA (mounted, with ``SSL_CERT_FILE`` pointing at it)."""
    metadata: dict[str, object] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(data)}


def openssl_unavailable_reason(openssl: str = "openssl") -> str | None:
    """None when the ``openssl`` tool runs, else why not (for a pytest skip)."""
    if shutil.which(openssl) is None:
        return f"`{openssl}` is not installed (Debian: apt-get install -y openssl)"
    try:
        run([openssl, "version"], timeout=OPENSSL_TIMEOUT_S)
    except CommandError as exc:
        return str(exc)
    return None


def _alt_name(name: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        pass
    if not _DNS_NAME.match(name):
        raise PkiError(
            f"server name {name!r} is neither a lower-case DNS name (a leading '*.' allowed) nor an IP address"
        )
    return f"DNS:{name}"


def _subject_value(what: str, value: str) -> str:
    if not _SUBJECT_VALUE.match(value):
        raise PkiError(
            f"{what} {value!r}: use 1-64 letters, digits, spaces and '._@:-' (starting with a letter or digit)"
        )
    return value


def _config(common_name: str, organization: str, extensions: Mapping[str, str]) -> str:
    """An openssl config for ``req``: the subject, and the extensions in section ``ext``."""
    lines = [
        "[req]",
        "prompt = no",
        "distinguished_name = dn",
        "[dn]",
        f"CN = {common_name}",
        f"O = {organization}",
        "[ext]",
        *(f"{key} = {value}" for key, value in extensions.items()),
        "",
    ]
    return "\n".join(lines)


class _OpenSSL:
    def __init__(self, directory: Path, openssl: str, timeout: float) -> None:
        self.directory = directory
        self.openssl = openssl
        self.timeout = timeout

    def __call__(self, step: str, *args: str) -> None:
        try:
            run([self.openssl, *args], timeout=self.timeout, cwd=self.directory)
        except CommandError as exc:
            if exc.returncode is None and "was not found" in exc.reason:
                raise PkiError(
                    f"{step}: `{self.openssl}` is not installed (Debian: apt-get install -y openssl; "
                    "macOS: brew install openssl)"
                ) from exc
            raise PkiError(f"{step} failed: {exc}") from exc

    def write(self, name: str, text: str) -> None:
        (self.directory / name).write_text(text, encoding="utf-8")

    def new_key_and_request(self, step: str, stem: str) -> None:
        """``<stem>.key`` (EC P-256) and ``<stem>.csr`` from ``<stem>.cnf``."""
        self(
            step,
            "req",
            "-new",
            "-config",
            f"{stem}.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{stem}.key",
            "-out",
            f"{stem}.csr",
        )

    def sign(self, step: str, stem: str, *, issuer: str, days: int) -> None:
        """``<stem>.crt`` from ``<stem>.csr``, signed by ``<issuer>.key`` (self-signed when the issuer is
        the stem), with the extensions of section ``ext`` of ``<stem>.cnf``."""
        signer = (
            ["-signkey", f"{stem}.key"]
            if issuer == stem
            else ["-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key"]
        )
        self(
            step,
            "x509",
            "-req",
            "-in",
            f"{stem}.csr",
            *signer,
            "-set_serial",
            f"0x{secrets.randbits(63) | 1 << 62:x}",
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            f"{stem}.cnf",
            "-extensions",
            "ext",
            "-out",
            f"{stem}.crt",
        )


def generate_pki(
    directory: Path,
    server_names: Sequence[str],
    *,
    client_name: str = DEFAULT_CLIENT_NAME,
    ca_name: str = DEFAULT_CA_NAME,
    organization: str = DEFAULT_ORGANIZATION,
    days: int = DEFAULT_DAYS,
    openssl: str = "openssl",
    timeout: float = OPENSSL_TIMEOUT_S,
) -> TestPKI:
    """Make a CA, a server certificate for ``server_names`` and a client certificate in ``directory``
    (created if missing; files of an earlier call are replaced). Raises :class:`PkiError`."""
    names = list(dict.fromkeys(server_names))
    if not names:
        raise PkiError("the server certificate needs at least one name")
    for name in names:  # every name is checked before anything is written
        _alt_name(name)
    org = _subject_value("organization", organization)
    ca_cn = _subject_value("CA name", ca_name)
    client_cn = _subject_value("client name", client_name)
    if days < 1:
        raise PkiError(f"days must be at least 1, got {days}")
    # a server's CN is informational (clients check the subjectAltName); keep it within 64 characters
    server_cn = next((n for n in names if len(n) <= 64 and not n.startswith("*.")), "egress-harness server")

    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (directory / name).unlink(missing_ok=True)
    authority = CertificateAuthority.create(
        directory, name=ca_cn, organization=org, days=days, openssl=openssl, timeout=timeout
    )
    server = authority.issue("server", server_cn, server_names=names)
    client = authority.issue("client", client_cn, client=True)
    untrusted_dir = directory / UNTRUSTED_DIR
    for name in FILES:
        (untrusted_dir / name).unlink(missing_ok=True)
    untrusted = CertificateAuthority.create(
        untrusted_dir,
        name=DEFAULT_UNTRUSTED_CA_NAME,
        organization=org,
        days=days,
        openssl=openssl,
        timeout=timeout,
    )
    return TestPKI(directory, authority.ca, server, client, untrusted.ca)


class CertificateAuthority:
    """A CA in ``directory`` that issues more certificates than :func:`generate_pki`'s fixed three.

    ``CertificateAuthority.create(dir, name=...)`` makes ``ca.key``/``ca.crt``; :meth:`issue` makes
    ``<stem>.key``/``<stem>.crt`` for a server (``server_names``), a client (``client=True``), or both.
    """

    def __init__(self, ssl: _OpenSSL, ca: Issued, organization: str, days: int) -> None:
        self._ssl = ssl
        self.ca = ca
        self.organization = organization
        self.days = days

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        name: str = DEFAULT_CA_NAME,
        organization: str = DEFAULT_ORGANIZATION,
        days: int = DEFAULT_DAYS,
        openssl: str = "openssl",
        timeout: float = OPENSSL_TIMEOUT_S,
    ) -> CertificateAuthority:
        if days < 1:
            raise PkiError(f"days must be at least 1, got {days}")
        directory.mkdir(parents=True, exist_ok=True)
        ssl = _OpenSSL(directory, openssl, timeout)
        cn, org = _subject_value("CA name", name), _subject_value("organization", organization)
        ssl.write(
            "ca.cnf",
            _config(
                cn,
                org,
                {
                    "basicConstraints": "critical, CA:TRUE, pathlen:0",
                    "keyUsage": "critical, keyCertSign, cRLSign",
                    "subjectKeyIdentifier": "hash",
                },
            ),
        )
        ssl.new_key_and_request("the ca key", "ca")
        ssl.sign("the ca certificate", "ca", issuer="ca", days=days)
        os.chmod(directory / "ca.key", 0o600)
        ca = Issued(directory / "ca.crt", directory / "ca.key", b"", b"", f"CN={cn},O={org}")
        ca = Issued(
            ca.cert_path, ca.key_path, ca.cert_path.read_bytes(), ca.key_path.read_bytes(), ca.subject
        )
        return cls(ssl, ca, org, days)

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        organization: str | None = None,
        server_names: Sequence[str] = (),
        client: bool = False,
    ) -> Issued:
        """``<stem>.crt``/``<stem>.key`` signed by this CA: serverAuth for ``server_names``, clientAuth
        when ``client``."""
        if not server_names and not client:
            raise PkiError(f"certificate {stem!r}: give server names, client=True, or both")
        cn = _subject_value("common name", common_name)
        org = _subject_value("organization", organization or self.organization)
        alt = tuple(_alt_name(n) for n in dict.fromkeys(server_names))
        usages = [u for u, on in (("serverAuth", bool(alt)), ("clientAuth", client)) if on]
        ext = {
            "basicConstraints": "critical, CA:FALSE",
            "keyUsage": "critical, digitalSignature",
            "extendedKeyUsage": ", ".join(usages),
            "authorityKeyIdentifier": "keyid",
        }
        if alt:
            ext["subjectAltName"] = ", ".join(alt)
        self._ssl.write(f"{stem}.cnf", _config(cn, org, ext))
        self._ssl.new_key_and_request(f"the {stem} key", stem)
        self._ssl.sign(f"the {stem} certificate", stem, issuer="ca", days=self.days)
        directory = self._ssl.directory
        os.chmod(directory / f"{stem}.key", 0o600)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        return Issued(cert, key, cert.read_bytes(), key.read_bytes(), f"CN={cn},O={org}", alt)

    def key_pair(self, stem: str) -> tuple[Path, Path]:
        """A bare EC P-256 key pair (``<stem>.key``, ``<stem>.pub``): a service-account signing key."""
        self._ssl(
            f"the {stem} key",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            f"{stem}.key",
        )
        self._ssl(f"the {stem} public key", "pkey", "-in", f"{stem}.key", "-pubout", "-out", f"{stem}.pub")
        directory = self._ssl.directory
        os.chmod(directory / f"{stem}.key", 0o600)
        return directory / f"{stem}.key", directory / f"{stem}.pub"
