"""The netns cluster's binaries: found in a directory you name, else in the cache, else built.

Three sets, each built from a Go wrapper module kept in the repository (``go/``) through the Go
module proxy, never downloaded as prebuilt binaries:

* ``kube``: etcd and kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl of
  :data:`~harness.common.versions.NETNS_KUBERNETES_VERSION` (``go/kube``);
* ``istio``: pilot-discovery, pilot-agent and istioctl of one Istio version label (``go/istio/<label>``);
* ``kubelet``: the harness kubelet on virtual-kubelet (``go/kubelet``), keyed by its sources' hash.

Where a set is looked for, in order: the directory named by its environment variable
(``EGRESS_HARNESS_KUBE_BIN``, ``EGRESS_HARNESS_ISTIO_BIN``, ``EGRESS_HARNESS_KUBELET_BIN``), the cache
(``$EGRESS_HARNESS_CACHE`` or ``~/.cache/egress-harness``: ``kube/<version>/bin``,
``istio/<label>/bin``, ``kubelet/<hash>/bin``), then a build into the cache. A build writes into a
temporary directory beside the cache entry and renames it only when every binary reports the
pinned version, so a half-built set is never found. A version is never silently replaced by another:
an Istio label that does not build here fails naming the labels that do.

Command line (``make kube-bin``, ``make istio-bin ISTIO_VERSION=...``, ``make kubelet-bin``)::

    python -m harness.cluster.providers.netns.binaries kube|istio|kubelet [--istio-version V] [--rebuild]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.common import versions
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, progress, run

GO_ROOT = REPO_ROOT / "go"
CACHE_ENV = "EGRESS_HARNESS_CACHE"
KUBE_BIN_ENV = "EGRESS_HARNESS_KUBE_BIN"
ISTIO_BIN_ENV = "EGRESS_HARNESS_ISTIO_BIN"
KUBELET_BIN_ENV = "EGRESS_HARNESS_KUBELET_BIN"
#: one cold build of a set takes minutes on 2 cores (the design note measured 7 and 6 minutes)
BUILD_TIMEOUT_S = 2400.0
VERSION_TIMEOUT_S = 30.0
MODULE_TIMEOUT_S = 600.0

KUBE_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
)
ISTIO_BINARIES = ("pilot-discovery", "pilot-agent", "istioctl")
KUBELET_BINARIES = ("egh-kubelet",)


class BinariesError(RuntimeError):
    """A binary set could not be found or built; the message says which and what to do."""


@dataclass(frozen=True)
class BinarySet:
    """One set of binaries in one directory, with the version they reported."""

    name: str
    version: str
    directory: Path

    def path(self, binary: str) -> Path:
        return self.directory / binary


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "egress-harness"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinariesError(
            "the netns cluster's binaries are built with Go (1.26 or newer), which is not on PATH: "
            "install it (https://go.dev/doc/install) or point "
            f"{KUBE_BIN_ENV}/{ISTIO_BIN_ENV}/{KUBELET_BIN_ENV} at directories of built binaries"
        )
    return go


def _go_env() -> dict[str, str]:
    """Set on top of the environment for every ``go`` command: static binaries, no VCS stamping."""
    return {"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}


def _missing(directory: Path, binaries: Sequence[str]) -> list[str]:
    return [b for b in binaries if not os.access(directory / b, os.X_OK)]


# --- what each binary says its version is ------------------------------------------------------------


def reported_version(path: Path) -> str:
    """The version ``path`` prints (``--version``, or ``version`` for istioctl and pilot-*)."""
    name = path.name
    if name in ISTIO_BINARIES:
        argv = (
            [str(path), "version", "--short"]
            if name != "istioctl"
            else [str(path), "version", "--remote=false", "--short"]
        )
    elif name == "kubectl":
        argv = [str(path), "version", "--client", "-o", "json"]
    elif name == "egh-kubelet":
        argv = [str(path), "--version"]
    else:
        argv = [str(path), "--version"]
    try:
        out = run(argv, timeout=VERSION_TIMEOUT_S).stdout
    except CommandError as exc:
        raise BinariesError(f"{path} could not tell its version: {exc}") from exc
    if name == "kubectl":
        return str(json.loads(out)["clientVersion"]["gitVersion"])
    if name == "etcd":
        found = re.search(r"etcd Version:\s*(\S+)", out)
        return found.group(1) if found else out.strip()
    if name.startswith("kube-"):
        found = re.search(r"Kubernetes\s+(v\S+)", out)
        return found.group(1) if found else out.strip()
    found = re.search(r"client version:\s*(\S+)", out)  # istioctl, pilot-discovery, pilot-agent
    if found:
        return found.group(1)
    return out.strip().splitlines()[-1].strip() if out.strip() else ""


def check_versions(directory: Path, expected: Mapping[str, str]) -> None:
    """Raise unless every binary in ``expected`` reports its expected version."""
    wrong = []
    for binary, want in expected.items():
        got = reported_version(directory / binary)
        if got != want:
            wrong.append(f"{binary} reports {got!r}, expected {want!r}")
    if wrong:
        raise BinariesError(f"binaries in {directory} are not the pinned versions: " + "; ".join(wrong))


# --- finding or building a set -----------------------------------------------------------------------


@dataclass(frozen=True)
class _SetSpec:
    """Where one set is looked for and what its binaries must report."""

    name: str
    version: str
    binaries: Sequence[str]
    expected: Mapping[str, str]
    env_var: str
    cache_dir: Path


def _find_or_build(spec: _SetSpec, build: _Build, *, rebuild: bool = False) -> BinarySet:
    name, version, binaries, expected = spec.name, spec.version, spec.binaries, spec.expected
    env_var, cache_dir = spec.env_var, spec.cache_dir
    configured = os.environ.get(env_var)
    if configured:
        directory = Path(configured)
        missing = _missing(directory, binaries)
        if missing:
            raise BinariesError(
                f"{env_var}={configured} lacks {', '.join(missing)} (expected: {', '.join(binaries)}); "
                f"unset it to use the cache or build"
            )
        check_versions(directory, expected)
        return BinarySet(name, version, directory)
    if cache_dir.is_dir() and not rebuild and not _missing(cache_dir, binaries):
        check_versions(cache_dir, expected)
        return BinarySet(name, version, cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir.parent))
    try:
        started = time.monotonic()
        progress(f"building {name} {version} into {cache_dir} (a cold build takes minutes)")
        build(staging)
        missing = _missing(staging, binaries)
        if missing:
            raise BinariesError(f"the {name} build finished without {', '.join(missing)}")
        check_versions(staging, expected)
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        staging.rename(cache_dir)
        progress(f"built {name} {version} in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BinarySet(name, version, cache_dir)


class _Build:
    """Runs ``go build`` in one wrapper module into an output directory."""

    def __init__(
        self,
        module: Path,
        steps: Sequence[tuple[Sequence[str], Sequence[str]]],
        ldflags: str,
        renames: Mapping[str, str] | None = None,
    ) -> None:
        self.module = module
        #: built name -> name in the set (etcd's main package is go.etcd.io/etcd/server/v3: "server")
        self.renames = dict(renames or {})
        #: (build tags, packages) per ``go build`` invocation
        self.steps = steps
        self.ldflags = ldflags

    def __call__(self, out: Path) -> None:
        go = _go()
        for tags, packages in self.steps:
            argv = [go, "build", "-trimpath", "-o", f"{out}/", "-ldflags", self.ldflags]
            if tags:
                argv.append("-tags=" + ",".join(tags))
            try:
                run(
                    [*argv, *packages],
                    timeout=BUILD_TIMEOUT_S,
                    cwd=self.module,
                    env=_go_env(),
                    heartbeat_s=60.0,
                )
            except CommandError as exc:
                raise BinariesError(f"building in {self.module} failed: {exc}") from exc
        for built, name in self.renames.items():
            (out / built).rename(out / name)


def kube_binaries(*, rebuild: bool = False) -> BinarySet:
    """etcd and the Kubernetes binaries of the pinned version (see the module docstring)."""
    version = versions.NETNS_KUBERNETES_VERSION
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    expected = {b: version for b in KUBE_BINARIES}
    expected["etcd"] = versions.NETNS_ETCD_VERSION
    build = _Build(GO_ROOT / "kube", [((), ["tool"])], " ".join(flags), renames={"server": "etcd"})
    return _find_or_build(
        _SetSpec(
            "kube",
            version,
            KUBE_BINARIES,
            expected,
            KUBE_BIN_ENV,
            cache_root() / "kube" / version / "bin",
        ),
        build,
        rebuild=rebuild,
    )


def istio_module_version(label: str) -> str:
    """The istio.io/istio module version of an Istio label; raises for a label that is not pinned."""
    try:
        return versions.ISTIO_MODULE_VERSIONS[label]
    except KeyError:
        raise BinariesError(
            f"Istio {label!r} is not a version the netns provider knows; it builds "
            f"{', '.join(versions.ISTIO_BUILDABLE_LABELS)} (harness/common/versions.py ISTIO_MODULE_VERSIONS)"
        ) from None


def istio_binaries(label: str, *, rebuild: bool = False) -> BinarySet:
    """pilot-discovery, pilot-agent and istioctl of Istio ``label``, each reporting ``label``."""
    istio_module_version(label)
    module = GO_ROOT / "istio" / label
    if not (module / "go.mod").is_file():
        buildable = ", ".join(versions.ISTIO_BUILDABLE_LABELS)
        raise BinariesError(
            f"Istio {label} has no wrapper module here (go/istio/{label}); its release commit "
            f"{versions.ISTIO_MODULE_VERSIONS[label]} is refused by this machine's Go module proxy "
            f"(403 'This module version is not available'). Labels that build here: {buildable}. "
            "Nothing is substituted: pick one of those with --istio-version"
        )
    flags = f"-s -w -X istio.io/istio/pkg/version.buildVersion={label}"
    build = _Build(
        module,
        [
            ((), ["istio.io/istio/pilot/cmd/pilot-discovery", "istio.io/istio/istioctl/cmd/istioctl"]),
            (("agent", "disable_pgv"), ["istio.io/istio/pilot/cmd/pilot-agent"]),
        ],
        flags,
    )
    return _find_or_build(
        _SetSpec(
            "istio",
            label,
            ISTIO_BINARIES,
            dict.fromkeys(ISTIO_BINARIES, label),
            ISTIO_BIN_ENV,
            cache_root() / "istio" / label / "bin",
        ),
        build,
        rebuild=rebuild,
    )


def kubelet_source_hash(module: Path | None = None) -> str:
    """A short hash of the harness kubelet's sources (go.mod, go.sum, every .go file but tests)."""
    root = module or GO_ROOT / "kubelet"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and (
            path.name in {"go.mod", "go.sum"} or (path.suffix == ".go" and not path.name.endswith("_test.go"))
        ):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def kubelet_binaries(*, rebuild: bool = False) -> BinarySet:
    """The harness kubelet (go/kubelet), cached by the hash of its sources."""
    version = kubelet_source_hash()
    build = _Build(GO_ROOT / "kubelet", [((), ["./cmd/egh-kubelet"])], f"-s -w -X main.version={version}")
    return _find_or_build(
        _SetSpec(
            "kubelet",
            version,
            KUBELET_BINARIES,
            {"egh-kubelet": version},
            KUBELET_BIN_ENV,
            cache_root() / "kubelet" / version / "bin",
        ),
        build,
        rebuild=rebuild,
    )


