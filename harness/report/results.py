"""The result model of a run: one ``ScenarioResult`` per scenario and phase, gathered in a ``RunResult``.

A run is a single install (``mode="single"``, every scenario in phase ``single``) or an upgrade from
one Istio to another (``in-place`` or ``canary``): the catalog runs on the old Istio (phase
``before``) and again on the new one (phase ``after``). An upgrade also records its steps
(``StepResult``: which phase, which step, how it ended) and, when traffic was probed while the
upgrade ran, the prober's counts (``ProberStats``).

Results are written as JSON with a schema name and version; ``load_results`` reads any number of
files (or folders of ``*.json``) back and refuses a file of another schema or version, naming the
file and the field it could not read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args

SCHEMA: Final = "istio-egress-harness/results"
SCHEMA_VERSION: Final = 1

Phase = Literal["before", "after", "single"]
Outcome = Literal["passed", "failed", "skipped", "error"]
RunMode = Literal["single", "in-place", "canary"]
StepOutcome = Literal["passed", "failed", "skipped"]

PHASES: tuple[Phase, ...] = get_args(Phase)
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
RUN_MODES: tuple[RunMode, ...] = get_args(RunMode)
STEP_OUTCOMES: tuple[StepOutcome, ...] = get_args(StepOutcome)


class ResultsError(ValueError):
    """A results file could not be read: the message names the file and what was wrong in it."""


def utc_now() -> str:
    """The current time as an RFC 3339 UTC timestamp with milliseconds, e.g. ``2026-11-28T07:00:01.000Z``."""
    return format_timestamp(datetime.now(UTC))


def format_timestamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ScenarioResult:
    """How one scenario ended in one phase, on one Istio version.

    ``hop`` names the hop where the path diverged (``"target sidecar"``, ``"egress gateway"``, ...)
    when the evidence says so; ``convergence_s`` is how long the configuration took to take effect;
    ``proxy_versions`` are the Istio versions the proxies on the path reported.
    """

    scenario: str
    phase: Phase
    istio_version: str
    outcome: Outcome
    message: str = ""
    convergence_s: float | None = None
    proxy_versions: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    hop: str | None = None

    def __post_init__(self) -> None:
        if not self.scenario:
            raise ValueError("scenario must not be empty")
        _check_choice("phase", self.phase, PHASES)
        _check_choice("outcome", self.outcome, OUTCOMES)

    @property
    def ok(self) -> bool:
        """Passed or skipped: nothing to look at."""
        return self.outcome in ("passed", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "phase": self.phase,
            "istio_version": self.istio_version,
            "outcome": self.outcome,
            "message": self.message,
            "convergence_s": self.convergence_s,
            "proxy_versions": list(self.proxy_versions),
            "duration_s": self.duration_s,
            "hop": self.hop,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioResult:
        reader = _Reader(data, "scenario result")
        return cls(
            scenario=reader.text("scenario"),
            phase=reader.choice("phase", PHASES),
            istio_version=reader.text("istio_version"),
            outcome=reader.choice("outcome", OUTCOMES),
            message=reader.text("message", default=""),
            convergence_s=reader.number("convergence_s", optional=True),
            proxy_versions=reader.texts("proxy_versions"),
            duration_s=reader.number("duration_s", default=0.0) or 0.0,
            hop=reader.text_or_none("hop"),
        )


@dataclass(frozen=True)
class Outage:
    """A run of consecutive failed probes: from the first failure to the last one of the run."""

    start_s: float
    end_s: float
    failures: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "end_s": self.end_s, "failures": self.failures}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outage:
        reader = _Reader(data, "prober outage")
        return cls(
            start_s=reader.number("start_s", default=0.0) or 0.0,
            end_s=reader.number("end_s", default=0.0) or 0.0,
            failures=int(reader.number("failures", default=0) or 0),
        )


@dataclass(frozen=True)
class ProberStats:
    """What the background prober saw: counts, the success ratio, the threshold it was held to.

    ``ratio`` is None when no probe completed; such a run does not pass. Times in ``outages`` are
    seconds since the prober started.
    """

    target: str
    total: int
    successes: int
    threshold: float
    interval_s: float
    started: str
    duration_s: float
    outages: list[Outage] = field(default_factory=list)
    failure_samples: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.total - self.successes

    @property
    def ratio(self) -> float | None:
        return self.successes / self.total if self.total else None

    @property
    def passed(self) -> bool:
        ratio = self.ratio
        return ratio is not None and ratio >= self.threshold

    @property
    def longest_outage_s(self) -> float:
        return max((o.duration_s for o in self.outages), default=0.0)

    def verdict(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return f"no probe completed (threshold {self.threshold:.0%})"
        word = "passed" if self.passed else "FAILED"
        return (
            f"{word}: {self.successes}/{self.total} succeeded ({ratio:.1%}; threshold {self.threshold:.0%}), "
            f"longest outage {self.longest_outage_s:.1f}s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "total": self.total,
            "successes": self.successes,
            "threshold": self.threshold,
            "interval_s": self.interval_s,
            "started": self.started,
            "duration_s": self.duration_s,
            "outages": [o.to_dict() for o in self.outages],
            "failure_samples": list(self.failure_samples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProberStats:
        reader = _Reader(data, "prober")
        total = int(reader.number("total") or 0)
        successes = int(reader.number("successes") or 0)
        if not 0 <= successes <= total:
            raise ResultsError(f"prober: successes ({successes}) must be between 0 and total ({total})")
        return cls(
            target=reader.text("target", default=""),
            total=total,
            successes=successes,
            threshold=reader.number("threshold") or 0.0,
            interval_s=reader.number("interval_s", default=0.0) or 0.0,
            started=reader.text("started", default=""),
            duration_s=reader.number("duration_s", default=0.0) or 0.0,
            outages=[Outage.from_dict(o) for o in reader.mappings("outages")],
            failure_samples=reader.texts("failure_samples"),
        )


@dataclass(frozen=True)
class StepResult:
    """One step of an upgrade run (``phase`` is install/before/upgrade/after/cleanup)."""

    phase: str
    step: str
    outcome: StepOutcome
    message: str = ""
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("step outcome", self.outcome, STEP_OUTCOMES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "step": self.step,
            "outcome": self.outcome,
            "message": self.message,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepResult:
        reader = _Reader(data, "step")
        return cls(
            phase=reader.text("phase"),
            step=reader.text("step"),
            outcome=reader.choice("outcome", STEP_OUTCOMES),
            message=reader.text("message", default=""),
            duration_s=reader.number("duration_s", default=0.0) or 0.0,
        )


@dataclass(frozen=True)
class RunResult:
    """One run: its id, when it started, the Istio versions (one, or from and to), and what happened."""

    run_id: str
    started: str
    istio_versions: list[str]
    mode: RunMode
    prober: ProberStats | None = None
    scenarios: list[ScenarioResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("run_id must not be empty")
        _check_choice("mode", self.mode, RUN_MODES)
        if not self.istio_versions:
            raise ValueError("istio_versions must name at least one version")

    @property
    def failed_step(self) -> StepResult | None:
        """The first step that failed (cleanup steps included), or None."""
        return next((s for s in self.steps if s.outcome == "failed"), None)

    @property
    def ok(self) -> bool:
        """Every scenario passed or was skipped, no step failed, and the prober (if any) passed."""
        return (
            all(s.ok for s in self.scenarios)
            and self.failed_step is None
            and (self.prober is None or self.prober.passed)
        )

    def phase_results(self, phase: Phase) -> list[ScenarioResult]:
        return [s for s in self.scenarios if s.phase == phase]

    def regressions(self) -> list[tuple[ScenarioResult, ScenarioResult]]:
        """(before, after) of each scenario that passed before the upgrade and failed after it."""
        before = {s.scenario: s for s in self.phase_results("before")}
        found = []
        for after in self.phase_results("after"):
            prior = before.get(after.scenario)
            if prior is not None and prior.outcome == "passed" and after.outcome in ("failed", "error"):
                found.append((prior, after))
        return found

    def label(self) -> str:
        """``1.30.3`` for a single run, ``1.29.6 -> 1.30.3 (canary)`` for an upgrade."""
        if self.mode == "single":
            return " ".join(self.istio_versions)
        return f"{' -> '.join(self.istio_versions)} ({self.mode})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "started": self.started,
            "istio_versions": list(self.istio_versions),
            "mode": self.mode,
            "prober": self.prober.to_dict() if self.prober is not None else None,
            "scenarios": [s.to_dict() for s in self.scenarios],
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        if not isinstance(data, Mapping):
            raise ResultsError(f"a results file holds one JSON object, not {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ResultsError(f"schema is {schema!r}, expected {SCHEMA!r}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultsError(
                f"schema_version {version!r} is not supported (this harness reads version {SCHEMA_VERSION})"
            )
        reader = _Reader(data, "run")
        prober = data.get("prober")
        if prober is not None and not isinstance(prober, Mapping):
            raise ResultsError("run: prober must be an object or null")
        try:
            return cls(
                run_id=reader.text("run_id"),
                started=reader.text("started", default=""),
                istio_versions=reader.texts("istio_versions"),
                mode=reader.choice("mode", RUN_MODES),
                prober=ProberStats.from_dict(prober) if prober is not None else None,
                scenarios=[ScenarioResult.from_dict(s) for s in reader.mappings("scenarios")],
                steps=[StepResult.from_dict(s) for s in reader.mappings("steps")],
            )
        except ValueError as exc:
            if isinstance(exc, ResultsError):
                raise
            raise ResultsError(str(exc)) from exc

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ResultsError(f"not JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: Path) -> Path:
        """Write the run as JSON, atomically (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; results are artifacts to be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def load_result(path: Path) -> RunResult:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return RunResult.from_json(text)
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc}") from exc


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; a folder stands for its ``*.json`` files (sorted). A missing path is an error."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.json") if p.is_file()))
        elif path.exists():
            found.append(path)
        else:
            raise ResultsError(f"{path}: no such file or folder")
    return found


