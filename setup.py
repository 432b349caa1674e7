"""The build's one addition to pyproject.toml: a wheel carries ``manifests/``, ``apps/`` and ``scenarios/``.

They live beside ``harness/`` in the checkout, where the code and the tests use them; a wheel has no
checkout around it, so building one copies them into the package as ``harness/_data/``, where
``harness.common.paths`` looks when there is no checkout. An editable install reads the checkout and
copies nothing. The sdist carries the folders too (MANIFEST.in), so a wheel built from it has them.
"""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# paths.py is the standard library alone: read the folder list from it without importing the package
_PATHS = runpy.run_path(str(HERE / "harness" / "common" / "paths.py"))
_IGNORED = shutil.ignore_patterns("__pycache__", "*.py[cod]", ".*")


def copy_packaged_data(root: Path, build_lib: Path) -> Path:
    """Copy the packaged folders from ``root`` into ``build_lib/harness/_data``; return that folder."""
    target = build_lib / "harness" / str(_PATHS["PACKAGED_DATA"])
    for name in _PATHS["PACKAGED_FOLDERS"]:
        source = root / name
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: a wheel must carry it (harness/common/paths.py)")
        shutil.copytree(source, target / name, ignore=_IGNORED, dirs_exist_ok=True)
    return target


class BuildPyWithData(build_py):
    """``build_py``, then the packaged folders into the build (not for an editable install)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            copy_packaged_data(HERE, Path(self.build_lib))


if __name__ == "__main__":  # how setuptools' build backend runs this file
    setup(cmdclass={"build_py": BuildPyWithData})
