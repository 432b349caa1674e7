"""Getting the cluster tools (kind, istioctl) at their pinned versions, and the e2e preflight.

``ensure_tool`` prefers a binary on PATH whose version matches, then one in the cache
(``.cache/bin/<name>-<version>/<name>`` under the repository, or ``$EGRESS_HARNESS_CACHE/bin/...``),
and otherwise downloads it: the published checksum is fetched first, the download streams into a
temporary file beside its destination while being hashed, and only a verified file is renamed into
place. A mismatch, an HTTP error, a timeout or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from harness.common import versions
from harness.common.paths import REPO_ROOT
from harness.common.proc import CommandError, progress, run

CACHE_ENV = "EGRESS_HARNESS_CACHE"
VERSION_TIMEOUT_S = 30.0
DOCKER_INFO_TIMEOUT_S = 20.0
DOWNLOAD_BUDGET_S = 900.0
PROGRESS_EVERY_S = 5.0
CHUNK = 1 << 16
MAX_MEMBER_BYTES = 1 << 30
MIN_DISK_GIB = 10.0
MIN_MEMORY_GIB = 4.0
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ToolError(RuntimeError):
    """A tool could not be found, downloaded or verified."""


class DownloadError(ToolError):
    pass


class ChecksumMismatchError(ToolError):
    def __init__(self, url: str, expected: str, actual: str) -> None:
        self.url, self.expected, self.actual = url, expected, actual
        super().__init__(
            f"checksum mismatch for {url}: the published sha256 is {expected} but the download hashes to "
            f"{actual}; the file was discarded"
        )


def default_cache_dir() -> Path:
    """Where downloaded tools live: ``$EGRESS_HARNESS_CACHE/bin`` or ``<repo>/.cache/bin``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else REPO_ROOT / ".cache") / "bin"


