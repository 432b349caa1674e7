"""The Gateway API CRDs on a cluster: whether they are there, and installing them for a run.

``--gateway-api`` (or ``e2e up --gateway-api``) installs the release pinned in
``harness.common.versions`` (``GATEWAY_API_VERSION``) when the cluster has none, before Istio, so
that istiod finds the Gateway API kinds when it starts; the download is cached, and
``EGRESS_HARNESS_GATEWAY_API_URL`` points it at a mirror. Without the CRDs the Gateway API scenarios
are skipped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from harness.cluster.errors import E2EError
from harness.cluster.kube import REQUEST_TIMEOUT_S, ObjectRef, RolloutCheck, WaitTimeoutError, wait_until
from harness.common import tools, versions
from harness.common.proc import progress

#: The Gateway API CRDs ``--gateway-api`` installs are pinned in harness/common/versions.py.
GATEWAY_API_VERSION: Final = versions.GATEWAY_API_VERSION
GATEWAY_API_CRDS_URL: Final = versions.GATEWAY_API_CRDS_URL
GATEWAY_API_URL_ENV: Final = "EGRESS_HARNESS_GATEWAY_API_URL"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_PROBE_CRD = "httproutes.gateway.networking.k8s.io"
GATEWAY_API_DOWNLOAD_TIMEOUT_S = 120.0
CRD_ESTABLISHED_TIMEOUT_S = 120.0

CRD_API_VERSION = "apiextensions.k8s.io/v1"


def _crd_resource(kube: Any) -> Any:
    return kube.dynamic.resources.get(api_version=CRD_API_VERSION, kind="CustomResourceDefinition")


def crd_exists(kube: Any, name: str) -> bool:
    """Whether the CustomResourceDefinition ``name`` is installed."""
    try:
        _crd_resource(kube).get(name=name, _request_timeout=REQUEST_TIMEOUT_S)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return False
        raise
    return True


def crd_established(crd: Mapping[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


GATEWAY_API_MODULE: Final = "sigs.k8s.io/gateway-api"
GO_TIMEOUT_S = 300.0


def gateway_api_from_go_module(version: str = GATEWAY_API_VERSION) -> str:
    """The standard-channel CRDs of ``version`` from the Go module proxy (``sigs.k8s.io/gateway-api``,
    ``config/crd/standard/*.yaml``: the files the release's standard-install.yaml is made of), for a
    machine that reaches the module proxy but not the release download."""
    import json
    import shutil

    from harness.common.proc import CommandError, run

    go = shutil.which("go")
    if go is None:
        raise E2EError("the Gateway API CRDs come from the Go module proxy here, and Go is not on PATH")
    try:
        out = run([go, "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{version}"], timeout=GO_TIMEOUT_S)
    except CommandError as exc:
        raise E2EError(
            f"could not fetch {GATEWAY_API_MODULE}@{version} from the Go module proxy: {exc}"
        ) from exc
    folder = Path(json.loads(out.stdout)["Dir"]) / "config" / "crd" / "standard"
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise E2EError(f"{folder} holds no CRD files")
    return "\n---\n".join(p.read_text(encoding="utf-8") for p in files)


def gateway_api_url() -> str:
    return os.environ.get(GATEWAY_API_URL_ENV) or GATEWAY_API_CRDS_URL


def fetch_gateway_api_crds(
    url: str, cache: Path | None = None, *, timeout_s: float = GATEWAY_API_DOWNLOAD_TIMEOUT_S
) -> str:
    """The Gateway API install manifest at ``url`` (cached in ``cache`` once fetched)."""
    if cache is not None and cache.is_file():
        return cache.read_text(encoding="utf-8")
    progress(f"downloading the Gateway API CRDs {url}")
    try:
        response = httpx.get(url, follow_redirects=True, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise E2EError(
            f"could not download the Gateway API CRDs from {url}: {exc} (set {GATEWAY_API_URL_ENV} to a mirror)"
        ) from exc
    text = response.text
    if "kind: CustomResourceDefinition" not in text:
        raise E2EError(f"{url} holds no CustomResourceDefinition: is it a Gateway API install manifest?")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", dir=cache.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, cache)
    return text


def gateway_api_cache(url: str) -> Path:
    return tools.default_cache_dir().parent / "gateway-api" / GATEWAY_API_VERSION / Path(url).name


class GatewayApiCrds:
    """The Gateway API CRDs on the cluster: installed (server-side apply) when missing, awaited until
    established, and removed again on exit only when installed here and ``remove()`` still says so
    (not for a cluster that is deleted anyway, nor when anything is kept)."""

    def __init__(
        self,
        kube: Any,
        *,
        url: str | None = None,
        cache: Path | None = None,
        keep: bool = False,
        remove: Callable[[], bool] = lambda: True,
        timeout_s: float = CRD_ESTABLISHED_TIMEOUT_S,
        source: Callable[[], str] | None = None,
    ) -> None:
        self.kube = kube
        #: where the manifest comes from instead of ``url`` (the netns provider: the Go module)
        self.source = source
        self.url = url or gateway_api_url()
        self.cache = cache
        self.keep = keep
        self.remove = remove
        self.timeout_s = timeout_s
        self.refs: list[ObjectRef] = []

    @property
    def installed(self) -> bool:
        return bool(self.refs)

    def install(self) -> GatewayApiCrds:
        if crd_exists(self.kube, GATEWAY_API_PROBE_CRD):
            progress("the Gateway API CRDs are installed already; used as they are (never removed)")
            return self
        text = self.source() if self.source is not None else fetch_gateway_api_crds(self.url, self.cache)
        progress(f"installing the Gateway API CRDs {GATEWAY_API_VERSION} (server-side apply)")
        try:
            self.refs = self.kube.apply(text)
            self.wait_established([r.name for r in self.refs if r.kind == "CustomResourceDefinition"])
        except BaseException:
            self.uninstall()
            raise
        return self

    def wait_established(self, names: Sequence[str]) -> None:
        resource = _crd_resource(self.kube)

        def pending() -> list[str]:
            out = []
            for name in names:
                found = resource.get(name=name, _request_timeout=REQUEST_TIMEOUT_S)
                body = found.to_dict() if hasattr(found, "to_dict") else dict(found)
                if not crd_established(body):
                    out.append(name)
            return out

        try:
            wait_until(
                pending,
                lambda left: RolloutCheck(not left, "not established yet: " + ", ".join(left)),
                what="Gateway API CRDs",
                deadline_s=self.timeout_s,
                interval_s=1.0,
            )
        except WaitTimeoutError as exc:
            raise E2EError(str(exc)) from exc

    def uninstall(self) -> None:
        if self.refs:
            progress("removing the Gateway API CRDs installed by this run")
            self.kube.delete_objects(self.refs)
            self.refs = []

    def __enter__(self) -> GatewayApiCrds:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        if not self.installed:
            return
        if self.keep or not self.remove():
            progress("leaving the Gateway API CRDs in place")
            return
        self.uninstall()
