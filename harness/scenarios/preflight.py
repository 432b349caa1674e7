"""Offline pre-flight of rendered manifests: ``istioctl analyze --use-kube=false FILE...``.

``istioctl analyze`` runs Istio's configuration analyzers over a set of files without a cluster
(``--use-kube=false``; it adds Istio's default resources, such as the default mesh config, itself).
This module runs it with a fixed, parseable command line and turns what it prints into
:class:`AnalyzeMessage` items:

* ``--output=log`` (the default format) prints one line per message on stdout::

      Error [IST0101] (VirtualService egress-harness/via-gateway vs.yaml:12) Referenced host not found: "x"
      Warning [IST0134] (ServiceEntry egress-harness/external) ...
      Info [IST0102] (Namespace default) The namespace is not enabled for Istio injection. ...

  ``LEVEL [CODE] (KIND NAMESPACE/NAME FILE:LINE) TEXT``: the parenthesised origin is absent for a
  message about no resource, has no namespace for a cluster-scoped one, and no ``FILE:LINE`` when
  the resource did not come from a file. Levels are ``Info``, ``Warning`` and ``Error``. Only this
  format sets the exit code: with ``-o json|yaml`` istioctl exits 0 whatever it found.
* ``--failure-threshold=LEVEL`` (default ``Error``): a message at or above it makes istioctl exit
  ``79``; ``--output-threshold`` (default ``Info``) only filters what is printed, so it stays at Info.
* Other exit codes: ``65`` some files could not be parsed (stderr says which), ``64`` a usage error
  (for example a flag this istioctl does not know), ``1`` anything else.
* ``--all-namespaces``: without it the files are analyzed for the ``default`` namespace only.
* ``--color=false``: no ANSI colours around the level, whatever the terminal.

:func:`analyze_offline` raises :class:`AnalyzeError` (with the whole :class:`AnalyzeResult`) when a
message reaches the failure threshold, and :class:`PreflightError` when istioctl could not run or
its answer cannot be read; otherwise it returns the result, warnings and infos included.

Analyzed on their own, egress manifests name things that only the cluster has (the egress gateway
pods a ``Gateway`` selects, the ``istio-egressgateway`` Service a route targets), which analyzers
report as ``IST0101``: pass stand-ins for those objects among the files, or ``suppress`` the codes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from harness.common.proc import CommandError, CommandTimeout, format_argv, run, tail

__all__ = [
    "ANALYZE_FILE_SUFFIXES",
    "EXIT_ANALYZER_FOUND_ISSUES",
    "EXIT_DATA_ERROR",
    "EXIT_INCORRECT_USAGE",
    "LEVELS",
    "AnalyzeError",
    "AnalyzeMessage",
    "AnalyzeResult",
    "Level",
    "PreflightError",
    "analyze_command",
    "analyze_offline",
    "parse_analyze_output",
]

Level = Literal["Info", "Warning", "Error"]
#: istioctl's message levels, least severe first.
LEVELS: tuple[Level, ...] = ("Info", "Warning", "Error")
#: the file name endings istioctl analyze reads; it skips other files with only a note on stderr.
ANALYZE_FILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")

#: istioctl's exit codes (istioctl/cmd/root.go).
EXIT_INCORRECT_USAGE = 64
EXIT_DATA_ERROR = 65
EXIT_ANALYZER_FOUND_ISSUES = 79

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MESSAGE = re.compile(
    r"^(?P<level>Info|Warning|Error) \[(?P<code>[A-Z]+[0-9]+)\]"
    r"(?: \[cluster-(?P<cluster>[^\]]*)\])?"
    r"(?: \((?P<origin>[^()]*)\))?"
    r"(?: (?P<text>.*))?$"
)
_REFERENCE = re.compile(r"^(?P<file>.+?)(?::(?P<line>[0-9]+))?$")
_SUPPRESSION = re.compile(r"^[A-Z]+[0-9]+=\S.*$")


class PreflightError(RuntimeError):
    """``istioctl analyze`` could not run, or its answer could not be read."""


@dataclass(frozen=True)
class AnalyzeMessage:
    """One message of ``istioctl analyze``, e.g. ``Error [IST0101] (VirtualService ns/vs a.yaml:12) text``."""

    level: Level
    code: str
    text: str
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    #: the file (as istioctl was given it) and line the resource came from, when it came from one
    file: str | None = None
    line: int | None = None
    #: set only in multi-cluster output
    cluster: str | None = None
    #: the line as istioctl printed it
    raw: str = ""

    @property
    def resource(self) -> str | None:
        """``VirtualService ns/name`` (``Namespace default`` for a cluster-scoped one)."""
        if self.kind is None:
            return None
        full = f"{self.namespace}/{self.name}" if self.namespace else (self.name or "")
        return f"{self.kind} {full}".strip()

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def at_least(self, level: Level) -> bool:
        return LEVELS.index(self.level) >= LEVELS.index(level)

    def __str__(self) -> str:
        where = " ".join(p for p in (self.resource, self.location) if p)
        return f"{self.level} [{self.code}]" + (f" ({where})" if where else "") + f" {self.text}"


@dataclass(frozen=True)
class AnalyzeResult:
    argv: tuple[str, ...]
    exit_code: int
    failure_threshold: Level
    messages: tuple[AnalyzeMessage, ...]
    #: stdout lines that are not messages (blank lines excluded)
    unparsed: tuple[str, ...]
    stderr: str

    def at_least(self, level: Level) -> tuple[AnalyzeMessage, ...]:
        return tuple(m for m in self.messages if m.at_least(level))

    @property
    def errors(self) -> tuple[AnalyzeMessage, ...]:
        return tuple(m for m in self.messages if m.level == "Error")

    @property
    def warnings(self) -> tuple[AnalyzeMessage, ...]:
        return tuple(m for m in self.messages if m.level == "Warning")

    @property
    def infos(self) -> tuple[AnalyzeMessage, ...]:
        return tuple(m for m in self.messages if m.level == "Info")

    @property
    def failures(self) -> tuple[AnalyzeMessage, ...]:
        """The messages at or above the failure threshold."""
        return self.at_least(self.failure_threshold)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failures

    def summary(self) -> str:
        counts = ", ".join(
            f"{n} {label}"
            for n, label in (
                (len(self.errors), "error(s)"),
                (len(self.warnings), "warning(s)"),
                (len(self.infos), "info(s)"),
            )
        )
        return f"istioctl analyze: {counts} (failure threshold {self.failure_threshold})"


class AnalyzeError(PreflightError):
    """The analyzers reported messages at or above the failure threshold; ``result`` has them all."""

    def __init__(self, result: AnalyzeResult) -> None:
        self.result = result
        failures = result.failures
        lines = [
            f"istioctl analyze found {len(failures)} message(s) at or above {result.failure_threshold} "
            f"(exit code {result.exit_code}): `{format_argv(result.argv)}`",
            *(f"  {m}" for m in failures),
        ]
        others = [m for m in result.messages if m not in failures]
        if others:
            lines.append(
                f"  (and {len(others)} below the threshold: {', '.join(sorted({m.code for m in others}))})"
            )
        super().__init__("\n".join(lines))


def _origin(origin: str) -> dict[str, str | int | None]:
    """``Kind ns/name file:line`` -> its parts. The kind and name are single words; the rest, if
    any, is the reference (a file name may hold spaces)."""
    parts = origin.split(" ", 2)
    out: dict[str, str | int | None] = {"kind": parts[0] or None}
    if len(parts) > 1:
        namespace, sep, name = parts[1].partition("/")
        out["namespace"], out["name"] = (namespace, name) if sep else (None, namespace)
    if len(parts) > 2:
        ref = _REFERENCE.match(parts[2])
        if ref:
            out["file"] = ref.group("file")
            out["line"] = int(ref.group("line")) if ref.group("line") else None
    return out


def parse_analyze_output(stdout: str) -> tuple[list[AnalyzeMessage], list[str]]:
    """The messages in ``istioctl analyze -o log`` output, and the non-blank lines that are not messages."""
    messages: list[AnalyzeMessage] = []
    unparsed: list[str] = []
    for raw in stdout.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        if not line.strip():
            continue
        m = _MESSAGE.match(line)
        if m is None:
            unparsed.append(line)
            continue
        origin = _origin(m.group("origin")) if m.group("origin") else {}
        line_no = origin.get("line")
        messages.append(
            AnalyzeMessage(
                level=cast(Level, m.group("level")),  # the pattern admits only the three levels
                code=m.group("code"),
                text=m.group("text") or "",
                kind=_str(origin.get("kind")),
                namespace=_str(origin.get("namespace")),
                name=_str(origin.get("name")),
                file=_str(origin.get("file")),
                line=line_no if isinstance(line_no, int) else None,
                cluster=m.group("cluster"),
                raw=line,
            )
        )
    return messages, unparsed


def _str(value: str | int | None) -> str | None:
    return value if isinstance(value, str) else None


def analyze_command(
    istioctl: Path,
    files: Sequence[Path],
    *,
    failure_threshold: Level = "Error",
    suppress: Sequence[str] = (),
    istio_namespace: str | None = None,
    mesh_config: Path | None = None,
) -> list[str]:
    """The argv :func:`analyze_offline` runs."""
    argv = [
        str(istioctl),
        "analyze",
        "--use-kube=false",
        "--all-namespaces",
        "--output=log",
        "--color=false",
        f"--failure-threshold={failure_threshold}",
        "--output-threshold=Info",
    ]
    if istio_namespace:
        argv.append(f"--istioNamespace={istio_namespace}")
    if mesh_config is not None:
        argv.append(f"--meshConfigFile={mesh_config}")
    for item in suppress:
        argv += ["--suppress", item]
    argv += [str(f) for f in files]
    return argv


def _check_arguments(
    files: Sequence[Path], failure_threshold: str, suppress: Sequence[str], timeout: float
) -> None:
    if not files:
        raise ValueError("analyze_offline: no files to analyze")
    for f in files:
        if f.suffix not in ANALYZE_FILE_SUFFIXES:
            raise ValueError(
                f"analyze_offline: {f}: istioctl analyze reads only {', '.join(ANALYZE_FILE_SUFFIXES)} files "
                "(it would skip this one silently)"
            )
        if not f.is_file():
            raise ValueError(f"analyze_offline: {f}: no such file")
    if failure_threshold not in LEVELS:
        raise ValueError(
            f"analyze_offline: failure_threshold must be one of {', '.join(LEVELS)}, got {failure_threshold!r}"
        )
    for item in suppress:
        if not _SUPPRESSION.match(item):
            raise ValueError(
                f"analyze_offline: suppression {item!r} is not CODE=RESOURCE, e.g. 'IST0101=Gateway egress.ns'"
            )
    if timeout <= 0:
        raise ValueError(f"analyze_offline: timeout must be positive, got {timeout}")


def analyze_offline(
    rendered_files: list[Path],
    istioctl: Path,
    *,
    timeout: float,
    failure_threshold: Level = "Error",
    suppress: Sequence[str] = (),
    istio_namespace: str | None = None,
    mesh_config: Path | None = None,
) -> AnalyzeResult:
    """Run ``istioctl analyze --use-kube=false`` over ``rendered_files`` (no cluster is contacted).

    Returns the parsed result when no message reaches ``failure_threshold``; raises
    :class:`AnalyzeError` when one does, and :class:`PreflightError` when istioctl cannot run, times
    out after ``timeout`` seconds, cannot parse a file, rejects the command line, or answers with
    output that does not agree with its exit code. ``suppress`` items are istioctl's
    ``CODE=RESOURCE`` (``IST0101=Gateway egress-gateway.egress-harness``); ``istio_namespace`` is
    where it assumes Istio runs (istioctl's default: istio-system); ``mesh_config`` a MeshConfig
    file to analyze with instead of Istio's defaults.
    """
    files = list(rendered_files)
    _check_arguments(files, failure_threshold, suppress, timeout)
    argv = analyze_command(
        istioctl,
        files,
        failure_threshold=failure_threshold,
        suppress=suppress,
        istio_namespace=istio_namespace,
        mesh_config=mesh_config,
    )
    shown = format_argv(argv)
    try:
        done = run(argv, timeout=timeout, check=False)
    except CommandTimeout as exc:
        raise PreflightError(
            f"`{shown}` did not finish within {timeout:g}s and was stopped"
            + (f"\n--- last lines of its stderr ---\n{exc.stderr_tail}" if exc.stderr_tail.strip() else "")
        ) from exc
    except CommandError as exc:
        raise PreflightError(f"istioctl analyze could not run: {exc.reason} (`{shown}`)") from exc

    messages, unparsed = parse_analyze_output(done.stdout)
    result = AnalyzeResult(
        argv=done.argv,
        exit_code=done.returncode,
        failure_threshold=failure_threshold,
        messages=tuple(messages),
        unparsed=tuple(unparsed),
        stderr=done.stderr,
    )

    def details() -> str:
        parts = []
        if done.stderr.strip():
            parts.append(f"--- last lines of its stderr ---\n{tail(done.stderr)}")
        if unparsed:
            parts.append("--- stdout lines that are not analyzer messages ---\n" + tail("\n".join(unparsed)))
        return ("\n" + "\n".join(parts)) if parts else "\n(it printed nothing else)"

    code = done.returncode
    if code == EXIT_ANALYZER_FOUND_ISSUES:
        if not result.failures:
            raise PreflightError(
                f"`{shown}` exited {code} (analyzers found issues at or above {failure_threshold}), but no such "
                f"message could be read from its output: is this istioctl's log format?{details()}"
            )
        raise AnalyzeError(result)
    if code == EXIT_DATA_ERROR:
        raise PreflightError(
            f"istioctl analyze could not parse some of the files (exit {code}): `{shown}`{details()}"
        )
    if code == EXIT_INCORRECT_USAGE:
        raise PreflightError(
            f"istioctl rejected the command line (exit {code}; an istioctl too old for one of its flags?): "
            f"`{shown}`{details()}"
        )
    if code != 0:
        raise PreflightError(f"istioctl analyze failed with exit code {code}: `{shown}`{details()}")
    if result.failures:
        # exit 0 and messages at the threshold cannot both come from one istioctl run: trust the messages
        raise AnalyzeError(result)
    return result
