"""The run's PKI (harness.common.certs): what openssl makes, that it verifies and handshakes as it should,
and the Secret data the cluster tier builds from it. Needs the `openssl` command line tool."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.certs import (
    DEFAULT_CLIENT_NAME,
    FILES,
    UNTRUSTED_DIR,
    PkiError,
    TestPKI,
    b64,
    configmap_manifest,
    generate_pki,
    openssl_unavailable_reason,
    secret_data,
    secret_manifest,
)

_reason = openssl_unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"needs the openssl tool: {_reason}")

HOST = "external.egress-harness.test"
WILDCARD = "*.egress-harness.test"
NAMES = [HOST, WILDCARD, "127.0.0.1"]
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    started = time.monotonic()
    made = generate_pki(tmp_path_factory.mktemp("pki"), NAMES)
    assert time.monotonic() - started < 10, "EC keys should take well under a second each"
    return made


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)


def _text(cert: Path) -> str:
    done = _openssl("x509", "-in", str(cert), "-noout", "-text")
    assert done.returncode == 0, done.stderr
    return done.stdout


# ------------------------------------------------------------------------------------ the files


def test_layout_is_fixed_and_keys_are_private(pki: TestPKI) -> None:
    assert sorted(p.name for p in pki.directory.iterdir()) == sorted([*FILES, UNTRUSTED_DIR])
    assert sorted(p.name for p in (pki.directory / UNTRUSTED_DIR).iterdir()) == [
        "ca.cnf",
        "ca.crt",
        "ca.csr",
        "ca.key",
    ]
    for issued in (pki.ca, pki.server, pki.client):
        assert issued.cert_path.parent == issued.key_path.parent == pki.directory
        assert issued.cert_pem == issued.cert_path.read_bytes()
        assert issued.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        assert issued.key_pem == issued.key_path.read_bytes()
        assert b"PRIVATE KEY-----" in issued.key_pem
        assert issued.key_path.stat().st_mode & 0o777 == 0o600
    assert (pki.ca.cert_path.name, pki.server.key_path.name, pki.client.cert_path.name) == (
        "ca.crt",
        "server.key",
        "client.crt",
    )


def test_certificates_verify_against_the_ca_and_not_another(pki: TestPKI, tmp_path: Path) -> None:
    done = _openssl(
        "verify", "-CAfile", str(pki.ca.cert_path), str(pki.server.cert_path), str(pki.client.cert_path)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": OK") == 2
    other = generate_pki(tmp_path / "other", [HOST])
    refused = _openssl("verify", "-CAfile", str(other.ca.cert_path), str(pki.server.cert_path))
    assert refused.returncode != 0
    assert "unable to get local issuer certificate" in refused.stdout + refused.stderr
    # the PKI's own untrusted CA signed neither certificate: what TLS origination with it must refuse
    assert pki.untrusted_ca is not None and pki.untrusted_ca.subject != pki.ca.subject
    for issued in (pki.server, pki.client):
        untrusted = _openssl("verify", "-CAfile", str(pki.untrusted_ca.cert_path), str(issued.cert_path))
        assert untrusted.returncode != 0
        assert "unable to get local issuer certificate" in untrusted.stdout + untrusted.stderr


def test_server_certificate_names_and_usages(pki: TestPKI) -> None:
    text = _text(pki.server.cert_path)
    assert f"DNS:{HOST}, DNS:{WILDCARD}, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    assert "CA:FALSE" in text
    assert "ASN1 OID: prime256v1" in text
    assert pki.server.alt_names == (f"DNS:{HOST}", f"DNS:{WILDCARD}", "IP:127.0.0.1")
    assert pki.server_names == tuple(NAMES)
    assert pki.server.subject == f"CN={HOST},O=istio-egress-harness"


def test_client_and_ca_certificates(pki: TestPKI) -> None:
    client = _text(pki.client.cert_path)
    assert "TLS Web Client Authentication" in client
    assert "Subject Alternative Name" not in client
    assert f"Subject: CN = {DEFAULT_CLIENT_NAME}, O = istio-egress-harness" in client
    assert pki.client.subject == f"CN={DEFAULT_CLIENT_NAME},O=istio-egress-harness"
    ca = _text(pki.ca.cert_path)
    assert "CA:TRUE" in ca
    assert "Certificate Sign" in ca


def test_a_second_call_replaces_every_file_with_new_certificates(tmp_path: Path) -> None:
    first = generate_pki(tmp_path, [HOST])
    second = generate_pki(tmp_path, [HOST], client_name="other-client")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*FILES, UNTRUSTED_DIR])
    assert first.ca.cert_pem != second.ca.cert_pem
    assert first.server.key_pem != second.server.key_pem
    assert second.client.subject.startswith("CN=other-client,")
    assert second.ca.cert_path.read_bytes() == second.ca.cert_pem


# -------------------------------------------------------------------------------- handshakes


class _TlsServer:
    """One-connection-at-a-time TLS server on loopback; remembers each peer's certificate subject."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.peers: list[object] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(TIMEOUT)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.peers.append(tls.getpeercert())
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(str(exc))
                conn.close()

    def __enter__(self) -> _TlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.sock.close()


