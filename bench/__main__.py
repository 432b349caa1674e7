"""``make bench``: the harness's speed as ratios to a reference measured in the same run.

Times depend on the machine; a ratio to work of the same size done by a known-fast reference does
not (much). Each measurement is the best of several repeats. Results go to stdout and to
``artifacts/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.accesslog import ISTIO_TEXT, ISTIO_TEXT_FORMAT, AccessLogEntry, LogParser
from harness.evidence import EntryLog, FileLogSource

ROOT = Path(__file__).resolve().parent.parent


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def make_entries(n: int, seed: int = 7) -> list[AccessLogEntry]:
    rnd = random.Random(seed)
    hosts = ["external.egress-harness.test", "www.example.com", "api.partner.test"]
    out = []
    for i in range(n):
        host = hosts[i % len(hosts)]
        tcp = i % 10 == 9
        out.append(
            AccessLogEntry(
                start_time=f"2026-11-28T07:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z",
                method=None if tcp else "GET",
                path=None if tcp else f"/proxy?url=http%3A%2F%2F{host}%2F{i}",
                protocol=None if tcp else "HTTP/1.1",
                response_code=0 if tcp else rnd.choice([200, 200, 200, 404, 502]),
                response_flags=rnd.choice([None, None, "NR", "UH"]),
                response_code_details=None if tcp else "via_upstream",
                bytes_received=rnd.randrange(0, 2000),
                bytes_sent=rnd.randrange(0, 20000),
                duration=rnd.randrange(0, 500),
                upstream_service_time=None if tcp else rnd.randrange(0, 400),
                x_forwarded_for=None if tcp else "10.244.0.12",
                user_agent=None if tcp else "python-urllib/3.11",
                request_id=None if tcp else f"{i:08x}-1b2c-4d5e-8f90-{rnd.randrange(16**12):012x}",
                authority=None if tcp else host,
                upstream_host=f"172.18.0.{i % 250}:80",
                upstream_cluster=f"outbound|80||{host}",
                upstream_local_address="10.244.0.7:50112",
                downstream_local_address="10.244.0.7:8080",
                downstream_remote_address=f"10.244.0.12:{30000 + i % 30000}",
                requested_server_name=host if tcp else None,
                route_name=None if tcp else "default",
            )
        )
    return out


def render_text(entry: AccessLogEntry) -> str:
    """Print an entry with Istio's TEXT format (``-`` for absent)."""
    values = {op.text: entry.to_dict()[op.key] for op in ISTIO_TEXT.operators}
    line = ISTIO_TEXT_FORMAT.rstrip("\n")
    for op, value in values.items():
        line = line.replace(op, "-" if value is None else str(value), 1)
    return line


def bench_parse(lines_n: int, repeats: int) -> dict[str, float]:
    entries = make_entries(lines_n)
    text = [render_text(e) for e in entries]
    js = [json.dumps(e.to_dict()) for e in entries]
    loads = json.loads
    parse = ISTIO_TEXT.parse
    if parse(text[0]) != entries[0]:
        raise SystemExit("bench: the TEXT rendering does not parse back; the benchmark would be meaningless")
    t_text = best_of(repeats, lambda: [parse(line) for line in text])
    t_json = best_of(repeats, lambda: [loads(line) for line in js])
    t_parser = best_of(repeats, lambda: list(LogParser("auto").parse_lines(text)))
    return {
        "lines": lines_n,
        "text_parse_s": t_text,
        "json_loads_s": t_json,
        "ratio_text_parse_to_json_loads": t_text / t_json,
        "ratio_logparser_auto_to_json_loads": t_parser / t_json,
        "text_lines_per_s": lines_n / t_text,
    }


def bench_poll(lines_n: int, new_lines: int, repeats: int) -> dict[str, float]:
    entries = make_entries(lines_n + new_lines * repeats)
    text = [render_text(e) + "\n" for e in entries]
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp:
        path = Path(tmp) / "gateway.log"
        path.write_text("".join(text[:lines_n]))
        log = EntryLog(FileLogSource(path), hop="bench")
        log.poll()  # the first read: everything so far
        polls = []
        for r in range(repeats):
            chunk = text[lines_n + r * new_lines : lines_n + (r + 1) * new_lines]
            with path.open("a") as fh:
                fh.write("".join(chunk))
            started = time.perf_counter()
            got = log.poll()
            polls.append(time.perf_counter() - started)
            if len(got) != new_lines:
                raise SystemExit(f"bench: a poll read {len(got)} entries, expected {new_lines}")
        full = best_of(3, lambda: EntryLog(FileLogSource(path)).poll())
    poll = min(polls)
    return {
        "lines": lines_n,
        "new_lines": new_lines,
        "poll_s": poll,
        "full_reread_s": full,
        "ratio_poll_to_full_reread": poll / full,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000, help="log size (default 1,000,000 lines)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["parse", "poll", "latency"], action="append")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench.json")
    args = ap.parse_args(argv)
    only = set(args.only or ["parse", "poll", "latency"])
    results: dict[str, dict[str, float]] = {}
    goals: list[tuple[str, float, float]] = []
    if "parse" in only:
        print(f">> bench: TEXT parse vs json.loads over {args.lines:,} lines", file=sys.stderr)
        r = bench_parse(args.lines, args.repeats)
        results["parse"] = r
        goals.append(("TEXT parse / json.loads", r["ratio_text_parse_to_json_loads"], 1.5))
    if "poll" in only:
        print(
            f">> bench: one poll of 10 new lines on a {args.lines:,}-line log vs a full re-read",
            file=sys.stderr,
        )
        r = bench_poll(args.lines, 10, max(args.repeats, 5))
        results["poll"] = r
        goals.append(("poll of 10 new lines / full re-read", r["ratio_poll_to_full_reread"], 0.01))
    if "latency" in only:
        try:
            from bench import latency
        except ImportError:
            print(
                ">> bench: assertion latency needs the local Envoy tier (harness.localmesh.mesh); skipped",
                file=sys.stderr,
            )
        else:
            r = latency.run(args.repeats)
            results["latency"] = r
            goals.append(("assertion latency / flush interval", r["ratio_latency_to_flush_interval"], 1.3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'measure':<42} {'ratio':>10} {'goal':>8}  verdict")
    failed = 0
    for name, ratio, goal in goals:
        ok = ratio <= goal
        failed += not ok
        print(f"{name:<42} {ratio:>10.2g} {goal:>8}  {'met' if ok else 'MISSED'}")
    print(f"(details in {args.out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
