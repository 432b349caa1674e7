"""A pytest plugin for mutation runs only (``make mutate`` loads it with ``-p``).

mutmut forks each mutant's test run from a process that has already run the tests once, so
``compile_format``'s cache holds parsers compiled by the original code: a test that compiles a
format would get that parser back and never run the mutated compiler. Each test starts with the
cache empty instead. (The parsers built at import, such as ``ISTIO_TEXT``, stay as they are; the
tests of the compiler build their own with ``TextFormat``.)
"""

from __future__ import annotations

import pytest

from harness.accesslog.format import compile_format


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    compile_format.cache_clear()
