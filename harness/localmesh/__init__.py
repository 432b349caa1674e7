"""The emulated local mesh: Istio's data plane (real Envoy processes) laid out like a mesh on loopback.

``LocalMesh`` starts the chain (relays, sidecar and egress gateway Envoys, the external host) from a
``Topology``; ``run_once`` judges one request down it (``egress-harness local run``); ``LocalTier``
offers it to the scenario runner (``harness.runner``), a catalog scenario's manifests translated into
its routing by ``plan_for`` (``NotEmulable`` when it has no image of them); ``run_locally`` runs one
scenario there, and ``harness.localmesh.cli`` adds ``egress-harness scenarios local`` (the catalog
on this tier) to the catalog's command group.
"""

from harness.localmesh.envoy import EnvoyError, EnvoyProcess, envoy_binary, envoy_version, validate_config
from harness.localmesh.mesh import (
    GATEWAY_SERVICE,
    MODES,
    AppProcess,
    GatewayRoute,
    LocalMesh,
    LocalMeshError,
    LogEncoding,
    Mode,
    RoutingPlan,
    SidecarRoute,
    Topology,
)
from harness.localmesh.plan import NotEmulable, plan_for
from harness.localmesh.run import LOCAL_WAIT, Verdict, run_once
from harness.localmesh.scenarios import run_locally
from harness.localmesh.tier import LOCAL_ISTIO_VERSION, LocalStage, LocalTier

__all__ = [
    "GATEWAY_SERVICE",
    "LOCAL_ISTIO_VERSION",
    "LOCAL_WAIT",
    "MODES",
    "AppProcess",
    "EnvoyError",
    "EnvoyProcess",
    "GatewayRoute",
    "LocalMesh",
    "LocalMeshError",
    "LocalStage",
    "LocalTier",
    "LogEncoding",
    "Mode",
    "NotEmulable",
    "RoutingPlan",
    "SidecarRoute",
    "Topology",
    "Verdict",
    "envoy_binary",
    "envoy_version",
    "plan_for",
    "run_locally",
    "run_once",
    "validate_config",
]
