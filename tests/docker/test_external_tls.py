"""The external host over TLS and mutual TLS, as a container on a named network under several aliases.

A client container on the same network (the same locally built image: it has Python with ``ssl``)
calls ``https://<alias>/...`` trusting the run's CA through ``SSL_CERT_FILE``, as the relays do in the
cluster tier; the recorder's record shows the SNI and the client container's address. Needs a running
Docker engine and the ``openssl`` tool.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from harness.cluster.external import (
    DEFAULT_ALIAS,
    TLS_CERT,
    TLS_CLIENT_CA,
    TLS_KEY,
    Container,
    ContainerStartError,
    RecorderContainer,
    RecorderTLS,
)
from harness.common.certs import TestPKI, generate_pki, openssl_unavailable_reason
from tests.docker.conftest import _docker, _leftovers, needs_docker

pytestmark = needs_docker

SCENARIO_ALIAS = "scenario-a.egress-harness.test"
CA_IN_CLIENT = "/etc/egress-harness/ca.crt"
CLIENT_CERT = "/etc/egress-harness/client.crt"
CLIENT_KEY = "/etc/egress-harness/client.key"

#: GET argv[1] with x-request-id argv[2]; prints the body, or the error and exits 1. The context is
#: Python's default one (so SSL_CERT_FILE decides what it trusts), plus a client certificate when
#: argv[3] and argv[4] name one.
CLIENT_SCRIPT = """
import ssl, sys, urllib.request
context = ssl.create_default_context()
if len(sys.argv) > 4:
    context.load_cert_chain(sys.argv[3], sys.argv[4])
request = urllib.request.Request(sys.argv[1], headers={"x-request-id": sys.argv[2]})
try:
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        print(answer.read().decode())
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    reason = openssl_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs the openssl tool: {reason}")
    return generate_pki(tmp_path_factory.mktemp("pki"), [DEFAULT_ALIAS, "*.egress-harness.test"])


@pytest.fixture
def network(owner: str) -> Iterator[str]:
    name = f"egress-harness-test-{secrets.token_hex(4)}"
    yield name
    assert _leftovers(owner) == ([], [])
    assert name not in _docker("network", "ls", "--format", "{{.Name}}").split()


def _client(
    image: str, network: str, owner: str, pki: TestPKI, *, trust: bool = True, cert: bool = False
) -> Container:
    files = {CA_IN_CLIENT: pki.ca.cert_pem}
    if cert:
        files |= {CLIENT_CERT: pki.client.cert_pem, CLIENT_KEY: pki.client.key_pem}
    return Container(
        image,
        network,
        command=["sleep", "300"],
        owner=owner,
        name=f"egress-harness-client-{secrets.token_hex(4)}",
        files=files,
        environment={"SSL_CERT_FILE": CA_IN_CLIENT} if trust else {},
    )


def _get(client: Container, url: str, request_id: str, *, cert: bool = False) -> tuple[int, str]:
    argv = ["timeout", "20", "python", "-c", CLIENT_SCRIPT, url, request_id]
    if cert:
        argv += [CLIENT_CERT, CLIENT_KEY]
    return client.exec(argv)


def test_https_by_each_alias_records_the_sni_and_the_client(
    image: str, network: str, owner: str, pki: TestPKI
) -> None:
    with RecorderContainer(
        image, network, aliases=[SCENARIO_ALIAS], tls=RecorderTLS.from_pki(pki), owner=owner
    ) as recorder:
        assert recorder.logs().startswith("listening on 0.0.0.0:80\nlistening tls on 0.0.0.0:443\n")
        assert recorder.aliases == [DEFAULT_ALIAS, SCENARIO_ALIAS]
        assert recorder.network_url(SCENARIO_ALIAS, scheme="https") == f"https://{SCENARIO_ALIAS}"
        with _client(image, network, owner, pki) as client:
            for alias, request_id in ((DEFAULT_ALIAS, "tls-default"), (SCENARIO_ALIAS, "tls-scenario")):
                code, output = _get(
                    client, f"{recorder.network_url(alias, scheme='https')}/hello", request_id
                )
                assert code == 0, output
                assert json.loads(output)["host"] == alias
                (record,) = recorder.wait_for_records(request_id, timeout=10)
                assert record["client_ip"] == client.container_ip
                assert record["host"] == alias
                assert record["path"] == "/hello"
                assert record["tls"]["sni"] == alias
                assert record["tls"]["version"] == "TLSv1.3"
                assert record["tls"]["client_cert_subject"] is None
            # plain HTTP still answers on port 80, under either alias, without a tls block
            code, output = client.exec(
                [
                    "timeout",
                    "20",
                    "wget",
                    "-q",
                    "-O-",
                    "--header",
                    "x-request-id: plain",
                    f"http://{SCENARIO_ALIAS}/",
                ]
            )
            assert code == 0, output
            (plain,) = recorder.wait_for_records("plain", timeout=10)
            assert plain["tls"] is None


