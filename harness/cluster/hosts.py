"""The names a cluster run gives things: the external hosts and the recorders' aliases, scenario
namespaces, the labels on what it creates; and the recorder containers that answer to those names.

The external host of a run with ``external="container"`` is the recorder (apps/recorder) as a
container on kind's Docker network ``kind``, under the alias ``external.egress-harness.test`` (and
``unregistered.egress-harness.test`` for the REGISTRY_ONLY scenarios), serving HTTP on 80, a TCP
echo on 9000 and, with the run's PKI, HTTPS on 443; beside it a second recorder that requires client certificates of the
run's CA (mutual TLS) under ``mtls.egress-harness.test`` and ``mtls-<scenario>.egress-harness.test``.

Every scenario of the catalog has its own external host names (``<scenario>.egress-harness.test``,
``unregistered-<scenario>.egress-harness.test``; :func:`scenario_hosts`), so that scenarios running
at the same time never give the shared egress gateway two servers for one host; the recorder
answers to all of them (:func:`recorder_aliases`). Docker sets a container's network aliases when it
joins the network, so the names are computed from the catalog before the recorders start.

Why pods reach the recorder by its alias: kind's node entrypoint points the node's resolver at
Docker's embedded DNS and applies that redirect to traffic from pods too, and CoreDNS forwards names
outside the cluster domain to the node's resolver; Docker's DNS answers for the container names and
aliases on the ``kind`` network. The run checks the alias from the node before going on
(:func:`check_alias_resolves`).

Every kind cluster on a machine shares that network, and Docker's DNS answers a name with every
container that carries it: two runs at once would each reach the other's recorder. So the names are
exclusive: a run on kind refuses to start when a container on the network answers to one of its
recorders' names (:func:`check_run_names_free`, before the cluster and Istio), and each recorder
checks again when it starts (``harness.cluster.external.NameTakenError``). Two runs on one machine
therefore go one after the other, or one of them on the netns provider, whose names resolve only in
its own cluster (the kubelet's hosts file).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.cluster.errors import E2EError
from harness.cluster.external import (
    DEFAULT_ALIAS,
    DEFAULT_TLS_PORT,
    RecorderContainer,
    RecorderTLS,
    check_names_free,
)
from harness.cluster.requirements import external_requirement
from harness.common.certs import TestPKI
from harness.common.proc import progress, run

KIND_NETWORK = "kind"
EXTERNAL_ALIAS = DEFAULT_ALIAS
UNREGISTERED_ALIAS = "unregistered.egress-harness.test"
#: the mutual-TLS recorder's own name (it also answers to ``mtls-<scenario>.<domain>``)
MTLS_ALIAS = "mtls.egress-harness.test"
#: where the recorders serve HTTPS (RenderContext.external_tls_port's default)
EXTERNAL_TLS_PORT = DEFAULT_TLS_PORT
#: the harness's own test domain: every recorder alias is a name in it
TEST_DOMAIN = "egress-harness.test"
DEFAULT_INTERNET_HOST = "httpbin.org"
#: labels on every namespace a run creates (``e2e down`` finds leftovers by the first)
RUN_LABEL = "io.egress-harness.run"
SCENARIO_LABEL = "io.egress-harness.scenario"
DNS_CHECK_TIMEOUT_S = 20.0
DOCKER_RM_TIMEOUT_S = 60.0

_LABEL_MAX = 63


def dns_label(text: str) -> str:
    """``text`` as a DNS label: at most 63 characters, a long one cut and ended with a hash of it."""
    if len(text) <= _LABEL_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{text[: _LABEL_MAX - 7].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class ScenarioHosts:
    """The external host names of one scenario: its own, so parallel scenarios never share a host."""

    external: str
    unregistered: str
    #: the name the mutual-TLS recorder answers to for this scenario (``requires.external: mtls``)
    mtls: str = ""


def scenario_hosts(scenario: str, *, domain: str = TEST_DOMAIN) -> ScenarioHosts:
    """``<scenario>.<domain>``, ``unregistered-<scenario>.<domain>`` and ``mtls-<scenario>.<domain>``
    (each label at most 63)."""
    return ScenarioHosts(
        external=f"{dns_label(scenario)}.{domain}",
        unregistered=f"{dns_label(f'unregistered-{scenario}')}.{domain}",
        mtls=f"{dns_label(f'mtls-{scenario}')}.{domain}",
    )


def recorder_aliases(scenarios: Iterable[str], *, domain: str = TEST_DOMAIN) -> list[str]:
    """Every name the recorder must answer to: the default hosts, then each scenario's two hosts.

    Docker sets a container's network aliases when it joins the network, so the list is computed
    from the catalog before the recorder starts. Order kept, duplicates dropped.
    """
    names = [EXTERNAL_ALIAS, UNREGISTERED_ALIAS]
    for scenario in scenarios:
        hosts = scenario_hosts(scenario, domain=domain)
        names += [hosts.external, hosts.unregistered]
    return list(dict.fromkeys(names))


def mtls_recorder_aliases(scenarios: Iterable[Any], *, domain: str = TEST_DOMAIN) -> list[str]:
    """The names the mutual-TLS recorder answers to: :data:`MTLS_ALIAS`, then ``mtls-<scenario>``
    of each scenario whose external host must require client certificates (``requires.external:
    mtls``). Order kept, duplicates dropped."""
    names = [MTLS_ALIAS]
    for scenario in scenarios:
        if external_requirement(scenario) == "mtls":
            names.append(scenario_hosts(scenario.name, domain=domain).mtls)
    return list(dict.fromkeys(names))


def scenario_namespace_name(prefix: str, scenario: str) -> str:
    """The namespace a scenario runs in: ``<prefix>-<scenario>`` as a DNS label."""
    return dns_label(f"{prefix}-{scenario}")


def recorder_container(
    image: str,
    *,
    run_id: str,
    host: str = EXTERNAL_ALIAS,
    port: int = 80,
    aliases: Iterable[str] = (),
    pki: TestPKI | None = None,
) -> RecorderContainer:
    """The recorder as the run's external host on kind's network: HTTP on ``port``, with ``pki`` also
    HTTPS on :data:`EXTERNAL_TLS_PORT` with the run's server certificate (no client certificates
    asked). Docker takes a container's aliases when it joins the network: all of them, up front."""
    return RecorderContainer(
        image,
        network=KIND_NETWORK,
        alias=host,
        port=port,
        aliases=list(aliases),
        tls=RecorderTLS.from_pki(pki) if pki is not None else None,
        tls_port=EXTERNAL_TLS_PORT,
        owner=f"e2e-{run_id}",
        labels={RUN_LABEL: run_id},
    )