def load_results(paths: Iterable[Path | str]) -> list[RunResult]:
    """Every run in ``paths`` (files, or folders of ``*.json``), in the order given."""
    files = expand_paths(paths)
    if not files:
        raise ResultsError("no results files given (a folder holds none?)")
    return [load_result(p) for p in files]


# --- reading JSON strictly ------------------------------------------------------------------------


def _check_choice(what: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, not {value!r}")


_MISSING: Final = object()


class _Reader:
    """Typed reads of one JSON object; a wrong or missing field raises ResultsError naming it."""

    def __init__(self, data: Mapping[str, Any], what: str) -> None:
        if not isinstance(data, Mapping):
            raise ResultsError(f"{what}: expected an object, got {type(data).__name__}")
        self.data = data
        self.what = what

    def _get(self, key: str, default: object) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ResultsError(f"{self.what}: missing field {key!r}")
        return default

    def _bad(self, key: str, expected: str, value: object) -> ResultsError:
        return ResultsError(f"{self.what}: field {key!r} must be {expected}, not {value!r}")

    def text(self, key: str, *, default: object = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def text_or_none(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null", value)
        return value

    def choice(self, key: str, choices: Sequence[Any]) -> Any:
        value = self._get(key, _MISSING)
        if value not in choices:
            raise self._bad(key, f"one of {', '.join(choices)}", value)
        return value

    def number(self, key: str, *, default: object = _MISSING, optional: bool = False) -> float | None:
        value = self._get(key, None if optional else default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number", value)
        return float(value)

    def texts(self, key: str) -> list[str]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings", value)
        return list(value)

    def mappings(self, key: str) -> list[Mapping[str, Any]]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self._bad(key, "a list of objects", value)
        return list(value)
