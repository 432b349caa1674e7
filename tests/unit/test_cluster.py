"""harness.cluster.providers.kind against the fake ``kind`` of tests/unit/fakebin: which commands run, in which order.

Each test writes the scenario the fake answers from and then reads back the calls it logged.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cluster.providers.kind import ClusterError, ExistingCluster, KindCluster
from harness.common import versions
from harness.common.proc import CommandError

NAME = "egress-unit"
KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\ncurrent-context: kind-egress-unit\n"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


# Scenario building blocks: `kind get clusters` lists the cluster only between create and delete.
def listed_after_create(name: str = NAME) -> list[dict[str, Any]]:
    return [
        {
            "tool": "kind",
            "args": ["get", "clusters"],
            "after": ["kind", "create", "cluster"],
            "not_after": ["kind", "delete", "cluster"],
            "stdout": f"other\n{name}\n",
        },
        {"tool": "kind", "args": ["get", "clusters"], "stdout": "other\n", "stderr": ""},
    ]


def none_listed() -> dict[str, Any]:
    return {"tool": "kind", "args": ["get", "clusters"], "stderr": "No kind clusters found.\n"}


def create_ok() -> dict[str, Any]:
    return {
        "tool": "kind",
        "args": ["create", "cluster"],
        "stderr": "Creating cluster ...\n ✓ Ensuring node image\n",
        "write_after_flag": {"--kubeconfig": KUBECONFIG_TEXT},
    }


DELETE_OK = {"tool": "kind", "args": ["delete", "cluster"], "stderr": f'Deleting cluster "{NAME}" ...\n'}


def expected_create(run_dir: Path, image: str = versions.KIND_NODE_IMAGE) -> str:
    return (
        f"kind create cluster --name {NAME} --image {image} --config {run_dir / 'kind-config.yaml'} "
        f"--kubeconfig {run_dir / 'kubeconfig'} --wait 120s"
    )


def expected_delete(run_dir: Path) -> str:
    return f"kind delete cluster --name {NAME} --kubeconfig {run_dir / 'kubeconfig'}"


def test_full_lifecycle_creates_then_deletes(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with KindCluster(NAME, run_dir) as cluster:
        assert cluster.created
        assert cluster.kubeconfig == run_dir / "kubeconfig"
        assert cluster.kubeconfig.read_text() == KUBECONFIG_TEXT
        assert stat.S_IMODE(cluster.kubeconfig.stat().st_mode) == 0o600
        assert cluster.context == f"kind-{NAME}"
    assert fakebin.commands() == ["kind get clusters", expected_create(run_dir), expected_delete(run_dir)]
    # Every kind call saw the run's own kubeconfig, never the user's.
    assert {c["kubeconfig_env"] for c in fakebin.calls()} == {str(run_dir / "kubeconfig")}
    assert not cluster.kubeconfig.exists()
    config = yaml.safe_load((run_dir / "kind-config.yaml").read_text())
    assert config["name"] == NAME
    assert config["nodes"][0]["image"] == versions.KIND_NODE_IMAGE
    assert config["nodes"][0]["extraPortMappings"][0]["hostPort"] == 18080


def test_fluent_settings_reach_the_commands(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with KindCluster(NAME, run_dir).with_image("kindest/node:v9@sha256:00").with_ingress_host_port(28080):
        pass
    assert fakebin.commands()[1] == expected_create(run_dir, "kindest/node:v9@sha256:00")
    config = yaml.safe_load((run_dir / "kind-config.yaml").read_text())
    assert config["nodes"][0]["extraPortMappings"][0]["hostPort"] == 28080


def test_body_failure_still_deletes(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with pytest.raises(RuntimeError, match="test body failed"), KindCluster(NAME, run_dir):
        raise RuntimeError("test body failed")
    assert fakebin.commands()[-1] == expected_delete(run_dir)


def test_reuse_existing_cluster_neither_creates_nor_deletes(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules(
        [
            {"tool": "kind", "args": ["get", "clusters"], "stdout": f"{NAME}\n"},
            {"tool": "kind", "args": ["get", "kubeconfig", "--name", NAME], "stdout": KUBECONFIG_TEXT},
        ]
    )
    with KindCluster(NAME, run_dir, reuse=True) as cluster:
        assert not cluster.created
        assert cluster.kubeconfig.read_text() == KUBECONFIG_TEXT
        assert stat.S_IMODE(cluster.kubeconfig.stat().st_mode) == 0o600
    assert fakebin.commands() == ["kind get clusters", f"kind get kubeconfig --name {NAME}"]
    assert cluster.kubeconfig.exists()  # the cluster lives on, so does the way to reach it


def test_existing_cluster_without_reuse_is_refused_and_left_alone(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([{"tool": "kind", "args": ["get", "clusters"], "stdout": f"{NAME}\n"}])
    with pytest.raises(ClusterError, match=f"kind delete cluster --name {NAME}"), KindCluster(NAME, run_dir):
        pytest.fail("must not get here")
    assert fakebin.commands() == ["kind get clusters"]


def test_keep_leaves_the_cluster_and_says_how_to_delete_it(
    fakebin: Any, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with KindCluster(NAME, run_dir).keeping():
        pass
    assert fakebin.commands() == ["kind get clusters", expected_create(run_dir)]
    err = capsys.readouterr().err
    assert f"keeping kind cluster '{NAME}' (keep is on)" in err
    assert f"delete it with: {expected_delete(run_dir)}" in err
    assert (run_dir / "kubeconfig").exists()


def test_keep_on_failure_keeps_only_a_failed_run(
    fakebin: Any, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with pytest.raises(AssertionError), KindCluster(NAME, run_dir, keep_on_failure=True):
        raise AssertionError("no egress gateway entry")
    assert "kind delete cluster" not in " ".join(fakebin.commands())
    err = capsys.readouterr().err
    assert "the run failed and keep-on-failure is on" in err
    assert expected_delete(run_dir) in err


def test_keep_on_failure_still_deletes_a_passing_run(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with KindCluster(NAME, run_dir, keep_on_failure=True):
        pass
    assert fakebin.commands()[-1] == expected_delete(run_dir)


def test_keep_on_failure_deletes_on_ctrl_c(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([*listed_after_create(), create_ok(), DELETE_OK])
    with pytest.raises(KeyboardInterrupt), KindCluster(NAME, run_dir, keep_on_failure=True):
        raise KeyboardInterrupt
    assert fakebin.commands()[-1] == expected_delete(run_dir)


def test_failed_create_that_kind_cleaned_up_deletes_nothing(fakebin: Any, run_dir: Path) -> None:
    # kind deletes the nodes of a cluster whose creation failed (unless --retain): nothing is left.
    fakebin.rules(
        [
            none_listed(),
            {
                "tool": "kind",
                "args": ["create", "cluster"],
                "stderr": "Creating cluster ...\nERROR: failed to create cluster: could not find a log line "
                'that matches "Reached target .*Multi-User System.*"\n',
                "exit": 1,
            },
        ]
    )
    with pytest.raises(CommandError) as err, KindCluster(NAME, run_dir):
        pytest.fail("must not get here")
    message = str(err.value)
    assert f"command `{expected_create(run_dir)}` exited with code 1" in message
    assert "ERROR: failed to create cluster" in message
    assert fakebin.commands() == ["kind get clusters", expected_create(run_dir), "kind get clusters"]


def test_failed_create_that_left_a_cluster_deletes_it(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules(
        [
            *listed_after_create(),
            {"tool": "kind", "args": ["create", "cluster"], "stderr": "ERROR: kubeconfig lock\n", "exit": 1},
            DELETE_OK,
        ]
    )
    with pytest.raises(CommandError, match="kubeconfig lock"), KindCluster(NAME, run_dir):
        pytest.fail("must not get here")
    assert fakebin.commands() == [
        "kind get clusters",
        expected_create(run_dir),
        "kind get clusters",
        expected_delete(run_dir),
    ]


def test_ctrl_c_during_create_deletes_the_partial_cluster(
    fakebin: Any, run_dir: Path, main_thread: None
) -> None:
    fakebin.rules(
        [
            *listed_after_create(),
            {"tool": "kind", "args": ["create", "cluster"], "interrupt_parent": True, "sleep": 30},
            DELETE_OK,
        ]
    )
    with pytest.raises(KeyboardInterrupt), KindCluster(NAME, run_dir):
        pytest.fail("must not get here")
    assert fakebin.commands()[-2:] == ["kind get clusters", expected_delete(run_dir)]


def test_create_without_a_kubeconfig_is_an_error_and_cleans_up(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules([*listed_after_create(), {"tool": "kind", "args": ["create", "cluster"]}, DELETE_OK])
    with pytest.raises(ClusterError, match="wrote no kubeconfig"), KindCluster(NAME, run_dir):
        pytest.fail("must not get here")
    assert fakebin.commands()[-1] == expected_delete(run_dir)


def test_failed_delete_does_not_hide_the_original_error(
    fakebin: Any, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakebin.rules(
        [
            *listed_after_create(),
            create_ok(),
            {
                "tool": "kind",
                "args": ["delete", "cluster"],
                "stderr": "docker: permission denied\n",
                "exit": 1,
            },
        ]
    )
    with pytest.raises(RuntimeError, match="original"), KindCluster(NAME, run_dir):
        raise RuntimeError("original")
    err = capsys.readouterr().err
    assert "could not delete kind cluster" in err
    assert "docker: permission denied" in err
    assert f"delete it by hand: {expected_delete(run_dir)}" in err


def test_failed_delete_after_a_clean_run_raises(fakebin: Any, run_dir: Path) -> None:
    fakebin.rules(
        [*listed_after_create(), create_ok(), {"tool": "kind", "args": ["delete", "cluster"], "exit": 2}]
    )
    with pytest.raises(CommandError, match="exited with code 2"), KindCluster(NAME, run_dir):
        pass


def test_load_image_and_export_logs(fakebin: Any, run_dir: Path, tmp_path: Path) -> None:
    fakebin.rules(
        [
            *listed_after_create(),
            create_ok(),
            {"tool": "kind", "args": ["load", "docker-image"]},
            {"tool": "kind", "args": ["export", "logs"]},
            DELETE_OK,
        ]
    )
    logs = tmp_path / "kind-logs"
    with KindCluster(NAME, run_dir) as cluster:
        assert cluster.load_image("istio-egress-harness/relay:dev") is cluster
        assert cluster.export_logs(logs) == logs
    assert fakebin.commands()[2:4] == [
        f"kind load docker-image istio-egress-harness/relay:dev --name {NAME}",
        f"kind export logs {logs} --name {NAME}",
    ]


def test_existing_cluster_runs_no_kind_command(fakebin: Any, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "theirs.kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TEXT)
    with ExistingCluster(kubeconfig, context="prod-like") as cluster:
        assert cluster.kubeconfig == kubeconfig
        assert cluster.context == "prod-like"
        with pytest.raises(ClusterError, match="push it to a registry"):
            cluster.load_image("istio-egress-harness/relay:dev")
    assert fakebin.calls() == []
    assert kubeconfig.read_text() == KUBECONFIG_TEXT


def test_existing_cluster_needs_its_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="does not exist"), ExistingCluster(tmp_path / "missing"):
        pytest.fail("must not get here")


@pytest.mark.parametrize("name", ["Egress", "egress_e2e", "-egress", "e" * 51, ""])
def test_cluster_names_are_checked(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind cluster name"):
        KindCluster(name, tmp_path)
