"""CRD bundles: where the schemas come from.

A bundle is a multi-document YAML file of ``CustomResourceDefinition`` objects; it maps
(group, version, kind) to the ``openAPIV3Schema`` of each *served* version. A folder of Istio
bundles named by release (``1.28.10.yaml``, ``1.31-dev.yaml``) picks the bundle of a release
(:class:`IstioCrdDir`). A folder of Gateway API bundles holds releases of the Gateway API; each
Istio release is checked against the one its ``go.mod`` pins (:func:`choose_gateway_api_bundles`).
This module also knows where the bundles are found (``$EGRESS_HARNESS_CRD_DIR``, the shared data,
the download cache) and downloads a release's bundle from Istio's repository.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
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
    "GATEWAY_API_PINS",
    "ISTIO_RAW_BASE",
    "CrdBundle",
    "CrdError",
    "CrdVersion",
    "GatewayApiChoice",
    "IstioCrdDir",
    "choose_gateway_api_bundles",
    "default_crd_dir",
    "default_gateway_api_dir",
    "download_istio_crds",
    "gateway_api_pin",
    "istio_crd_url",
    "load_bundle",
    "load_bundle_dir",
    "shared_dir",
]

ISTIO_RAW_BASE = "https://raw.githubusercontent.com/istio/istio"
CACHE_DIR = PROJECT_ROOT / ".cache" / "crds"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
#: the annotation every Gateway API CRD carries with the release it belongs to
GATEWAY_API_BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"
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
    #: the Gateway API release of a Gateway API bundle (``v1.5.1``): its CRDs' bundle-version
    #: annotation, else a ``vX.Y.Z`` file name; ``None`` for any other bundle
    gateway_api_version: str | None = None

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
    releases: set[str] = set()
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        if isinstance(annotations.get(GATEWAY_API_BUNDLE_VERSION), str):
            releases.add(annotations[GATEWAY_API_BUNDLE_VERSION])
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
    named = _GATEWAY_API_FILE.match(source.name)
    if len(releases) == 1:
        release: str | None = releases.pop()
    elif not releases and named and any(g == GATEWAY_API_GROUP for g, _, _ in crds):
        release = f"v{named.group(1)}.{named.group(2)}.{named.group(3)}"
    else:
        release = None
    return CrdBundle(source, crds, release)


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


# ------------------------------------------------------- Gateway API: the release Istio pins

#: ``sigs.k8s.io/gateway-api`` in istio/istio's ``go.mod`` at each release tag: Istio minor -> (first
#: patch, module version) from that patch on. Read with ``git show <tag>:go.mod`` in istio/istio for
#: every tag 1.23.0 to 1.30.3; 1.31 is master at 86c9f01 (the commit of the shared 1.31-dev bundle).
#: Pseudo-versions are pre-releases of the tag they name (v1.2.1-0.2024... is before v1.2.1).
GATEWAY_API_PINS: Mapping[tuple[int, int], tuple[tuple[int, str], ...]] = {
    (1, 23): ((0, "v1.1.0"),),
    (1, 24): ((0, "v1.2.0"), (2, "v1.2.1-0.20241120211254-20b8e4ea30f9"), (3, "v1.2.1")),
    (1, 25): ((0, "v1.2.1"),),
    (1, 26): ((0, "v1.3.0-rc.1.0.20250404104637-92efbedcc2b4"), (1, "v1.3.0")),
    (1, 27): ((0, "v1.3.0"),),
    (1, 28): ((0, "v1.4.0"), (7, "v1.4.1")),
    (1, 29): ((0, "v1.4.0"), (3, "v1.4.1")),
    (1, 30): ((0, "v1.5.1"),),
    (1, 31): ((0, "v1.6.0"),),
}

_GATEWAY_API_FILE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)")
_GATEWAY_API_RELEASE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-(.+))?$")


def gateway_api_pin(istio_version: str) -> str | None:
    """The Gateway API release Istio ``istio_version`` pins (``v1.5.1``), ``None`` if not known. A
    bare minor (``1.28``) or a ``-dev`` build without a patch is the minor's newest pin."""
    version = IstioVersion.parse(istio_version)
    pins = GATEWAY_API_PINS.get(version.minor_key)
    if not pins:
        return None
    if version.patch is None:
        return pins[-1][1]
    return [pin for first, pin in pins if first <= version.patch][-1]


