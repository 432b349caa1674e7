"""Loopback forwarders into a run's node namespace: how the harness, kubectl and istioctl reach it.

The netns cluster's API server and ingress listen on addresses inside the run's node namespace,
which the root namespace has no route to (nothing of a run is added there). A forwarder process
listens on ``127.0.0.1:<port>`` in the root namespace and, for each connection, opens one to
``<address>:<port>`` from inside the node namespace: the connecting thread enters the namespace
with ``setns(2)`` (per thread, so the listeners stay on the root namespace's loopback).

Run as ``python -m harness.cluster.providers.netns.forward --netns NAME --ready FILE
--map NAME=ADDRESS:PORT ...``; it binds a free loopback port per map, writes ``{name: port}`` as
JSON to FILE once all listen, and runs until SIGTERM. :class:`Forwarder` starts and stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from harness.cluster.providers.netns.daemons import DaemonRecord
from harness.cluster.providers.netns.network import NETNS_DIR

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
BUFFER = 65536


class ForwardError(RuntimeError):
    pass


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``/var/run/netns/<name>``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _serve_connection(client: socket.socket, netns: str, target: tuple[str, int]) -> None:
    try:
        enter_netns(netns)
        upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        print(f"forward: {target[0]}:{target[1]} in {netns}: {exc}", file=sys.stderr, flush=True)
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _accept_loop(listener: socket.socket, netns: str, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve_connection, args=(client, netns, target), daemon=True).start()


def parse_target(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, rest = text.partition("=")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not port.isdigit() or not name:
        raise ForwardError(f"--map {text!r}: expected NAME=ADDRESS:PORT")
    return name, (host, int(port))


def serve(netns: str, maps: Mapping[str, tuple[str, int]], ready: Path) -> None:
    ports = {}
    for name, target in maps.items():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        ports[name] = listener.getsockname()[1]
        threading.Thread(target=_accept_loop, args=(listener, netns, target), daemon=True).start()
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports), encoding="utf-8")
    tmp.rename(ready)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()


#: what a forwarder process's command line names (how a later ``down`` recognises its pid)
MODULE = __name__


class Forwarder:
    """The forwarder process of one run: ``with Forwarder(netns, {...}, run_dir) as f: f.ports``."""

    def __init__(self, netns: str, maps: Mapping[str, tuple[str, int]], run_dir: Path) -> None:
        self.netns = netns
        self.maps = dict(maps)
        self.ready = run_dir / "forward.json"
        self.log = run_dir / "logs" / "forward.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> Forwarder:
        self.ready.unlink(missing_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", MODULE, "--netns", self.netns, "--ready", str(self.ready)]
        for name, (host, port) in self.maps.items():
            argv += ["--map", f"{name}={host}:{port}"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.exists():
            if self.process.poll() is not None:
                raise ForwardError(
                    f"the forwarder into {self.netns} exited ({self.process.returncode}); see {self.log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ForwardError(
                    f"the forwarder into {self.netns} did not listen in {READY_TIMEOUT_S:g} s; see {self.log}"
                )
            time.sleep(0.05)
        self.ports = {k: int(v) for k, v in json.loads(self.ready.read_text(encoding="utf-8")).items()}
        return self

    @property
    def record(self) -> DaemonRecord | None:
        """The process, for a later ``down`` of a kept run (None when not started)."""
        if self.process is None:
            return None
        return DaemonRecord("forwarder", self.process.pid, MODULE, str(self.log))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.cluster.providers.netns.forward")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--ready", required=True, type=Path)
    parser.add_argument("--map", action="append", default=[], dest="maps")
    args = parser.parse_args(argv)
    try:
        maps = dict(parse_target(m) for m in args.maps)
    except ForwardError as exc:
        parser.error(str(exc))
    serve(args.netns, maps, args.ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
