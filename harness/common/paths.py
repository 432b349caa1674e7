"""Where the project's own files are: the checkout that holds ``harness/``, ``manifests/``, ``apps/``."""

from __future__ import annotations

from pathlib import Path

#: The project's root (the folder that holds ``harness/``).
REPO_ROOT = Path(__file__).resolve().parents[2]
