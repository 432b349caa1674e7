"""Record what ``istioctl proxy-status -o json`` answers in the middle of a canary upgrade, on a
netns cluster of this harness (root, both Istio labels built). Not a test: run it by hand to renew
the fixtures beside it (README.md says what each file is):

    sudo .venv/bin/python tests/unit/data/istioctl/record_canary.py

A (1.30-dev) is installed as revision 1-30-dev, B (1.31-dev) as revision 1-31-dev beside it, the
same way ``harness.upgrade.runner.UpgradeRun`` does; then B's istioctl is asked with and without
``--revision``, before and after the gateways are restarted. The cluster is removed afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

from harness.cluster.catalog_cli import netns_options
from harness.cluster.istio import kube_target_args
from harness.cluster.providers.netns.binaries import istio_binaries
from harness.cluster.run import E2ERun, netns_overlay
from harness.common.proc import progress, run
from harness.upgrade.plan import UpgradePlan
from harness.upgrade.proxies import parse_proxy_status
from harness.upgrade.runner import UpgradeRun

HERE = Path(__file__).resolve().parent
A, B = "1.30-dev", "1.31-dev"


def main() -> None:
    plan = UpgradePlan(A, B, "canary")
    istioctl = {v: str(istio_binaries(v).path("istioctl")) for v in (A, B)}
    run_dir = Path(tempfile.mkdtemp(prefix="egh-record-canary-"))
    up = argparse.Namespace(istio_version=A, encoding="text", keep=False)
    options = dataclasses.replace(netns_options(up, []), install_istio=False, more_istio_versions=(B,))
    try:
        with E2ERun(options, run_dir) as e2e:
            upgrade = UpgradeRun(
                plan,
                e2e.kubeconfig,
                run_dir / "upgrade",
                run_catalog=lambda phase, version: [],
                istioctl_for=istioctl.__getitem__,
                overlays_for=lambda v: [netns_overlay(v, run_dir / f"istio-overlay-netns-{v}.yaml")],
                cluster_goes=True,
            )
            target = kube_target_args(e2e.kubeconfig, None)

            def record(name: str, *extra: str) -> None:
                argv = [istioctl[B], "proxy-status", "-o", "json", *target, *extra]
                done = run(argv, timeout=60, check=False)
                (HERE / name).write_text(done.stdout)
                if done.returncode or done.stderr.strip():
                    (HERE / name).with_suffix(".stderr").write_text(f"exit {done.returncode}\n{done.stderr}")
                try:
                    parse_proxy_status(done.stdout)  # what the harness reads of it
                    read = "the harness reads it"
                except ValueError as exc:
                    read = f"the harness cannot read it: {exc}"
                progress(f"recorded {' '.join(argv[1:4] + list(extra))} -> {name} ({read})")

            upgrade.render()
            upgrade.install(A)
            upgrade.wait_control_plane(A)
            upgrade.install(B)
            upgrade.wait_control_plane(B)
            record("proxy-status-canary-default.json")
            record("proxy-status-canary-revision-b.json", "--revision", "1-31-dev")
            upgrade.restart_gateways()
            record("proxy-status-canary-restarted-default.json")
            record("proxy-status-canary-restarted-revision-b.json", "--revision", "1-31-dev")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
