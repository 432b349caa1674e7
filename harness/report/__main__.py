"""``python -m harness.report RESULTS...``: the same as ``egress-harness report``."""

from __future__ import annotations

import sys

from harness.report.render import main

if __name__ == "__main__":
    sys.exit(main())
