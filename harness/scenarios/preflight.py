"""Pre-flight of rendered manifests: ``istioctl analyze``, the one place the harness runs it.

``istioctl analyze`` runs Istio's configuration analyzers over a set of files, in one of two modes
(:data:`AnalyzeMode`):

* ``files``: the files alone, without a cluster (``--use-kube=false``; istioctl adds Istio's default
  resources, such as the default mesh config, itself) -- :func:`analyze_offline`, the catalog's
  offline check;
* ``cluster``: the files together with what a live cluster holds (``kube_args`` name it, e.g.
  ``--kubeconfig FILE --context NAME``) -- the cluster tier's check before it applies a scenario.

:func:`analyze` runs either with a fixed, parseable command line and turns what it prints into
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
* ``--all-namespaces``: without it (and without ``-n NAMESPACE``) the files are analyzed for the
  ``default`` namespace only; with ``namespace`` given, for that namespace.
* ``--color=false``: no ANSI colours around the level, whatever the terminal.

:func:`analyze` raises :class:`AnalyzeError` (with the whole :class:`AnalyzeResult`) when a message
reaches the failure threshold, and :class:`PreflightError` when istioctl could not run or its answer
cannot be read; otherwise it returns the result, warnings and infos included. istioctl prints the
messages on stdout; a message line on stderr is read as well.

Analyzed on their own, egress manifests name things that only the cluster has (the egress gateway
pods a ``Gateway`` selects, the ``istio-egressgateway`` Service a route targets), which analyzers
report as ``IST0101``: pass stand-ins for those objects among the files, ``suppress`` the codes, or
``tolerate`` them (:data:`FILE_ONLY_TOLERATED`: reported, but not failures).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from harness.common.proc import CommandError, CommandTimeout, format_argv, run, tail

__all__ = [
    "ANALYZE_FILE_SUFFIXES",
    "ANALYZE_MODES",
    "EXIT_ANALYZER_FOUND_ISSUES",
    "EXIT_DATA_ERROR",
    "EXIT_INCORRECT_USAGE",
    "FILE_ONLY_TOLERATED",
    "LEVELS",
    "AnalyzeError",
    "AnalyzeMessage",
    "AnalyzeMode",
    "AnalyzeResult",
    "Level",
    "PreflightError",
    "analyze",
    "analyze_command",
    "analyze_offline",
    "parse_analyze_output",
]

Level = Literal["Info", "Warning", "Error"]
#: istioctl's message levels, least severe first.
LEVELS: tuple[Level, ...] = ("Info", "Warning", "Error")
#: the file name endings istioctl analyze reads; it skips other files with only a note on stderr.
ANALYZE_FILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")
#: ``files``: the files alone (``--use-kube=false``); ``cluster``: with a live cluster's objects.
AnalyzeMode = Literal["cluster", "files"]
ANALYZE_MODES: tuple[AnalyzeMode, ...] = ("cluster", "files")
#: Without the cluster, references to what lives there (the gateway pods, istio-system services) are
#: unresolved by design (the docs: a file-only analysis expects a self-contained set of files).
FILE_ONLY_TOLERATED: frozenset[str] = frozenset({"IST0101"})

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

    @property
    def origin(self) -> str:
        """What istioctl printed in parentheses: ``VirtualService ns/name file:line`` ('' for none)."""
        return " ".join(p for p in (self.resource, self.location) if p)

    def at_least(self, level: Level) -> bool:
        return LEVELS.index(self.level) >= LEVELS.index(level)

    def __str__(self) -> str:
        where = self.origin
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
    #: codes reported but not counted as failures (:data:`FILE_ONLY_TOLERATED`)
    tolerated: frozenset[str] = frozenset()

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
        """The messages at or above the failure threshold, but for the tolerated codes."""
        return tuple(m for m in self.at_least(self.failure_threshold) if m.code not in self.tolerated)

    @property
    def tolerated_failures(self) -> tuple[AnalyzeMessage, ...]:
        """The messages at or above the failure threshold that are tolerated."""
        return tuple(m for m in self.at_least(self.failure_threshold) if m.code in self.tolerated)

    @property
    def ok(self) -> bool:
        """No failure; istioctl exited 0, or 79 for tolerated messages only."""
        if self.failures:
            return False
        return self.exit_code == 0 or (
            self.exit_code == EXIT_ANALYZER_FOUND_ISSUES and bool(self.tolerated_failures)
        )

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
        tolerated = result.tolerated_failures
        if tolerated:
            lines.append(
                f"  (and {len(tolerated)} tolerated: {', '.join(sorted({m.code for m in tolerated}))})"
            )
        others = [m for m in result.messages if m not in failures and m not in tolerated]
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
    istioctl: Path | str,
    files: Sequence[Path],
    *,
    mode: AnalyzeMode = "files",
    kube_args: Sequence[str] = (),
    namespace: str | None = None,
    failure_threshold: Level = "Error",
    suppress: Sequence[str] = (),
    istio_namespace: str | None = None,
    mesh_config: Path | None = None,
) -> list[str]:
    """The argv :func:`analyze` runs: ``kube_args`` (which cluster) first, then the mode, then the
    namespace (``-n NAMESPACE``, or ``--all-namespaces`` without one)."""
    argv = [str(istioctl), "analyze", *kube_args]
    if mode == "files":
        argv.append("--use-kube=false")
    argv += ["-n", namespace] if namespace else ["--all-namespaces"]
    argv += [
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
    files: Sequence[Path], mode: str, failure_threshold: str, suppress: Sequence[str], timeout: float
) -> None:
    if not files:
        raise ValueError("analyze: no files to analyze")
    for f in files:
        if f.suffix not in ANALYZE_FILE_SUFFIXES:
            raise ValueError(
                f"analyze: {f}: istioctl analyze reads only {', '.join(ANALYZE_FILE_SUFFIXES)} files "
                "(it would skip this one silently)"
            )
        if not f.is_file():
            raise ValueError(f"analyze: {f}: no such file")
    if mode not in ANALYZE_MODES:
        raise ValueError(f"analyze: mode must be one of {', '.join(ANALYZE_MODES)}, got {mode!r}")
    if failure_threshold not in LEVELS:
        raise ValueError(
            f"analyze: failure_threshold must be one of {', '.join(LEVELS)}, got {failure_threshold!r}"
        )
    for item in suppress:
        if not _SUPPRESSION.match(item):
            raise ValueError(
                f"analyze: suppression {item!r} is not CODE=RESOURCE, e.g. 'IST0101=Gateway egress.ns'"
            )
    if timeout <= 0:
        raise ValueError(f"analyze: timeout must be positive, got {timeout}")


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
    """:func:`analyze` in ``files`` mode over all namespaces: ``istioctl analyze --use-kube=false``
    over ``rendered_files`` (no cluster is contacted)."""
    return analyze(
        rendered_files,
        istioctl,
        timeout=timeout,
        mode="files",
        failure_threshold=failure_threshold,
        suppress=suppress,
        istio_namespace=istio_namespace,
        mesh_config=mesh_config,
    )


def analyze(
    files: Sequence[Path],
    istioctl: Path | str,
    *,
    timeout: float,
    mode: AnalyzeMode = "files",
    kube_args: Sequence[str] = (),
    namespace: str | None = None,
    failure_threshold: Level = "Error",
    suppress: Sequence[str] = (),
    tolerate: Collection[str] = (),
    istio_namespace: str | None = None,
    mesh_config: Path | None = None,
) -> AnalyzeResult:
    """Run ``istioctl analyze`` over ``files``: on their own (``mode="files"``, no cluster is
    contacted) or with the live cluster ``kube_args`` name (``mode="cluster"``); for ``namespace``,
    or all namespaces without one.

    Returns the parsed result when no message reaches ``failure_threshold`` (messages with a code of
    ``tolerate`` do not count); raises :class:`AnalyzeError` when one does, and
    :class:`PreflightError` when istioctl cannot run, times out after ``timeout`` seconds, cannot
    parse a file, rejects the command line, or answers with output that does not agree with its exit
    code. ``suppress`` items are istioctl's ``CODE=RESOURCE`` (``IST0101=Gateway
    egress-gateway.egress-harness``); ``istio_namespace`` is where it assumes Istio runs (istioctl's
    default: istio-system); ``mesh_config`` a MeshConfig file to analyze with instead of Istio's
    defaults.
    """
    files = list(files)
    _check_arguments(files, mode, failure_threshold, suppress, timeout)
    argv = analyze_command(
        istioctl,
        files,
        mode=mode,
        kube_args=kube_args,
        namespace=namespace,
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
    on_stderr, _ = parse_analyze_output(done.stderr)
    result = AnalyzeResult(
        argv=done.argv,
        exit_code=done.returncode,
        failure_threshold=failure_threshold,
        messages=(*messages, *on_stderr),
        unparsed=tuple(unparsed),
        stderr=done.stderr,
        tolerated=frozenset(tolerate),
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
        if not result.at_least(failure_threshold):
            raise PreflightError(
                f"`{shown}` exited {code} (analyzers found issues at or above {failure_threshold}), but no such "
                f"message could be read from its output: is this istioctl's log format?{details()}"
            )
        if result.failures:
            raise AnalyzeError(result)
        return result  # only tolerated messages reached the threshold
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
