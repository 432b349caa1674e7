"""``harness.scenarios.preflight.analyze`` in the cluster tier's use of it (fake ``istioctl``): against
the live cluster (``mode="cluster"``, the run's kubeconfig and namespace) and on the files alone with
the references to the cluster tolerated (``mode="files"``, ``FILE_ONLY_TOLERATED``). The catalog's
offline use (``analyze_offline``) is tested in tests/unit/test_scenario_catalog.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.cluster.istio import kube_target_args
from harness.scenarios.preflight import (
    FILE_ONLY_TOLERATED,
    AnalyzeError,
    PreflightError,
    analyze,
    analyze_command,
    parse_analyze_output,
)

NS = "egress-abc123"

ANALYZE_ERRORS = (
    "Error [IST0101] (Gateway egress-abc123/egress-gateway manifests.yaml:23) Referenced selector not "
    'found: "istio=egressgateway"\n'
    "Warning [IST0117] (Deployment egress-abc123/x) No service associated with this deployment.\n"
    "Error: Analyzers found issues when analyzing namespace: egress-abc123.\n"
)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    return path


def test_parse_analyze_reads_levels_codes_and_origins() -> None:
    found, unparsed = parse_analyze_output(
        ANALYZE_ERRORS + "Info [IST0102] (Namespace default) not injected\n"
    )
    assert [(f.level, f.code) for f in found] == [
        ("Error", "IST0101"),
        ("Warning", "IST0117"),
        ("Info", "IST0102"),
    ]
    assert found[0].origin == "Gateway egress-abc123/egress-gateway manifests.yaml:23"
    assert found[2].origin == "Namespace default"
    assert unparsed == ["Error: Analyzers found issues when analyzing namespace: egress-abc123."]


def test_analyze_against_the_cluster_fails_on_errors(fakebin: Any, tmp_path: Path, manifest: Path) -> None:
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stderr": ANALYZE_ERRORS, "exit": 79}])
    with pytest.raises(AnalyzeError, match="IST0101") as err:
        analyze(
            [manifest],
            "istioctl",
            timeout=20,
            mode="cluster",
            kube_args=kube_target_args(tmp_path / "kc", "kind-x"),
            namespace=NS,
        )
    assert [f.code for f in err.value.result.failures] == ["IST0101"]
    assert fakebin.commands() == [
        f"istioctl analyze --kubeconfig {tmp_path / 'kc'} --context kind-x -n {NS} --output=log "
        f"--color=false --failure-threshold=Error --output-threshold=Info {manifest}"
    ]


def test_file_only_analysis_tolerates_references_to_the_cluster(
    fakebin: Any, tmp_path: Path, manifest: Path
) -> None:
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stderr": ANALYZE_ERRORS, "exit": 79}])
    result = analyze(
        [manifest],
        "istioctl",
        timeout=20,
        mode="files",
        kube_args=kube_target_args(tmp_path / "kc", None),
        namespace=NS,
        tolerate=FILE_ONLY_TOLERATED,
    )
    assert [f.code for f in result.messages] == ["IST0101", "IST0117"]
    assert result.ok and result.failures == ()
    assert [m.code for m in result.tolerated_failures] == ["IST0101"]
    args = fakebin.calls()[0]["args"]
    assert "--use-kube=false" in args
    assert args[args.index("-n") + 1] == NS and "--all-namespaces" not in args


def test_a_tolerated_code_still_fails_beside_another_error(fakebin: Any, manifest: Path) -> None:
    stdout = ANALYZE_ERRORS.replace("Warning [IST0117]", "Error [IST0145]")
    fakebin.rules([{"tool": "istioctl", "args": ["analyze"], "stdout": stdout, "exit": 79}])
    with pytest.raises(AnalyzeError) as err:
        analyze([manifest], "istioctl", timeout=20, tolerate=FILE_ONLY_TOLERATED)
    assert [m.code for m in err.value.result.failures] == ["IST0145"]
    assert "found 1 message(s) at or above Error" in str(err.value)
    assert "(and 1 tolerated: IST0101)" in str(err.value)
    assert not err.value.result.ok


def test_analyze_that_fails_without_findings_is_an_error(
    fakebin: Any, tmp_path: Path, manifest: Path
) -> None:
    fakebin.rules(
        [{"tool": "istioctl", "args": ["analyze"], "stderr": "Error: failed to parse m.yaml\n", "exit": 1}]
    )
    with pytest.raises(PreflightError, match="failed to parse") as err:
        analyze(
            [manifest],
            "istioctl",
            timeout=20,
            mode="cluster",
            kube_args=kube_target_args(tmp_path / "kc", None),
            namespace=NS,
        )
    # istioctl itself failed: not a finding about the manifests
    assert not isinstance(err.value, AnalyzeError)


def test_the_command_line_of_each_mode() -> None:
    files = [Path("/r/a.yaml")]
    assert analyze_command("istioctl", files)[:4] == [
        "istioctl",
        "analyze",
        "--use-kube=false",
        "--all-namespaces",
    ]
    live = analyze_command("istioctl", files, mode="cluster", kube_args=["--kubeconfig", "kc"], namespace=NS)
    assert live[:6] == ["istioctl", "analyze", "--kubeconfig", "kc", "-n", NS]
    assert "--use-kube=false" not in live and live[-1] == "/r/a.yaml"


def test_an_unknown_mode_is_refused_before_istioctl_runs(manifest: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of cluster, files"):
        analyze([manifest], "istioctl", timeout=5, mode="off")  # type: ignore[arg-type]
