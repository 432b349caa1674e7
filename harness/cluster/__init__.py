"""The kind cluster tier: a kind (or an existing) cluster with Istio, the recorders as the external
host, the relay apps, and the catalog's scenarios run on it, one namespace each.

- ``run``: :class:`E2ERun`, one run (its parts, their lifecycle, attaching to ``e2e up``'s run);
- ``namespace``: :class:`RunNamespace`, what a test does in a namespace of a run (the chain,
  scenarios applied and awaited, requests judged by the hop logs and the external host's record);
- ``tier``: :class:`ClusterTier`, the run behind the tier interface (``harness.tier``): a scenario
  in a namespace of its own;
- ``runner``: :class:`ScenarioRunner` (the catalog on the tier, through ``harness.runner``) and
  :class:`UpgradeCatalog`;
- ``options``, ``state``, ``errors``: :class:`E2EOptions`, :class:`RunState`, :class:`E2EError`;
- ``chain``, ``hosts``, ``requirements``, ``convergence``, ``credentials``, ``witness``, ``lock``,
  ``gatewayapi``: one concern each (their docstrings say which);
- ``providers/kind``, ``istio``, ``kube``, ``external``, ``apps``, ``images``, ``podlogs``,
  ``diagnostics``: the parts (the cluster, Istio, the Kubernetes API, the recorder containers, the
  relay apps, image builds, pod logs, what a failure keeps);
- ``cli``: ``egress-harness e2e ...``.

The names below are importable from here. They are loaded on first use, so that importing a part of
the tier (or building the command line) does not import all of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.cluster.apps import RelayApps
    from harness.cluster.chain import (
        CHAIN_READY_TIMEOUT_S,
        INGRESS_GATEWAY_NAME,
        INGRESS_PATH,
        RELAY_PORT,
        TARGET_APP,
        ChainResult,
        NamespaceRelays,
        chain_answered,
        chain_for,
        ingress_prefix,
        ingress_route,
        send_until_answered,
        target_url,
    )
    from harness.cluster.convergence import (
        CONVERGE_TIMEOUT_S,
        DEFAULT_GATEWAY,
        PROXY_CONTAINER,
        ConfigMarker,
        ProxyKind,
        ScenarioGateway,
        convergence_markers,
        image_tag,
        missing_markers,
        proxy_versions,
        scenario_gateway,
        wait_for_markers,
    )
    from harness.cluster.credentials import (
        PKI_DIR,
        CredentialSecret,
        credential_names,
        credential_secrets,
        load_pki,
        missing_sds_resources,
        pki_server_names,
        sds_secret_states,
    )
    from harness.cluster.diagnostics import Diagnostics
    from harness.cluster.errors import (
        ChainNotReadyError,
        ConvergenceError,
        E2EError,
        LockTimeoutError,
        RunStateError,
        ScenarioNotApplicable,
    )
    from harness.cluster.external import NameTakenError, RecorderContainer, RecorderTLS
    from harness.cluster.gatewayapi import (
        GATEWAY_API_CRDS_URL,
        GATEWAY_API_URL_ENV,
        GATEWAY_API_VERSION,
        GatewayApiCrds,
        crd_exists,
        fetch_gateway_api_crds,
        gateway_api_url,
    )
    from harness.cluster.hosts import (
        EXTERNAL_ALIAS,
        EXTERNAL_TLS_PORT,
        KIND_NETWORK,
        MTLS_ALIAS,
        RUN_LABEL,
        SCENARIO_LABEL,
        TEST_DOMAIN,
        UNREGISTERED_ALIAS,
        ScenarioHosts,
        check_run_names_free,
        dns_label,
        mtls_recorder_aliases,
        mtls_recorder_container,
        recorder_aliases,
        recorder_container,
        run_recorder_names,
        scenario_hosts,
        scenario_namespace_name,
    )
    from harness.cluster.istio import ISTIO_NAMESPACE, IstioInstall
    from harness.cluster.kube import Kube, ObjectRef
    from harness.cluster.lock import LOCK_TIMEOUT_S, ScenarioLock, exclusive_reason
    from harness.cluster.namespace import AppliedScenario, RequestOutcome, RunNamespace
    from harness.cluster.options import (
        ANALYZE_MODES,
        EXTERNAL_MODES,
        AnalyzeMode,
        E2EOptions,
        ExternalMode,
        new_run_id,
    )
    from harness.cluster.podlogs import PodLogSource
    from harness.cluster.providers.kind import Cluster, ExistingCluster, KindCluster
    from harness.cluster.requirements import (
        CREDENTIAL_REQUIREMENTS,
        INTERNET_SERVES,
        RECORDER_SERVES_DEFAULT,
        external_requirement,
        recorder_serves,
    )
    from harness.cluster.run import E2ERun
    from harness.cluster.runner import (
        MISSION,
        SCENARIO_FAILURES,
        ScenarioReport,
        ScenarioRunner,
        UpgradeCatalog,
        catalog_results,
        upgrade_problems,
    )
    from harness.cluster.state import RUN_STATE_ENV, RUN_STATE_FILE, RecorderState, RunState, recorder_state
    from harness.cluster.tier import SCENARIO_WAIT, ClusterStage, ClusterTier
    from harness.cluster.witness import (
        RunDiagnostics,
        caller_addresses,
        check_tls_record,
        expects_external_tls,
        handshake_hint,
    )

#: module -> the names it gives this package (loaded by :func:`__getattr__` on first use)
_EXPORTS: dict[str, str] = {
    "harness.cluster.apps": "RelayApps",
    "harness.cluster.chain": "CHAIN_READY_TIMEOUT_S INGRESS_GATEWAY_NAME INGRESS_PATH RELAY_PORT TARGET_APP ChainResult NamespaceRelays chain_answered chain_for ingress_prefix ingress_route send_until_answered target_url",
    "harness.cluster.convergence": "CONVERGE_TIMEOUT_S DEFAULT_GATEWAY PROXY_CONTAINER ConfigMarker ProxyKind ScenarioGateway convergence_markers image_tag missing_markers proxy_versions scenario_gateway wait_for_markers",
    "harness.cluster.credentials": "PKI_DIR CredentialSecret credential_names credential_secrets load_pki missing_sds_resources pki_server_names sds_secret_states",
    "harness.cluster.diagnostics": "Diagnostics",
    "harness.cluster.errors": "ChainNotReadyError ConvergenceError E2EError LockTimeoutError RunStateError ScenarioNotApplicable",
    "harness.cluster.external": "NameTakenError RecorderContainer RecorderTLS",
    "harness.cluster.gatewayapi": "GATEWAY_API_CRDS_URL GATEWAY_API_URL_ENV GATEWAY_API_VERSION GatewayApiCrds crd_exists fetch_gateway_api_crds gateway_api_url",
    "harness.cluster.hosts": "EXTERNAL_ALIAS EXTERNAL_TLS_PORT KIND_NETWORK MTLS_ALIAS RUN_LABEL SCENARIO_LABEL TEST_DOMAIN UNREGISTERED_ALIAS ScenarioHosts check_run_names_free dns_label mtls_recorder_aliases mtls_recorder_container recorder_aliases recorder_container run_recorder_names scenario_hosts scenario_namespace_name",
    "harness.cluster.istio": "ISTIO_NAMESPACE IstioInstall",
    "harness.cluster.kube": "Kube ObjectRef",
    "harness.cluster.lock": "LOCK_TIMEOUT_S ScenarioLock exclusive_reason",
    "harness.cluster.namespace": "AppliedScenario RequestOutcome RunNamespace",
    "harness.cluster.options": "ANALYZE_MODES EXTERNAL_MODES AnalyzeMode E2EOptions ExternalMode new_run_id",
    "harness.cluster.podlogs": "PodLogSource",
    "harness.cluster.providers.kind": "Cluster ExistingCluster KindCluster",
    "harness.cluster.requirements": "CREDENTIAL_REQUIREMENTS INTERNET_SERVES RECORDER_SERVES_DEFAULT external_requirement recorder_serves",
    "harness.cluster.run": "E2ERun",
    "harness.cluster.runner": "MISSION SCENARIO_FAILURES ScenarioReport ScenarioRunner UpgradeCatalog catalog_results upgrade_problems",
    "harness.cluster.state": "RUN_STATE_ENV RUN_STATE_FILE RecorderState RunState recorder_state",
    "harness.cluster.tier": "SCENARIO_WAIT ClusterStage ClusterTier",
    "harness.cluster.witness": "RunDiagnostics caller_addresses check_tls_record expects_external_tls handshake_hint",
}
_WHERE: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names.split()}

__all__ = [
    "ANALYZE_MODES",
    "CHAIN_READY_TIMEOUT_S",
    "CONVERGE_TIMEOUT_S",
    "CREDENTIAL_REQUIREMENTS",
    "DEFAULT_GATEWAY",
    "EXTERNAL_ALIAS",
    "EXTERNAL_MODES",
    "EXTERNAL_TLS_PORT",
    "GATEWAY_API_CRDS_URL",
    "GATEWAY_API_URL_ENV",
    "GATEWAY_API_VERSION",
    "INGRESS_GATEWAY_NAME",
    "INGRESS_PATH",
    "INTERNET_SERVES",
    "ISTIO_NAMESPACE",
    "KIND_NETWORK",
    "LOCK_TIMEOUT_S",
    "MISSION",
    "MTLS_ALIAS",
    "PKI_DIR",
    "PROXY_CONTAINER",
    "RECORDER_SERVES_DEFAULT",
    "RELAY_PORT",
    "RUN_LABEL",
    "RUN_STATE_ENV",
    "RUN_STATE_FILE",
    "SCENARIO_FAILURES",
    "SCENARIO_LABEL",
    "SCENARIO_WAIT",
    "TARGET_APP",
    "TEST_DOMAIN",
    "UNREGISTERED_ALIAS",
    "AnalyzeMode",
    "AppliedScenario",
    "ChainNotReadyError",
    "ChainResult",
    "Cluster",
    "ClusterStage",
    "ClusterTier",
    "ConfigMarker",
    "ConvergenceError",
    "CredentialSecret",
    "Diagnostics",
    "E2EError",
    "E2EOptions",
    "E2ERun",
    "ExistingCluster",
    "ExternalMode",
    "GatewayApiCrds",
    "IstioInstall",
    "KindCluster",
    "Kube",
    "LockTimeoutError",
    "NameTakenError",
    "NamespaceRelays",
    "ObjectRef",
    "PodLogSource",
    "ProxyKind",
    "RecorderContainer",
    "RecorderState",
    "RecorderTLS",
    "RelayApps",
    "RequestOutcome",
    "RunDiagnostics",
    "RunNamespace",
    "RunState",
    "RunStateError",
    "ScenarioGateway",
    "ScenarioHosts",
    "ScenarioLock",
    "ScenarioNotApplicable",
    "ScenarioReport",
    "ScenarioRunner",
    "UpgradeCatalog",
    "caller_addresses",
    "catalog_results",
    "chain_answered",
    "chain_for",
    "check_run_names_free",
    "check_tls_record",
    "convergence_markers",
    "crd_exists",
    "credential_names",
    "credential_secrets",
    "dns_label",
    "exclusive_reason",
    "expects_external_tls",
    "external_requirement",
    "fetch_gateway_api_crds",
    "gateway_api_url",
    "handshake_hint",
    "image_tag",
    "ingress_prefix",
    "ingress_route",
    "load_pki",
    "missing_markers",
    "missing_sds_resources",
    "mtls_recorder_aliases",
    "mtls_recorder_container",
    "new_run_id",
    "pki_server_names",
    "proxy_versions",
    "recorder_aliases",
    "recorder_container",
    "recorder_serves",
    "recorder_state",
    "run_recorder_names",
    "scenario_gateway",
    "scenario_hosts",
    "scenario_namespace_name",
    "sds_secret_states",
    "send_until_answered",
    "target_url",
    "upgrade_problems",
    "wait_for_markers",
]


def __getattr__(name: str) -> Any:
    """Load an exported name from its module on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
