"""harness.cluster.podlogs: the boundary/dedupe logic, and PodLogSource against a stand-in cluster.

The stand-in keeps each pod's container log as (time, line) pairs and answers
``read_namespaced_pod_log`` the way the API server does: the lines of the last ``since_seconds``
seconds of its clock, each prefixed with its RFC 3339 nanosecond stamp.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.cluster.podlogs import PodLogSource, PodLogState, Stamp, new_lines, split_stamp, window_seconds
from harness.evidence import EntryLog

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def stamp_text(when: datetime, nanos: int | None = None) -> str:
    ns = when.microsecond * 1000 if nanos is None else nanos
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


# --- pure parts -------------------------------------------------------------------------------------


def test_split_stamp_keeps_nanoseconds_and_the_body() -> None:
    parsed = split_stamp("2026-03-01T12:00:00.123456789Z [gw] GET / 200\n".rstrip("\n"))
    assert parsed is not None
    stamp, body = parsed
    assert stamp == Stamp(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC), 123456789)
    assert body == "[gw] GET / 200"
    assert split_stamp("no stamp here") is None
    # an offset is normalised to UTC; a missing fraction is 0 ns
    offset = split_stamp("2026-03-01T13:00:00+01:00 x")
    assert offset is not None and offset[0] == Stamp(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC), 0)


def test_stamps_order_by_nanoseconds_within_a_microsecond() -> None:
    a = split_stamp("2026-03-01T12:00:00.000000001Z a")
    b = split_stamp("2026-03-01T12:00:00.000000002Z b")
    assert a is not None and b is not None
    assert a[0] < b[0]
    assert a[0].as_datetime() == b[0].as_datetime()  # a datetime alone could not tell them apart


def test_new_lines_drops_what_came_before_and_what_was_returned_at_the_boundary() -> None:
    state = PodLogState(last=Stamp.from_datetime(T0))
    first = (
        f"{stamp_text(T0 - timedelta(seconds=1))} old\n"
        f"{stamp_text(T0, 5)} a\n"
        f"{stamp_text(T0, 5)} same\n"
        f"{stamp_text(T0, 5)} same\n"
    )
    assert [b for _, b in new_lines(first, state)] == ["a", "same", "same"]
    assert state.last == Stamp(T0, 5)
    assert state.boundary == Counter({"a": 1, "same": 2})
    # the window overlaps: the three boundary lines come again, plus one more "same" in that nanosecond
    second = first + f"{stamp_text(T0, 5)} same\n{stamp_text(T0, 9)} later\n"
    assert [b for _, b in new_lines(second, state)] == ["same", "later"]
    assert state.last == Stamp(T0, 9)
    assert state.boundary == Counter({"later": 1})
    # nothing new: nothing returned, the state stays
    assert new_lines(second, state) == []
    assert state.last == Stamp(T0, 9)


def test_new_lines_leaves_an_unfinished_last_line_for_the_next_read() -> None:
    state = PodLogState(last=Stamp.from_datetime(T0))
    text = f"{stamp_text(T0, 1)} whole\n{stamp_text(T0, 2)} half of a li"
    assert [b for _, b in new_lines(text, state)] == ["whole"]
    text += "ne\n"
    assert [b for _, b in new_lines(text, state)] == ["half of a line"]


def test_new_lines_gives_an_unstamped_line_the_stamp_before_it() -> None:
    state = PodLogState(last=Stamp.from_datetime(T0))
    text = f"orphan\n{stamp_text(T0, 1)} first\ncontinued\n"
    assert [b for _, b in new_lines(text, state)] == ["first", "continued"]
    assert state.boundary == Counter({"first": 1, "continued": 1})


def test_window_reaches_back_past_the_boundary() -> None:
    assert window_seconds(Stamp(T0, 0), T0 + timedelta(seconds=3, milliseconds=1)) == 5
    assert window_seconds(Stamp(T0, 0), T0) == 1


# --- the class against a stand-in cluster -----------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"({status}) {reason}")
        self.status = status


@dataclass
class Raw:
    data: bytes


@dataclass
class FakePod:
    name: str
    uid: str = "uid-1"
    restarts: int = 0
    running: bool = True
    #: a native sidecar (Kubernetes >= 1.33, Istio 1.28+): an init container with restartPolicy Always,
    #: whose status the API server reports in initContainerStatuses only
    native: bool = False
    log: list[tuple[datetime, int, str]] = field(default_factory=list)
    previous: list[tuple[datetime, int, str]] = field(default_factory=list)


class FakeCluster:
    """Pods of one selector with their container logs; a clock the test moves."""

    def __init__(self) -> None:
        self.now = T0
        self.pods: dict[str, FakePod] = {}
        self.calls: list[dict[str, Any]] = []
        self.fail: dict[str, ApiError] = {}

    @property
    def core(self) -> FakeCluster:
        return self

    def clock(self) -> datetime:
        return self.now

    def write(self, pod: str, line: str, *, nanos: int | None = None) -> None:
        when = self.now
        self.pods[pod].log.append((when, when.microsecond * 1000 if nanos is None else nanos, line))

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        assert (namespace, selector) == ("istio-system", "istio=egressgateway")
        out = []
        for pod in self.pods.values():
            state = {"running": {}} if pod.running else {"waiting": {"reason": "ContainerCreating"}}
            proxy = {"name": "istio-proxy", "restartCount": pod.restarts, "state": state}
            app = {"name": "app", "restartCount": 0, "state": {"running": {}}}
            status = (
                {"initContainerStatuses": [proxy], "containerStatuses": [app]}
                if pod.native
                else {"containerStatuses": [proxy]}
            )
            out.append({"metadata": {"name": pod.name, "uid": pod.uid}, "status": status})
        return out

    def read_namespaced_pod_log(self, **kw: Any) -> Raw:
        self.calls.append(kw)
        assert kw["timestamps"] is True
        assert "tail_lines" not in kw, "never a tail: the whole log since the window"
        assert kw["_request_timeout"] > 0
        if kw["name"] in self.fail:
            raise self.fail[kw["name"]]
        pod = self.pods[kw["name"]]
        entries = pod.previous if kw.get("previous") else pod.log
        start = self.now - timedelta(seconds=kw["since_seconds"])
        text = "".join(
            f"{stamp_text(when, ns)} {line}\n"
            for when, ns, line in entries
            if when.replace(microsecond=0) >= start
        )
        return Raw(text.encode())


@pytest.fixture
def cluster() -> FakeCluster:
    c = FakeCluster()
    c.pods["gw-a"] = FakePod("gw-a")
    return c


def source(cluster: FakeCluster, since: datetime | None = None) -> PodLogSource:
    return PodLogSource(
        cluster, "istio-system", "istio=egressgateway", since=since or cluster.now, clock=cluster.clock
    )


def test_reads_only_what_is_new_and_never_twice(cluster: FakeCluster) -> None:
    cluster.write("gw-a", "before the start")
    cluster.now += timedelta(milliseconds=10)
    src = source(cluster)
    assert src.name == "istio-system/istio=egressgateway/istio-proxy"
    cluster.now += timedelta(seconds=60)
    cluster.write("gw-a", "one")
    cluster.write("gw-a", "two")
    assert src.read_new() == ["one", "two"]
    assert src.read_new() == []
    cluster.now += timedelta(seconds=3)
    cluster.write("gw-a", "three")
    assert src.read_new() == ["three"]
    # the window asked for reaches back to the last line seen, not to the start
    assert cluster.calls[-1]["since_seconds"] == 4  # 3 s since "two", plus the spare second


def test_equal_lines_in_the_same_nanosecond_are_each_returned_once(cluster: FakeCluster) -> None:
    src = source(cluster)
    cluster.now += timedelta(milliseconds=1)
    cluster.write("gw-a", "dup", nanos=7)
    assert src.read_new() == ["dup"]
    cluster.write("gw-a", "dup", nanos=7)  # a second identical line, same stamp, flushed later
    assert src.read_new() == ["dup"]
    assert src.read_new() == []


def test_every_replica_is_read_and_merged_in_time_order(cluster: FakeCluster) -> None:
    cluster.pods["gw-b"] = FakePod("gw-b", uid="uid-b")
    src = source(cluster)
    for i in range(3):
        cluster.now += timedelta(milliseconds=5)
        cluster.write("gw-b" if i % 2 == 0 else "gw-a", f"line {i}")
    assert src.read_new() == ["line 0", "line 1", "line 2"]
    assert set(src.pod_names()) == {"gw-a", "gw-b"}


def test_a_replica_that_appears_later_is_read_from_the_start(cluster: FakeCluster) -> None:
    src = source(cluster)
    cluster.now += timedelta(seconds=1)
    assert src.read_new() == []
    cluster.pods["gw-new"] = FakePod("gw-new", uid="uid-new", running=False)
    cluster.now += timedelta(seconds=1)
    assert src.read_new() == []  # not started: skipped, no read
    assert "has not started" in src.skipped["gw-new"]
    assert all(c["name"] != "gw-new" for c in cluster.calls)
    cluster.pods["gw-new"].running = True
    cluster.write("gw-new", "first words")
    assert src.read_new() == ["first words"]
    assert "gw-new" not in src.skipped


@pytest.mark.parametrize("native", [False, True], ids=["regular-sidecar", "native-sidecar"])
def test_a_restart_reads_the_rest_of_the_previous_container_first(cluster: FakeCluster, native: bool) -> None:
    cluster.pods["gw-a"].native = native
    src = source(cluster)
    cluster.now += timedelta(milliseconds=1)
    cluster.write("gw-a", "seen")
    assert src.read_new() == ["seen"]
    cluster.now += timedelta(milliseconds=1)
    cluster.write("gw-a", "written just before the crash")
    # the container restarts: its old log becomes "previous", the new one starts empty
    pod = cluster.pods["gw-a"]
    pod.previous, pod.log, pod.restarts = pod.log, [], 1
    cluster.now += timedelta(seconds=2)
    cluster.write("gw-a", "after the restart")
    assert src.read_new() == ["written just before the crash", "after the restart"]
    assert [c.get("previous") for c in cluster.calls[-2:]] == [True, False]
    assert src.read_new() == []
    assert cluster.calls[-1]["previous"] is False  # the restart was taken into account once


def test_a_pod_recreated_under_the_same_name_starts_over(cluster: FakeCluster) -> None:
    src = source(cluster)
    cluster.now += timedelta(seconds=1)
    cluster.write("gw-a", "old pod")
    assert src.read_new() == ["old pod"]
    cluster.pods["gw-a"] = FakePod("gw-a", uid="uid-2")
    cluster.now += timedelta(milliseconds=1)
    cluster.write("gw-a", "new pod")
    assert src.read_new() == ["new pod"]


def test_gone_pods_are_forgotten_and_unreadable_ones_skipped(cluster: FakeCluster) -> None:
    cluster.pods["gw-b"] = FakePod("gw-b", uid="uid-b")
    src = source(cluster)
    cluster.now += timedelta(milliseconds=1)
    cluster.write("gw-a", "a")
    cluster.write("gw-b", "b")
    cluster.fail["gw-b"] = ApiError(400, "container is waiting to start")
    assert src.read_new() == ["a"]
    assert "HTTP 400" in src.skipped["gw-b"]
    del cluster.fail["gw-b"]
    assert src.read_new() == ["b"]  # nothing lost: read from where it stood
    del cluster.pods["gw-b"]
    src.read_new()
    assert set(src.pod_names()) == {"gw-a"}


def test_other_api_errors_are_not_hidden(cluster: FakeCluster) -> None:
    src = source(cluster)
    cluster.fail["gw-a"] = ApiError(500, "boom")
    with pytest.raises(ApiError, match="boom"):
        src.read_new()


def test_since_must_be_timezone_aware(cluster: FakeCluster) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PodLogSource(cluster, "istio-system", "istio=egressgateway", since=datetime(2026, 1, 1))


def test_feeds_an_entry_log(cluster: FakeCluster) -> None:
    src = source(cluster)
    cluster.now += timedelta(milliseconds=1)
    cluster.write(
        "gw-a",
        '[2026-03-01T12:00:00.001Z] "GET /get HTTP/1.1" 200 - via_upstream - "-" 0 10 3 2 "-" "python" '
        '"rid-1" "external.egress-harness.test" "172.18.0.5:80" outbound|80||external.egress-harness.test '
        "10.244.0.9:40000 10.244.0.9:8080 10.244.0.7:50000 - -",
    )
    cluster.write("gw-a", "2026-03-01T12:00:00.001Z\tinfo\tads\tXDS: Pushing")
    log = EntryLog(src, hop="egress gateway")
    entries = log.poll()
    assert [e.request_id for e in entries] == ["rid-1"]
    assert log.skipped == 1
