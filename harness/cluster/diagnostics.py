"""What to keep when an e2e test fails: logs, proxy configuration, analysis, events, manifests, records.

``Diagnostics(...).collect(test_id)`` writes under ``<artifacts>/<test id>/``:

==============================  ==========================================================================
``gateway-<pod>.log``           the egress gateway's ``istio-proxy`` log of the run (every replica)
``<pod>.<container>.log``       every container log of the run namespace's pods (sidecars and relays)
``proxy-config/<what>-<pod>``   ``istioctl proxy-config routes|clusters|listeners <pod>.<ns>`` for the
                                target's sidecar and each egress gateway pod
``analyze.txt``                 ``istioctl analyze -n <ns>`` against the live cluster
``events-<ns>.txt``             the events of the run namespace and of istio-system, oldest first
``manifests/``                  the manifests the run applied (relay apps, scenarios)
``recorder-records.json``       what the external host (the recorder) saw, and ``recorder.log``
``summary.txt``                 each step, whether it worked, and why not
==============================  ==========================================================================

Each step runs on its own and is bounded by a timeout: a step that fails or hangs is noted in the
summary and the next one runs. ``export_kind_logs()`` runs ``kind export logs`` (node, kubelet,
containerd and pod logs) into ``<artifacts>/kind-logs``; the pytest plugin calls it once per session.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from harness.cluster.istio import EGRESS_GATEWAY_SELECTOR, ISTIO_NAMESPACE, kube_target_args
from harness.common.proc import progress, run

STEP_TIMEOUT_S = 90.0
COMMAND_TIMEOUT_S = 60.0
PROXY_CONFIG_KINDS: tuple[str, ...] = ("routes", "clusters", "listeners")
SIDECAR_SELECTOR = "app=target"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def artifact_dir_name(test_id: str, limit: int = 160) -> str:
    """A directory name for a pytest node id: ``tests/e2e/test_x.py::test_y[a]`` -> ``tests_e2e_test_x.py_test_y_a``."""
    name = _UNSAFE.sub("_", test_id).strip("_.") or "test"
    return name[:limit]


class DiagnosticsKube(Protocol):
    """The cluster reads the collection needs (harness.cluster.kube.Kube provides them)."""

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    def pod_logs(
        self,
        namespace: str,
        selector: str,
        *,
        container: str = ...,
        since_seconds: int | None = ...,
        since_time: datetime | None = ...,
    ) -> dict[str, str]: ...

    def events(self, namespace: str) -> list[dict[str, Any]]: ...


class Recorder(Protocol):
    def records(self, request_id: str | None = None) -> list[dict[str, Any]]: ...

    def logs(self) -> str: ...


class KindLogs(Protocol):
    def export_logs(self, directory: Path) -> Path: ...


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    error: str | None = None
    files: list[Path] = field(default_factory=list)

    def line(self, root: Path) -> str:
        status = "ok" if self.ok else "FAILED"
        files = ", ".join(str(f.relative_to(root)) for f in self.files) or "-"
        why = f"\n    {self.error}" if self.error else ""
        return f"{status:6} {self.name} ({self.seconds:.1f}s): {files}{why}"


def run_bounded(name: str, step: Callable[[], list[Path]], timeout_s: float) -> StepResult:
    """Run ``step`` in a worker thread; give up waiting after ``timeout_s`` (the thread is a daemon)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["files"] = step()
        except BaseException as exc:
            box["error"] = f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    worker = threading.Thread(target=target, name=f"diagnostics: {name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    took = time.monotonic() - started
    if worker.is_alive():
        return StepResult(name, False, took, f"did not finish within {timeout_s:g}s; left behind")
    if "error" in box:
        return StepResult(name, False, took, str(box["error"]).strip()[:2000])
    return StepResult(name, True, took, files=list(box.get("files") or []))


def _bare(pod: Mapping[str, Any]) -> bool:
    """The pod's spec names its containers, and Istio's proxy is not among them."""
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]}
    return bool(spec) and "istio-proxy" not in names


