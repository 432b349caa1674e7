"""CRD bundles: where the schemas come from.

A bundle is a multi-document YAML file of ``CustomResourceDefinition`` objects; it maps
(group, version, kind) to the ``openAPIV3Schema`` of each *served* version. A folder of Istio
bundles named by release (``1.28.10.yaml``, ``1.31-dev.yaml``) picks the bundle of a release
(:class:`IstioCrdDir`); the Gateway API CRDs are a folder of bundles used as they are. This module
also knows where the bundles are found (``$EGRESS_HARNESS_CRD_DIR``, the shared data, the download
cache) and downloads a release's bundle from Istio's repository.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.scenarios.issues import display_path
from harness.scenarios.loader import PROJECT_ROOT
from harness.scenarios.model import IstioVersion

__all__ = [
    "CACHE_DIR",
    "GATEWAY_API_GROUP",
    "ISTIO_RAW_BASE",
    "CrdBundle",
    "CrdError",
    "CrdVersion",
    "IstioCrdDir",
    "default_crd_dir",
    "default_gateway_api_dir",
    "download_istio_crds",
    "istio_crd_url",
    "load_bundle",
    "load_bundle_dir",
    "shared_dir",
]

ISTIO_RAW_BASE = "https://raw.githubusercontent.com/istio/istio"
CACHE_DIR = PROJECT_ROOT / ".cache" / "crds"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CrdError(Exception):
    """A CRD bundle or directory that cannot be used (missing, unreadable, no CRDs in it)."""


# ------------------------------------------------------------------------------------------ bundles


@dataclass(frozen=True)
class CrdVersion:
    """One served version of one CRD."""

    group: str
    version: str
    kind: str
    scope: str
    schema: Mapping[str, Any]
    deprecated: bool
    deprecation_warning: str | None
    source: Path

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@dataclass(frozen=True)
class CrdBundle:
    source: Path
    crds: Mapping[tuple[str, str, str], CrdVersion]

    @property
    def label(self) -> str:
        return self.source.name

    def lookup(self, group: str, version: str, kind: str) -> CrdVersion | None:
        return self.crds.get((group, version, kind))

    def served_versions(self, group: str, kind: str) -> tuple[str, ...]:
        return tuple(sorted(v for g, v, k in self.crds if g == group and k == kind))

    def kinds(self) -> tuple[tuple[str, str], ...]:
        """(group, kind) of every CRD, sorted."""
        return tuple(sorted({(g, k) for g, _, k in self.crds}))


def _parse_bundle(text: str, source: Path) -> CrdBundle:
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise CrdError(f"{display_path(source)}: not valid YAML: {exc}") from exc
    crds: dict[tuple[str, str, str], CrdVersion] = {}
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        try:
            spec = doc["spec"]
            group, kind, scope = spec["group"], spec["names"]["kind"], spec.get("scope", "Namespaced")
            for ver in spec["versions"]:
                if not ver.get("served", False):
                    continue
                schema = (ver.get("schema") or {}).get("openAPIV3Schema")
                if not isinstance(schema, dict):
                    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                crds[(group, ver["name"], kind)] = CrdVersion(
                    group=group,
                    version=ver["name"],
                    kind=kind,
                    scope=scope,
                    schema=schema,
                    deprecated=bool(ver.get("deprecated", False)),
                    deprecation_warning=ver.get("deprecationWarning"),
                    source=source,
                )
        except (KeyError, TypeError) as exc:
            name = (doc.get("metadata") or {}).get("name", "?")
            raise CrdError(
                f"{display_path(source)}: CRD {name}: malformed ({exc!r} missing or wrong)"
            ) from exc
    if not crds:
        raise CrdError(f"{display_path(source)}: no CustomResourceDefinition with a served version in it")
    return CrdBundle(source, crds)


@functools.lru_cache(maxsize=32)
def _load_bundle_cached(path: str, _mtime_ns: int, _size: int) -> CrdBundle:
    source = Path(path)
    return _parse_bundle(source.read_text(encoding="utf-8"), source)


def load_bundle(path: Path) -> CrdBundle:
    """Parse one bundle file; parsed once per process (re-read only if the file changes)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CrdError(f"{display_path(path)}: cannot read CRD bundle: {exc.strerror}") from exc
    return _load_bundle_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def load_bundle_dir(directory: Path) -> tuple[CrdBundle, ...]:
    """Every ``*.yaml`` bundle of ``directory``, sorted by file name."""
    if not directory.is_dir():
        raise CrdError(f"{display_path(directory)}: CRD folder does not exist")
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CrdError(f"{display_path(directory)}: no *.yaml CRD bundle in it")
    return tuple(load_bundle(f) for f in files)


