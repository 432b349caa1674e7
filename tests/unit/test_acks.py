"""istiod's sync status as ``istioctl proxy-status -o json`` prints it (recorded on a netns cluster,
tests/unit/data/istioctl/README.md): parsed, judged per proxy, a NACK named with Envoy's reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.cluster.acks import NackError, XdsSync, ack_state, parse_proxy_status, wait_for_acks
from harness.cluster.errors import ConvergenceError

DATA = Path(__file__).parent / "data" / "istioctl"
SYNCED = (DATA / "proxy-status-synced.json").read_text()
NACK = (DATA / "proxy-status-nack.json").read_text()
TARGET = "target-7bc599dffc-7kzkw.egress-1cb1c5"
GATEWAY = "istio-egressgateway-564fb8c478-z8zhf.istio-system"


def retimed(text: str, at: datetime, *, only: str | None = None) -> str:
    """The recorded output with every (or ``only`` one proxy's) lastUpdated set to ``at``."""
    doc = json.loads(text)
    for resource in doc["resources"]:
        if only is None or resource["node"]["id"] == only:
            for config in resource["genericXdsConfigs"]:
                config["lastUpdated"] = at.isoformat().replace("+00:00", "Z")
    return json.dumps(doc)


def test_the_recorded_status_parses_per_proxy_and_type() -> None:
    statuses = parse_proxy_status(SYNCED)
    proxies = {s.proxy for s in statuses}
    assert TARGET in proxies and GATEWAY in proxies and len(proxies) == 4
    target = [s for s in statuses if s.proxy == TARGET]
    assert {s.status for s in target} == {"SYNCED"}
    assert all(s.last_updated is not None and s.last_updated.tzinfo for s in target)
    # two istiods print two documents one after the other
    assert len(parse_proxy_status(SYNCED + "\n" + SYNCED)) == 2 * len(statuses)


def test_a_proxy_is_done_once_it_acked_a_config_push_sent_after_the_apply() -> None:
    statuses = parse_proxy_status(SYNCED)
    recorded = max(s.last_updated for s in statuses if s.last_updated)
    before = ack_state(statuses, [TARGET, GATEWAY], since=recorded + timedelta(seconds=1))
    assert before.acked_s is None and all("no push since" in w for w in before.waiting)
    since = recorded + timedelta(seconds=1)
    after = ack_state(parse_proxy_status(retimed(SYNCED, since + timedelta(seconds=0.3))), [TARGET], since)
    assert after.waiting == () and after.acked_s == pytest.approx(0.3)
    # an endpoints push alone is not the scenario's configuration
    eds_only = json.loads(SYNCED)
    for resource in eds_only["resources"]:
        for config in resource["genericXdsConfigs"]:
            if config["typeUrl"].endswith("ClusterLoadAssignment"):
                config["lastUpdated"] = (since + timedelta(seconds=1)).isoformat()
    assert ack_state(parse_proxy_status(json.dumps(eds_only)), [TARGET], since).waiting


def test_a_proxy_that_is_not_connected_or_not_acked_yet_waits() -> None:
    since = datetime(2026, 12, 7, 5, 0, 0, tzinfo=UTC)
    stale = [XdsSync(TARGET, "type.googleapis.com/envoy.config.cluster.v3.Cluster", "STALE", since)]
    state = ack_state(stale, [TARGET, "gone-1.ns"], since)
    assert state.waiting == (f"{TARGET}: Cluster not ACKed yet", "gone-1.ns: not connected to istiod")


def test_a_nack_fails_at_once_naming_the_proxy_the_type_and_envoys_reason() -> None:
    statuses = parse_proxy_status(NACK)
    with pytest.raises(NackError) as caught:
        ack_state(statuses, [TARGET, GATEWAY], datetime(2026, 12, 7, tzinfo=UTC))
    err = caught.value
    assert err.proxy == GATEWAY and err.type_url.endswith("Cluster")
    assert "port_value" in err.details and "less than or equal to 65535" in str(err)
    assert isinstance(err, ConvergenceError)
    # the NACK of a proxy the scenario does not reach is not the scenario's
    assert ack_state(statuses, [TARGET], datetime(2026, 12, 7, tzinfo=UTC)).waiting == ()


def test_waiting_for_acks_polls_until_done_and_times_out_naming_who_waits() -> None:
    since = datetime(2026, 12, 7, 5, 10, 0, tzinfo=UTC)  # after the recording
    answers = [SYNCED, SYNCED, retimed(SYNCED, since + timedelta(seconds=0.2))]
    polls: list[int] = []

    def status() -> list[XdsSync]:
        polls.append(1)
        return parse_proxy_status(answers[min(len(polls) - 1, 2)])

    took = wait_for_acks(lambda: [TARGET], status, since=since, what="s1", deadline_s=5, interval_s=0.01)
    assert took == pytest.approx(0.2) and len(polls) == 3
    with pytest.raises(ConvergenceError, match=f"{TARGET}: no push since the scenario was applied"):
        wait_for_acks(
            lambda: [TARGET],
            lambda: parse_proxy_status(SYNCED),
            since=since,
            what="s1",
            deadline_s=0.05,
            interval_s=0.01,
        )


def test_a_draining_listener_does_not_hold_what_was_removed() -> None:
    """A removed gateway listener drains for 45 s with the removed policy's rules in its dump: the
    removal of the authz and mTLS scenarios waited 46 s on the netns cluster until it was ignored."""
    from harness.cluster.convergence import ConfigMarker, active_config, missing_markers

    dump = (DATA / "proxy-config-draining-listener.json").read_text()
    marker = ConfigMarker("gateway", "-policy[egh-drain-probe]-rule[", "AuthorizationPolicy (egress gateway)")
    assert marker.needle in dump  # in the draining listener only
    assert missing_markers([marker], {"gateway": [dump]}, present=False) == [marker]
    assert missing_markers([marker], {"gateway": [active_config(dump)]}, present=False) == []
    assert active_config("not json") == "not json"


def test_istioctls_own_log_lines_around_the_documents_are_skipped() -> None:
    # a line istioctl logs on stdout starts with a timestamp, which a JSON decoder reads as a number
    noisy = (
        "2026-12-07T05:20:01.123456Z\twarn\tsomething istioctl says\n" + SYNCED + "\nanother line\n" + SYNCED
    )
    assert len(parse_proxy_status(noisy)) == 2 * len(parse_proxy_status(SYNCED))
    with pytest.raises(ValueError, match="printed no sync status"):
        parse_proxy_status("2026-12-07T05:20:01Z\terror\tno istiod\n")
