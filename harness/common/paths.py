"""Where the project's own files are: the checkout that holds ``harness/``, ``manifests/``, ``apps/``.

In a checkout (and an editable install of it) that is the folder above ``harness/``. A wheel has no
checkout around it: it carries ``manifests/``, ``apps/`` and ``scenarios/`` inside the package, as
``harness/_data/`` (``setup.py`` copies them there when it builds the wheel), and ``REPO_ROOT`` is
that folder instead. Everything else under ``REPO_ROOT`` (``.cache/``, ``artifacts/``) then lands in
the installed package unless its own setting moves it (``EGRESS_HARNESS_CACHE``, ``--run-dir``,
``--artifacts-dir``).
"""

from __future__ import annotations

from pathlib import Path

#: The folders a wheel carries in ``harness/_data/`` (``setup.py`` reads this list).
PACKAGED_FOLDERS = ("manifests", "apps", "scenarios")
#: Where a wheel carries them, relative to the ``harness`` package.
PACKAGED_DATA = "_data"


def project_root(package_dir: Path) -> Path:
    """The folder that holds ``manifests/`` and ``apps/`` for the ``harness`` package in ``package_dir``.

    The checkout (the folder above the package) when it has ``manifests/``; else the package's own
    ``_data/`` when it has ``manifests/`` (an installed wheel); else the folder above the package, so
    that a missing file is reported at the path a checkout would have.
    """
    checkout = package_dir.parent
    packaged = package_dir / PACKAGED_DATA
    if not (checkout / "manifests").is_dir() and (packaged / "manifests").is_dir():
        return packaged
    return checkout


#: The project's root: the checkout that holds ``harness/``, or an installed wheel's ``harness/_data``.
REPO_ROOT = project_root(Path(__file__).resolve().parents[1])