@dataclass(frozen=True)
class IstioCrdDir:
    """A folder of Istio CRD bundles named by release: ``1.28.10.yaml``, ``1.31-dev.yaml``."""

    path: Path

    def _files(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        if self.path.is_dir():
            for f in self.path.glob("*.yaml"):
                with contextlib.suppress(ValueError):
                    IstioVersion.parse(f.stem)
                    out[f.stem] = f
        return out

    def versions(self) -> tuple[str, ...]:
        """The releases present, oldest first."""
        return tuple(sorted(self._files(), key=lambda v: IstioVersion.parse(v).sort_key))

    def bundle_path(self, version: str) -> Path:
        """The bundle of ``version``: its own file, or for a bare minor (``1.30``) its newest build."""
        files = self._files()
        if version in files:
            return files[version]
        wanted = IstioVersion.parse(version)
        if wanted.is_bare_minor:
            same = [v for v in files if IstioVersion.parse(v).minor_key == wanted.minor_key]
            if same:
                return files[max(same, key=lambda v: IstioVersion.parse(v).sort_key)]
        have = ", ".join(self.versions()) or "none"
        raise CrdError(
            f"{display_path(self.path)}: no CRD bundle for Istio {version} (have: {have}); "
            f"fetch it with `egress-harness scenarios fetch-crds {version}` or pass --crd-dir"
        )

    def bundle(self, version: str) -> CrdBundle:
        return load_bundle(self.bundle_path(version))


# --------------------------------------------------------------------------- locations and download


def shared_dir() -> Path | None:
    """The project's shared data: ``$EGRESS_HARNESS_SHARED``, else ``<repo>/../shared`` if present."""
    env = os.environ.get("EGRESS_HARNESS_SHARED")
    if env:
        return Path(env)
    candidate = PROJECT_ROOT.parent / "shared"
    return candidate if candidate.is_dir() else None


def default_crd_dir() -> Path:
    """``$EGRESS_HARNESS_CRD_DIR``, else the shared Istio CRDs, else the download cache ``.cache/crds``."""
    env = os.environ.get("EGRESS_HARNESS_CRD_DIR")
    if env:
        return Path(env)
    shared = shared_dir()
    if shared is not None and (shared / "istio" / "crds").is_dir():
        return shared / "istio" / "crds"
    return CACHE_DIR


def default_gateway_api_dir() -> Path | None:
    """``$EGRESS_HARNESS_GATEWAY_API_CRD_DIR``, else the shared Gateway API CRDs, else ``None``."""
    env = os.environ.get("EGRESS_HARNESS_GATEWAY_API_CRD_DIR")
    if env:
        return Path(env)
    shared = shared_dir()
    if shared is not None and (shared / "gateway-api" / "crds").is_dir():
        return shared / "gateway-api" / "crds"
    return None


def istio_crd_url(version: str, base_url: str = ISTIO_RAW_BASE) -> str:
    """Where a release's CRD bundle is published: the tag's ``crd-all.gen.yaml``; a ``-dev`` build
    reads master. Istio 1.23 and older keep it under ``crds/``, newer releases under ``files/``."""
    v = IstioVersion.parse(version)
    ref = "master" if v.prerelease == "dev" else version
    folder = "crds" if v.minor_key <= (1, 23) else "files"
    return f"{base_url.rstrip('/')}/{ref}/manifests/charts/base/{folder}/crd-all.gen.yaml"


def download_istio_crds(
    version: str, dest_dir: Path = CACHE_DIR, *, base_url: str = ISTIO_RAW_BASE, timeout: float = 30.0
) -> Path:
    """Fetch the CRD bundle of ``version`` into ``dest_dir/<version>.yaml`` (atomically: a temp file
    renamed into place once it parsed as CRDs). Returns the path."""
    import httpx

    url = istio_crd_url(version, base_url)
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise CrdError(f"download of {url} failed: {exc}") from exc
    if response.status_code != 200:
        raise CrdError(f"download of {url} failed: HTTP {response.status_code}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{version}.yaml"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{version}.", suffix=".tmp", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(response.content)
        _parse_bundle(tmp.read_text(encoding="utf-8"), Path(url))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
