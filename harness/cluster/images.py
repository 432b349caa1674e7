"""Container images for the harness's own apps, built locally without pulling anything.

On a user's machine the recorder's image comes from ``apps/recorder/Dockerfile`` (``python:3.12-slim``).
Where no registry can be reached that base cannot be pulled, so :func:`build_local_python_image` makes
an equivalent image from what this machine already has:

* the Python interpreter running the harness (``sys.base_prefix``, i.e. the one a venv was made from):
  its binary, ``libpython`` if shared, and its standard library without ``test/``, ``idlelib``,
  ``tkinter``, ``turtledemo``, ``ensurepip``, ``site-packages`` and ``__pycache__``;
* only the extension modules (``lib-dynload``) whose shared-library needs are covered by libc, libm,
  the loader, libz and OpenSSL's libssl/libcrypto (so ``_socket``, ``select``, ``_json``, ``zlib``,
  ``_ssl`` and ``_hashlib`` are in: the recorder serves HTTPS and the relay calls it; ``_ctypes``,
  ``_sqlite3`` and friends, which need libffi/libsqlite/..., are out), and the libraries ``ldd``
  reports for everything included, each at its host path (no CA bundle: a client names its CA, e.g.
  with ``SSL_CERT_FILE``);
* a static busybox (Debian's ``busybox-static``, ``/bin/busybox``) with all its applets linked into
  ``/bin``, so the image has ``sh`` and ``wget`` (a client container, a health check);
* the app (a script or a directory) in ``/app``.

The files are written straight into a tar archive (in a temporary directory removed on any exit,
Ctrl-C included) and loaded with ``docker import``; ``--change`` sets ``CMD ["python", SCRIPT]``,
``WORKDIR /app``, ``USER 65532:65532`` and the environment, like the Dockerfile. The interpreter lives
under ``/usr/local`` (binary ``/usr/local/bin/python3.X``, symlink ``python``), ``libpython`` in
``/usr/local/lib`` with ``LD_LIBRARY_PATH`` pointing there. If ``strip`` is on PATH, copies of the
binaries are stripped of debug symbols (the image is then about 15-20 MB instead of 45).

The image tag is ``REPO:local-<hash>``, the hash covering the interpreter (version, binary and
libpython identity), busybox, the app's bytes and this builder's version: a second call with the same
inputs finds the tag (:func:`image_exists`) and returns at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.common.proc import tail

BUILDER_VERSION = "2"
BUSYBOX = Path("/bin/busybox")
PREFIX = "/usr/local"
APP_DIR = "/app"
USER = "65532:65532"
DOCKER_TIMEOUT_S = 60.0
IMPORT_TIMEOUT_S = 300.0
LDD_TIMEOUT_S = 30.0
STRIP_TIMEOUT_S = 60.0

#: stdlib entries left out of the image (directories or modules at the top of the stdlib)
STDLIB_SKIP = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3", "__pycache__"}
)
#: shared libraries (besides libc, libm, libpython and the loader) an extension module may need to be kept
EXTRA_LIBS_ALLOWED = frozenset({"libz.so.1"})
#: OpenSSL's libraries (any soname version), for ``_ssl`` and ``_hashlib``
TLS_LIBS = ("libssl.so", "libcrypto.so")
_BASE_LIBS = (
    "linux-vdso",
    "libc.so",
    "libm.so",
    "ld-linux",
    "libpython",
    "libpthread",
    "libdl.so",
    "librt.so",
)


class ImageBuildError(RuntimeError):
    """The image could not be built: a missing ingredient or a failed docker/ldd call."""


def _run(argv: list[str], timeout: float, *, input_path: Path | None = None) -> str:
    try:
        if input_path is not None:
            with input_path.open("rb") as stdin:
                done = subprocess.run(
                    argv, check=False, stdin=stdin, capture_output=True, text=True, timeout=timeout
                )
        else:
            done = subprocess.run(
                argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
            )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"`{argv[0]}` is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"`{' '.join(argv[:3])} ...` did not finish within {timeout:g}s") from exc
    if done.returncode != 0:
        raise ImageBuildError(
            f"`{' '.join(argv[:3])} ...` exited with {done.returncode}: {tail(done.stderr or done.stdout)}"
        )
    return done.stdout


def image_exists(tag: str) -> bool:
    """Whether the local Docker engine has an image with this tag (never pulls)."""
    try:
        done = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _ldd(path: Path) -> dict[str, Path]:
    """soname -> resolved host path of the shared libraries `path` needs (the loader included)."""
    out = _run(["ldd", str(path)], LDD_TIMEOUT_S)
    libs: dict[str, Path] = {}
    for raw in out.splitlines():
        line = raw.strip()
        m = re.match(r"(\S+) => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
        if not m:
            continue
        if len(m.groups()) == 2:
            libs[m.group(1)] = Path(m.group(2))
        else:
            libs[Path(m.group(1)).name] = Path(m.group(1))
    return libs


def _extension_allowed(libs: dict[str, Path]) -> bool:
    return all(name.startswith(_BASE_LIBS + TLS_LIBS) or name in EXTRA_LIBS_ALLOWED for name in libs)


def _interpreter() -> tuple[Path, Path, str]:
    """(binary, stdlib dir, 'python3.X') of the base interpreter."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    binary = base / "bin" / version
    stdlib = base / "lib" / version
    if not binary.is_file() or not (stdlib / "os.py").is_file():
        raise ImageBuildError(f"no {version} interpreter with its stdlib under {base}")
    return binary, stdlib, version


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _app_files(app: Path) -> list[tuple[Path, str]]:
    """(host path, path relative to /app) of every file of the app."""
    if app.is_file():
        return [(app, app.name)]
    if app.is_dir():
        return [
            (p, p.relative_to(app).as_posix())
            for p in sorted(app.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        ]
    raise ImageBuildError(f"app {app} is neither a file nor a directory")


def content_hash(app: Path, script: str) -> str:
    """The cache key of an image of `app` run as `script` with this interpreter."""
    binary, stdlib, version = _interpreter()
    h = hashlib.sha256()
    h.update(f"builder={BUILDER_VERSION}\n{sys.version}\n{version}\nscript={script}\n".encode())
    h.update(_file_identity(binary).encode())
    for lib in sorted((stdlib.parent).glob("libpython*.so*")):
        h.update(_file_identity(lib).encode())
    if BUSYBOX.exists():
        h.update(_file_identity(BUSYBOX).encode())
    for path, rel in _app_files(app):
        h.update(f"\n{rel}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _walk_stdlib(stdlib: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(stdlib):
        rel_root = Path(root).relative_to(stdlib)
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in STDLIB_SKIP
            and not (rel_root == Path() and (d == "lib-dynload" or d.startswith("config-")))
        )
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo", ".exe")):
                continue
            if rel_root == Path() and not name.endswith(".py"):
                continue
            yield Path(root) / name


class _Tar:
    """A tar of the root filesystem being assembled; parents are added as 0755 directories."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self._tar = tarfile.open(path, "w")  # noqa: SIM115 - closed by close(), in a finally
        self._dirs: set[str] = set()
        self._workdir = workdir
        self._strip = shutil.which("strip")
        self.files = 0

    def _dir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._dirs:
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if d == "tmp" else 0o755
                self._tar.addfile(info)
                self._dirs.add(d)

    def directory(self, path: str) -> None:
        self._dir(path)

    def file(self, src: Path, dest: str, *, strip: bool = False, mode: int | None = None) -> None:
        dest = dest.strip("/")
        self._dir(os.path.dirname(dest))
        real = src.resolve()
        if strip and self._strip:
            copy = self._workdir / f"strip-{self.files}"
            shutil.copyfile(real, copy)
            try:
                _run([self._strip, "--strip-unneeded", str(copy)], STRIP_TIMEOUT_S)
                real = copy
            except ImageBuildError:
                pass  # unstripped is fine, only bigger
        info = self._tar.gettarinfo(str(real), arcname=dest)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = mode if mode is not None else (0o755 if os.access(real, os.X_OK) else 0o644)
        with real.open("rb") as fh:
            self._tar.addfile(info, fh)
        self.files += 1

    def data(self, dest: str, content: bytes, mode: int = 0o644) -> None:
        dest = dest.strip("/")
        self._dir(os.path.dirname(dest))
        info = tarfile.TarInfo(dest)
        info.size = len(content)
        info.mode = mode
        self._tar.addfile(info, io.BytesIO(content))

    def symlink(self, dest: str, target: str) -> None:
        dest = dest.strip("/")
        self._dir(os.path.dirname(dest))
        info = tarfile.TarInfo(dest)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self._tar.addfile(info)

    def close(self) -> None:
        self._tar.close()


def _busybox_applets() -> list[str]:
    out = _run([str(BUSYBOX), "--list"], LDD_TIMEOUT_S)
    return [a for a in out.split() if a and "/" not in a]


def _write_rootfs(tar: _Tar, app: Path) -> None:
    binary, stdlib, version = _interpreter()
    libs: dict[str, Path] = dict(_ldd(binary))

    # the interpreter and libpython
    tar.file(binary, f"{PREFIX}/bin/{version}", strip=True, mode=0o755)
    tar.symlink(f"{PREFIX}/bin/python3", version)
    tar.symlink(f"{PREFIX}/bin/python", version)
    for name, path in list(libs.items()):
        if name.startswith("libpython"):
            tar.file(path, f"{PREFIX}/lib/{name}", strip=True)
            libs.pop(name)

    # the standard library, without the parts a server never imports
    for path in _walk_stdlib(stdlib):
        tar.file(path, f"{PREFIX}/lib/{version}/{path.relative_to(stdlib).as_posix()}")
    dynload = stdlib / "lib-dynload"
    tar.directory(f"{PREFIX}/lib/{version}/lib-dynload")
    for ext in sorted(dynload.glob("*.so")):
        needs = _ldd(ext)
        if _extension_allowed(needs):
            tar.file(ext, f"{PREFIX}/lib/{version}/lib-dynload/{ext.name}", strip=True)
            libs.update({k: v for k, v in needs.items() if not k.startswith("libpython")})

    # the shared libraries, each at its host path (the loader at the path the binary names)
    written: set[str] = set()
    for path in libs.values():
        if str(path) not in written:
            tar.file(path, str(path), mode=0o755)
            written.add(str(path))

    # busybox: sh, wget, ... for clients and health checks
    if not BUSYBOX.is_file():
        raise ImageBuildError(
            f"{BUSYBOX} is missing: install Debian's busybox-static (apt-get install -y busybox-static)"
        )
    tar.file(BUSYBOX, "bin/busybox", mode=0o755)
    for applet in _busybox_applets():
        if applet != "busybox":
            tar.symlink(f"bin/{applet}", "/bin/busybox")

    # a minimal /etc, /tmp and the app
    tar.data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/app:/bin/sh\n")
    tar.data("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    tar.data("etc/nsswitch.conf", b"hosts: files dns\n")
    tar.directory("tmp")
    tar.directory("root")
    for path, rel in _app_files(app):
        tar.file(path, f"{APP_DIR.strip('/')}/{rel}", mode=0o644)


def build_local_python_image(
    tag: str, app: Path, *, script: str | None = None, timeout: float = IMPORT_TIMEOUT_S
) -> str:
    """Build (or find cached) an image running `app` with this machine's Python; returns its tag.

    `tag` is the repository (``egress-harness/recorder``); a tag part, if given, is replaced by
    ``local-<content hash>``. `app` is a script (then `script` defaults to its name) or a directory
    (then `script` names the file in it to run). The image's CMD is ``["python", script]`` in /app.
    """
    app = app.resolve()
    if script is None:
        if not app.is_file():
            raise ImageBuildError(f"app {app} is a directory: name the script to run")
        script = app.name
    repo = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
    full = f"{repo}:local-{content_hash(app, script)}"
    if image_exists(full):
        return full

    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="egress-harness-image-") as tmp:
        workdir = Path(tmp)
        archive = workdir / "rootfs.tar"
        tar = _Tar(archive, workdir)
        try:
            _write_rootfs(tar, app)
        finally:
            tar.close()
        changes = [
            f"CMD {json.dumps(['python', script])}",
            f"WORKDIR {APP_DIR}",
            f"USER {USER}",
            f"ENV PATH={PREFIX}/bin:/bin",
            f"ENV LD_LIBRARY_PATH={PREFIX}/lib",
            "ENV PYTHONUNBUFFERED=1",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            "ENV LANG=C.UTF-8",
            "EXPOSE 8080",
            f"LABEL io.egress-harness.builder=images.py/{BUILDER_VERSION}",
        ]
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        argv += ["-", full]
        _run(argv, max(1.0, deadline - time.monotonic()), input_path=archive)
    return full
