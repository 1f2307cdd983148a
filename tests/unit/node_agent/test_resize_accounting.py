"""A live resize on fake cgroup folders: the order limits are written in, what counts as memory in
use, and metering that bills the old size up to the resize and the new one after it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hutch.core import errors, events
from hutch.events.v1 import usage_pb2
from hutch_node_agent import oci
from hutch_node_agent.cgroup_limits import CgroupLimits, Limits
from hutch_node_agent.cgroup_stats import CgroupStats
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.metering import Metering
from hutch_node_agent.usage_journal import UsageJournal

S = 1_000_000_000
T0 = 1_772_359_200 * S
MIB = 2**20
SB = "sb-aaaaaaaa1"


class StrictMemsw:
    """cgroup v1 folders whose memory limit may never exceed memory+swap, as the kernel enforces."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cpu = root / "cpu" / "hutch" / SB
        self.memory = root / "memory" / "hutch" / SB
        self.cpu.mkdir(parents=True)
        self.memory.mkdir(parents=True)
        (self.cpu / "cpu.cfs_quota_us").write_text("50000\n")
        (self.cpu / "cpu.cfs_period_us").write_text("100000\n")
        (self.memory / "memory.limit_in_bytes").write_text(f"{128 * MIB}\n")
        (self.memory / "memory.memsw.limit_in_bytes").write_text(f"{128 * MIB}\n")
        (self.memory / "memory.usage_in_bytes").write_text(f"{100 * MIB}\n")
        (self.memory / "memory.stat").write_text(f"cache 0\ntotal_inactive_file {30 * MIB}\ntotal_rss 1\n")


def test_memory_in_use_leaves_out_inactive_page_cache(tmp_path: Path) -> None:
    StrictMemsw(tmp_path)
    assert CgroupLimits("hutch", tmp_path).memory_in_use(SB) == 70 * MIB


@pytest.mark.parametrize("memory_mb", [512, 96])
def test_limits_are_written_in_an_order_the_kernel_accepts(tmp_path: Path, memory_mb: int) -> None:
    folders = StrictMemsw(tmp_path)
    written: list[str] = []
    limits = CgroupLimits("hutch", tmp_path)

    import hutch_node_agent.cgroup_limits as module

    original = module._write

    def checked(path: Path, value: str) -> None:
        written.append(path.name)
        original(path, value)
        limit = int((folders.memory / "memory.limit_in_bytes").read_text())
        memsw = int((folders.memory / "memory.memsw.limit_in_bytes").read_text())
        assert limit <= memsw, f"after writing {path.name} the memory limit exceeds memory+swap"

    module._write = checked
    try:
        limits.apply(SB, Limits(cpu_quota_us=25_000, cpu_period_us=100_000, memory_bytes=memory_mb * MIB))
    finally:
        module._write = original
    assert limits.read(SB) == Limits(25_000, 100_000, memory_mb * MIB)
    assert int((folders.memory / "memory.memsw.limit_in_bytes").read_text()) == memory_mb * MIB
    assert "memory.limit_in_bytes" in written and "cpu.cfs_quota_us" in written


def test_a_missing_cgroup_is_a_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="gone"):
        CgroupLimits("hutch", tmp_path).memory_in_use("sb-nothere1")


def test_the_oci_config_takes_the_new_limits() -> None:
    config: dict[str, object] = {"linux": {"resources": {"pids": {"limit": 5}}}}
    oci.set_resources(config, 25_000, 100_000, 64 * MIB)
    assert config["linux"] == {
        "resources": {
            "pids": {"limit": 5},
            "memory": {"limit": 64 * MIB, "swap": 64 * MIB},
            "cpu": {"quota": 25_000, "period": 100_000},
        }
    }


class Published:
    def __init__(self) -> None:
        self.reports: list[usage_pb2.UsageReport] = []

    async def __call__(self, envelope: events.Envelope[usage_pb2.UsageReport]) -> None:
        self.reports.append(envelope.payload)


def _set_counters(root: Path, cpu_ns: int, memory: int) -> None:
    cpu = root / "cpuacct" / "hutch" / SB
    mem = root / "memory" / "hutch" / SB
    cpu.mkdir(parents=True, exist_ok=True)
    mem.mkdir(parents=True, exist_ok=True)
    (cpu / "cpuacct.usage").write_text(f"{cpu_ns}\n")
    (mem / "memory.usage_in_bytes").write_text(f"{memory}\n")
    (mem / "memory.max_usage_in_bytes").write_text(f"{memory}\n")


async def test_metering_switches_the_allocation_at_the_resize(tmp_path: Path) -> None:
    now = [T0]
    published = Published()
    meter = Metering(
        CgroupStats("hutch", tmp_path),
        UsageJournal(tmp_path / "journal.json"),
        published,
        "hutch://local/node/n1",
        report_interval_s=10,
        clock=lambda: now[0],
    )
    request = SandboxRequest(SB, "tn-1", "base", 1000, 512)
    box = LocalSandbox(request, "running", {}, "root", "/", started_at=datetime.fromtimestamp(T0 / S, UTC))
    _set_counters(tmp_path, 0, 10 * MIB)
    meter.sample([box], T0, report=False)

    now[0] = T0 + 4 * S  # resized 4 s in: 1 vCPU / 512 MB until then, 2 vCPU / 1024 MB after
    box.request = replace(request, cpu_millis=2000, memory_mb=1024)
    await meter.resized(box, request)
    await meter.publish_pending()  # the run loop is woken to publish it at once
    now[0] = T0 + 10 * S
    meter.sample([box], now[0], report=True)
    await meter.publish_pending()

    before, after = published.reports
    assert (before.cpu_millis, before.memory_mb, before.running_ms) == (1000, 512, 4000)
    assert before.cpu_allocated_ns == 1000 * 4 * 1_000_000
    assert before.memory_provisioned_mib_ms == 512 * 4000
    assert (after.cpu_millis, after.memory_mb, after.running_ms) == (2000, 1024, 6000)
    assert after.cpu_allocated_ns == 2000 * 6 * 1_000_000
    assert after.window_start == before.window_end