def _release_key(release: str) -> tuple[int, int, int, int]:
    """``v1.6.0`` -> (1, 6, 0, 1); a pre-release sorts before its release: (1, 6, 0, 0)."""
    m = _GATEWAY_API_RELEASE.match(release)
    if not m:
        raise ValueError(f"not a Gateway API release: {release!r}")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if m.group(4) else 1)


def _minor(release: str) -> str:
    major, minor, _, _ = _release_key(release)
    return f"v{major}.{minor}"


@dataclass(frozen=True)
class GatewayApiChoice:
    """The Gateway API bundles an Istio release's objects are checked against, and why."""

    istio_version: str
    #: the release Istio pins, ``None`` if the harness does not know it
    pin: str | None
    bundles: tuple[CrdBundle, ...]
    #: one line: which bundle, and the pin
    note: str
    #: set when the bundles are not of the pinned minor (or no pin is known): their verdicts may
    #: differ from what the cluster's CRDs would say
    warning: str | None = None


def choose_gateway_api_bundles(bundles: Sequence[CrdBundle], istio_version: str) -> GatewayApiChoice:
    """The bundles of the Gateway API release Istio ``istio_version`` pins: that release; else the
    nearest patch of its minor (patch releases keep the API); else, with a warning, the nearest newer
    release (the nearest older if none is newer). Without a known pin, or without any bundle whose
    release is known, every bundle, with a warning."""
    pin = gateway_api_pin(istio_version)
    labels = ", ".join(b.label for b in bundles)
    known = [
        b for b in bundles if b.gateway_api_version and _GATEWAY_API_RELEASE.match(b.gateway_api_version)
    ]
    if pin is None or not known:
        why = (
            f"no Gateway API pin is known for Istio {istio_version}"
            if pin is None
            else f"Istio {istio_version} pins Gateway API {pin} but no bundle names its release"
        )
        return GatewayApiChoice(
            istio_version,
            pin,
            tuple(bundles),
            f"{istio_version}: {labels} (every bundle: {why})",
            f"{why}: its Gateway API objects were checked against every bundle ({labels})",
        )

    def key(b: CrdBundle) -> tuple[int, int, int, int]:
        return _release_key(b.gateway_api_version or "")

    def note(chosen: Sequence[CrdBundle]) -> str:
        return f"{istio_version}: {', '.join(b.label for b in chosen)} (pins {pin})"

    wanted = _release_key(pin)
    exact = tuple(b for b in known if key(b)[:3] == wanted[:3])
    if exact:
        return GatewayApiChoice(istio_version, pin, exact, note(exact))
    same_minor = [b for b in known if key(b)[:2] == wanted[:2]]
    if same_minor:
        # the nearest patch; between two as near, the newer
        best = min(map(key, same_minor), key=lambda k: (abs(k[2] - wanted[2]), -k[2], -k[3]))
        chosen = tuple(b for b in same_minor if key(b) == best)
        return GatewayApiChoice(istio_version, pin, chosen, note(chosen))
    newer = [b for b in known if key(b) > wanted]
    nearest = min(map(key, newer)) if newer else max(map(key, known))
    chosen = tuple(b for b in known if key(b) == nearest)
    have = ", ".join(sorted({b.gateway_api_version or "" for b in known}, key=_release_key))
    names = ", ".join(f"{b.label} ({b.gateway_api_version})" for b in chosen)
    return GatewayApiChoice(
        istio_version,
        pin,
        chosen,
        note(chosen),
        f"Istio {istio_version} pins Gateway API {pin} and no bundle is of {_minor(pin)} (have {have}): "
        f"its Gateway API objects were checked against {names}, the nearest {'newer' if newer else 'older'} "
        f"release; add the {pin} CRDs to check them against what Istio pins",
    )


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
