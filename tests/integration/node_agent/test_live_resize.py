"""Live resizes of running sandboxes under both isolation classes, on a real node: the cgroup takes
the new limits, memory beyond the old limit becomes usable, shrinking below what is in use is
refused before anything changes, growth beyond the node is refused, and the new size survives a
node-agent restart."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import node_options, require_node_tools

from hutch.core import errors
from hutch_node_agent import host
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.node import Node, assemble
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.supervisor.client import Exited, Output

pytestmark = pytest.mark.integration

CGROUP = Path("/sys/fs/cgroup")
MIB = 2**20


class Resizes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, int, int]] = []

    async def __call__(self, sandbox: LocalSandbox, previous: SandboxRequest) -> None:
        now = sandbox.request
        self.seen.append((sandbox.id, previous.cpu_millis, previous.memory_mb, now.cpu_millis, now.memory_mb))


class Box:
    def __init__(self, node: Node, isolation: str, resizes: Resizes, options_root: Path) -> None:
        self.node, self.isolation, self.resizes, self.root = node, isolation, resizes, options_root

    @property
    def manager(self) -> SandboxManager:
        return self.node.manager

    def cgroup(self, controller: str, sandbox_id: str) -> Path:
        return CGROUP / controller / self.node.options.cgroup_parent / sandbox_id

    async def create(self, cpu_millis: int = 500, memory_mb: int = 128) -> LocalSandbox:
        request = SandboxRequest(
            sandbox_id=f"sb-{uuid.uuid4().hex[:20]}",
            tenant_id="tn-1",
            template="busybox",
            cpu_millis=cpu_millis,
            memory_mb=memory_mb,
            isolation=self.isolation,
        )
        return await self.manager.create(request)

    async def run(self, sandbox_id: str, cmd: str, manager: SandboxManager | None = None) -> tuple[str, int]:
        manager = manager or self.manager
        sandbox = manager.running(sandbox_id)
        out, code = [], -99
        async with await manager.supervisor(sandbox_id).exec({"cmd": cmd, "env": sandbox.env}) as session:
            async for event in session:
                if isinstance(event, Output):
                    out.append(event.data.decode())
                elif isinstance(event, Exited):
                    code = event.exit_code
        return "".join(out), code


@pytest.fixture(params=["container", "gvisor"])
async def box(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Box]:
    require_node_tools()
    host.release_hybrid_cgroup_controllers()
    options = node_options(tmp_path, cpu_millis=4000, memory_mb=2048)
    resizes = Resizes()

    async def ignore(sandbox: LocalSandbox, reason: str) -> None:
        return None

    node = await assemble(options, ignore, on_resized=resizes)
    if request.param not in node.runtimes:
        await node.dismantle()
        pytest.skip(f"{request.param} is not installed")
    state = Box(node, request.param, resizes, tmp_path)
    try:
        yield state
    finally:
        await state.node.dismantle()


async def test_raised_memory_lets_a_process_use_more_than_the_old_limit(box: Box) -> None:
    sandbox = await box.create(memory_mb=128)
    hog = "dd if=/dev/zero of=/dev/null bs=200M count=1 2>&1; echo done"
    if box.isolation == "container":  # under the old limit the kernel kills it (gVisor: the whole sandbox)
        out, _ = await box.run(sandbox.id, hog)
        assert "done" not in out or "Killed" in out, out
    resized = await box.manager.resize(sandbox.id, 0, 512)

    assert (resized.previous.memory_mb, sandbox.request.memory_mb) == (128, 512)
    assert int((box.cgroup("memory", sandbox.id) / "memory.limit_in_bytes").read_text()) == 512 * MIB
    # dd's 200 MiB block is one buffer it fills from /dev/zero: 200 MiB resident at once, beyond
    # the old 128 MiB (which would have OOM-killed it, and under gVisor the whole sandbox).
    out, code = await box.run(sandbox.id, hog)
    assert code == 0 and "records out" in out and "Killed" not in out, out
    assert await box.run(sandbox.id, "echo alive") == ("alive\n", 0)
    assert box.manager.allocated() == (500, 512)
    assert box.resizes.seen == [(sandbox.id, 500, 128, 500, 512)]


async def test_lowered_cpu_lands_in_the_cgroup_quota(box: Box) -> None:
    sandbox = await box.create(cpu_millis=2000)
    assert int((box.cgroup("cpu", sandbox.id) / "cpu.cfs_quota_us").read_text()) == 200_000
    await box.manager.resize(sandbox.id, 250, 0)
    assert int((box.cgroup("cpu", sandbox.id) / "cpu.cfs_quota_us").read_text()) == 25_000
    assert int((box.cgroup("cpu", sandbox.id) / "cpu.cfs_period_us").read_text()) == 100_000
    assert sandbox.request.memory_mb == 128  # left as it was
    assert await box.run(sandbox.id, "echo alive") == ("alive\n", 0)


async def test_shrinking_below_what_is_in_use_is_refused_and_changes_nothing(box: Box) -> None:
    sandbox = await box.create(memory_mb=256)
    # tmpfs pages are charged to the sandbox's memory cgroup and cannot be reclaimed.
    _, code = await box.run(sandbox.id, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=60 2>/dev/null")
    assert code == 0
    limit = box.cgroup("memory", sandbox.id) / "memory.limit_in_bytes"

    with pytest.raises(errors.FailedPrecondition, match=r"uses \d+ MB of memory now: it cannot shrink to 64 MB"):
        await box.manager.resize(sandbox.id, 0, 64)

    assert int(limit.read_text()) == 256 * MIB
    assert sandbox.request.memory_mb == 256
    assert box.resizes.seen == []
    assert await box.run(sandbox.id, "ls -l /dev/shm/fill | wc -l") == ("1\n", 0)
    # Once the memory is freed, a shrink that stays above what is in use goes through.
    await box.run(sandbox.id, "rm /dev/shm/fill")
    await box.manager.resize(sandbox.id, 0, 192)
    assert int(limit.read_text()) == 192 * MIB


async def test_growth_beyond_the_node_is_refused(box: Box) -> None:
    sandbox = await box.create(cpu_millis=1000, memory_mb=128)
    await box.create(cpu_millis=1000, memory_mb=1024)
    with pytest.raises(errors.ResourceExhausted, match="896 MB free"):
        await box.manager.resize(sandbox.id, 0, 1200)
    with pytest.raises(errors.ResourceExhausted, match="mCPU"):
        await box.manager.resize(sandbox.id, 3500, 0)
    assert sandbox.request.memory_mb == 128 and sandbox.request.cpu_millis == 1000
    assert int((box.cgroup("memory", sandbox.id) / "memory.limit_in_bytes").read_text()) == 128 * MIB
    # Growing into exactly what is free works.
    await box.manager.resize(sandbox.id, 3000, 1024)
    assert box.manager.allocated() == (4000, 2048)


async def test_the_new_size_survives_a_node_agent_restart(box: Box) -> None:
    sandbox = await box.create(cpu_millis=500, memory_mb=128)
    await box.manager.resize(sandbox.id, 1500, 384)
    paths = box.node.layout.sandbox(sandbox.id)
    config = json.loads(paths.config.read_text())["linux"]["resources"]
    assert config["memory"] == {"limit": 384 * MIB, "swap": 384 * MIB}
    assert config["cpu"] == {"quota": 150_000, "period": 100_000}

    await box.node.close()  # the process goes; the sandbox does not

    async def ignore(sandbox: LocalSandbox, reason: str) -> None:
        return None

    box.node = await assemble(box.node.options, ignore)
    assert await box.manager.recover() == []
    found = box.manager.running(sandbox.id)
    assert (found.request.cpu_millis, found.request.memory_mb) == (1500, 384)
    assert box.manager.allocated() == (1500, 384)
    assert await box.run(sandbox.id, "echo alive") == ("alive\n", 0)


async def test_only_running_sandboxes_can_be_resized(box: Box) -> None:
    with pytest.raises(errors.NotFound):
        await box.manager.resize("sb-notthere0000", 1000, 0)
    sandbox = await box.create()
    await box.manager.kill(sandbox.id, "killed")
    with pytest.raises(errors.NotFound):
        await box.manager.resize(sandbox.id, 1000, 0)
