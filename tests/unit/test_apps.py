"""harness.cluster.apps: image builds against the fake ``docker``/``kind``, the relay manifest, the deployment
against a stand-in Kube."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cluster import apps
from harness.cluster.apps import (
    AppsError,
    RelayApps,
    build_app_image,
    check_relay_manifest,
    prepare_relay_image,
)
from harness.cluster.kube import ObjectRef, split_documents
from harness.cluster.providers.kind import KindCluster

PULL_ERROR = (
    "ERROR: failed to solve: python:3.12-slim: failed to resolve source metadata for "
    "docker.io/library/python:3.12-slim: dial tcp: lookup registry-1.docker.io: no such host\n"
)


def test_dockerfile_build_is_used_when_it_works(fakebin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apps, "build_local_python_image", _must_not_run)
    fakebin.rules(
        [{"tool": "docker", "args": ["build"], "stdout": "naming to istio-egress-harness/relay:dev\n"}]
    )
    assert build_app_image("relay", apps.RELAY_IMAGE) == apps.RELAY_IMAGE
    assert fakebin.commands() == [f"docker build -t istio-egress-harness/relay:dev {apps.APPS_DIR / 'relay'}"]


def _must_not_run(*args: Any, **kwargs: Any) -> str:
    raise AssertionError("the local-Python fallback must not run here")


def test_no_registry_falls_back_to_the_local_python_image(
    fakebin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[Any, ...]] = []

    def fake_local(tag: str, app: Path, *, script: str, timeout: float) -> str:
        built.append((tag, app, script))
        return f"{tag}:local-0123456789abcdef"

    monkeypatch.setattr(apps, "build_local_python_image", fake_local)
    fakebin.rules(
        [
            {"tool": "docker", "args": ["build"], "stderr": PULL_ERROR, "exit": 1},
            {"tool": "docker", "args": ["tag"]},
        ]
    )
    assert build_app_image("recorder", apps.RECORDER_IMAGE) == apps.RECORDER_IMAGE
    assert built == [("istio-egress-harness/recorder", apps.APPS_DIR / "recorder", "recorder.py")]
    assert fakebin.commands()[-1] == (
        "docker tag istio-egress-harness/recorder:local-0123456789abcdef istio-egress-harness/recorder:dev"
    )


def test_a_broken_dockerfile_is_not_hidden_by_the_fallback(
    fakebin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps, "build_local_python_image", _must_not_run)
    fakebin.rules(
        [
            {
                "tool": "docker",
                "args": ["build"],
                "stderr": "COPY failed: file not found: relay.py\n",
                "exit": 1,
            }
        ]
    )
    with pytest.raises(AppsError, match="COPY failed"):
        build_app_image("relay", apps.RELAY_IMAGE)


def test_dockerfile_mode_never_falls_back(fakebin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apps, "build_local_python_image", _must_not_run)
    fakebin.rules([{"tool": "docker", "args": ["build"], "stderr": PULL_ERROR, "exit": 1}])
    with pytest.raises(AppsError, match="no such host"):
        build_app_image("relay", apps.RELAY_IMAGE, mode="dockerfile")


def test_build_is_bounded_by_its_timeout(fakebin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apps, "build_local_python_image", _must_not_run)
    fakebin.rules([{"tool": "docker", "args": ["build"], "sleep": 30}])
    with pytest.raises(AppsError, match="did not finish within 1s"):
        build_app_image("relay", apps.RELAY_IMAGE, timeout_s=1)


def test_unknown_app_and_mode_are_refused() -> None:
    with pytest.raises(AppsError, match="no app 'nope'"):
        build_app_image("nope", "x:dev")
    with pytest.raises(ValueError, match="mode must be one of"):
        build_app_image("relay", "x:dev", mode="podman")  # type: ignore[arg-type]


def test_pull_failures_are_told_apart_from_other_failures() -> None:
    assert apps.is_pull_failure(PULL_ERROR)
    assert apps.is_pull_failure("pull access denied for python, repository does not exist")
    assert not apps.is_pull_failure("COPY failed: no source files were specified")


def test_relay_image_is_built_then_loaded_into_kind(fakebin: Any, tmp_path: Path) -> None:
    fakebin.rules([{"tool": "docker", "args": ["build"]}, {"tool": "kind", "args": ["load", "docker-image"]}])
    cluster = KindCluster("egress-unit", tmp_path)
    assert prepare_relay_image(cluster) == apps.RELAY_IMAGE
    assert fakebin.commands() == [
        f"docker build -t istio-egress-harness/relay:dev {apps.APPS_DIR / 'relay'}",
        "kind load docker-image istio-egress-harness/relay:dev --name egress-unit",
    ]


# --- the manifest ---------------------------------------------------------------------------------


def test_the_repository_manifest_has_the_chain_and_the_ingress_route() -> None:
    docs = split_documents(apps.RELAY_MANIFEST.read_text())
    check_relay_manifest(docs)
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    assert vs["spec"]["http"][0]["match"][0]["uri"]["prefix"] == "/proxy"


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("VirtualService", "routing prefix /proxy to proxy:8080"),
        ("Gateway", "no Gateway selecting istio=ingressgateway"),
        ("Deployment", "no Deployment 'proxy'"),
    ],
)
def test_an_incomplete_manifest_is_refused(drop: str, message: str) -> None:
    docs = split_documents(apps.RELAY_MANIFEST.read_text())
    kept = [
        d
        for d in docs
        if not (d["kind"] == drop and (drop != "Deployment" or d["metadata"]["name"] == "proxy"))
    ]
    with pytest.raises(AppsError, match=message):
        check_relay_manifest(kept)


def test_relay_documents_set_the_image() -> None:
    docs = apps.relay_documents("registry.example/relay:1")
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert images == {"proxy": "registry.example/relay:1", "target": "registry.example/relay:1"}


def _relay_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: next(
            c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "relay"
        )
        for d in docs
        if d["kind"] == "Deployment"
    }


def test_without_a_ca_the_relays_keep_the_images_trust_store() -> None:
    docs = apps.relay_documents("registry.example/relay:1")
    assert [d["kind"] for d in docs].count("ConfigMap") == 0
    for name, container in _relay_containers(docs).items():
        assert "volumeMounts" not in container, name
        assert "SSL_CERT_FILE" not in {e["name"] for e in container.get("env") or []}
    assert not any(d["spec"]["template"]["spec"].get("volumes") for d in docs if d["kind"] == "Deployment")
    # a RelayApps without a CA renders the manifest's objects, nothing else
    assert [d["kind"] for d in split_documents(RelayApps(object(), "ns-1").render())] == [  # type: ignore[arg-type]
        d["kind"] for d in docs
    ]


def test_with_a_ca_both_relays_mount_it_and_point_ssl_cert_file_at_it() -> None:
    docs = apps.relay_documents("registry.example/relay:1", ca_configmap="egress-harness-ca")
    containers = _relay_containers(docs)
    assert set(containers) == {"proxy", "target"}
    for name, container in containers.items():
        assert container["volumeMounts"] == [
            {"name": "egress-harness-ca", "mountPath": "/etc/egress-harness/ca", "readOnly": True}
        ], name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SSL_CERT_FILE"] == "/etc/egress-harness/ca/ca.crt"
        assert env["SERVICE_NAME"] == name  # the manifest's own variables stay
    for doc in (d for d in docs if d["kind"] == "Deployment"):
        assert doc["spec"]["template"]["spec"]["volumes"] == [
            {
                "name": "egress-harness-ca",
                "configMap": {"name": "egress-harness-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
            }
        ]
    # patching twice does not add a second volume, mount or variable
    apps.trust_ca(docs)
    for container in _relay_containers(docs).values():
        assert len(container["volumeMounts"]) == 1
        assert [e["name"] for e in container["env"]].count("SSL_CERT_FILE") == 1


def test_relay_apps_with_a_ca_apply_its_configmap_first() -> None:
    kube = StandInKube()
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    with RelayApps(kube, "egress-r1", ca_pem=pem) as relays:
        assert [r.kind for r in relays.refs][:2] == ["ConfigMap", "Deployment"]
        configmap = kube.applied[0]
        assert configmap["metadata"] == {"name": "egress-harness-ca", "namespace": "egress-r1"}
        assert configmap["data"] == {"ca.crt": pem.decode()}
        env = {e["name"]: e["value"] for e in _relay_containers(kube.applied)["target"]["env"]}
        assert env["SSL_CERT_FILE"] == "/etc/egress-harness/ca/ca.crt"
    assert kube.calls[-1] == ("delete", 7)  # the ConfigMap goes with the relays


# --- deploying against a stand-in Kube ------------------------------------------------------------


class StandInKube:
    def __init__(self, *, sidecar: bool = True, fail_rollout: str | None = None) -> None:
        self.sidecar = sidecar
        self.fail_rollout = fail_rollout
        self.calls: list[tuple[Any, ...]] = []
        self.applied: list[dict[str, Any]] = []

    def apply(self, text: str, namespace: str | None = None) -> list[ObjectRef]:
        docs = split_documents(text)
        self.applied = docs
        self.calls.append(("apply", namespace))
        return [ObjectRef(d["apiVersion"], d["kind"], d["metadata"]["name"], namespace) for d in docs]

    def delete_objects(self, refs: Any) -> None:
        self.calls.append(("delete", len(refs)))

    def wait_rollout(self, namespace: str, name: str, *, deadline_s: float = 0, interval_s: float = 2) -> Any:
        self.calls.append(("rollout", namespace, name, deadline_s))
        if name == self.fail_rollout:
            raise TimeoutError(f"rollout of {name} not done")
        return {}

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("pods", namespace, selector))
        app = selector[4:]
        template = next(
            (
                d["spec"]["template"]
                for d in self.applied
                if d["kind"] == "Deployment" and d["metadata"]["name"] == app
            ),
            {},
        )
        # as Istio's injection webhook: a pod labelled sidecar.istio.io/inject=false gets no sidecar
        skipped = ((template.get("metadata") or {}).get("labels") or {}).get(
            "sidecar.istio.io/inject"
        ) == "false"
        sidecar = self.sidecar and not skipped
        containers = [{"name": "relay"}] + ([{"name": "istio-proxy"}] if sidecar else [])
        return [{"metadata": {"name": f"{app}-abc"}, "spec": {"containers": containers}}]


def test_relay_apps_deploy_wait_verify_and_delete() -> None:
    kube = StandInKube()
    with RelayApps(kube, "egress-r1", rollout_timeout_s=42) as relays:
        assert {r.kind for r in relays.refs} == {"Deployment", "Service", "Gateway", "VirtualService"}
        assert {r.namespace for r in relays.refs} == {"egress-r1"}
        assert yaml.safe_load_all(relays.text)
    assert kube.calls == [
        ("apply", "egress-r1"),
        ("rollout", "egress-r1", "proxy", 42),
        ("pods", "egress-r1", "app=proxy"),
        ("rollout", "egress-r1", "target", 42),
        ("pods", "egress-r1", "app=target"),
        ("delete", 6),
    ]


def test_a_pod_without_sidecar_fails_and_the_apps_are_removed() -> None:
    kube = StandInKube(sidecar=False)
    with (
        pytest.raises(AppsError, match=r"without the istio-proxy sidecar.*istio-injection=enabled"),
        RelayApps(kube, "egress-r1"),
    ):
        pass
    assert kube.calls[-1] == ("delete", 6)


def _template(docs: list[dict[str, Any]], app: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == app]
    return dict(doc["spec"]["template"]["metadata"])


def test_a_caller_without_a_sidecar_is_labelled_so_and_checked_to_have_none() -> None:
    kube = StandInKube()
    with RelayApps(kube, "egress-r1", caller=apps.caller_pod("none")) as relays:
        assert _template(kube.applied, "target")["labels"]["sidecar.istio.io/inject"] == "false"
        assert "sidecar.istio.io/inject" not in _template(kube.applied, "proxy")["labels"]
        assert "annotations" not in _template(kube.applied, "target")
        assert relays.caller.sidecar is False
    # a target that got a sidecar anyway (the label ignored) is refused
    kube = StandInKube()
    kube.list_pods = (
        lambda namespace, selector: [  # type: ignore[method-assign]
            {"metadata": {"name": f"{selector[4:]}-abc"}, "spec": {"containers": [{"name": "istio-proxy"}]}}
        ]
    )
    with (
        pytest.raises(
            AppsError, match=r"pods of 'target' with the istio-proxy sidecar although the scenario's caller"
        ),
        RelayApps(kube, "egress-r1", caller=apps.caller_pod("none")),
    ):
        pass


def test_a_caller_whose_sidecar_excludes_the_external_address_is_annotated_with_it() -> None:
    kube = StandInKube()
    with RelayApps(kube, "egress-r1", caller=apps.caller_pod("excludes-external", "10.250.0.2")):
        target = _template(kube.applied, "target")
        assert target["annotations"] == {"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.250.0.2/32"}
        assert "annotations" not in _template(kube.applied, "proxy")
    assert apps.caller_pod("excludes-external", "fd00::2").annotations == {
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "fd00::2/128"
    }
    assert apps.caller_pod("injected") == apps.CallerPod()
    with pytest.raises(AppsError, match="needs the external host's address"):
        apps.caller_pod("excludes-external")
    with pytest.raises(AppsError, match=r"'external\.test' is not an IP address"):
        apps.caller_pod("excludes-external", "external.test")
    with pytest.raises(AppsError, match=r"unknown caller\.sidecar 'off'"):
        apps.caller_pod("off")


def test_native_sidecars_count_as_sidecars() -> None:
    pod = {"spec": {"containers": [{"name": "relay"}], "initContainers": [{"name": "istio-proxy"}]}}
    assert apps.has_sidecar(pod)
    assert not apps.has_sidecar({"spec": {"containers": [{"name": "relay"}]}})


def test_keep_leaves_the_apps(tmp_path: Path) -> None:
    kube = StandInKube()
    with RelayApps(kube, "egress-r1", keep=True) as relays:
        saved = relays.save(tmp_path / "manifests")
    assert all(c[0] != "delete" for c in kube.calls)
    assert "kind: VirtualService" in saved.read_text()


def _placement(docs: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    return {
        d["metadata"]["name"]: (
            d["spec"]["template"]["spec"].get("nodeSelector"),
            d["spec"]["template"]["spec"].get("tolerations"),
        )
        for d in docs
        if d["kind"] == "Deployment"
    }


def test_the_relays_are_placed_by_the_scheduler_unless_the_cluster_is_the_harnesss_own() -> None:
    """A managed cluster has no schedulable control-plane node: pinned relays would stay Pending."""
    for docs in (
        apps.relay_documents("registry.example/relay:1"),
        split_documents(RelayApps(object(), "ns-1").render()),  # type: ignore[arg-type]
        split_documents(RelayApps(object(), "ns-1", ca_pem=b"CA").render()),  # type: ignore[arg-type]
    ):
        assert _placement(docs) == {"proxy": (None, None), "target": (None, None)}


def test_on_the_harnesss_own_cluster_the_relays_run_on_the_control_plane_node() -> None:
    pinned = (
        {"node-role.kubernetes.io/control-plane": ""},
        [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
    )
    for docs in (
        apps.relay_documents("registry.example/relay:1", pin_to_control_plane=True),
        split_documents(RelayApps(object(), "ns-1", ca_pem=b"CA", pin_to_control_plane=True).render()),  # type: ignore[arg-type]
    ):
        assert _placement(docs) == {"proxy": pinned, "target": pinned}
    # pinning twice adds no second toleration; a node selector the pod has stays
    docs = apps.relay_documents("registry.example/relay:1")
    docs[1 if docs[0]["kind"] != "Deployment" else 0]["spec"]["template"]["spec"]["nodeSelector"] = {
        "disk": "ssd"
    }
    apps.pin_relays_to_control_plane(docs)
    apps.pin_relays_to_control_plane(docs)
    placement = _placement(docs)
    assert placement["proxy"] == ({"disk": "ssd", **pinned[0]}, pinned[1])
    assert placement["target"] == pinned
