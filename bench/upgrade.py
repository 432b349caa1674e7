"""An Istio upgrade on the netns cluster, measured (issue 19 item 5): ``upgrade run --tier istiod``
from 1.30-dev to 1.31-dev in each mode, with the mission scenario only (the catalog's time is the
istiod section's figure), and two figures per mode:

1. the prober's success ratio while the upgrade ran (requests down the mission's chain every 0.2 s);
2. from B's istiod (and the gateways) ready to every proxy reporting B and connected to B's istiod,
   as a ratio to istiod's push debounce (``PILOT_DEBOUNCE_AFTER``, 100 ms). It is read from the
   run's recorded steps: the steps after "wait for the control plane" up to and including the proxy
   verification (the workload and gateway restarts included: a proxy moves to B only when its pod is
   replaced), so it is an upper bound, coarsened by the verification's poll interval.

Each mode brings up its own cluster and removes it afterwards (also after a failure or Ctrl-C).
"""

from __future__ import annotations

import time
from typing import Any

from harness.report.results import RunResult

FROM, TO = "1.30-dev", "1.31-dev"
MODES = ("in-place", "canary")
SCENARIOS = ("http-via-egress-gateway",)
#: istiod's PILOT_DEBOUNCE_AFTER default (pilot/pkg/features/tuning.go)
DEBOUNCE_AFTER_S = 0.1


def unavailable() -> str | None:
    """Why this machine cannot run the section now, or None."""
    from bench import istiod

    for label in (FROM, TO):
        reason = istiod.unavailable(label)
        if reason:
            return reason
    return None


def ready_to_all_on_b_s(result: RunResult) -> float | None:
    """Seconds from B's control plane ready to every proxy on B (see the module docstring)."""
    steps = [s for s in result.steps if s.phase == "upgrade"]
    ready = [i for i, s in enumerate(steps) if s.step.startswith("wait for the control plane")]
    verified = [i for i, s in enumerate(steps) if s.step.startswith("verify") and "prox" in s.step]
    if not ready or not verified or verified[0] <= ready[0]:
        return None
    return round(sum(s.duration_s for s in steps[ready[0] + 1 : verified[0] + 1]), 3)


def run() -> dict[str, Any]:
    """Each mode's upgrade with the mission only; its two figures."""
    from bench import istiod
    from harness.upgrade.istiod import run_upgrade
    from harness.upgrade.plan import UpgradePlan

    out: dict[str, Any] = {"from": FROM, "to": TO, "scenarios": list(SCENARIOS), "modes": {}}
    with istiod._cached_binaries_only():
        for mode in MODES:
            started = time.perf_counter()
            outcome = run_upgrade(UpgradePlan(FROM, TO, mode), names=SCENARIOS, workers=1)  # type: ignore[arg-type]
            result = outcome.result
            span = ready_to_all_on_b_s(result)
            prober = result.prober
            out["modes"][mode] = {
                "passed": outcome.passed,
                "problems": list(outcome.problems),
                "prober_ratio": prober.ratio if prober else None,
                "prober_requests": prober.total if prober else 0,
                "ready_to_all_on_b_s": span,
                "ready_to_all_on_b_debounces": round(span / DEBOUNCE_AFTER_S, 1)
                if span is not None
                else None,
                "steps_s": {f"{s.phase}: {s.step}": s.duration_s for s in result.steps},
                "wall_s": round(time.perf_counter() - started, 1),
                "results": str(outcome.results),
            }
    return out


def report(r: dict[str, Any]) -> list[str]:
    lines = []
    for mode, m in r["modes"].items():
        ratio = "-" if m["prober_ratio"] is None else f"{m['prober_ratio']:.3f}"
        lines.append(
            f"upgrade {r['from']} -> {r['to']} ({mode}): prober {ratio} over {m['prober_requests']} requests; "
            f"B ready -> every proxy on B {m['ready_to_all_on_b_debounces']} debounce intervals "
            f"({m['ready_to_all_on_b_s']} s, restarts included); {'passed' if m['passed'] else 'FAILED'}"
            f" in {m['wall_s']:.0f} s"
        )
        lines += [f"  {p}" for p in m["problems"]]
    return lines
