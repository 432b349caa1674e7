"""The whole chain on real Envoy: every mode in both encodings gives the verdict it should."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.evidence import EvidenceError, ExternalEvidenceError
from harness.localmesh.mesh import MODES, AppProcess, LocalMesh, LocalMeshError, Mode, Topology
from harness.localmesh.run import LOCAL_WAIT, check_through_gateway, run_once

ROOT = Path(__file__).resolve().parents[2]
#: Tests flush access logs faster than Istio (1 s) does; every wait scales with the interval.
FLUSH_MS = 200


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose once reaped.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.fixture(scope="module", params=["text", "json"])
def encoding(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=MODES)
def mesh(request: pytest.FixtureRequest, encoding: str) -> Iterator[LocalMesh]:
    mode: Mode = request.param
    with LocalMesh(Topology(mode=mode, encoding=encoding, flush_interval_ms=FLUSH_MS)) as m:  # type: ignore[arg-type]
        yield m
    pids = [pid for _, pid in m.processes()]
    assert pids and not any(_alive(pid) for pid in pids), "a local mesh process outlived the mesh"
    assert m.workdir is not None and not m.workdir.exists()


def test_mode_gives_its_verdict(mesh: LocalMesh) -> None:
    verdict = run_once(mesh, "/check?token=abc%20def")
    assert verdict.ok, verdict.render()
    mode = mesh.topology.mode
    if mode == "via-gateway":
        assert verdict.client_status == 200
        # Three independent witnesses for the same request.
        assert [h.hop for h in verdict.proof] == ["target sidecar", "egress gateway"]
        assert all(h.entry.request_id == verdict.request_id for h in verdict.proof)
        caller = [r.upstream for r in verdict.rows if r.hop == "external host"]
        assert caller == [f"called from {mesh.topology.gateway_ip} (egress gateway)"]
    else:
        expected_hop = "egress gateway" if mode == "gateway-no-route" else "target sidecar"
        assert verdict.diverged_at == expected_hop
        assert isinstance(verdict.through_gateway_error, EvidenceError)
        assert verdict.client_status == {"direct": 200, "registry-only": 502, "gateway-no-route": 404}[mode]


def test_the_request_reaches_the_external_host_intact(mesh: LocalMesh) -> None:
    if mesh.topology.mode != "via-gateway":
        pytest.skip("only via-gateway and direct reach the external host; via-gateway is enough here")
    path = "/a%20b/c?x=1&y=%26z"
    verdict = run_once(mesh, path)
    records = [r for r in mesh.external_records() if r["headers"].get("x-request-id") == verdict.request_id]
    assert [r["path"] for r in records] == [path]
    assert records[0]["host"] == mesh.topology.external_host


def test_the_external_witness_alone_catches_a_wrong_caller() -> None:
    # A gateway that forwarded from the workload's address (as if the sidecar had gone direct while
    # its log claimed otherwise) must fail at the external host even though both logs look right.
    topo = Topology(gateway_ip="127.0.0.7", flush_interval_ms=FLUSH_MS)
    with LocalMesh(topo) as m:
        from harness.common.traffic import send

        logs = {part: m.entry_log(part) for part in ("proxy-sidecar", "target-sidecar", "egress-gateway")}
        rid = send(m.chain_url("/"), headers=m.headers).request_id
        object.__setattr__(m, "topology", Topology(gateway_ip="127.0.0.99", flush_interval_ms=FLUSH_MS))
        with pytest.raises(ExternalEvidenceError) as info:
            check_through_gateway(m, logs, rid, wait=LOCAL_WAIT)
        object.__setattr__(m, "topology", topo)
    assert info.value.hop == "external host"
    assert "from 127.0.0.7" in str(info.value) and "127.0.0.99" in str(info.value)


def test_an_envoy_that_rejects_its_config_is_named_and_nothing_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import harness.localmesh.mesh as lm

    def broken(topo: Topology, gateway: object, external: object, log: Path) -> dict[str, object]:
        config = lm.proxy_sidecar_config(topo, ("127.0.0.1", 1), log)
        config["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"  # type: ignore[index]
        return config

    monkeypatch.setattr(lm, "target_sidecar_config", broken)
    mesh = LocalMesh(Topology())
    with pytest.raises(LocalMeshError) as info:
        mesh.start()
    assert info.value.part == "target-sidecar"
    assert "NOT_A_TYPE" in str(info.value)
    assert not any(_alive(pid) for _, pid in mesh.processes())
    assert mesh.workdir is not None and not mesh.workdir.exists()


def test_an_app_that_does_not_come_up_is_named_with_its_log(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('boom: cannot bind', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(LocalMeshError) as info:
        AppProcess(script, "target", bind="127.0.0.12", workdir=tmp_path, start_timeout=5).start()
    assert info.value.part == "target"
    assert "exited with code 3" in str(info.value) and "boom: cannot bind" in str(info.value)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.12", 0))
        port = taken.getsockname()[1]
        taken.listen()
        app = AppProcess(
            ROOT / "apps" / "relay" / "relay.py",
            "target",
            bind="127.0.0.12",
            workdir=tmp_path,
            start_timeout=5,
        )
        app.args = ("--name", "target")
        # Force the taken port instead of 0 by wrapping the command.
        wrapper = tmp_path / "fixed_port.py"
        wrapper.write_text(
            "import runpy, sys\n"
            f"sys.argv = [sys.argv[0]] + [a if a != '0' else '{port}' for a in sys.argv[1:]]\n"
            f"runpy.run_path({str(app.script)!r}, run_name='__main__')\n"
        )
        app.script = wrapper
        with pytest.raises(LocalMeshError) as info:
            app.start()
    assert "target" in str(info.value)
    assert "in use" in str(info.value).lower() or "errno 98" in str(info.value).lower()


def test_ctrl_c_inside_the_block_stops_everything() -> None:
    mesh = LocalMesh(Topology())
    with pytest.raises(KeyboardInterrupt), mesh:
        raise KeyboardInterrupt
    assert not any(_alive(pid) for _, pid in mesh.processes())
    assert mesh.workdir is not None and not mesh.workdir.exists()


@pytest.mark.parametrize(("mode", "code"), [("via-gateway", 0), ("registry-only", 0)])
def test_local_run_command(mode: str, code: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "local", "run", "--mode", mode, "--encoding", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == code, out.stdout + out.stderr
    assert "verdict: OK, the evidence matches the mode" in out.stdout
    assert "hop " in out.stdout and "egress gateway" in out.stdout
    assert ">> local mesh: all parts ready" in out.stderr


def _mode_configs(tmp_path: Path) -> list[tuple[str, dict[str, object]]]:
    """Every distinct bootstrap the local mesh generates: each part in each mode, both encodings."""
    import harness.localmesh.mesh as lm

    configs: list[tuple[str, dict[str, object]]] = []
    for mode in MODES:
        for encoding in ("text", "json"):
            topo = Topology(mode=mode, encoding=encoding)  # type: ignore[arg-type]
            log = tmp_path / f"{mode}-{encoding}.log"
            configs += [
                (f"{mode}/{encoding}/gateway", lm.gateway_config(topo, ("127.0.0.20", 8080), log)),
                (
                    f"{mode}/{encoding}/target-sidecar",
                    lm.target_sidecar_config(topo, ("127.0.0.7", 1), ("127.0.0.20", 2), log),
                ),
                (f"{mode}/{encoding}/proxy-sidecar", lm.proxy_sidecar_config(topo, ("127.0.0.12", 3), log)),
            ]
    return configs


def _envoy_versions() -> list[object]:
    from tests.envoy.test_envoy_process import _versions

    return _versions()


@pytest.mark.parametrize("binary", _envoy_versions())
def test_every_generated_config_is_accepted_by_each_envoy_version(tmp_path: Path, binary: Path) -> None:
    from harness.localmesh.envoy import validate_config

    for name, config in _mode_configs(tmp_path):
        validate_config(config, binary, name=f"{name}@{binary.parent.name}")


def test_the_logs_cli_parses_real_envoy_output_of_the_mesh() -> None:
    with LocalMesh(Topology(mode="gateway-no-route", flush_interval_ms=FLUSH_MS)) as m:
        verdict = run_once(m)
        out = subprocess.run(
            [sys.executable, "-m", "harness.cli", "logs", "parse", str(m.log_dir / "egress-gateway.log")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    import json

    rows = [json.loads(line) for line in out.stdout.splitlines()]
    mine = [r for r in rows if r["request_id"] == verdict.request_id]
    assert len(mine) == 1
    assert (mine[0]["response_code"], mine[0]["response_flags"], mine[0]["response_code_details"]) == (
        404,
        "NR",
        "route_not_found",
    )


def test_the_local_relays_fetch_only_the_meshs_hosts_and_proxy_wants_the_token() -> None:
    """Issue 14 on the emulated tier: the real relays behind real Envoy sidecars refuse a host outside
    their list and the metadata address (403, before anything reaches the sidecar), and the chain's
    entry answers 404 without the mesh's token; the allowed chain still passes."""
    from harness.common.traffic import Traffic, chain_url

    with LocalMesh(Topology(flush_interval_ms=FLUSH_MS)) as m, Traffic(timeout=10.0) as client:
        assert m.proxy is not None and m.target is not None
        sidecar = m.entry_log("target-sidecar")
        outside = client.send(m.chain_url("/x", host="elsewhere.example"), headers=m.headers)
        metadata = client.send(
            chain_url(
                [f"{m.proxy.url}/proxy", f"http://{m.topology.target_service}:8080/proxy"],
                "http://169.254.169.254/latest/meta-data/",
            ),
            headers=m.headers,
        )
        no_token = client.send(m.chain_url("/"))
        allowed = client.send(m.chain_url("/"), headers=m.headers)
        # the relays listen on their own loopback address only
        assert (m.proxy.bind, m.target.bind) == (m.topology.proxy_ip, m.topology.target_ip)
        # the sidecar's log, until the allowed request's entry is there (the earlier ones would be too)
        seen: list[str | None] = []
        deadline = time.monotonic() + 10 * FLUSH_MS / 1000 + 5
        while allowed.request_id not in seen and time.monotonic() < deadline:
            seen += [e.request_id for e in sidecar.poll()]
            time.sleep(FLUSH_MS / 4000)

    assert outside.status == 403, outside.text
    assert (outside.failed_hop, outside.json["refused_host"]) == ("target", "elsewhere.example:80")
    assert metadata.status == 403, metadata.text
    assert (metadata.failed_hop, metadata.json["refused_host"]) == ("target", "169.254.169.254:80")
    assert no_token.status == 404 and no_token.services == []
    assert allowed.status == 200 and allowed.services == ["proxy", "target"], allowed.text
    # only the allowed request went out through the target's sidecar
    assert seen == [allowed.request_id]
