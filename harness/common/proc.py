"""Running external commands (kind, istioctl, kubectl, docker) with a timeout and readable failures.

Every child runs in its own session, so it has its own process group: a timeout or a Ctrl-C in the
harness ends the whole group (the command and whatever it started), never anything else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

log = logging.getLogger(__name__)

TAIL_LINES = 20
TAIL_CHARS = 4000
KILL_GRACE_S = 5.0
READER_JOIN_S = 5.0


def progress(message: str) -> None:
    """One progress line for a long step, on stderr, with the project's ``>>`` prefix."""
    print(f">> {message}", file=sys.stderr, flush=True)


def format_argv(argv: Sequence[str | os.PathLike[str]]) -> str:
    return shlex.join(str(a) for a in argv)


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``text`` (and at most ``chars`` characters of them)."""
    kept = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return kept[-chars:]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


class CommandError(RuntimeError):
    """A command failed: exited non-zero, could not start, or ran out of time."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout_tail: str,
        stderr_tail: str,
        *,
        reason: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout_tail = stdout_tail
        self.stderr_tail = stderr_tail
        self.reason = reason or f"exited with code {returncode}"
        super().__init__(self._render())

    @property
    def command(self) -> str:
        return format_argv(self.argv)

    def _render(self) -> str:
        parts = [f"command `{self.command}` {self.reason}"]
        if self.stderr_tail.strip():
            parts.append(f"--- last lines of its stderr ---\n{self.stderr_tail}")
        elif self.stdout_tail.strip():
            parts.append(f"--- last lines of its stdout (stderr was empty) ---\n{self.stdout_tail}")
        else:
            parts.append("(it printed nothing)")
        return "\n".join(parts)


class CommandTimeout(CommandError):
    """The command did not finish within its timeout; its process group was ended."""

    def __init__(self, argv: Sequence[str], timeout_s: float, stdout_tail: str, stderr_tail: str) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            argv,
            None,
            stdout_tail,
            stderr_tail,
            reason=f"did not finish within {timeout_s:g}s and was stopped",
        )


def _reader(stream: IO[bytes], sink: list[str], echo_prefix: str | None) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        sink.append(line)
        if echo_prefix is not None:
            print(f"{echo_prefix}{line.rstrip()}", file=sys.stderr, flush=True)
    stream.close()


def _writer(stream: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.close()


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it is still there after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; a member it started may still hold the group: finish them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _start_io(
    proc: subprocess.Popen[bytes], data: bytes | None, echo_prefix: str | None
) -> tuple[list[threading.Thread], list[str], list[str]]:
    out: list[str] = []
    err: list[str] = []
    threads = [
        threading.Thread(target=_reader, args=(proc.stdout, out, echo_prefix), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, err, echo_prefix), daemon=True),
    ]
    if data is not None:
        threads.append(threading.Thread(target=_writer, args=(proc.stdin, data), daemon=True))
    for t in threads:
        t.start()
    return threads, out, err


def _wait(
    proc: subprocess.Popen[bytes], started: float, timeout: float, heartbeat_s: float | None, shown: str
) -> int | None:
    """The exit code, or None when ``timeout`` ran out first (the child is then still running)."""
    deadline = started + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        step = remaining if heartbeat_s is None else min(remaining, heartbeat_s)
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            if heartbeat_s is not None and time.monotonic() < deadline:
                elapsed = time.monotonic() - started
                progress(f"still running ({elapsed:.0f}s of at most {timeout:g}s): {shown}")


_NOT_HELD = object()


def _hold_sigint(held: list[int]) -> object:
    """Note SIGINT in ``held`` instead of raising; returns what to restore (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return _NOT_HELD
    return signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))


def _release_sigint(previous: object) -> None:
    if previous is not _NOT_HELD:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)  # type: ignore[arg-type]


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
    echo: bool = False,
    heartbeat_s: float | None = None,
) -> Completed:
    """Run ``argv`` and wait for it, at most ``timeout`` seconds.

    ``env`` holds variables set on top of this process's environment. ``echo`` copies the
    command's output lines to stderr as they come (for long steps); ``heartbeat_s`` prints a
    ``>> still running`` line that often. With ``check`` a non-zero exit raises CommandError.
    A timeout always raises CommandTimeout; KeyboardInterrupt ends the child's group and propagates.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    args = tuple(str(a) for a in argv)
    if not args:
        raise ValueError("empty argv")
    shown = format_argv(args)
    log.info("run (timeout %gs): %s", timeout, shown)
    child_env = None if env is None else {**os.environ, **env}
    data = input.encode() if isinstance(input, str) else input
    started = time.monotonic()
    # Ctrl-C while Popen is still returning would strand the child (there is no handle to end it
    # with), so SIGINT is only noted until the handle exists and the cleanup below covers it.
    held: list[int] = []
    previous = _hold_sigint(held)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        _release_sigint(previous)
        raise CommandError(args, None, "", "", reason=f"could not start: {args[0]!r} was not found") from None
    except PermissionError as exc:
        _release_sigint(previous)
        raise CommandError(args, None, "", "", reason=f"could not start: {exc}") from None
    except BaseException:
        _release_sigint(previous)
        raise

    threads: list[threading.Thread] = []
    out: list[str] = []
    err: list[str] = []

    def collected() -> tuple[str, str]:
        for t in threads:
            t.join(READER_JOIN_S)
        return "".join(out), "".join(err)

    # Everything from the start of the child on is covered: Ctrl-C at any point ends its group.
    try:
        _release_sigint(previous)
        if held:
            raise KeyboardInterrupt
        threads, out, err = _start_io(proc, data, f"   {Path(args[0]).name}| " if echo else None)
        returncode = _wait(proc, started, timeout, heartbeat_s, shown)
    except KeyboardInterrupt:
        progress(f"interrupted; stopping `{shown}`")
        _end_group(proc)
        collected()
        raise
    if returncode is None:
        _end_group(proc)
        stdout, stderr = collected()
        raise CommandTimeout(args, timeout, tail(stdout), tail(stderr))
    stdout, stderr = collected()
    duration = time.monotonic() - started
    log.info("exit %d after %.1fs: %s", returncode, duration, shown)
    if check and returncode != 0:
        raise CommandError(args, returncode, tail(stdout), tail(stderr))
    return Completed(args, returncode, stdout, stderr, duration)


@contextlib.contextmanager
def interrupts_deferred(doing: str) -> Iterator[None]:
    """Hold Ctrl-C back while cleanup runs, then raise it: a second Ctrl-C must not strand a cluster.

    Only the main thread can handle signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        progress(f"interrupt received; finishing {doing} first")

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
