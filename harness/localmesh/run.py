"""One request down the local mesh, and the verdict its evidence gives.

``run_once`` sends a request through ``client -> proxy -> target -> external host``, then asks the
question the harness exists for, *did it leave through the egress gateway?*, of three independent
witnesses for the same x-request-id:

1. the target's sidecar: its entry went to the gateway's cluster;
2. the egress gateway: its entry went to ``outbound|80||<host>``;
3. the external host: the request arrived from the gateway's address, not the target's.

In ``via-gateway`` that must pass. In every other mode it must fail, naming the hop where the path
diverged, while the mode's own assertion (not through the gateway, blocked, no route) passes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from harness.common.traffic import ChainResponse, send
from harness.evidence import (
    EgressTarget,
    EntryLog,
    HopEvidence,
    RequestRef,
    Wait,
    assert_blocked,
    assert_not_through_gateway,
    assert_through_gateway,
    expect_external_record,
)
from harness.evidence import predicates as p
from harness.evidence.assertions import expect_entry
from harness.evidence.egress import sidecar_to_gateway
from harness.localmesh.envoy import EnvoyError
from harness.localmesh.mesh import GATEWAY_SERVICE, MODES, LocalMesh, LocalMeshError, Mode, Topology

#: The local tier's wait: Istio's one-second flush plus room; a wrong entry fails after half a second.
LOCAL_WAIT = Wait(timeout=10.0, interval=0.05, settle=0.5)

#: What each mode must show, besides failing the through-the-gateway question (except via-gateway).
EXPECTED: dict[Mode, str] = {
    "via-gateway": "through the egress gateway",
    "direct": "not through the egress gateway (straight out from the sidecar)",
    "registry-only": "blocked by the sidecar (502 block_all)",
    "gateway-no-route": "sent to the gateway, which had no route (404 NR)",
}


@dataclass(frozen=True, slots=True)
class HopRow:
    """One line of the evidence table."""

    hop: str
    upstream: str
    status: str
    flags: str


@dataclass
class Verdict:
    """What one request through the local mesh showed."""

    mode: Mode
    request_id: str
    client_status: int
    through_gateway_error: AssertionError | None
    mode_error: AssertionError | None
    rows: list[HopRow] = field(default_factory=list)
    proof: list[HopEvidence] = field(default_factory=list)

    @property
    def went_through_gateway(self) -> bool:
        return self.through_gateway_error is None

    @property
    def diverged_at(self) -> str | None:
        """The hop the through-the-gateway question failed at."""
        return getattr(self.through_gateway_error, "hop", None)

    @property
    def ok(self) -> bool:
        """The evidence says what the mode should produce."""
        if self.mode == "via-gateway":
            return self.went_through_gateway
        return not self.went_through_gateway and self.mode_error is None

    def render(self) -> str:
        widths = [
            max(len(getattr(r, f)) for r in [*self.rows, _HEADER])
            for f in ("hop", "upstream", "status", "flags")
        ]
        lines = [
            f"mode: {self.mode}    x-request-id: {self.request_id}    client got: {self.client_status}",
            "",
        ]
        for row in [_HEADER, *self.rows]:
            cells = (row.hop, row.upstream, row.status, row.flags)
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        lines.append("")
        if self.went_through_gateway:
            lines.append(
                "through the egress gateway: YES (sidecar -> gateway -> external host, 3 witnesses agree)"
            )
        else:
            lines.append(f"through the egress gateway: NO, diverged at hop {self.diverged_at!r}")
        lines.append(f"expected for this mode: {EXPECTED[self.mode]}")
        if self.mode != "via-gateway":
            lines.append(
                "mode check: " + ("passed" if self.mode_error is None else f"FAILED\n{self.mode_error}")
            )
        elif self.through_gateway_error is not None:
            lines.append(str(self.through_gateway_error))
        lines.append("verdict: " + ("OK, the evidence matches the mode" if self.ok else "MISMATCH"))
        return "\n".join(lines)


_HEADER = HopRow("hop", "upstream cluster", "status", "flags")


def check_through_gateway(
    mesh: LocalMesh, logs: dict[str, EntryLog], request_id: str, *, wait: Wait
) -> list[HopEvidence]:
    """The three witnesses, in path order; the first that disagrees raises, naming its hop."""
    topo = mesh.topology
    proof = assert_through_gateway(
        RequestRef(request_id=request_id, host=topo.external_host),
        EgressTarget(topo.external_host, 80),
        gateway=logs["egress-gateway"],
        sidecar=logs["target-sidecar"],
        gateway_service=GATEWAY_SERVICE,
        wait=wait,
    )
    expect_external_record(
        mesh.external_records, request_id, from_ips={topo.gateway_ip}, timeout=wait.timeout
    )
    return proof


def check_mode(mesh: LocalMesh, logs: dict[str, EntryLog], request_id: str, *, wait: Wait) -> None:
    """The assertion that matches the mode (other than via-gateway)."""
    topo = mesh.topology
    ref = RequestRef(request_id=request_id, host=topo.external_host)
    if topo.mode == "direct":
        assert_not_through_gateway(
            ref,
            EgressTarget(topo.external_host, 80),
            sidecar=logs["target-sidecar"],
            gateway=logs["egress-gateway"],
            wait=wait,
            window=topo.flush_interval_ms / 1000 + 0.25,
            canary=mesh.canary,
        )
        expect_external_record(
            mesh.external_records, request_id, from_ips={topo.target_ip}, timeout=wait.timeout
        )
    elif topo.mode == "registry-only":
        assert_blocked(ref, sidecar=logs["target-sidecar"], wait=wait)
    elif topo.mode == "gateway-no-route":
        expect_entry(
            logs["target-sidecar"], ref, sidecar_to_gateway(gateway_service=GATEWAY_SERVICE), wait=wait
        )
        assert_blocked(ref, gateway=logs["egress-gateway"], wait=wait)


def _rows(mesh: LocalMesh, logs: dict[str, EntryLog], request_id: str) -> list[HopRow]:
    rows = []
    for part in ("proxy-sidecar", "target-sidecar", "egress-gateway"):
        log = logs[part]
        log.poll()
        mine = [e for e in log.entries if p.request_id(request_id)(e)]
        if not mine:
            rows.append(HopRow(log.hop, "(no entry)", "-", "-"))
        for e in mine:
            rows.append(
                HopRow(log.hop, e.upstream_cluster or "-", str(e.response_code), e.response_flags or "-")
            )
    records = [r for r in mesh.external_records() if r.get("headers", {}).get("x-request-id") == request_id]
    if not records:
        rows.append(HopRow("external host", "(not reached)", "-", "-"))
    for r in records:
        who = {mesh.topology.gateway_ip: "egress gateway", mesh.topology.target_ip: "target pod"}.get(
            r["client_ip"], "?"
        )
        rows.append(HopRow("external host", f"called from {r['client_ip']} ({who})", "-", "-"))
    return rows


def run_once(mesh: LocalMesh, path: str = "/", *, wait: Wait = LOCAL_WAIT) -> Verdict:
    """Send one request down the chain and judge it by the evidence."""
    logs = {part: mesh.entry_log(part) for part in ("proxy-sidecar", "target-sidecar", "egress-gateway")}
    response: ChainResponse = send(mesh.chain_url(path), headers=mesh.headers)
    verdict = Verdict(mesh.topology.mode, response.request_id, response.status, None, None)
    try:
        verdict.proof = check_through_gateway(mesh, logs, response.request_id, wait=wait)
    except AssertionError as exc:
        verdict.through_gateway_error = exc
    if mesh.topology.mode != "via-gateway":
        try:
            check_mode(mesh, logs, response.request_id, wait=wait)
        except AssertionError as exc:
            verdict.mode_error = exc
    verdict.rows = _rows(mesh, logs, response.request_id)
    return verdict


def add_commands(sub: Any) -> None:
    local = sub.add_parser("local", help="the request chain through real Envoy on loopback (no cluster)")
    local_sub = local.add_subparsers(dest="local_command", metavar="SUBCOMMAND", required=True)
    run = local_sub.add_parser(
        "run",
        help="run the chain once and print the evidence per hop and the verdict",
        description="Start the local mesh (egress gateway and sidecar Envoys, proxy and target relays, "
        "an external host), send one request client -> proxy -> target -> external host, and judge it "
        "by the access logs and the external host's record. Exit 0 when the verdict matches the mode.",
    )
    run.add_argument("--mode", choices=MODES, default="via-gateway", help="default: via-gateway")
    run.add_argument("--encoding", choices=("text", "json"), default="text", help="access-log encoding")
    run.add_argument("--path", default="/", help="the path requested from the external host")
    run.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) and print it"
    )
    run.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    topology = Topology(mode=args.mode, encoding=args.encoding)
    try:
        with LocalMesh(topology, keep_workdir=args.keep, progress=True) as mesh:
            verdict = run_once(mesh, args.path)
            print(verdict.render())
            if args.keep:
                print(f"work directory kept: {mesh.workdir}")
    except (LocalMeshError, EnvoyError) as exc:
        print(f"egress-harness local run: {exc}", file=sys.stderr)
        return 2
    return 0 if verdict.ok else 1