def mtls_recorder_container(
    image: str, pki: TestPKI, *, run_id: str, port: int = 80, aliases: Iterable[str] = ()
) -> RecorderContainer:
    """The recorder that requires client certificates of the run's CA on :data:`EXTERNAL_TLS_PORT`
    (HTTP on ``port`` for its control API), under :data:`MTLS_ALIAS` and ``aliases``
    (:func:`mtls_recorder_aliases`)."""
    return RecorderContainer(
        image,
        network=KIND_NETWORK,
        alias=MTLS_ALIAS,
        port=port,
        aliases=list(aliases),
        tls=RecorderTLS.from_pki(pki, mutual=True),
        tls_port=EXTERNAL_TLS_PORT,
        name=f"egress-harness-mtls-recorder-{secrets.token_hex(4)}",
        owner=f"e2e-{run_id}",
        labels={RUN_LABEL: run_id},
    )


def run_recorder_names(
    host: str, aliases: Iterable[str], mtls_aliases: Iterable[str], *, mtls: bool
) -> list[str]:
    """Every name a run's recorders take on kind's network: the recorder's (``host``, the
    unregistered alias, ``aliases``), with ``mtls`` the mutual-TLS recorder's too."""
    names = [host, UNREGISTERED_ALIAS, *aliases]
    if mtls:
        names += [MTLS_ALIAS, *mtls_aliases]
    return list(dict.fromkeys(names))


def check_run_names_free(names: Iterable[str], *, run_id: str) -> None:
    """Before a run's minutes of work: no container on kind's network answers to a name its
    recorders will take (another run's recorder, say); else :class:`NameTakenError` naming it.
    The recorders check again when they start (``harness.cluster.external``)."""
    check_names_free(KIND_NETWORK, list(names), what=f"the recorders of run {run_id}")


def close_docker_client(recorder: Any) -> None:
    """Close a recorder handle's Docker client without touching the container."""
    client = getattr(recorder, "_client", None)
    if client is not None and getattr(recorder, "_own_client", False):
        client.close()
        recorder._client = None


def check_alias_resolves(node: str, alias: str) -> None:
    """``alias`` resolves on the kind node ``node`` (the resolver CoreDNS forwards to); else
    E2EError, so that a run stops early when its pods could not reach the recorder by name."""
    done = run(
        ["docker", "exec", node, "getent", "ahostsv4", alias], timeout=DNS_CHECK_TIMEOUT_S, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise E2EError(
            f"{alias} does not resolve on the kind node {node} (exit {done.returncode}): the recorder is not "
            f"reachable by name from the cluster; is it on the Docker network {KIND_NETWORK!r}?"
        )
    progress(f"{alias} resolves on {node}: {done.stdout.split()[0]}")
