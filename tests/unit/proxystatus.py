"""``istioctl proxy-status -o json`` for the stand-in clusters: the output recorded on a netns cluster
(data/istioctl/README.md says how), with only the node ids and the times replaced."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent / "data" / "istioctl" / "proxy-status-synced.json"


def synced_stdout(*proxies: str, at: datetime | None = None) -> str:
    """Every one of ``proxies`` (``<pod>.<namespace>``) with every type SYNCED, last sent at ``at``
    (default: a minute from now, i.e. after whatever the test applies next)."""
    doc = json.loads(RECORDED.read_text())
    template = next(r for r in doc["resources"] if r["node"]["id"].startswith("target-"))
    stamp = (at or datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    resources: list[dict[str, Any]] = []
    for proxy in proxies:
        resource = copy.deepcopy(template)
        resource["node"]["id"] = proxy
        resource["node"]["metadata"]["NAMESPACE"] = proxy.rsplit(".", 1)[-1]
        for config in resource["genericXdsConfigs"]:
            config["lastUpdated"] = stamp
        resources.append(resource)
    doc["resources"] = resources
    return json.dumps(doc, indent=4)


def synced_rule(*proxies: str) -> dict[str, Any]:
    """A fakebin rule: ``istioctl proxy-status`` answers that ``proxies`` ACKed a push after now."""
    return {"tool": "istioctl", "args": ["proxy-status"], "stdout": synced_stdout(*proxies)}