def test_a_client_that_does_not_trust_the_ca_fails_and_leaves_no_record(
    image: str, network: str, owner: str, pki: TestPKI
) -> None:
    with (
        RecorderContainer(image, network, tls=RecorderTLS.from_pki(pki), owner=owner) as recorder,
        _client(image, network, owner, pki, trust=False) as client,
    ):
        code, output = _get(client, f"https://{DEFAULT_ALIAS}/x", "untrusted")
        assert code == 1
        assert "CERTIFICATE_VERIFY_FAILED" in output
        assert recorder.records() == []
        (failure,) = recorder.handshake_failures()
        assert failure["sni"] == DEFAULT_ALIAS
        assert failure["client_ip"] == client.container_ip


def test_mutual_tls_needs_the_client_certificate(image: str, network: str, owner: str, pki: TestPKI) -> None:
    with RecorderContainer(
        image, network, aliases=[SCENARIO_ALIAS], tls=RecorderTLS.from_pki(pki, mutual=True), owner=owner
    ) as recorder:
        url = f"https://{SCENARIO_ALIAS}/mutual"
        with _client(image, network, owner, pki, cert=True) as client:
            code, output = _get(client, url, "no-cert")
            assert code == 1, output
            # The client's wording depends on when the server's alert arrives (TLS 1.3 may show a bare
            # EOF); the proof is on the server's side: a refused handshake and no record.
            assert any(
                w in output.upper() for w in ("CERTIFICATE_REQUIRED", "CERTIFICATE REQUIRED", "EOF")
            ), output
            assert recorder.records() == []
            (failure,) = recorder.handshake_failures()
            assert (failure["sni"], failure["client_ip"]) == (SCENARIO_ALIAS, client.container_ip)

            code, output = _get(client, url, "with-cert", cert=True)
            assert code == 0, output
            (record,) = recorder.wait_for_records("with-cert", timeout=10)
            assert record["client_ip"] == client.container_ip
            assert record["tls"]["sni"] == SCENARIO_ALIAS
            assert record["tls"]["client_cert_subject"] == pki.client.subject


def test_tls_files_are_in_the_container_and_the_flags_name_them(pki: TestPKI) -> None:
    tls = RecorderTLS.from_pki(pki, mutual=True)
    assert tls.files() == {
        TLS_CERT: pki.server.cert_pem,
        TLS_KEY: pki.server.key_pem,
        TLS_CLIENT_CA: pki.ca.cert_pem,
    }
    assert tls.flags(8443) == [
        "--tls-port",
        "8443",
        "--cert",
        TLS_CERT,
        "--key",
        TLS_KEY,
        "--client-ca",
        TLS_CLIENT_CA,
    ]
    assert not RecorderTLS.from_pki(pki).mutual
    with pytest.raises(ValueError, match="lower-case DNS names: 'Bad_Alias'"):
        RecorderContainer("img", "net", aliases=["Bad_Alias"], client=object())
    with pytest.raises(ValueError, match="the TLS port 80 is the HTTP port too"):
        RecorderContainer("img", "net", tls=tls, tls_port=80, client=object())
    with pytest.raises(ValueError, match="serves no TLS"):
        RecorderContainer("img", "net", client=object()).network_url(scheme="https")
    with pytest.raises(ValueError, match="expected an absolute, normalised file path"):
        Container("img", "net", files={"relative/file": b""}, client=object())


def test_a_key_that_does_not_match_fails_the_start_with_the_recorder_message(
    image: str, network: str, owner: str, pki: TestPKI
) -> None:
    wrong = RecorderTLS(pki.server.cert_pem, pki.client.key_pem)
    bad = RecorderContainer(image, network, tls=wrong, owner=owner, ready_timeout=20)
    with pytest.raises(ContainerStartError) as info:
        bad.start()
    message = str(info.value)
    assert "exited with code 2" in message
    assert f"recorder: cannot load the TLS files (--cert {TLS_CERT} --key {TLS_KEY})" in message
    assert _leftovers(owner) == ([], [])