def cached_path(name: str, version: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{name}-{version}" / name


def _spec(name: str) -> versions.ToolSpec:
    try:
        return versions.TOOLS[name]
    except KeyError:
        raise ToolError(f"unknown tool {name!r}; known: {', '.join(versions.TOOLS)}") from None


# --- version of a binary ---------------------------------------------------------------------------


def parse_kind_version(stdout: str) -> str | None:
    """``kind version`` prints e.g. ``kind v0.33.0 go1.25.1 linux/amd64``; ``-q`` prints the bare semver."""
    match = re.search(r"(?:^|\bkind\s+)v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.+-]+)?)\b", stdout.strip())
    return match.group(1) if match else None


def parse_istioctl_version(stdout: str) -> str | None:
    """``istioctl version --remote=false -o json``: ``{"clientVersion": {"version": "1.30.3", ...}}``."""
    try:
        version = json.loads(stdout)["clientVersion"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(version) if version else None


_VERSION_PROBES: dict[str, tuple[tuple[str, ...], Callable[[str], str | None]]] = {
    "kind": (("version",), parse_kind_version),
    "istioctl": (("version", "--remote=false", "-o", "json"), parse_istioctl_version),
}


def binary_version(name: str, path: Path | str) -> str | None:
    """The version ``path`` reports for itself, or None when it cannot say."""
    args, parse = _VERSION_PROBES[name]
    try:
        done = run([str(path), *args], timeout=VERSION_TIMEOUT_S, check=False)
    except CommandError:
        return None
    return parse(done.stdout) if done.returncode == 0 else None


def find_tool(name: str, version: str, cache_dir: Path | None = None) -> Path | None:
    """A usable ``name`` at ``version`` without downloading: on PATH with that version, or in the cache."""
    _spec(name)
    on_path = shutil.which(name)
    if on_path and binary_version(name, on_path) == version:
        return Path(on_path)
    cached = cached_path(name, version, cache_dir)
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    return None


# --- checksums, downloads, archives ----------------------------------------------------------------


def parse_checksum(text: str, asset: str, *, source: str) -> str:
    """The sha256 hex digest for ``asset`` in a published checksum file.

    Accepts a bare digest and ``<digest> [*]<file name>`` lines (kind's
    ``.sha256sum``, Istio's ``.sha256``); a line naming another file is not taken for ``asset``.
    """
    bare: str | None = None
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        digest = tokens[0].lower()
        if not _HEX64.fullmatch(digest):
            continue
        if len(tokens) == 1:
            bare = bare or digest
        elif PurePosixPath(tokens[1].lstrip("*")).name == asset:
            return digest
    if bare is not None:
        return bare
    raise DownloadError(f"no sha256 digest for {asset} in {source}; it reads: {text.strip()[:200]!r}")


def _client() -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(connect=15.0, read=60.0, write=30.0, pool=15.0),
        follow_redirects=True,
        headers={"User-Agent": "istio-egress-harness"},
    )


def _get_text(client: httpx.Client, url: str) -> str:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise DownloadError(f"GET {url} failed: {exc}") from exc
    if response.status_code != 200:
        raise DownloadError(f"GET {url} answered HTTP {response.status_code}")
    return response.text


def _stream_to(
    client: httpx.Client, url: str, dest: Path, label: str, *, budget_s: float = DOWNLOAD_BUDGET_S
) -> str:
    """Stream ``url`` into the open-able path ``dest``; return the sha256 hex of what was written."""
    digest = hashlib.sha256()
    started = last_report = time.monotonic()
    written = 0
    try:
        with client.stream("GET", url) as response, dest.open("wb") as fh:
            if response.status_code != 200:
                raise DownloadError(f"GET {url} answered HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0)
            for chunk in response.iter_bytes(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                now = time.monotonic()
                if now - started > budget_s:
                    raise DownloadError(f"GET {url} took longer than {budget_s:g}s; stopped")
                if now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    of_total = f" of {total / 2**20:.1f}" if total else ""
                    progress(f"{label}: {written / 2**20:.1f}{of_total} MiB")
    except httpx.HTTPError as exc:
        raise DownloadError(f"GET {url} failed after {written} bytes: {exc}") from exc
    progress(f"{label}: {written / 2**20:.1f} MiB downloaded")
    return digest.hexdigest()


def extract_member(archive: Path, member: str, dest: Path, *, max_bytes: int = MAX_MEMBER_BYTES) -> None:
    """Copy the regular file ``member`` (top level of a tar.gz) into ``dest``, refusing anything else.

    Nothing is extracted by path: links, devices, directories, absolute or ``..`` names are never
    written, and only the one member we want is read.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names: list[str] = []
            for info in tar:
                name = info.name.removeprefix("./")
                names.append(info.name)
                if name != member:
                    continue
                if not info.isreg():
                    raise DownloadError(f"{archive.name}: {info.name!r} is not a regular file; refusing it")
                if info.size > max_bytes:
                    raise DownloadError(f"{archive.name}: {info.name!r} is {info.size} bytes; too large")
                source = tar.extractfile(info)
                if source is None:
                    raise DownloadError(f"{archive.name}: cannot read {info.name!r}")
                with source, dest.open("wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                return
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"{archive.name} is not a readable tar.gz: {exc}") from exc
    shown = ", ".join(names[:10]) or "nothing"
    raise DownloadError(f"{archive.name} has no top-level {member!r}; it holds: {shown}")


@contextlib.contextmanager
def _scratch(directory: Path) -> Iterator[Callable[[str], Path]]:
    """Temporary file names in ``directory``; every one still there at the end is removed."""
    made: list[Path] = []

    def new(suffix: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=directory)
        os.close(fd)
        made.append(Path(name))
        return made[-1]

    try:
        yield new
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def download_tool(
    name: str,
    version: str,
    cache_dir: Path | None = None,
    *,
    base_url: str | None = None,
    platform: tuple[str, str] | None = None,
) -> Path:
    """Download ``name`` ``version`` into the cache, verified against its published sha256."""
    spec = _spec(name)
    os_name, arch = platform or versions.host_platform()
    url = spec.url(version, os_name, arch, base_url=base_url)
    checksum_url = spec.checksum_url(version, os_name, arch, base_url=base_url)
    asset = spec.asset(os_name, arch, version)
    final = cached_path(name, version, cache_dir)
    directory = final.parent
    # The outermost directory this call creates, removed again if no verified binary lands in it.
    made = next((d for d in reversed((directory, *directory.parents)) if not d.exists()), None)
    directory.mkdir(parents=True, exist_ok=True)
    label = f"{name} {version}"
    try:
        with _client() as client, _scratch(directory) as scratch:
            progress(f"downloading {label} from {url}")
            expected = parse_checksum(_get_text(client, checksum_url), asset, source=checksum_url)
            download = scratch(".download")
            actual = _stream_to(client, url, download, label)
            if actual != expected:
                raise ChecksumMismatchError(url, expected, actual)
            binary = download
            if spec.archive_member:
                binary = scratch(".bin")
                extract_member(download, spec.archive_member, binary)
            binary.chmod(0o755)
            os.replace(binary, final)
    finally:
        if made is not None and not final.exists():
            shutil.rmtree(made, ignore_errors=True)
    progress(f"{label} verified (sha256 {expected}) at {final}")
    return final


def ensure_tool(
    name: str,
    version: str,
    cache_dir: Path | None = None,
    *,
    base_url: str | None = None,
    platform: tuple[str, str] | None = None,
) -> Path:
    """A path to ``name`` at exactly ``version``: from PATH, from the cache, or freshly downloaded."""
    found = find_tool(name, version, cache_dir)
    if found is not None:
        return found
    return download_tool(name, version, cache_dir, base_url=base_url, platform=platform)


# --- preflight ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerInfo:
    reachable: bool
    detail: str
    info: dict[str, Any]


def docker_info() -> DockerInfo:
    if shutil.which("docker") is None:
        return DockerInfo(False, "docker CLI not found on PATH", {})
    try:
        done = run(["docker", "info", "--format", "{{json .}}"], timeout=DOCKER_INFO_TIMEOUT_S, check=False)
    except CommandError as exc:
        return DockerInfo(False, str(exc), {})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return DockerInfo(False, f"`docker info` exited {done.returncode}: {' '.join(tail)}", {})
    try:
        info = json.loads(done.stdout)
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    if info.get("ServerErrors"):
        return DockerInfo(False, f"`docker info` reports: {'; '.join(map(str, info['ServerErrors']))}", info)
    return DockerInfo(True, f"Docker {info.get('ServerVersion', '?')}", info)


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _host_available_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def missing_prerequisites(
    *,
    tools: bool = False,
    istio: str | None = None,
    cache_dir: Path | None = None,
    min_disk_gib: float = MIN_DISK_GIB,
    min_memory_gib: float = MIN_MEMORY_GIB,
) -> list[str]:
    """What `make e2e` still needs on this machine, each with how to get it; empty when ready.

    With ``tools`` the pinned kind and istioctl are checked too (without downloading).
    """
    missing: list[str] = []
    docker = docker_info()
    if not docker.reachable:
        if docker.detail.startswith("docker CLI"):
            missing.append(
                "docker: the Docker CLI is not on PATH; install Docker Engine "
                "(https://docs.docker.com/engine/install/) or Debian's docker.io package"
            )
        else:
            missing.append(
                f"docker engine: not reachable ({docker.detail}); start it (`sudo systemctl start docker`, "
                "`dockerd &`, or Docker Desktop) and check that `docker info` works for this user"
            )
    root_dir = docker.info.get("DockerRootDir")
    disk_path = Path(root_dir) if isinstance(root_dir, str) and Path(root_dir).exists() else REPO_ROOT
    free_gib = shutil.disk_usage(_existing_ancestor(disk_path)).free / 2**30
    if free_gib < min_disk_gib:
        missing.append(
            f"disk: {free_gib:.1f} GiB free under {disk_path}; the kind node image, Istio images and the "
            f"relay image need about {min_disk_gib:g} GiB (`docker system prune` frees old images)"
        )
    mem_total = docker.info.get("MemTotal")
    if isinstance(mem_total, int) and mem_total > 0:
        if mem_total / 2**30 < min_memory_gib:
            missing.append(
                f"memory: Docker may use {mem_total / 2**30:.1f} GiB; kind + Istio need about "
                f"{min_memory_gib:g} GiB (raise the limit in Docker Desktop's resources settings)"
            )
    else:
        available = _host_available_memory_gib()
        if available is not None and available < min_memory_gib:
            missing.append(
                f"memory: {available:.1f} GiB available; kind + Istio need about {min_memory_gib:g} GiB "
                "(close other programs or use a bigger machine)"
            )
    from harness.common.certs import openssl_unavailable_reason

    openssl = openssl_unavailable_reason()
    if openssl is not None:
        missing.append(f"openssl (the run makes its TLS test certificates with it): {openssl}")
    if tools:
        for name in versions.TOOLS:
            version = versions.pinned_version(name, istio)
            if find_tool(name, version, cache_dir) is None:
                missing.append(
                    f"{name} {version}: not on PATH at that version nor in {cached_path(name, version, cache_dir)}"
                    "; run `make tools` (downloads and verifies the pinned binaries)"
                )
    return missing


#: where a registry's images are pulled from (Docker Hub's short name is not its host)
REGISTRY_HOSTS: dict[str, str] = {"docker.io": "registry-1.docker.io"}
REACH_TIMEOUT_S = 3.0
IMAGE_INSPECT_TIMEOUT_S = 30.0
#: what the kind tier says when it cannot run here, and what runs instead
NETNS_HINT = (
    "on a machine without Docker, kind or a registry, run the harness's main job on the netns cluster "
    "with real istiod instead: `make e2e TIER=istiod` (needs root and Go)"
)


def reachable(host: str, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def image_present(image: str) -> bool:
    """Whether the Docker engine has ``image`` locally (``docker image inspect``)."""
    try:
        done = run(["docker", "image", "inspect", image], timeout=IMAGE_INSPECT_TIMEOUT_S, check=False)
    except CommandError:
        return False
    return done.returncode == 0


def registry_of(image: str) -> str:
    """The registry an image reference pulls from: its first part when that names a host, else Docker Hub."""
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"


def kind_images(istio: str | None = None) -> list[str]:
    """The images a kind run pulls: the node image and Istio's (the chart's default hub)."""
    version = versions.istio_version(istio)
    return [
        versions.KIND_NODE_IMAGE,
        f"docker.io/istio/pilot:{version}",
        f"docker.io/istio/proxyv2:{version}",
    ]


def pull_problems(
    istio: str | None = None,
    *,
    present: Callable[[str], bool] = image_present,
    can_reach: Callable[[str], bool] = reachable,
) -> list[str]:
    """Why the kind tier's images cannot be had here (not local, and their registry does not answer
    within a few seconds), naming them; empty when they are local or can be pulled."""
    absent = [image for image in kind_images(istio) if not present(image)]
    down = sorted(r for r in set(map(registry_of, absent)) if not can_reach(REGISTRY_HOSTS.get(r, r)))
    if not down:
        return []
    names = ", ".join(i for i in absent if registry_of(i) in down)
    return [
        f"images: {names} are not on this machine and {', '.join(down)} cannot be reached "
        f"(no answer within {REACH_TIMEOUT_S:g}s), so kind cannot start the cluster or Istio"
    ]


# --- command line: `egress-harness e2e preflight|tools` ---------------------------------------------


def _cmd_preflight(args: argparse.Namespace) -> int:
    missing = missing_prerequisites(tools=args.with_tools, istio=args.istio_version)
    if not any(m.startswith(("docker:", "docker engine:")) for m in missing):
        missing += pull_problems(args.istio_version)
    if missing:
        progress("the kind tier cannot run here yet; missing:")
        for item in missing:
            progress(f"  - {item}")
        progress(NETNS_HINT)
        return 1
    progress(
        "preflight: Docker, disk and memory are ready" + (" and so are the tools" if args.with_tools else "")
    )
    return 0


def _cmd_tools(args: argparse.Namespace) -> int:
    istio = versions.istio_version(args.istio_version)
    cache = Path(args.cache_dir) if args.cache_dir else None
    for name in versions.TOOLS:
        version = versions.pinned_version(name, istio)
        try:
            path = ensure_tool(name, version, cache)
        except ToolError as exc:
            print(f"egress-harness e2e tools: {name} {version}: {exc}", file=sys.stderr)
            print(
                ">> the tools download from the project's release pages; on a machine without internet, put "
                f"{name} {version} on PATH or set {versions.TOOLS[name].base_url_env} to a mirror",
                file=sys.stderr,
            )
            return 1
        print(f"{name}\t{path}")
    return 0


def add_commands(subparsers: Any) -> Any:
    """Register the ``e2e`` group with ``e2e preflight`` and ``e2e tools`` on the CLI; returns the
    group's sub-parsers, to which ``harness.cluster.cli.add_commands`` adds ``up`` and ``down``."""
    e2e = subparsers.add_parser(
        "e2e", help="the cluster path: preflight, pinned tools, up/down of a shared run"
    )
    sub = e2e.add_subparsers(dest="e2e_command", metavar="STEP", required=True)
    pre = sub.add_parser("preflight", help="list what the cluster tier still needs (exit 1 if anything)")
    pre.add_argument("--with-tools", action="store_true", help="also require the pinned kind and istioctl")
    pre.add_argument("--istio-version", default=None, choices=versions.SUPPORTED_ISTIO_VERSIONS)
    pre.set_defaults(handler=_cmd_preflight)
    tools = sub.add_parser("tools", help="download and verify the pinned kind and istioctl")
    tools.add_argument("--istio-version", default=None, choices=versions.SUPPORTED_ISTIO_VERSIONS)
    tools.add_argument(
        "--cache-dir", default=None, help="directory holding <name>-<version>/ (default .cache/bin)"
    )
    tools.set_defaults(handler=_cmd_tools)
    return sub
