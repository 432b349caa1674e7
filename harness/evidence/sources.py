"""Where log lines come from, read incrementally.

A ``LogSource`` yields only the lines that are new since its last read: a file now (the local Envoy
tier), a pod's log later (the cluster tier). ``EntryLog`` parses what a source yields and keeps every
entry seen so far, so an assertion that polls reads each byte once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from harness.accesslog import AccessLogEntry, LogParser, TextFormat
from harness.accesslog.parse import Encoding


@runtime_checkable
class LogSource(Protocol):
    """Anything that yields the log lines that are new since the previous call."""

    @property
    def name(self) -> str:
        """What the lines come from, for messages (a file path, ``pod/container``)."""
        ...

    def read_new(self) -> list[str]:
        """The complete lines appended since the last call (a partial last line waits)."""
        ...


class FileLogSource:
    """A log file, read from where the previous read stopped.

    Only whole lines are returned: a line Envoy has not finished writing is kept until its newline
    arrives. A file that shrank (truncated or replaced) is read again from its start.
    """

    def __init__(self, path: str | os.PathLike[str], *, from_end: bool = False) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self._inode: int | None = None
        if from_end and self.path.exists():
            st = self.path.stat()
            self._offset, self._inode = st.st_size, st.st_ino

    @property
    def name(self) -> str:
        return str(self.path)

    def read_new(self) -> list[str]:
        try:
            with self.path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_size < self._offset or (self._inode is not None and st.st_ino != self._inode):
                    self._offset, self._partial = 0, b""
                self._inode = st.st_ino
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if not cut:
            return []
        return data[:cut].decode("utf-8", errors="replace").splitlines()


class LinesLogSource:
    """Lines handed over by code (pod logs fetched elsewhere, tests): ``append`` then ``read_new``."""

    def __init__(self, name: str, lines: Iterable[str] = ()) -> None:
        self._name = name
        self._pending: list[str] = list(lines)

    @property
    def name(self) -> str:
        return self._name

    def append(self, *lines: str) -> None:
        self._pending.extend(lines)

    def read_new(self) -> list[str]:
        out, self._pending = self._pending, []
        return out


class EntryLog:
    """The parsed entries of one hop's log: what has been read so far, and a way to read more."""

    def __init__(
        self,
        source: LogSource,
        *,
        hop: str | None = None,
        encoding: Encoding = "auto",
        text_format: str | TextFormat | None = None,
    ) -> None:
        self.source = source
        self.hop = hop or source.name
        self.parser = LogParser(encoding, text_format)
        self.entries: list[AccessLogEntry] = []

    def __repr__(self) -> str:
        return f"EntryLog(hop={self.hop!r}, source={self.source.name!r}, entries={len(self.entries)})"

    @property
    def skipped(self) -> int:
        """Lines read that were not access-log entries."""
        return self.parser.skipped

    def poll(self) -> list[AccessLogEntry]:
        """Read what is new in the source; return (and keep) the new entries."""
        new = list(self.parser.parse_lines(self.source.read_new(), source=self.hop))
        self.entries.extend(new)
        return new