def _pod_names(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(str(p["metadata"]["name"]) for p in pods)


def _event_line(event: Mapping[str, Any]) -> str:
    obj = event.get("involvedObject") or {}
    when = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "-"
    count = event.get("count") or 1
    return (
        f"{when} {event.get('type', '-'):7} {event.get('reason', '-')} "
        f"{obj.get('kind', '?')}/{obj.get('name', '?')} (x{count}): {str(event.get('message', '')).strip()}"
    )


class Diagnostics:
    """Collects what explains a failed e2e test; see the module docstring for the files."""

    def __init__(
        self,
        artifacts_dir: Path,
        *,
        kube: DiagnosticsKube | None,
        istioctl: str | None,
        kubeconfig: Path | None,
        context: str | None,
        namespace: str,
        since: datetime | None = None,
        manifests: Sequence[Path] = (),
        recorder: Recorder | None = None,
        kind_cluster: KindLogs | None = None,
        gateway_namespace: str = ISTIO_NAMESPACE,
        gateway_selector: str = EGRESS_GATEWAY_SELECTOR,
        sidecar_selector: str = SIDECAR_SELECTOR,
        step_timeout_s: float = STEP_TIMEOUT_S,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.artifacts_dir = artifacts_dir
        self.kube = kube
        self.istioctl = istioctl
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace = namespace
        self.since = since
        self.manifests = list(manifests)
        self.recorder = recorder
        self.kind_cluster = kind_cluster
        self.gateway_namespace = gateway_namespace
        self.gateway_selector = gateway_selector
        self.sidecar_selector = sidecar_selector
        self.step_timeout_s = step_timeout_s
        self.command_timeout_s = command_timeout_s

    # helpers

    def _need_kube(self) -> DiagnosticsKube:
        if self.kube is None:
            raise RuntimeError("no cluster connection (the run did not get that far)")
        return self.kube

    def _istioctl(self, *args: str) -> tuple[int, str]:
        if not self.istioctl or self.kubeconfig is None:
            raise RuntimeError("istioctl or the kubeconfig is not available")
        argv = [self.istioctl, *args, *kube_target_args(self.kubeconfig, self.context)]
        done = run(argv, timeout=self.command_timeout_s, check=False)
        text = done.stdout + (f"\n--- stderr ---\n{done.stderr}" if done.stderr.strip() else "")
        return done.returncode, text

    # steps; each returns the files it wrote

    def gateway_logs(self, directory: Path) -> list[Path]:
        logs = self._need_kube().pod_logs(
            self.gateway_namespace, self.gateway_selector, container="istio-proxy", since_time=self.since
        )
        files = []
        for pod, text in sorted(logs.items()):
            path = directory / f"gateway-{pod}.log"
            path.write_text(text)
            files.append(path)
        if not files:
            raise RuntimeError(f"no pod matches {self.gateway_selector} in {self.gateway_namespace}")
        return files

    def namespace_logs(self, directory: Path) -> list[Path]:
        kube = self._need_kube()
        files: list[Path] = []
        containers: set[str] = set()
        for listed in kube.list_pods(self.namespace, "app"):
            spec = listed.get("spec") or {}
            containers.update(c["name"] for c in spec.get("containers") or [])
            containers.update(
                c["name"] for c in spec.get("initContainers") or [] if c["name"] == "istio-proxy"
            )
        problems = []
        for container in sorted(containers):
            try:
                logs = kube.pod_logs(self.namespace, "app", container=container, since_time=self.since)
            except Exception as exc:
                problems.append(f"{container}: {exc}")
                continue
            for pod_name, text in sorted(logs.items()):
                path = directory / f"{pod_name}.{container}.log"
                path.write_text(text)
                files.append(path)
        if problems:
            raise RuntimeError("; ".join(problems))
        return files

    def proxy_configs(self, directory: Path) -> list[Path]:
        kube = self._need_kube()
        # a calling workload without a sidecar (a bypass scenario's) has no configuration to read
        sidecars = [p for p in kube.list_pods(self.namespace, self.sidecar_selector) if not _bare(p)]
        targets = [(p, self.namespace) for p in _pod_names(sidecars)]
        targets += [
            (p, self.gateway_namespace)
            for p in _pod_names(kube.list_pods(self.gateway_namespace, self.gateway_selector))
        ]
        out = directory / "proxy-config"
        out.mkdir(exist_ok=True)
        files: list[Path] = []
        problems: list[str] = []
        for pod, ns in targets:
            for what in PROXY_CONFIG_KINDS:
                try:
                    code, text = self._istioctl("proxy-config", what, f"{pod}.{ns}")
                except Exception as exc:
                    problems.append(f"{what} {pod}.{ns}: {exc}")
                    continue
                path = out / f"{what}-{pod}.txt"
                path.write_text(text)
                files.append(path)
                if code != 0:
                    problems.append(f"{what} {pod}.{ns}: exit {code}")
        if not targets:
            problems.append("no target sidecar and no egress gateway pod found")
        if problems:
            raise RuntimeError("; ".join(problems))
        return files

    def analysis(self, directory: Path) -> list[Path]:
        code, text = self._istioctl("analyze", "-n", self.namespace)
        path = directory / "analyze.txt"
        path.write_text(f"# istioctl analyze -n {self.namespace} (exit {code})\n{text}")
        return [path]

    def events(self, directory: Path) -> list[Path]:
        kube = self._need_kube()
        files = []
        for ns in (self.namespace, self.gateway_namespace):
            path = directory / f"events-{ns}.txt"
            path.write_text("".join(_event_line(e) + "\n" for e in kube.events(ns)))
            files.append(path)
        return files

    def applied_manifests(self, directory: Path) -> list[Path]:
        out = directory / "manifests"
        out.mkdir(exist_ok=True)
        files = []
        for index, source in enumerate(self.manifests):
            name = f"{index:02d}-{source.parent.name}-{source.name}"
            dest = out / name
            shutil.copyfile(source, dest)
            files.append(dest)
        return files

    def recorder_records(self, directory: Path) -> list[Path]:
        if self.recorder is None:
            return []
        path = directory / "recorder-records.json"
        path.write_text(json.dumps(self.recorder.records(), indent=1) + "\n")
        log = directory / "recorder.log"
        log.write_text(self.recorder.logs())
        return [path, log]

    # the whole collection

    def steps(self) -> list[tuple[str, Callable[[Path], list[Path]]]]:
        return [
            ("egress gateway logs", self.gateway_logs),
            (f"logs of {self.namespace}", self.namespace_logs),
            ("istioctl proxy-config", self.proxy_configs),
            ("istioctl analyze", self.analysis),
            ("events", self.events),
            ("applied manifests", self.applied_manifests),
            ("recorder records", self.recorder_records),
        ]

    def collect(self, test_id: str) -> Path:
        """Write the diagnostics of ``test_id``; returns the directory. Never raises for a failed step."""
        directory = self.artifacts_dir / artifact_dir_name(test_id)
        directory.mkdir(parents=True, exist_ok=True)
        progress(f"collecting diagnostics into {directory}")
        results = []
        for name, step in self.steps():
            results.append(run_bounded(name, lambda step=step: step(directory), self.step_timeout_s))  # type: ignore[misc]
        summary = directory / "summary.txt"
        summary.write_text(
            f"diagnostics of {test_id}\nnamespace {self.namespace}\n\n"
            + "".join(r.line(directory) + "\n" for r in results)
        )
        failed = [r.name for r in results if not r.ok]
        if failed:
            progress(f"diagnostics: {len(failed)} step(s) failed: {', '.join(failed)} (see {summary})")
        return directory

    def export_kind_logs(self) -> Path | None:
        """``kind export logs <artifacts>/kind-logs``; None without a kind cluster."""
        if self.kind_cluster is None:
            return None
        return self.kind_cluster.export_logs(self.artifacts_dir / "kind-logs")
