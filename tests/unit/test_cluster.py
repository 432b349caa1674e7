"""harness.cluster against the fake ``kind`` of tests/unit/fakebin: which commands run, in which order.

Each test writes the scenario the fake answers from and then reads back the calls it logged.
"""

from __future__ import annotations

NAME = "egress-unit"
KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\ncurrent-context: kind-egress-unit\n"
