"""The cluster tier's errors: :class:`E2EError` and what it is made of.

A failed ``istioctl analyze`` is ``harness.scenarios.preflight.AnalyzeError`` (with
``PreflightError`` when istioctl itself could not run), the same for every caller.
"""

from __future__ import annotations


class E2EError(RuntimeError):
    """The run could not be set up, or a step of it failed."""


class ScenarioNotApplicable(E2EError):
    """The scenario needs another Istio version or mesh setting than this run has."""


class ChainNotReadyError(E2EError):
    """The chain ``client -> ingress -> proxy -> target`` did not answer in time."""


class ConvergenceError(E2EError):
    """The proxies did not take (or drop) a scenario's configuration or credentials in time."""


class LockTimeoutError(E2EError):
    """The run's scenario lock was not free in time."""


class RunStateError(E2EError):
    """A run state file cannot be read; the message names the file and the field."""
