"""harness.istio with the fake ``istioctl``/``kind``, and whole-run command sequences.

The cluster reads the install needs (deployments, pods, namespace deletion) go to ``FakeApi``: its
rollout waits run the real decision (``rollout_status``) and deadline loop (``wait_until``) over
scripted Deployment states with a fake clock, and it writes its calls into the same log as the fake
executables, so a test sees one timeline.
"""

from __future__ import annotations

NAME = "egress-unit"
KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\n"
