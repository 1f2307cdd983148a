"""The node-agent's metering on fake cgroup folders: counters on both cgroup versions, reports that
add up exactly, the final sample before teardown, and a restart that neither loses nor repeats."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from hutch.core import events
from hutch.events.v1 import usage_pb2
from hutch_node_agent.cgroup_stats import CgroupStats, Counters
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.metering import Metering, cut, new_meter, observe
from hutch_node_agent.usage_journal import UsageJournal

S = 1_000_000_000
T0 = 1_772_359_200 * S  # 2026-03-01T10:00:00Z, on a 10 s boundary
MIB = 2**20


def sandbox(sandbox_id: str = "sb-aaaaaaaa1", cpu_millis: int = 2000, memory_mb: int = 512) -> LocalSandbox:
    request = SandboxRequest(sandbox_id, "tn-1", "base", cpu_millis, memory_mb)
    return LocalSandbox(
        request=request,
        status="running",
        env={},
        default_user="root",
        workdir="/",
        started_at=datetime.fromtimestamp(T0 / S, UTC),
    )


class FakeCgroups:
    """cgroup v1 folders under a temporary root, with counters a test sets."""

    def __init__(self, root: Path, parent: str = "hutch") -> None:
        self.root, self.parent = root, parent

    def set(self, sandbox_id: str, cpu_ns: int, memory: int, peak: int) -> None:
        cpu = self.root / "cpuacct" / self.parent / sandbox_id
        mem = self.root / "memory" / self.parent / sandbox_id
        cpu.mkdir(parents=True, exist_ok=True)
        mem.mkdir(parents=True, exist_ok=True)
        (cpu / "cpuacct.usage").write_text(f"{cpu_ns}\n")
        (mem / "memory.usage_in_bytes").write_text(f"{memory}\n")
        (mem / "memory.max_usage_in_bytes").write_text(f"{peak}\n")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Published:
    def __init__(self) -> None:
        self.envelopes: list[events.Envelope[usage_pb2.UsageReport]] = []
        self.failing = False

    async def __call__(self, envelope: events.Envelope[usage_pb2.UsageReport]) -> None:
        if self.failing:
            raise ConnectionError("NATS is away")
        self.envelopes.append(envelope)

    def unique(self) -> dict[str, usage_pb2.UsageReport]:
        return {e.id: e.payload for e in self.envelopes}


def metering(root: Path, clock: Clock, published: Published) -> Metering:
    return Metering(
        CgroupStats("hutch", root),
        UsageJournal(root / "node" / "usage-journal.json"),
        published,
        "hutch://local/node/n1",
        report_interval_s=10,
        clock=clock,
    )


def test_counters_are_read_on_cgroup_v1_and_v2(tmp_path: Path) -> None:
    FakeCgroups(tmp_path / "v1").set("sb-1", 123, 4 * MIB, 9 * MIB)
    assert CgroupStats("hutch", tmp_path / "v1").read("sb-1") == Counters(123, 4 * MIB, 9 * MIB)
    assert CgroupStats("hutch", tmp_path / "v1").read("sb-missing") is None

    v2 = tmp_path / "v2"
    folder = v2 / "hutch" / "sb-1"
    folder.mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (folder / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (folder / "memory.current").write_text(f"{3 * MIB}\n")
    assert CgroupStats("hutch", v2).read("sb-1") == Counters(1_500_000, 3 * MIB, 3 * MIB)
    (folder / "memory.peak").write_text(f"{8 * MIB}\n")
    assert CgroupStats("hutch", v2).read("sb-1") == Counters(1_500_000, 3 * MIB, 8 * MIB)


def test_consecutive_reports_add_up_to_the_whole_run() -> None:
    meter = new_meter(sandbox(cpu_millis=1500, memory_mb=256), T0)
    reports = []
    for second in range(1, 26):
        now = T0 + second * S + 333_333  # off the second, so flooring matters
        observe(meter, Counters(cpu_ns=second * 700_000_000, memory_bytes=100 * MIB, memory_peak_bytes=120 * MIB), now)
        if second % 7 == 0 or second == 25:
            reports.append(cut(meter, Counters(second * 700_000_000, 100 * MIB, 120 * MIB), now, "src", second == 25))
    end = T0 + 25 * S + 333_333
    assert [r.sequence for r in reports] == [1, 2, 3, 4]
    assert sum(r.cpu_active_ns for r in reports) == 25 * 700_000_000
    assert sum(r.running_ms for r in reports) == (end - T0) // 1_000_000
    assert sum(r.cpu_allocated_ns for r in reports) == 1500 * ((end - T0) // 1000)
    assert sum(r.memory_provisioned_mib_ms for r in reports) == 256 * ((end - T0) // 1_000_000)
    assert sum(r.memory_used_mib_ms for r in reports) == 100 * ((end - T0) // 1_000_000)
    assert reports[-1].final and reports[-1].memory_peak_bytes == 120 * MIB
    assert all(r.window_end == n.window_start for r, n in zip(reports, reports[1:], strict=False))


async def test_a_restart_republishes_what_may_be_unpublished_and_loses_nothing(tmp_path: Path) -> None:
    cgroups, clock, published = FakeCgroups(tmp_path), Clock(), Published()
    box = sandbox()
    first = metering(tmp_path, clock, published)
    for second in range(1, 12):
        clock.now = T0 + second * S
        cgroups.set(box.id, second * S, 64 * MIB, 64 * MIB)
        first.sample([box], clock.now, report=second == 10)
    # The report at 10 s is cut and journaled; the process dies before publishing it.
    UsageJournal(tmp_path / "node" / "usage-journal.json").save(first.meters())

    clock.now = T0 + 15 * S
    cgroups.set(box.id, 14 * S, 64 * MIB, 64 * MIB)
    second = metering(tmp_path, clock, published)
    assert await second.publish_pending() == 1
    await box_release(second, box)
    await second.publish_pending()
    # The first process did publish after all: a duplicate with the same id, dropped downstream.
    await published(published.envelopes[0])

    reports = published.unique()
    assert list(reports) == [f"{box.id}.compute.1", f"{box.id}.compute.2"]
    assert sum(r.cpu_active_ns for r in reports.values()) == 14 * S
    assert sum(r.cpu_allocated_ns for r in reports.values()) == 2000 * 15 * 1_000_000
    assert reports[f"{box.id}.compute.2"].final
    assert second.meters() == {}


async def box_release(meter: Metering, box: LocalSandbox) -> None:
    # The loop has run in this process, so the final window ends now rather than at the last sample.
    meter._running = True
    await meter.release(box)


async def test_while_nats_is_away_reports_wait_and_the_next_one_covers_the_gap(tmp_path: Path) -> None:
    cgroups, clock, published = FakeCgroups(tmp_path), Clock(), Published()
    box = sandbox()
    meter = metering(tmp_path, clock, published)
    published.failing = True
    for second in (10, 20, 30):
        clock.now = T0 + second * S
        cgroups.set(box.id, second * S // 2, MIB, MIB)
        meter.sample([box], clock.now, report=True)
        assert await meter.publish_pending() == 0
    assert len(meter.meters()[box.id].unsent) == 1
    published.failing = False
    assert await meter.publish_pending() == 1
    clock.now = T0 + 40 * S
    cgroups.set(box.id, 20 * S, MIB, MIB)
    meter.sample([box], clock.now, report=True)
    await meter.publish_pending()
    reports = list(published.unique().values())
    assert [r.sequence for r in reports] == [1, 2]
    assert reports[1].running_ms == 30_000  # 10 s to 40 s in one report
    assert sum(r.cpu_active_ns for r in reports) == 20 * S


async def test_a_sandbox_that_ended_while_the_agent_was_away_is_billed_until_last_seen(tmp_path: Path) -> None:
    cgroups, clock, published = FakeCgroups(tmp_path), Clock(), Published()
    box = sandbox()
    first = metering(tmp_path, clock, published)
    clock.now = T0 + 5 * S
    cgroups.set(box.id, 3 * S, MIB, MIB)
    first.sample([box], clock.now, report=False)
    UsageJournal(tmp_path / "node" / "usage-journal.json").save(first.meters())

    clock.now = T0 + 500 * S  # the node-agent comes back much later; the sandbox had ended
    cgroups.set(box.id, 4 * S, MIB, MIB)
    again = metering(tmp_path, clock, published)
    await again.release(box)  # from the restart recovery, before the sampling loop runs
    await again.publish_pending()
    (report,) = published.unique().values()
    assert report.final and report.cpu_active_ns == 4 * S
    assert report.running_ms == 5_000


async def test_a_sandbox_restored_under_a_new_init_starts_its_counter_again(tmp_path: Path) -> None:
    cgroups, clock, published = FakeCgroups(tmp_path), Clock(), Published()
    box = sandbox()
    box.init_pid = 100
    meter = metering(tmp_path, clock, published)
    clock.now = T0 + 10 * S
    cgroups.set(box.id, 8 * S, MIB, MIB)
    meter.sample([box], clock.now, report=True)
    # A gVisor snapshot restores the sandbox in place: a new init, a new cgroup from zero.
    box.init_pid = 200
    clock.now = T0 + 20 * S
    cgroups.set(box.id, 3 * S, MIB, MIB)
    meter.sample([box], clock.now, report=False)
    await meter.publish_pending()
    meter.sample([box], clock.now, report=True)
    await meter.publish_pending()
    assert [r.cpu_active_ns for r in published.unique().values()] == [8 * S, 3 * S]


async def test_a_resumed_sandbox_is_metered_afresh_under_ids_of_its_own(tmp_path: Path) -> None:
    cgroups, clock, published = FakeCgroups(tmp_path), Clock(), Published()
    meter = metering(tmp_path, clock, published)
    meter._running = True
    first = sandbox()
    clock.now = T0 + 5 * S
    cgroups.set(first.id, 3 * S, 64 * MIB, 64 * MIB)
    meter.sample([first], clock.now, report=False)
    await meter.release(first)  # paused: its last report is cut, and (here) not yet published
    resumed = LocalSandbox(
        request=replace(first.request, snapshot_id="snap-aaaaaaaaaaaaaaaaaaaa"),
        status="running",
        env={},
        default_user="root",
        workdir="/",
        started_at=datetime.fromtimestamp((T0 + 20 * S) / S, UTC),
    )
    clock.now = T0 + 30 * S
    cgroups.set(first.id, 2 * S, 64 * MIB, 64 * MIB)  # a new cgroup under the same name
    meter.sample([resumed], clock.now, report=True)
    await meter.publish_pending()

    reports = published.unique()
    assert sorted(reports) == [f"{first.id}.compute.1", f"{first.id}.compute.snap-aaaaaaaaaaaaaaaaaaaa.1"]
    assert reports[f"{first.id}.compute.1"].final
    assert reports[f"{first.id}.compute.snap-aaaaaaaaaaaaaaaaaaaa.1"].cpu_active_ns == 2 * S
