"""The node-agent's SandboxManager with real crun: limits, ends, restarts and hostile templates."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import node_options, require_node_tools

from hutch.core import errors
from hutch.testing.templates import make_busybox_template
from hutch_node_agent import host
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.layout import NodeLayout
from hutch_node_agent.node import Node, assemble
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.supervisor.client import Exited, Output

pytestmark = pytest.mark.integration

CGROUP = Path("/sys/fs/cgroup")


@dataclass
class NodeUnderTest:
    options: NodeOptions
    isolation: str
    nodes: list[Node] = field(default_factory=list)
    stopped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def layout(self) -> NodeLayout:
        return self.nodes[0].layout

    async def manager(self) -> SandboxManager:
        """A freshly assembled node over the same folders; a second one plays a restarted node-agent."""

        async def on_stopped(sandbox: LocalSandbox, reason: str) -> None:
            self.stopped.append((sandbox.id, reason))

        node = await assemble(self.options, on_stopped)
        self.nodes.append(node)
        return node.manager


@pytest.fixture(params=["container", "gvisor"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NodeUnderTest]:
    require_node_tools()
    host.release_hybrid_cgroup_controllers()
    options = node_options(tmp_path, cpu_millis=4000, memory_mb=2048)
    state = NodeUnderTest(options, request.param)
    yield state
    last = await state.manager()
    await last.recover()
    await state.nodes[-1].dismantle()
    for earlier in state.nodes[:-1]:
        await earlier.close()


def request(node: NodeUnderTest, **overrides: object) -> SandboxRequest:
    values: dict[str, object] = {
        "isolation": node.isolation,
        "sandbox_id": f"sb-{uuid.uuid4().hex[:20]}",
        "tenant_id": "tn-1",
        "template": "busybox",
        "cpu_millis": 500,
        "memory_mb": 128,
    }
    values.update(overrides)
    return SandboxRequest(**values)  # type: ignore[arg-type]


async def run(manager: SandboxManager, sandbox_id: str, cmd: str) -> tuple[str, int]:
    sandbox = manager.running(sandbox_id)
    out = []
    code = -99
    async with await manager.supervisor(sandbox_id).exec({"cmd": cmd, "env": sandbox.env}) as session:
        async for event in session:
            if isinstance(event, Output):
                out.append(event.data.decode())
            elif isinstance(event, Exited):
                code = event.exit_code
    return "".join(out), code


async def eventually(check: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_limits_from_the_request_land_in_the_cgroup(node: NodeUnderTest) -> None:
    manager = await node.manager()
    sandbox = await manager.create(request(node, cpu_millis=500, memory_mb=128))
    cgroup = f"{node.options.cgroup_parent}/{sandbox.id}"
    assert int((CGROUP / "memory" / cgroup / "memory.limit_in_bytes").read_text()) == 128 * 1024 * 1024
    assert int((CGROUP / "cpu" / cgroup / "cpu.cfs_quota_us").read_text()) == 50_000
    assert int((CGROUP / "pids" / cgroup / "pids.max").read_text()) == node.options.pids_limit
    out, code = await run(manager, sandbox.id, "ulimit -n; hostname; cat /etc/hosts")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(node.options.open_files_limit)
    assert lines[1] == sandbox.id
    assert f"127.0.1.1\t{sandbox.id}" in out


async def test_a_memory_hog_is_killed_inside_its_own_cgroup(node: NodeUnderTest) -> None:
    manager = await node.manager()
    bystander = await manager.create(request(node))
    sandbox = await manager.create(request(node, memory_mb=64))
    hog = "x=a; while true; do x=$x$x; done"  # busybox has no allocator: grow a shell variable
    if node.isolation == "container":
        # The kernel's OOM killer picks the hog inside the sandbox's cgroup; the sandbox lives on.
        _, code = await run(manager, sandbox.id, hog)
        assert code != 0
        assert await run(manager, sandbox.id, "echo still-here") == ("still-here\n", 0)
        oom = (CGROUP / "memory" / node.options.cgroup_parent / sandbox.id / "memory.oom_control").read_text()
        assert "oom_kill " in oom and "oom_kill 0" not in oom
    else:
        # Under gVisor all of the sandbox's memory belongs to its user-space kernel: the OOM killer
        # ends the sandbox as a whole, and the node reports it.
        with pytest.raises(errors.Unavailable):
            await run(manager, sandbox.id, hog)
        await eventually(lambda: (sandbox.id, "exited") in node.stopped)
    assert await run(manager, bystander.id, "echo unaffected") == ("unaffected\n", 0)


async def test_a_second_create_of_a_running_sandbox_changes_nothing(node: NodeUnderTest) -> None:
    manager = await node.manager()
    wanted = request(node)
    first = await manager.create(wanted)
    second = await manager.create(wanted)
    assert first is second and first.init_pid == second.init_pid
    assert manager.allocated() == (wanted.cpu_millis, wanted.memory_mb)


async def test_kill_frees_everything_and_reports_once(node: NodeUnderTest) -> None:
    manager = await node.manager()
    sandbox = await manager.create(request(node))
    paths = node.layout.sandbox(sandbox.id)
    assert await manager.kill(sandbox.id, "killed") is True
    assert await manager.kill(sandbox.id, "killed") is False
    assert node.stopped == [(sandbox.id, "killed")]
    assert not paths.dir.exists() and not os.path.ismount(paths.rootfs)
    assert manager.allocated() == (0, 0)
    with pytest.raises(errors.NotFound):
        manager.running(sandbox.id)


async def test_a_sandbox_whose_init_dies_is_reported_exited(node: NodeUnderTest) -> None:
    manager = await node.manager()
    sandbox = await manager.create(request(node))
    os.kill(sandbox.init_pid, signal.SIGKILL)
    await eventually(lambda: node.stopped == [(sandbox.id, "exited")])
    assert not node.layout.sandbox(sandbox.id).dir.exists()


async def test_a_timeout_stops_the_sandbox(node: NodeUnderTest) -> None:
    manager = await node.manager()
    sandbox = await manager.create(request(node, timeout_seconds=1))
    await eventually(lambda: node.stopped == [(sandbox.id, "timeout")], timeout=10)


async def test_a_restarted_node_agent_finds_running_sandboxes_and_reports_ended_ones(node: NodeUnderTest) -> None:
    first = await node.manager()
    survivor = await first.create(request(node))
    casualty = await first.create(request(node))
    await run(first, survivor.id, "echo kept > /root/state")
    await first.close()  # the node-agent process goes away; its sandboxes do not
    os.kill(casualty.init_pid, signal.SIGKILL)
    await asyncio.sleep(0.3)

    second = await node.manager()
    ended = await second.recover()

    assert [s.id for s in ended] == [casualty.id]
    assert [s.id for s in second.all()] == [survivor.id]
    out, code = await run(second, survivor.id, "cat /root/state")
    assert (out, code) == ("kept\n", 0)


async def test_capacity_and_templates_are_checked(node: NodeUnderTest) -> None:
    manager = await node.manager()
    with pytest.raises(errors.ResourceExhausted, match="MB free"):
        await manager.create(request(node, memory_mb=4096))
    with pytest.raises(errors.NotFound, match="template 'nope'"):
        await manager.create(request(node, template="nope"))
    with pytest.raises(errors.InvalidArgument, match="malformed sandbox id"):
        await manager.create(request(node, sandbox_id="../../etc"))
    assert manager.all() == []


async def test_a_template_with_a_planted_etc_link_cannot_make_the_node_write_on_the_host(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    target = tmp_path / "host-etc"
    target.mkdir()
    (target / "hosts").write_text("host file\n")
    hostile = make_busybox_template(node.options.templates_dir / "hostile") / "rootfs"
    shutil.rmtree(hostile / "etc")
    (hostile / "etc").symlink_to(target)

    manager = await node.manager()
    with pytest.raises(errors.InvalidArgument, match="cannot hold"):
        await manager.create(request(node, template="hostile"))
    assert (target / "hosts").read_text() == "host file\n"
    assert sorted(p.name for p in target.iterdir()) == ["hosts"]
    assert manager.all() == []
