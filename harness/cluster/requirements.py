"""What a scenario asks of a cluster run (its ``requires``), and what a run's external hosts serve.

``requires.external`` says what the scenario's external host must serve (``http``, ``tls`` or
``mtls``: a host that requires client certificates); ``requires.client_credential`` and
``requires.server_ca_credential`` (``requires.untrusted_ca_credential``) ask the run for a Secret in the gateway's namespace
(:data:`CREDENTIAL_REQUIREMENTS`). The recorders say what they serve (:func:`recorder_serves`); a
real internet host is used for plain HTTP only (:data:`INTERNET_SERVES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: What an external host can serve, as scenarios ask for it (``requires.external``).
EXTERNAL_KINDS: tuple[str, ...] = ("http", "tls", "mtls")
#: What the recorder container serves unless it says otherwise (``RecorderContainer.serves``).
RECORDER_SERVES_DEFAULT: tuple[str, ...] = ("http",)
#: What a real internet host is used for: plain HTTP only. Its certificates are not the run's, so
#: neither the relays (they trust the run's CA) nor a credential Secret (the run's CA) verify it.
INTERNET_SERVES: tuple[str, ...] = ("http",)


def _requirement_fields(requires: Any) -> set[str]:
    if dataclasses.is_dataclass(requires):
        return {f.name for f in dataclasses.fields(requires)}
    return set(vars(requires)) if hasattr(requires, "__dict__") else set()


def external_requirement(scenario: Any) -> str:
    """What the scenario's external host must serve: ``http``, ``tls`` or ``mtls``.

    ``requires.external`` when the scenario model has it; before it had, the scenario's tags and
    request schemes tell (``mtls`` tag: mtls; ``tls`` tag or an https request: tls).
    """
    requires = scenario.requires
    if "external" in _requirement_fields(requires):
        return str(getattr(requires, "external", "http") or "http")
    tags = set(scenario.tags)
    if "mtls" in tags:
        return "mtls"
    if "tls" in tags or any(r.scheme == "https" for r in scenario.requests):
        return "tls"
    return "http"


def recorder_serves(recorder: Any) -> tuple[str, ...]:
    """What a recorder container serves: its ``serves`` if it says, else from its TLS settings
    (``tls`` None: HTTP only; ``tls.mutual``: HTTP and mutual TLS; else HTTP and TLS)."""
    explicit = getattr(recorder, "serves", None)
    if explicit:
        return tuple(str(s) for s in explicit)
    tls = getattr(recorder, "tls", None)
    if tls is None:
        return RECORDER_SERVES_DEFAULT
    return ("http", "mtls") if getattr(tls, "mutual", False) else ("http", "tls")


#: ``requires`` keys asking the run for a Secret in the gateway's namespace, and what it holds
CREDENTIAL_REQUIREMENTS: Mapping[str, str] = {
    "client_credential": "a client certificate, key and CA for mutual TLS origination",
    "server_ca_credential": "the CA that verifies the external host",
    "untrusted_ca_credential": "a CA that did not sign the external host's certificate",
}
