"""The fake ``kind``/``istioctl``/``kubectl``/``docker`` executable (``fakebin/fake.py``) as a module.

The fake is a script run by the code under test through PATH; the tests load the same file to build
its rules and read what it recorded. The ``fakebin`` and ``main_thread`` fixtures are in conftest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

FAKE_SCRIPT = Path(__file__).parent / "fakebin" / "fake.py"


def _load_fake() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fakebin_fake", FAKE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake = _load_fake()