def _server_context(pki: TestPKI, *, mutual: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    if mutual:
        context.load_verify_locations(cafile=pki.ca.cert_path)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _hello(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(5)


@pytest.fixture
def tls_server(pki: TestPKI) -> Iterator[_TlsServer]:
    with _TlsServer(_server_context(pki)) as server:
        yield server


@pytest.mark.parametrize("name", [HOST, "any-label.egress-harness.test", "127.0.0.1"])
def test_a_client_that_trusts_the_ca_completes_the_handshake(
    pki: TestPKI, tls_server: _TlsServer, name: str
) -> None:
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    assert _hello(tls_server.port, trusting, name) == b"hello"


def test_a_client_without_the_ca_refuses_the_server(pki: TestPKI, tls_server: _TlsServer) -> None:
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, but trusts no CA at all
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        _hello(tls_server.port, stranger, HOST)


@pytest.mark.parametrize("name", ["other.example", "a.b.egress-harness.test", "egress-harness.test"])
def test_a_name_the_certificate_does_not_hold_is_refused(
    pki: TestPKI, tls_server: _TlsServer, name: str
) -> None:
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _hello(tls_server.port, trusting, name)


def test_mutual_tls_accepts_the_client_certificate(pki: TestPKI) -> None:
    client = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    client.load_cert_chain(pki.client.cert_path, pki.client.key_path)
    with _TlsServer(_server_context(pki, mutual=True)) as server:
        assert _hello(server.port, client, HOST) == b"hello"
    (peer,) = server.peers
    assert isinstance(peer, dict)
    assert peer["subject"] == (
        (("commonName", DEFAULT_CLIENT_NAME),),
        (("organizationName", "istio-egress-harness"),),
    )


def test_mutual_tls_refuses_a_client_without_a_certificate(pki: TestPKI) -> None:
    client = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    with _TlsServer(_server_context(pki, mutual=True)) as server, pytest.raises(ssl.SSLError):
        # TLS 1.3: the client's side of the handshake ends first; the server's alert comes on read
        _hello(server.port, client, HOST)
    assert server.peers == []


# ------------------------------------------------------------------------------- Secret data


def test_secret_data_is_base64_of_the_pem(pki: TestPKI) -> None:
    data = pki.client_credential_data()
    assert list(data) == ["tls.crt", "tls.key", "ca.crt"]
    assert base64.b64decode(data["tls.crt"]) == pki.client.cert_pem
    assert base64.b64decode(data["tls.key"]) == pki.client.key_pem
    assert base64.b64decode(data["ca.crt"]) == pki.ca.cert_pem
    assert pki.server_ca_credential_data() == {"ca.crt": b64(pki.ca.cert_pem)}
    assert pki.untrusted_ca is not None
    assert pki.untrusted_ca_credential_data() == {"ca.crt": b64(pki.untrusted_ca.cert_pem)}
    assert b64("ab") == "YWI=" == b64(b"ab")
    assert secret_data({"k": b"\x00\xff"}) == {"k": "AP8="}


def test_manifests_for_secrets_and_configmaps(pki: TestPKI) -> None:
    secret = secret_manifest(
        "egress-harness-client-r1", "istio-system", pki.client_credential_data(), labels={"run": "r1"}
    )
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "egress-harness-client-r1",
            "namespace": "istio-system",
            "labels": {"run": "r1"},
        },
        "type": "Opaque",
        "data": pki.client_credential_data(),
    }
    configmap = configmap_manifest("egress-harness-ca", "egress-r1", {"ca.crt": pki.ca.cert_pem.decode()})
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"] == {"name": "egress-harness-ca", "namespace": "egress-r1"}
    assert configmap["data"] == {"ca.crt": pki.ca.cert_pem.decode()}


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "the server certificate needs at least one name"),
        (["Upper.Case.test"], "server name 'Upper.Case.test' is neither a lower-case DNS name"),
        (["a.test, DNS:evil.test"], "server name 'a.test, DNS:evil.test' is neither"),
        (["*.*.test"], "server name '*.*.test' is neither"),
    ],
)
def test_bad_names_are_refused_before_openssl_runs(tmp_path: Path, names: list[str], message: str) -> None:
    with pytest.raises(PkiError, match=message.replace("*", r"\*")):
        generate_pki(tmp_path / "pki", names)
    assert not (tmp_path / "pki").exists()


def test_a_bad_subject_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"client name 'a/CN=b'"):
        generate_pki(tmp_path, [HOST], client_name="a/CN=b")
    with pytest.raises(PkiError, match="days must be at least 1"):
        generate_pki(tmp_path, [HOST], days=0)


def test_a_missing_openssl_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        PkiError, match=r"the ca key: `/nonexistent/openssl` is not installed \(Debian: apt-get"
    ):
        generate_pki(tmp_path, [HOST], openssl="/nonexistent/openssl")
    assert openssl_unavailable_reason("/nonexistent/openssl") is not None
    assert openssl_unavailable_reason() is None


def test_a_failing_openssl_names_the_step_and_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "openssl"
    fake.write_text("#!/bin/sh\necho 'unable to load something' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(PkiError) as info:
        generate_pki(tmp_path / "pki", [HOST], openssl=str(fake))
    message = str(info.value)
    assert message.startswith("the ca key failed: command ")
    assert "exited with code 3" in message
    assert "unable to load something" in message
