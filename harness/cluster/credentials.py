"""TLS credentials of a cluster run: its PKI, the credential Secrets scenarios ask for, and whether
the egress gateway holds them.

With ``external="container"`` a run makes its PKI (``harness.common.certs``: a CA, a server
certificate for every recorder alias and ``*.<domain>`` (:func:`pki_server_names`), a client
certificate) in ``<run dir>/pki``; a process attached to the run reads it back (:func:`load_pki`).

A scenario that names a credential (``requires.client_credential``,
``requires.server_ca_credential``) gets it as a Secret in the gateway's namespace (``istio-system``;
the egress gateway reads credentials from its own namespace), named after the scenario and its
namespace so parallel scenarios never share one (:func:`credential_names`), created just before the
scenario is applied and deleted after its objects are gone, also when it failed
(:func:`create_credentials`, :func:`delete_credentials`). The run then waits until the egress
gateway's Envoy holds the credential as an active SDS secret (``istioctl proxy-config secret``;
:func:`wait_for_gateway_secrets`; :func:`credential_secrets` says which).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from harness.cluster.convergence import (
    CONVERGE_INTERVAL_S,
    CONVERGE_TIMEOUT_S,
    DEFAULT_GATEWAY,
    ScenarioGateway,
)
from harness.cluster.errors import ConvergenceError, E2EError
from harness.cluster.hosts import EXTERNAL_ALIAS, MTLS_ALIAS, UNREGISTERED_ALIAS, dns_label
from harness.cluster.kube import ObjectRef, RolloutCheck, WaitTimeoutError, wait_until
from harness.common.certs import UNTRUSTED_DIR, Issued, PkiError, TestPKI, secret_manifest
from harness.common.proc import CommandError, progress

#: the run's PKI, under the run directory
PKI_DIR = "pki"


def pki_server_names(
    host: str = EXTERNAL_ALIAS, aliases: Iterable[str] = (), mtls_aliases: Iterable[str] = ()
) -> list[str]:
    """The names the recorders' server certificate must carry: ``host``, the unregistered alias,
    the recorder's other aliases (:func:`recorder_aliases`), the mTLS recorder's
    (:func:`mtls_recorder_aliases`), and ``*.<domain>`` of ``host`` (the domain as
    ``RenderContext.external_host_domain`` derives it; the wildcard scenario's hosts). Order kept,
    duplicates dropped."""
    names = [host, UNREGISTERED_ALIAS, *aliases, MTLS_ALIAS, *mtls_aliases]
    domain = host.partition(".")[2]
    if domain:
        names.append(f"*.{domain}")
    return list(dict.fromkeys(names))


def _cnf_values(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith(("#", "[")):
            values.setdefault(key.strip(), value.strip())
    return values


def load_pki_part(directory: Path, stem: str) -> Issued:
    """One certificate of a PKI in ``directory``: ``<stem>.crt``/``.key`` as PEM bytes, its subject
    and subjectAltNames from ``<stem>.cnf``. Raises E2EError naming what is missing."""
    try:
        values = _cnf_values(directory / f"{stem}.cnf")
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        raise E2EError(f"the run's PKI in {directory} cannot be read: {exc.strerror or exc}") from exc
    if "CN" not in values or "O" not in values:
        raise E2EError(
            f"{directory / f'{stem}.cnf'} names no subject (CN and O): not a PKI of harness.common.certs"
        )
    alt = tuple(a.strip() for a in values.get("subjectAltName", "").split(",") if a.strip())
    return Issued(cert, key, cert_pem, key_pem, f"CN={values['CN']},O={values['O']}", alt)


def load_pki(directory: Path) -> TestPKI:
    """The PKI :func:`harness.common.certs.generate_pki` wrote into ``directory`` (another process's run),
    read back from its fixed files: PEM bytes from the ``.crt``/``.key`` files, subjects and
    subjectAltNames from the ``.cnf`` files it was made with, and the untrusted CA when there is one.
    Raises E2EError naming what is missing."""

    def issued(stem: str) -> Issued:
        return load_pki_part(directory, stem)

    untrusted = None
    if (directory / UNTRUSTED_DIR / "ca.crt").exists():  # a PKI made before there was one has none
        untrusted = load_pki_part(directory / UNTRUSTED_DIR, "ca")
    return TestPKI(directory, issued("ca"), issued("server"), issued("client"), untrusted)


#: how Istio names the SDS resource of a ``credentialName`` (pilot/pkg/model/credentials:
#: ``kubernetes://<name>``), and the suffix of its CA part (``SdsCaSuffix``, ``-cacert``)
SDS_PREFIX = "kubernetes://"
SDS_CA_SUFFIX = "-cacert"


class CredentialNames(TypedDict, total=False):
    """RenderContext's credential Secret names (all three, or none: the context's defaults)."""

    client_credential_name: str
    ca_credential_name: str
    untrusted_ca_credential_name: str


def credential_names(namespace: str, scenario: str) -> CredentialNames:
    """The credential Secret names of ``scenario`` in ``namespace`` (RenderContext's
    ``client_credential_name``, ``ca_credential_name`` and ``untrusted_ca_credential_name``): one set
    per scenario and namespace, so
    scenarios running at the same time never share a Secret. DNS labels, never starting with
    ``istio`` or ending in ``-cacert`` (Istio reserves those)."""
    return CredentialNames(
        client_credential_name=dns_label(f"eh-client-{namespace}-{scenario}"),
        ca_credential_name=dns_label(f"eh-ca-{namespace}-{scenario}"),
        untrusted_ca_credential_name=dns_label(f"eh-untrusted-{namespace}-{scenario}"),
    )


@dataclass(frozen=True)
class CredentialSecret:
    """A Secret a scenario asks the run for, in the gateway's namespace.

    ``sds_resources`` are the SDS resources the egress gateway's Envoy asks istiod for once a
    DestinationRule names the Secret, as Istio's cluster builder names them: MUTUAL origination
    takes the certificate and key (``kubernetes://<name>``) and the CA that verifies the server
    (``kubernetes://<name>-cacert``, which istiod serves from ``<name>-cacert`` or else from the
    ``ca.crt`` of ``<name>``); SIMPLE origination takes only ``kubernetes://<name>-cacert``.
    """

    requirement: str
    name: str
    namespace: str
    data: Mapping[str, str]
    sds_resources: tuple[str, ...]

    def manifest(self, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        return dict(secret_manifest(self.name, self.namespace, self.data, labels=labels))

    def __str__(self) -> str:
        return f"Secret {self.namespace}/{self.name} (requires.{self.requirement})"


def credential_secrets(scenario: Any, ctx: Any, pki: TestPKI) -> list[CredentialSecret]:
    """The Secrets ``scenario`` needs, named and placed as ``ctx`` renders it."""
    needs = scenario.requires
    out: list[CredentialSecret] = []
    if getattr(needs, "client_credential", False):
        name = str(ctx.client_credential_name)
        out.append(
            CredentialSecret(
                "client_credential",
                name,
                str(ctx.gateway_namespace),
                pki.client_credential_data(),
                (f"{SDS_PREFIX}{name}", f"{SDS_PREFIX}{name}{SDS_CA_SUFFIX}"),
            )
        )
    if getattr(needs, "server_ca_credential", False):
        name = str(ctx.ca_credential_name)
        out.append(
            CredentialSecret(
                "server_ca_credential",
                name,
                str(ctx.gateway_namespace),
                pki.server_ca_credential_data(),
                (f"{SDS_PREFIX}{name}{SDS_CA_SUFFIX}",),
            )
        )
    if getattr(needs, "untrusted_ca_credential", False):
        name = str(ctx.untrusted_ca_credential_name)
        try:
            data = pki.untrusted_ca_credential_data()
        except PkiError as exc:
            raise E2EError(f"scenario {scenario.name} (requires.untrusted_ca_credential): {exc}") from exc
        out.append(
            CredentialSecret(
                "untrusted_ca_credential",
                name,
                str(ctx.gateway_namespace),
                data,
                (f"{SDS_PREFIX}{name}{SDS_CA_SUFFIX}",),
            )
        )
    return out


SdsState = Literal["ACTIVE", "WARMING"]


def sds_secret_states(text: str) -> dict[str, SdsState]:
    """The SDS secrets of ``istioctl proxy-config secret <pod> -o json`` (Envoy's SecretsConfigDump,
    camelCase as istioctl prints it or snake_case as Envoy's admin API does; also inside a whole
    config dump's ``configs``): name -> ACTIVE (Envoy holds it) or WARMING (asked for, not served).
    Raises ValueError when the text is not such JSON."""
    if not text.strip():
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    dumps = [data]
    for config in data.get("configs") or []:
        if isinstance(config, dict):
            dumps.append(config)
    states: dict[str, SdsState] = {}
    for dump in dumps:
        for state, keys in (
            ("WARMING", ("dynamicWarmingSecrets", "dynamic_warming_secrets")),
            ("ACTIVE", ("dynamicActiveSecrets", "dynamic_active_secrets")),
        ):
            for key in keys:
                for item in dump.get(key) or []:
                    name = (item or {}).get("name")
                    if name and (state == "ACTIVE" or name not in states):
                        states[str(name)] = "ACTIVE" if state == "ACTIVE" else "WARMING"
    return states


def missing_sds_resources(
    wanted: Sequence[str], states_by_pod: Mapping[str, Mapping[str, str] | str]
) -> list[tuple[str, str, str]]:
    """``(pod, resource, why)`` for each wanted resource a gateway pod does not hold as ACTIVE; a pod
    whose output could not be read maps to the reason (a string)."""
    out: list[tuple[str, str, str]] = []
    for pod, states in sorted(states_by_pod.items()):
        for resource in wanted:
            if isinstance(states, str):
                out.append((pod, resource, states))
            elif states.get(resource) != "ACTIVE":
                out.append((pod, resource, "warming" if resource in states else "not requested"))
    return out


# --- the Secrets on the cluster, and the gateway taking them ---------------------------------------


def create_credentials(
    kube: Any, credentials: Sequence[CredentialSecret], labels: Mapping[str, str], *, scenario: str
) -> list[ObjectRef]:
    """Server-side apply each Secret (labelled with ``labels``); on a failure the ones made are
    deleted again. Their content is never written to the run directory."""
    refs: list[ObjectRef] = []
    try:
        for credential in credentials:
            progress(f"creating {credential} for scenario {scenario}")
            refs += kube.apply(json.dumps(credential.manifest(labels)), namespace=credential.namespace)
    except BaseException:
        delete_credentials(kube, refs)
        raise
    return refs


def delete_credentials(kube: Any, refs: Sequence[ObjectRef]) -> None:
    """Delete the credential Secrets ``refs``."""
    if refs:
        progress("deleting " + ", ".join(f"Secret {r.namespace}/{r.name}" for r in refs))
        kube.delete_objects(list(refs))


def wait_for_gateway_secrets(
    credentials: Sequence[CredentialSecret],
    *,
    pods: Callable[[str, str], Sequence[Mapping[str, Any]]],
    dump: Callable[[str, str], str],
    gateway: ScenarioGateway | None = None,
    deadline_s: float = CONVERGE_TIMEOUT_S,
    interval_s: float = CONVERGE_INTERVAL_S,
) -> float:
    """Poll every gateway pod's SDS secrets (``dump(pod, namespace)`` of each of ``pods(namespace,
    selector)``) until each credential's resources are ACTIVE there; the seconds it took.
    ConvergenceError naming the Secret(s) at the deadline."""
    if not credentials:
        return 0.0
    gw = gateway or DEFAULT_GATEWAY
    wanted = [r for c in credentials for r in c.sds_resources]
    owner = {r: c for c in credentials for r in c.sds_resources}
    started = time.monotonic()

    def fetch() -> dict[str, dict[str, SdsState] | str]:
        out: dict[str, dict[str, SdsState] | str] = {}
        for listed in pods(gw.namespace, gw.selector):
            pod = f"{listed['metadata']['name']}.{gw.namespace}"
            try:
                out[pod] = sds_secret_states(dump(listed["metadata"]["name"], gw.namespace))
            except ValueError as exc:
                out[pod] = f"unreadable `istioctl proxy-config secret` output ({exc})"
        return out

    def decide(states: dict[str, dict[str, SdsState] | str]) -> RolloutCheck:
        if not states:
            return RolloutCheck(False, f"no gateway pod matches {gw.selector} in {gw.namespace}")
        missing = missing_sds_resources(wanted, states)
        if not missing:
            return RolloutCheck(True, "active")
        return RolloutCheck(
            False, "; ".join(f"{pod}: {res} {why} ({owner[res]})" for pod, res, why in missing)
        )

    names = ", ".join(str(c) for c in credentials)
    try:
        wait_until(
            fetch,
            decide,
            what=f"the gateway taking the credential {names}",
            deadline_s=deadline_s,
            interval_s=interval_s,
        )
    except WaitTimeoutError as exc:
        raise ConvergenceError(
            f"{exc} (is the Secret complete, and in the namespace of the gateway's pods?)"
        ) from exc
    except CommandError as exc:
        raise ConvergenceError(f"could not read the gateway's secrets for {names}: {exc}") from exc
    took = round(time.monotonic() - started, 3)
    progress(f"the gateway holds {names} after {took:.1f}s")
    return took
