"""Network namespaces, links and routes of one netns cluster run, through ``ip`` with timeouts.

Every name a run makes starts with its prefix (``egh-<run id>-``), so two runs never collide and
:func:`leftovers` can list what a run left behind. Nothing is added to the root namespace: the run's
node namespace holds the control plane and routes to the pods and to the external host namespace;
the harness reaches the API server and the ingress through loopback forwarders (``forward``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.common.proc import CommandError, run

IP_TIMEOUT_S = 20.0
NETNS_DIR = Path("/var/run/netns")
#: where ``ip netns exec`` finds per-namespace files bound over /etc (hosts, resolv.conf)
NETNS_ETC = Path("/etc/netns")


class NetworkError(RuntimeError):
    """An ``ip``/``sysctl`` step failed; the message names the namespace and the command."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    try:
        return run(argv, timeout=IP_TIMEOUT_S, check=check).stdout
    except CommandError as exc:
        where = f" in network namespace {netns}" if netns else ""
        raise NetworkError(f"`ip {' '.join(args)}`{where} failed: {exc.stderr_tail or exc.reason}") from exc


def in_netns(netns: str, argv: Sequence[str], *, timeout: float = IP_TIMEOUT_S) -> str:
    """Run ``argv`` inside ``netns`` (``ip netns exec``) and return its stdout."""
    try:
        return run(["ip", "netns", "exec", netns, *argv], timeout=timeout).stdout
    except CommandError as exc:
        raise NetworkError(f"`{' '.join(argv)}` in network namespace {netns} failed: {exc}") from exc


def sysctl(netns: str, key: str, value: str) -> None:
    in_netns(netns, ["sysctl", "-q", "-w", f"{key}={value}"])


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete_netns(name: str) -> None:
    """Remove ``name`` and its /etc/netns folder; a namespace that is gone already is fine."""
    if netns_exists(name):
        ip("netns", "delete", name)
    etc = NETNS_ETC / name
    if etc.is_dir():
        for child in etc.iterdir():
            child.unlink()
        etc.rmdir()


def list_netns(prefix: str) -> list[str]:
    """Network namespaces whose name starts with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def anchor_link(netns: str, name: str, addresses: Sequence[str]) -> None:
    """A link that only holds addresses (and routes through it) in ``netns``: a veth pair with both
    ends in the namespace (the ``dummy`` link type is a kernel module some machines lack)."""
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p", netns=netns)
    for address in addresses:
        ip("addr", "add", f"{address}/32", "dev", name, netns=netns)
    ip("link", "set", f"{name}p", "up", netns=netns)
    ip("link", "set", name, "up", netns=netns)


@dataclass(frozen=True)
class Veth:
    """A veth pair between two namespaces, each end with a /32 and a route to the other's address."""

    left_ns: str
    left_name: str
    left_ip: str
    right_ns: str
    right_name: str
    right_ip: str

    def create(self) -> None:
        ip("link", "add", self.left_name, "type", "veth", "peer", "name", self.right_name, netns=self.left_ns)
        ip("link", "set", self.right_name, "netns", self.right_ns, netns=self.left_ns)
        for ns, name, own, other in (
            (self.left_ns, self.left_name, self.left_ip, self.right_ip),
            (self.right_ns, self.right_name, self.right_ip, self.left_ip),
        ):
            ip("addr", "add", f"{own}/32", "dev", name, netns=ns)
            ip("link", "set", name, "up", netns=ns)
            ip("route", "add", f"{other}/32", "dev", name, netns=ns)


_ADDR = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def write_netns_file(netns: str, name: str, text: str) -> Path:
    """Write ``/etc/netns/<netns>/<name>`` (``ip netns exec`` binds it over ``/etc/<name>``)."""
    folder = NETNS_ETC / netns
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)
    return path


def hosts_text(entries: Sequence[tuple[str, Sequence[str]]]) -> str:
    """An /etc/hosts body: localhost first, then ``address name...`` per entry."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for address, names in entries:
        if not _ADDR.match(address):
            raise NetworkError(f"hosts entry {address!r} {list(names)} is not an IPv4 address")
        lines.append(f"{address} {' '.join(names)}")
    return "\n".join(lines) + "\n"
