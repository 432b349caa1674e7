"""harness.common.proc and harness.common.tools: commands with timeouts, and pinned tools fetched and verified.

Downloads go to a real HTTP server on 127.0.0.1 serving files made here; version probes and
``docker info`` go to the fake executables of tests/unit/fakebin.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.common import proc, tools, versions
from harness.common.proc import CommandError, CommandTimeout, interrupts_deferred, run
from tests.unit.fakecli import fake

LINUX = ("linux", "amd64")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache-root"
    monkeypatch.setenv(tools.CACHE_ENV, str(root))
    return root


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- a loopback HTTP server --------------------------------------------------------------------

Route = bytes | Callable[[BaseHTTPRequestHandler], None]


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        routes, requests = self.routes, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                elif isinstance(route, bytes):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(route)))
                    self.end_headers()
                    self.wfile.write(route)
                else:
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_gz(members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return buf.getvalue()


# --- proc ----------------------------------------------------------------------------------------


def test_run_captures_output_and_passes_input() -> None:
    done = run(["sh", "-c", "cat; echo err >&2"], timeout=10, input="hello\n")
    assert done.returncode == 0
    assert done.stdout == "hello\n"
    assert done.stderr == "err\n"
    assert done.argv == ("sh", "-c", "cat; echo err >&2")


def test_run_error_names_command_exit_code_and_stderr_tail() -> None:
    script = "for i in $(seq 1 50); do echo line-$i >&2; done; exit 3"
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", script], timeout=10)
    message = str(err.value)
    assert err.value.returncode == 3
    assert "exited with code 3" in message
    assert "sh -c" in message
    assert "line-50" in message
    assert "line-30" not in message  # only the tail


def test_run_without_check_returns_the_exit_code() -> None:
    assert run(["sh", "-c", "exit 4"], timeout=10, check=False).returncode == 4


def test_run_missing_executable_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="was not found"):
        run(["definitely-not-a-real-tool-xyz"], timeout=5)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in {"Z", "X"}


def test_run_timeout_ends_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as err:
        run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo started; sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert "did not finish within 0.5s" in str(err.value)
    assert "started" in str(err.value)
    background = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(background) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(background), "the background child of the timed-out command survived"


def test_keyboard_interrupt_ends_the_child_group_and_propagates(tmp_path: Path, main_thread: None) -> None:
    pidfile = tmp_path / "child.pid"
    with pytest.raises(KeyboardInterrupt):
        run(["sh", "-c", f"echo $$ > {pidfile}; kill -INT $PPID; sleep 30"], timeout=60)
    assert _gone(int(pidfile.read_text()))


def test_heartbeat_prints_progress(capsys: pytest.CaptureFixture[str]) -> None:
    run(["sleep", "0.3"], timeout=10, heartbeat_s=0.05)
    assert ">> still running" in capsys.readouterr().err


def test_echo_copies_output_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    run(["sh", "-c", "echo one; echo two >&2"], timeout=10, echo=True)
    err = capsys.readouterr().err
    assert "sh| one" in err
    assert "sh| two" in err


def test_interrupts_deferred_holds_ctrl_c_until_the_block_ends(main_thread: None) -> None:
    steps: list[str] = []

    def cleanup() -> None:
        with interrupts_deferred("a test cleanup"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("cleanup finished")

    with pytest.raises(KeyboardInterrupt):
        cleanup()
    assert steps == ["cleanup finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_tail_keeps_the_last_lines() -> None:
    assert proc.tail("a\nb\nc\n", lines=2) == "b\nc"


# --- versions -------------------------------------------------------------------------------------


def test_pinned_urls_for_every_platform() -> None:
    assert versions.KIND.url("0.33.0", "linux", "amd64") == (
        "https://github.com/kubernetes-sigs/kind/releases/download/v0.33.0/kind-linux-amd64"
    )
    assert versions.KIND.checksum_url("0.33.0", "darwin", "arm64").endswith(
        "/v0.33.0/kind-darwin-arm64.sha256sum"
    )
    assert versions.ISTIOCTL.url("1.30.3", "darwin", "amd64") == (
        "https://github.com/istio/istio/releases/download/1.30.3/istioctl-1.30.3-osx.tar.gz"
    )
    assert versions.ISTIOCTL.url("1.30.3", "darwin", "arm64").endswith("/istioctl-1.30.3-osx-arm64.tar.gz")
    assert versions.ISTIOCTL.checksum_url("1.28.10", "linux", "arm64").endswith(
        "/1.28.10/istioctl-1.28.10-linux-arm64.tar.gz.sha256"
    )
    for spec in versions.TOOLS.values():
        for os_name, arch in versions.PLATFORMS:
            assert spec.url(spec.pinned_version, os_name, arch).startswith("https://")
    with pytest.raises(versions.UnsupportedPlatformError):
        versions.KIND.url("0.33.0", "windows", "amd64")


def test_node_image_is_pinned_by_digest_and_matches_kubernetes() -> None:
    tag, _, digest = versions.KIND_NODE_IMAGE.partition("@sha256:")
    assert tag == f"kindest/node:v{versions.KUBERNETES_VERSION}"
    assert len(digest) == 64


def test_istio_version_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(versions.ISTIO_VERSION_ENV, raising=False)
    assert versions.istio_version() == "1.30.3"
    monkeypatch.setenv(versions.ISTIO_VERSION_ENV, "1.28.10")
    assert versions.istio_version() == "1.28.10"
    assert versions.pinned_version("istioctl") == "1.28.10"
    assert versions.istio_version("1.29.6") == "1.29.6"
    with pytest.raises(ValueError, match=re.escape("1.28.10, 1.29.6, 1.30.3")):
        versions.istio_version("1.27.0")


def test_base_url_override_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_HARNESS_KIND_BASE_URL", "http://127.0.0.1:9/mirror/")
    assert versions.KIND.url("0.33.0", *LINUX) == "http://127.0.0.1:9/mirror/v0.33.0/kind-linux-amd64"


# --- version probes --------------------------------------------------------------------------------


def test_only_the_tools_the_harness_runs_are_pinned() -> None:
    # the harness reaches the API server through the Python client and never runs kubectl
    assert set(versions.TOOLS) == {"kind", "istioctl"}
    assert not hasattr(versions, "KUBECTL")


def test_version_parsers() -> None:
    assert tools.parse_kind_version("kind v0.33.0 go1.25.4 linux/amd64\n") == "0.33.0"
    assert tools.parse_kind_version("0.33.0\n") == "0.33.0"
    assert tools.parse_kind_version("nonsense") is None
    istioctl = {"clientVersion": {"version": "1.30.3", "revision": "abc", "status": "Clean", "tag": "1.30.3"}}
    assert tools.parse_istioctl_version(json.dumps(istioctl)) == "1.30.3"
    assert tools.parse_istioctl_version("{}") is None


def _version_rules(kind: str, istioctl: str) -> list[dict[str, Any]]:
    return [
        {"tool": "kind", "args": ["version"], "stdout": f"kind v{kind} go1.25.4 linux/amd64\n"},
        {
            "tool": "istioctl",
            "args": ["version", "--remote=false", "-o", "json"],
            "stdout": json.dumps({"clientVersion": {"version": istioctl}}),
        },
    ]


def test_find_tool_takes_a_path_binary_only_at_the_pinned_version(fakebin: Any, cache: Path) -> None:
    fakebin.rules(_version_rules("0.33.0", "1.29.6"))
    assert tools.find_tool("kind", "0.33.0") == fakebin.bin_dir / "kind"
    assert tools.find_tool("istioctl", "1.30.3") is None
    assert "istioctl version --remote=false -o json" in fakebin.commands()


def test_find_tool_falls_back_to_the_cache(fakebin: Any, cache: Path) -> None:
    fakebin.rules(_version_rules("0.20.0", "1.29.6"))
    cached = tools.cached_path("kind", "0.33.0")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"#!/bin/sh\n")
    cached.chmod(0o755)
    assert tools.find_tool("kind", "0.33.0") == cached
    assert cached == cache / "bin" / "kind-0.33.0" / "kind"


# --- checksums --------------------------------------------------------------------------------------

DIGEST = "ab" * 32


def test_parse_checksum_formats() -> None:
    assert tools.parse_checksum(f"{DIGEST}  kind-linux-amd64\n", "kind-linux-amd64", source="u") == DIGEST
    asset = "istioctl-1.30.3-linux-amd64.tar.gz"
    assert tools.parse_checksum(f"{DIGEST} {asset}\n", asset, source="u") == DIGEST
    assert tools.parse_checksum(DIGEST.upper(), "kind-linux-amd64", source="u") == DIGEST
    assert tools.parse_checksum(f"{DIGEST} *kind-linux-amd64", "kind-linux-amd64", source="u") == DIGEST
    listing = f"{'cd' * 32}  kind-darwin-arm64\n{DIGEST}  kind-linux-amd64\n"
    assert tools.parse_checksum(listing, "kind-linux-amd64", source="u") == DIGEST
    with pytest.raises(tools.DownloadError, match="no sha256 digest for kind-linux-amd64"):
        tools.parse_checksum(f"{DIGEST}  kind-darwin-arm64\n", "kind-linux-amd64", source="u")
    with pytest.raises(tools.DownloadError, match="<html>"):
        tools.parse_checksum("<html>not found</html>", "kind-linux-amd64", source="u")


# --- downloads ----------------------------------------------------------------------------------------


def test_download_kind_verifies_and_installs(server: Server, cache: Path) -> None:
    binary = b"\x7fELF fake kind" * 1000
    server.routes["/v0.33.0/kind-linux-amd64"] = binary
    server.routes["/v0.33.0/kind-linux-amd64.sha256sum"] = f"{_sha(binary)}  kind-linux-amd64\n".encode()
    path = tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    assert path == cache / "bin" / "kind-0.33.0" / "kind"
    assert path.read_bytes() == binary
    assert os.access(path, os.X_OK)
    assert _files_under(cache) == [path]
    # The checksum is fetched before the download.
    assert server.requests == ["/v0.33.0/kind-linux-amd64.sha256sum", "/v0.33.0/kind-linux-amd64"]


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server: Server, cache: Path) -> None:
    binary = b"tampered"
    server.routes["/v0.33.0/kind-linux-amd64"] = binary
    server.routes["/v0.33.0/kind-linux-amd64.sha256sum"] = f"{DIGEST}  kind-linux-amd64\n".encode()
    with pytest.raises(tools.ChecksumMismatchError) as err:
        tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    message = str(err.value)
    assert f"{server.base}/v0.33.0/kind-linux-amd64" in message
    assert DIGEST in message
    assert _sha(binary) in message
    assert not cache.exists(), f"left behind: {_files_under(cache)}"


def test_download_into_an_existing_cache_leaves_no_partial_file(server: Server, cache: Path) -> None:
    (cache / "bin").mkdir(parents=True)
    (cache / "bin" / "keep.txt").write_text("other tool")
    server.routes["/v0.33.0/kind-linux-amd64"] = b"x"
    server.routes["/v0.33.0/kind-linux-amd64.sha256sum"] = DIGEST.encode()
    with pytest.raises(tools.ChecksumMismatchError):
        tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    assert _files_under(cache) == [cache / "bin" / "keep.txt"]
    assert not (cache / "bin" / "kind-0.33.0").exists()


def test_download_with_a_bare_digest(server: Server, cache: Path) -> None:
    binary = b"kind bytes"
    server.routes["/v0.33.0/kind-linux-amd64"] = binary
    server.routes["/v0.33.0/kind-linux-amd64.sha256sum"] = _sha(binary).encode()
    path = tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    assert path.read_bytes() == binary


def test_download_istioctl_extracts_only_the_binary(server: Server, cache: Path) -> None:
    binary = b"istioctl bytes" * 100
    archive = _tar_gz({"istioctl": binary, "README": b"not wanted"})
    asset = "istioctl-1.30.3-osx-arm64.tar.gz"
    server.routes[f"/1.30.3/{asset}"] = archive
    server.routes[f"/1.30.3/{asset}.sha256"] = f"{_sha(archive)} {asset}\n".encode()
    path = tools.download_tool("istioctl", "1.30.3", base_url=server.base, platform=("darwin", "arm64"))
    assert path == cache / "bin" / "istioctl-1.30.3" / "istioctl"
    assert path.read_bytes() == binary
    assert os.access(path, os.X_OK)
    assert _files_under(cache) == [path]


@pytest.mark.parametrize(
    ("members", "symlink", "reason"),
    [
        ({"README": b"x"}, None, "no top-level 'istioctl'"),
        ({"../istioctl": b"x"}, None, "no top-level 'istioctl'"),
        ({"bin/istioctl": b"x"}, None, "no top-level 'istioctl'"),
        ({}, ("istioctl", "/etc/passwd"), "not a regular file"),
    ],
)
def test_unsafe_or_wrong_archives_are_refused(
    server: Server, cache: Path, members: dict[str, bytes], symlink: tuple[str, str] | None, reason: str
) -> None:
    archive = _tar_gz(members, symlink=symlink)
    asset = "istioctl-1.30.3-linux-amd64.tar.gz"
    server.routes[f"/1.30.3/{asset}"] = archive
    server.routes[f"/1.30.3/{asset}.sha256"] = f"{_sha(archive)} {asset}\n".encode()
    with pytest.raises(tools.DownloadError, match=reason):
        tools.download_tool("istioctl", "1.30.3", base_url=server.base, platform=LINUX)
    assert not cache.exists()


def test_not_a_tar_gz_is_refused(server: Server, cache: Path) -> None:
    archive = b"<html>rate limited</html>"
    asset = "istioctl-1.30.3-linux-amd64.tar.gz"
    server.routes[f"/1.30.3/{asset}"] = archive
    server.routes[f"/1.30.3/{asset}.sha256"] = f"{_sha(archive)} {asset}\n".encode()
    with pytest.raises(tools.DownloadError, match=r"not a readable tar\.gz"):
        tools.download_tool("istioctl", "1.30.3", base_url=server.base, platform=LINUX)
    assert not cache.exists()


def test_http_errors_name_the_url(server: Server, cache: Path) -> None:
    with pytest.raises(tools.DownloadError, match=r"kind-linux-amd64.sha256sum answered HTTP 404"):
        tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    server.routes["/v0.33.0/kind-linux-amd64.sha256sum"] = f"{DIGEST}  kind-linux-amd64".encode()
    with pytest.raises(tools.DownloadError, match=r"/v0.33.0/kind-linux-amd64 answered HTTP 404"):
        tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    assert not cache.exists()


def test_ctrl_c_during_a_download_leaves_nothing(server: Server, cache: Path, main_thread: None) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1 << 20))
        handler.end_headers()
        handler.wfile.write(b"x" * 4096)
        handler.wfile.flush()
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C mid-download
        time.sleep(1)

    server.routes["/v0.33.0/kind-linux-amd64"] = slow
    server.routes["/v0.33.0/kind-linux-amd64.sha256sum"] = f"{DIGEST}  kind-linux-amd64".encode()
    with pytest.raises(KeyboardInterrupt):
        tools.download_tool("kind", "0.33.0", base_url=server.base, platform=LINUX)
    assert not cache.exists(), f"left behind: {_files_under(cache)}"


def test_ensure_tool_downloads_when_path_has_another_version(
    server: Server, cache: Path, fakebin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakebin.rules(_version_rules("0.20.0", "1.29.6"))
    monkeypatch.setenv("PATH", str(fakebin.bin_dir))
    monkeypatch.setenv("EGRESS_HARNESS_KIND_BASE_URL", server.base)
    arch = versions.host_platform()
    asset = versions.KIND.asset(*arch, "0.33.0")
    server.routes[f"/v0.33.0/{asset}"] = b"new kind"
    server.routes[f"/v0.33.0/{asset}.sha256sum"] = f"{_sha(b'new kind')}  {asset}".encode()
    path = tools.ensure_tool("kind", "0.33.0")
    assert path.read_bytes() == b"new kind"
    assert fakebin.commands() == ["kind version"]
    # The second time the cache answers: no request, no download.
    requests = len(server.requests)
    assert tools.ensure_tool("kind", "0.33.0") == path
    assert len(server.requests) == requests


# --- preflight and the CLI -------------------------------------------------------------------------


def _docker_ok(mem_bytes: int = 16 << 30) -> dict[str, Any]:
    info = {"ServerVersion": "29.1.0", "MemTotal": mem_bytes, "DockerRootDir": "/nonexistent-docker-root"}
    return {"tool": "docker", "args": ["info"], "stdout": json.dumps(info) + "\n"}


def test_preflight_reports_an_unreachable_docker_engine(fakebin: Any, cache: Path) -> None:
    fakebin.rules(
        [
            {
                "tool": "docker",
                "args": ["info"],
                "stderr": "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                "Is the docker daemon running?\n",
                "exit": 1,
            }
        ]
    )
    missing = tools.missing_prerequisites(min_disk_gib=0, min_memory_gib=0)
    assert len(missing) == 1
    assert missing[0].startswith("docker engine: not reachable")
    assert "Cannot connect to the Docker daemon" in missing[0]
    assert "docker info --format {{json .}}" in fakebin.commands()


def test_preflight_reports_a_missing_docker_cli(
    fakebin: Any, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    missing = tools.missing_prerequisites(min_disk_gib=0, min_memory_gib=0)
    assert len(missing) == 2
    assert "docker: the Docker CLI is not on PATH" in missing[0]
    assert "install Docker Engine" in missing[0]
    # nothing on PATH: no openssl either, which the run needs for its TLS test certificates
    assert missing[1].startswith("openssl (the run makes its TLS test certificates with it)")
    assert "apt-get install -y openssl" in missing[1]


def test_preflight_reports_memory_disk_and_tools(fakebin: Any, cache: Path) -> None:
    fakebin.rules([_docker_ok(mem_bytes=2 << 30), *_version_rules("0.20.0", "1.29.6")])
    missing = tools.missing_prerequisites(tools=True, istio="1.30.3", min_disk_gib=1e9)
    text = "\n".join(missing)
    assert "memory: Docker may use 2.0 GiB" in text
    assert "disk:" in text
    for name, version in (("kind", "0.33.0"), ("istioctl", "1.30.3")):
        assert f"{name} {version}: not on PATH at that version" in text
    assert text.count("run `make tools`") == 2
    assert "kubectl" not in text


def test_preflight_passes_when_everything_is_there(fakebin: Any, cache: Path) -> None:
    fakebin.rules([_docker_ok(), *_version_rules("0.33.0", "1.30.3")])
    assert tools.missing_prerequisites(tools=True, istio="1.30.3", min_disk_gib=0) == []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    tools.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_preflight_exit_code_and_listing(
    fakebin: Any, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakebin.rules([{"tool": "docker", "args": ["info"], "stderr": "no daemon\n", "exit": 1}])
    args = _parser().parse_args(["e2e", "preflight"])
    assert args.handler(args) == 1
    assert "docker engine: not reachable" in capsys.readouterr().err


def test_cli_tools_downloads_every_pinned_tool(
    server: Server,
    cache: Path,
    fakebin: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(fakebin.bin_dir))
    fakebin.rules(_version_rules("0.1.0", "1.0.0"))
    os_name, arch = versions.host_platform()
    for spec in versions.TOOLS.values():
        monkeypatch.setenv(spec.base_url_env, server.base)
    kind_asset = versions.KIND.asset(os_name, arch, "0.33.0")
    server.routes[f"/v0.33.0/{kind_asset}"] = b"kind"
    server.routes[f"/v0.33.0/{kind_asset}.sha256sum"] = f"{_sha(b'kind')}  {kind_asset}".encode()
    istio_asset = versions.ISTIOCTL.asset(os_name, arch, "1.29.6")
    archive = _tar_gz({"istioctl": b"istioctl"})
    server.routes[f"/1.29.6/{istio_asset}"] = archive
    server.routes[f"/1.29.6/{istio_asset}.sha256"] = f"{_sha(archive)} {istio_asset}".encode()
    args = _parser().parse_args(["e2e", "tools", "--istio-version", "1.29.6"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    for name, version in (("kind", "0.33.0"), ("istioctl", "1.29.6")):
        path = cache / "bin" / f"{name}-{version}" / name
        assert f"{name}\t{path}" in out
        assert path.is_file()
    assert "kubectl" not in out


def test_fake_reports_an_unexpected_command(fakebin: Any) -> None:
    done = run(["kind", "get", "nodes"], timeout=10, check=False)
    assert done.returncode == fake.UNMATCHED_EXIT
    assert "no rule for `kind get nodes`" in done.stderr
    assert sys.executable in (fakebin.bin_dir / "_fake.py").read_text().splitlines()[0]


def test_e2e_tools_reports_a_failed_download_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from harness.cli import main

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv(versions.TOOLS["kind"].base_url_env, f"http://127.0.0.1:{closed}")
    cache = tmp_path / "cache"
    assert main(["e2e", "tools", "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err
    assert f"egress-harness e2e tools: kind {versions.KIND_VERSION}: GET http://127.0.0.1:{closed}/" in err
    assert "Traceback" not in err
    assert versions.TOOLS["kind"].base_url_env in err
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_images_that_cannot_be_pulled_are_named_before_any_work_with_the_netns_way_out() -> None:
    """No registry here (issue 10 item 15): the kind tier says so in seconds, naming the images."""
    reached: list[str] = []

    def can_reach(host: str) -> bool:
        reached.append(host)
        return False

    problems = tools.pull_problems("1.30.3", present=lambda image: False, can_reach=can_reach)
    (problem,) = problems
    assert versions.KIND_NODE_IMAGE in problem and "docker.io/istio/proxyv2:1.30.3" in problem
    assert "docker.io cannot be reached" in problem and "kind cannot start" in problem
    assert "make e2e TIER=istiod" in tools.NETNS_HINT  # what the preflight says after the list
    assert reached == ["registry-1.docker.io"]
    # images already on the machine need no registry; a registry that answers is fine too
    assert tools.pull_problems("1.30.3", present=lambda image: True, can_reach=can_reach) == []
    assert tools.pull_problems("1.30.3", present=lambda image: False, can_reach=lambda host: True) == []
    assert tools.registry_of("gcr.io/istio-release/pilot:1.30.3") == "gcr.io"
    assert tools.registry_of("kindest/node:v1") == tools.registry_of("busybox") == "docker.io"


def test_reachable_is_false_for_a_closed_port_within_its_timeout() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused at once
    assert tools.reachable("127.0.0.1", port, timeout=1.0) is False
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert tools.reachable("127.0.0.1", listening.getsockname()[1], timeout=1.0) is True
