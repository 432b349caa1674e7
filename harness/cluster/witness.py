"""What the external host saw: the witness of a cluster run's requests, beside the hop logs.

Who called it: kindnet masquerades traffic from pods to addresses outside the pod network, so the
recorder sees the *node's* address on the ``kind`` network, not the pod's (:func:`caller_addresses`).
The harness's kind cluster has two nodes and puts the egress gateway alone on the worker, so the
address tells it apart; on an existing cluster where the gateway shares a node with the workloads,
``E2ERun.caller_witness_discriminates`` says so.

Over what: a request whose last leg is TLS (:func:`expects_external_tls`) must reach the recorder
over TLS with the host as SNI, and for mutual TLS with the run's client certificate
(:func:`check_tls_record`). The recorders' failed handshakes go into a failure's message
(:func:`handshake_hint`) and into the diagnostics (:class:`RunDiagnostics`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.cluster.diagnostics import Diagnostics
from harness.cluster.external import RecorderClient
from harness.cluster.hosts import EXTERNAL_TLS_PORT
from harness.evidence.external import ExternalEvidenceError, Record


def caller_addresses(pods: Sequence[Mapping[str, Any]], *, source_nat: bool) -> set[str]:
    """The addresses the external host sees for these pods: their own, or their nodes' under SNAT."""
    out: set[str] = set()
    for pod in pods:
        status = pod.get("status") or {}
        if source_nat:
            out.update(str(a["ip"]) for a in status.get("hostIPs") or [] if a.get("ip"))
            if status.get("hostIP"):
                out.add(str(status["hostIP"]))
        else:
            out.update(str(a["ip"]) for a in status.get("podIPs") or [] if a.get("ip"))
            if status.get("podIP"):
                out.add(str(status["podIP"]))
    return out


EXTERNAL_HOP = "external host"


def expects_external_tls(request: Any, tls_port: int = EXTERNAL_TLS_PORT) -> bool:
    """Whether the external host sees ``request`` over TLS: the workload calls it over HTTPS, or the
    proxy that calls the host (the egress gateway, or for a direct request the sidecar) is expected
    to send it on to the host's TLS port (TLS origination)."""
    if str(request.scheme) == "https":
        return True
    last = request.expect.gateway if request.expect.via_gateway else request.expect.sidecar
    upstream = (last or {}).get("upstream_cluster")
    return isinstance(upstream, str) and upstream.startswith(f"outbound|{tls_port}|")


class TcpConnections(RecorderClient):
    """A recorder's TCP connection records (``connections``) read where its HTTP records are
    (``records``), so that the witnesses that find a request by the token in its path find a TCP
    request by the token in its payload's first line (the record's ``path``). Only by token: a TCP
    connection carries no x-request-id."""

    def __init__(self, recorder: RecorderClient) -> None:
        self.recorder = recorder
        self.name, self.alias, self.aliases = recorder.name, recorder.alias, recorder.aliases
        self.port, self.tls_port, self.tcp_port = recorder.port, recorder.tls_port, recorder.tcp_port

    @property
    def url(self) -> str:
        return self.recorder.url

    @property
    def address(self) -> str:
        return self.recorder.address

    def records(
        self, request_id: str | None = None, *, path_contains: str | None = None, since: int | None = None
    ) -> list[dict[str, Any]]:
        if path_contains is None:
            raise ValueError(
                f"a TCP connection carries no x-request-id ({request_id}): find it by its path token"
            )
        return self.recorder.connections(path_contains=path_contains, since=since)

    def handshake_failures(self) -> list[dict[str, Any]]:
        return []


def check_tls_record(
    record: Record, *, host: str, client_subject: str | None = None, hop: str = EXTERNAL_HOP
) -> Mapping[str, Any]:
    """The record's ``tls`` when the request reached the external host over TLS with ``host`` as SNI
    and, with ``client_subject``, with that client certificate; else ExternalEvidenceError naming
    the external host hop and what it saw."""
    rid = (record.get("headers") or {}).get("x-request-id", "?")
    tls = record.get("tls")
    where = f"hop {hop!r}: the request x-request-id={rid} reached {host}"
    if not isinstance(tls, Mapping):
        raise ExternalEvidenceError(
            f"{where} over plain HTTP, expected TLS with SNI {host!r}", hop=hop, records=[record]
        )
    if tls.get("sni") != host:
        raise ExternalEvidenceError(
            f"{where} over TLS with SNI {tls.get('sni')!r}, expected {host!r}", hop=hop, records=[record]
        )
    if client_subject is not None and tls.get("client_cert_subject") != client_subject:
        seen = tls.get("client_cert_subject")
        got = f"client certificate {seen!r}" if seen else "no client certificate"
        raise ExternalEvidenceError(
            f"{where} over TLS with {got}, expected the run's client certificate {client_subject!r}",
            hop=hop,
            records=[record],
        )
    return tls


def handshake_hint(recorder: Any, host: str, *, limit: int = 3) -> str:
    """The recorder's last failed TLS handshakes for ``host`` (SNI) as text to append to a failure,
    or '' (none, or they cannot be read)."""
    try:
        failures = [f for f in recorder.handshake_failures() if f.get("sni") in (host, None)]
    except Exception:
        return ""
    if not failures:
        return ""
    shown = "; ".join(
        f"{f.get('client_ip')}:{f.get('client_port')} (SNI {f.get('sni') or '-'}): {f.get('error')}"
        for f in failures[-limit:]
    )
    return f"\nthe external host saw {len(failures)} failed TLS handshake(s) for {host}, the last: {shown}"


class RunDiagnostics(Diagnostics):
    """``harness.cluster.diagnostics.Diagnostics`` and what the run's TLS recorders know: each one's failed
    TLS handshakes (``<label>-handshake-failures.json``: a client without a certificate, an unknown
    CA, a wrong name), and the mTLS recorder's records and log (``mtls-recorder-records.json``,
    ``mtls-recorder.log``; the run's recorder has its own step)."""

    def __init__(self, *args: Any, tls_recorders: Mapping[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tls_recorders = dict(tls_recorders or {})

    def recorder_tls(self, directory: Path) -> list[Path]:
        files: list[Path] = []
        problems: list[str] = []
        for label, recorder in self.tls_recorders.items():
            try:
                failures = recorder.handshake_failures()
            except Exception as exc:
                problems.append(f"{label} handshake failures: {type(exc).__name__}: {exc}")
            else:
                path = directory / f"{label}-handshake-failures.json"
                path.write_text(json.dumps(failures, indent=1) + "\n")
                files.append(path)
            if recorder is self.recorder:
                continue
            try:
                records = directory / f"{label}-records.json"
                records.write_text(json.dumps(recorder.records(), indent=1) + "\n")
                log = directory / f"{label}.log"
                log.write_text(recorder.logs())
                files += [records, log]
            except Exception as exc:
                problems.append(f"{label} records: {type(exc).__name__}: {exc}")
        if problems:
            raise RuntimeError("; ".join(problems))
        return files

    def steps(self) -> list[tuple[str, Callable[[Path], list[Path]]]]:
        steps = super().steps()
        if self.tls_recorders:
            steps.append(("recorder TLS handshakes", self.recorder_tls))
        return steps