def istio_module_dir(label: str) -> Path:
    """The istio.io/istio module of ``label`` in the Go module cache (CRDs, the Envoy bootstrap)."""
    module = GO_ROOT / "istio" / label
    try:
        out = run(
            [_go(), "mod", "download", "-json", f"istio.io/istio@{istio_module_version(label)}"],
            timeout=MODULE_TIMEOUT_S,
            cwd=module if module.is_dir() else None,
            env=_go_env(),
        ).stdout
    except CommandError as exc:
        raise BinariesError(f"the istio.io/istio module of {label} could not be fetched: {exc}") from exc
    return Path(json.loads(out)["Dir"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.cluster.providers.netns.binaries", description=__doc__.split("\n")[0]
    )
    parser.add_argument("set", choices=("kube", "istio", "kubelet"))
    parser.add_argument("--istio-version", default=versions.DEFAULT_NETNS_ISTIO_VERSION)
    parser.add_argument("--rebuild", action="store_true", help="build even when the cache has the set")
    args = parser.parse_args(argv)
    try:
        if args.set == "kube":
            found = kube_binaries(rebuild=args.rebuild)
        elif args.set == "istio":
            found = istio_binaries(args.istio_version, rebuild=args.rebuild)
        else:
            found = kubelet_binaries(rebuild=args.rebuild)
    except BinariesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{found.name} {found.version}: {found.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
