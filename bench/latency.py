"""Assertion latency on the local mesh: from the response reaching the client to the assertion passing.

Envoy writes access logs every ``--file-flush-interval-msec`` (1000 ms, Istio's value), so an entry
can appear up to one interval after the response: the interval is the physical floor of the worst
case. The ratio reported is the worst latency seen over the flush interval (goal: at most 1.3).
"""

from __future__ import annotations

import statistics
import time

from harness.common.traffic import Traffic
from harness.evidence import RequestRef, Wait, expect_entry, gateway_forwarded
from harness.localmesh.mesh import LocalMesh, Topology


def run(repeats: int, requests: int = 20) -> dict[str, float]:
    topo = Topology(mode="via-gateway", flush_interval_ms=1000)
    flush = topo.flush_interval_ms / 1000
    wait = Wait(timeout=10 * flush, interval=0.01, settle=flush)
    latencies: list[float] = []
    with LocalMesh(topo) as mesh, Traffic(headers=mesh.headers) as traffic:
        gateway = mesh.entry_log("egress-gateway")
        for i in range(max(requests, repeats)):
            answer = traffic.send(mesh.chain_url(f"/latency/{i}"))
            answered = time.perf_counter()
            if answer.status != 200:
                raise SystemExit(f"bench: request {i} got {answer.status}: {answer.text[:200]}")
            expect_entry(
                gateway,
                RequestRef(request_id=answer.request_id),
                gateway_forwarded(topo.external_host, 80),
                wait=wait,
            )
            latencies.append(time.perf_counter() - answered)
            # Spread the requests over the flush cycle instead of locking onto one phase of it.
            time.sleep((i * 0.37) % flush / 4)
    worst = max(latencies)
    return {
        "requests": len(latencies),
        "flush_interval_s": flush,
        "latency_median_s": statistics.median(latencies),
        "latency_max_s": worst,
        "ratio_latency_to_flush_interval": worst / flush,
        "ratio_median_to_flush_interval": statistics.median(latencies) / flush,
    }
