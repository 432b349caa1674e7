"""The catalog's error vocabulary: a problem located by file, line and field, and the one exception
that carries every problem found.

Every module of the catalog reports through these (the loader, the renderer, schema validation), so
they live below all of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FieldPath", "ScenarioError", "ScenarioIssue", "display_path", "format_field"]

#: A field's place in a document: mapping keys and list indexes, e.g. ("requests", 0, "expect").
FieldPath = tuple[str | int, ...]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def format_field(path: Sequence[str | int]) -> str:
    """("requests", 0, "expect", "status") -> ``requests[0].expect.status``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True)
class ScenarioIssue:
    """One problem in a scenario file or manifest template."""

    path: Path
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = display_path(self.path) + (f":{self.line}" if self.line is not None else "")
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ScenarioError(Exception):
    """Every issue found, in file order."""

    def __init__(self, issues: Iterable[ScenarioIssue]) -> None:
        self.issues: tuple[ScenarioIssue, ...] = tuple(issues)
        n = len(self.issues)
        head = f"{n} problem{'s' if n != 1 else ''} in the scenario catalog:"
        super().__init__("\n".join([head, *(f"  {i}" for i in self.issues)]))
