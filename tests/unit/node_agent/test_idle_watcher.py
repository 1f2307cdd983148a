"""Which sandboxes the node reports idle, and when a sleep may still go ahead."""

from __future__ import annotations

from datetime import datetime

from hutch_node_agent.activity import Activity
from hutch_node_agent.cgroup_stats import Counters
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.idle_watcher import IdleWatcher, may_sleep


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stats:
    """CPU counters a test sets by hand, per sandbox."""

    def __init__(self) -> None:
        self.cpu_ns: dict[str, int] = {}

    def read(self, sandbox_id: str) -> Counters | None:
        if sandbox_id not in self.cpu_ns:
            return None
        return Counters(cpu_ns=self.cpu_ns[sandbox_id], memory_bytes=0, memory_peak_bytes=0)


def sandbox(sandbox_id: str, sleep_after: int) -> LocalSandbox:
    request = SandboxRequest(
        sandbox_id=sandbox_id, tenant_id="t", template="base", cpu_millis=1000, memory_mb=256,
        auto_sleep_after_s=sleep_after,
    )  # fmt: skip
    return LocalSandbox(request=request, status="running", env={}, default_user="root", workdir="/root")


async def no_report(box: LocalSandbox, since: datetime) -> None:
    return None


def setup() -> tuple[Clock, Activity, Stats, IdleWatcher]:
    clock = Clock()
    activity = Activity(clock)
    stats = Stats()
    return clock, activity, stats, IdleWatcher(activity, stats, no_report)  # type: ignore[arg-type]


def ids(due: list[tuple[LocalSandbox, float]]) -> list[str]:
    return [box.id for box, _ in due]


def test_a_sandbox_is_reported_once_idle_for_its_policy_and_again_each_policy_later() -> None:
    clock, _, _, watcher = setup()
    boxes = [sandbox("sb-sleepy0001", 10), sandbox("sb-neverslee", 0)]
    assert watcher.check(boxes, 1.0) == []  # first seen: counts as used now
    clock.now += 9
    assert watcher.check(boxes, 1.0) == []
    clock.now += 1
    assert ids(watcher.check(boxes, 1.0)) == ["sb-sleepy0001"]
    clock.now += 5
    assert watcher.check(boxes, 1.0) == []  # reported already
    clock.now += 5
    assert ids(watcher.check(boxes, 1.0)) == ["sb-sleepy0001"]  # still idle: the report may have been lost


def test_an_open_connection_keeps_a_sandbox_awake_and_its_closing_restarts_the_count() -> None:
    clock, activity, _, watcher = setup()
    boxes = [sandbox("sb-terminal01", 5)]
    watcher.check(boxes, 1.0)
    connection = activity.watcher("sb-terminal01")
    connection.opened()
    clock.now += 3600
    assert watcher.check(boxes, 1.0) == []
    connection.closed()
    clock.now += 4
    assert watcher.check(boxes, 1.0) == []
    clock.now += 1
    assert ids(watcher.check(boxes, 1.0)) == ["sb-terminal01"]


def test_cpu_above_a_trickle_counts_as_use() -> None:
    clock, _, stats, watcher = setup()
    boxes = [sandbox("sb-compiling", 3)]
    stats.cpu_ns["sb-compiling"] = 0
    for _ in range(10):  # a build using half a vCPU for ten seconds
        clock.now += 1
        stats.cpu_ns["sb-compiling"] += 500_000_000
        assert watcher.check(boxes, 1.0) == []
    for _ in range(3):  # then a trickle (1% of a vCPU): idle
        clock.now += 1
        stats.cpu_ns["sb-compiling"] += 10_000_000
        due = watcher.check(boxes, 1.0)
    assert ids(due) == ["sb-compiling"]


def test_a_sleep_goes_ahead_only_if_the_sandbox_stayed_unused() -> None:
    clock, activity, _, watcher = setup()
    box = sandbox("sb-racing0001", 10)
    watcher.check([box], 1.0)
    clock.now += 10
    assert may_sleep(activity, box)
    activity.watcher(box.id).opened()  # a request arrives between the report and the pause
    assert not may_sleep(activity, box)
    activity.watcher(box.id).closed()
    assert not may_sleep(activity, box)
    assert not may_sleep(activity, sandbox("sb-nopolicy01", 0))


def test_sandboxes_that_are_gone_are_forgotten() -> None:
    clock, activity, _, watcher = setup()
    box = sandbox("sb-goneaway01", 5)
    watcher.check([box], 1.0)
    activity.watcher(box.id).opened()
    watcher.check([], 1.0)
    clock.now += 5
    # Seen again (say, resumed here): a fresh start, not a connection left open forever.
    watcher.check([box], 1.0)
    clock.now += 5
    assert ids(watcher.check([box], 1.0)) == [box.id]


def test_cpu_use_counts_for_sandboxes_without_a_policy_too() -> None:
    # The fleet view shows every sandbox's idle time, with the meaning sleep gives it.
    clock, activity, stats, watcher = setup()
    box = sandbox("sb-nopolicy02", 0)
    stats.cpu_ns[box.id] = 0
    watcher.check([box], 1.0)
    clock.now += 30
    stats.cpu_ns[box.id] += 20_000_000_000  # busy on its own
    assert watcher.check([box], 1.0) == []  # nothing to report without a policy
    assert activity.idle_for(box.id) == 0
    clock.now += 7
    assert activity.idle_for(box.id) == 7
