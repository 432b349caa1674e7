"""The cluster reads and writes an upgrade run needs, as a protocol, and their implementation over
``harness.cluster.kube.Kube``.

Two of them are patches the Kubernetes client has no helper for: a namespace's labels (set some,
delete others: ``label_patch``) and ``kubectl rollout restart`` (a new pod-template annotation:
``restart_patch``). The tests give the run a fake that follows the same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from harness.cluster.kube import REQUEST_TIMEOUT_S

RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"


class UpgradeApi(Protocol):
    """Cluster reads and writes of an upgrade (``KubeUpgradeApi`` over ``harness.cluster.kube.Kube`` provides them)."""

    def deployment_exists(self, namespace: str, name: str) -> bool: ...

    def wait_rollout(
        self, namespace: str, name: str, *, deadline_s: float, interval_s: float = ...
    ) -> Any: ...

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    def namespace_exists(self, name: str) -> bool: ...

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None: ...

    def delete_namespace(self, name: str, *, deadline_s: float = ..., interval_s: float = ...) -> None: ...

    def label_namespace(self, name: str, labels: Mapping[str, str], remove: Sequence[str] = ()) -> None: ...

    def list_deployments(self, namespace: str) -> list[str]: ...

    def restart_deployment(self, namespace: str, name: str, restarted_at: str) -> None: ...


def label_patch(labels: Mapping[str, str], remove: Sequence[str] = ()) -> dict[str, Any]:
    """A merge patch of a namespace's labels: set ``labels``, delete ``remove`` (a null deletes a key)."""
    merged: dict[str, str | None] = {key: None for key in remove}
    merged.update(labels)
    return {"metadata": {"labels": merged}}


def restart_patch(restarted_at: str) -> dict[str, Any]:
    """The patch ``kubectl rollout restart`` sends: a new pod-template annotation, so new pods roll out."""
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}


class KubeUpgradeApi:
    """``UpgradeApi`` over a ``harness.cluster.kube.Kube`` (the helpers it lacks are the two patches above)."""

    PATCH_TYPE: Final = "application/strategic-merge-patch+json"

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    def deployment_exists(self, namespace: str, name: str) -> bool:
        return bool(self.kube.deployment_exists(namespace, name))

    def wait_rollout(self, namespace: str, name: str, *, deadline_s: float, interval_s: float = 2.0) -> Any:
        return self.kube.wait_rollout(namespace, name, deadline_s=deadline_s, interval_s=interval_s)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = self.kube.list_pods(namespace, selector)
        return pods

    def namespace_exists(self, name: str) -> bool:
        return bool(self.kube.namespace_exists(name))

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        self.kube.create_namespace(name, labels)

    def delete_namespace(self, name: str, *, deadline_s: float = 180.0, interval_s: float = 1.0) -> None:
        self.kube.delete_namespace(name, deadline_s=deadline_s, interval_s=interval_s)

    def label_namespace(self, name: str, labels: Mapping[str, str], remove: Sequence[str] = ()) -> None:
        self.kube.core.patch_namespace(
            name=name,
            body=label_patch(labels, remove),
            _content_type=self.PATCH_TYPE,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def list_deployments(self, namespace: str) -> list[str]:
        listing = self.kube.apps.list_namespaced_deployment(
            namespace=namespace, _request_timeout=REQUEST_TIMEOUT_S
        )
        items = self.kube.api_client.sanitize_for_serialization(listing).get("items") or []
        return sorted(str(item["metadata"]["name"]) for item in items)

    def restart_deployment(self, namespace: str, name: str, restarted_at: str) -> None:
        self.kube.apps.patch_namespaced_deployment(
            name=name,
            namespace=namespace,
            body=restart_patch(restarted_at),
            _content_type=self.PATCH_TYPE,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def close(self) -> None:
        self.kube.close()
