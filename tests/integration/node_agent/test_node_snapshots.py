"""Snapshots on one node, under both isolation classes: a frozen layer (and for gVisor a checkpoint
of memory and processes) that new sandboxes start from, forks that diverge, pause and restore."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from conftest import node_options, running_node

from hutch.core import errors
from hutch.testing.node import run_command
from hutch_node_agent.domain import SandboxRequest
from hutch_node_agent.node import Node
from hutch_node_agent.snapshots import NodeSnapshots

pytestmark = pytest.mark.integration

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /root/count.new; mv /root/count.new /root/count; sleep 0.05; done"
# Files of every kind a layer holds: data, a deleted template file (a whiteout), an emptied and
# refilled template folder (opaque), a symbolic link, a hard link, an empty file, odd modes.
SETUP = (
    "mkdir -p /root/work/deep && head -c 300000 /dev/urandom > /root/work/deep/blob"
    " && echo hello > /root/work/a.txt && ln /root/work/a.txt /root/work/hard"
    " && ln -s a.txt /root/work/link && : > /root/work/empty && chmod 4750 /root/work/empty"
    " && rm /bin/true && rm -rf /home && mkdir /home && echo fresh > /home/only"
)
LISTING = (
    "cd /root/work && find . | sort && md5sum deep/blob a.txt hard && readlink link"
    " && stat -c '%n %h %a %u %s' a.txt empty deep/blob hard && ls /home;"
    " test -e /bin/true && echo TRUE-BACK || echo true-gone"
)


async def sh(node: Node, sandbox_id: str, cmd: str) -> str:
    code, out = await run_command(node, sandbox_id, cmd)
    assert code == 0, out
    return out


def new_id() -> str:
    return f"sb-{uuid.uuid4().hex[:20]}"


def request(sandbox_id: str, isolation: str) -> SandboxRequest:
    return SandboxRequest(
        sandbox_id=sandbox_id, tenant_id="t", template="busybox", cpu_millis=250, memory_mb=128, isolation=isolation
    )


@pytest.fixture(scope="module", params=["container", "gvisor"])
async def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    async with running_node(node_options(tmp_path_factory.mktemp("snapshots"))) as node:
        yield node


@pytest.fixture(scope="module")
def snapshots(node: Node) -> NodeSnapshots:
    return NodeSnapshots(node.manager, node.layout, node.options.userns_shift, cache_bytes=2**30)


async def running(node: Node, isolation: str) -> str:
    sandbox_id = new_id()
    await node.manager.create(request(sandbox_id, isolation))
    return sandbox_id


async def counter(node: Node, sandbox_id: str) -> int:
    return int((await sh(node, sandbox_id, "cat /root/count")).strip())


async def test_a_sandbox_made_from_a_snapshot_has_the_files_of_that_moment(
    node: Node, snapshots: NodeSnapshots, isolation: str
) -> None:
    parent = await running(node, isolation)
    await sh(node, parent, SETUP)
    before = await sh(node, parent, LISTING)
    assert "true-gone" in before and "only" in before
    record = await snapshots.take(parent)
    await sh(node, parent, "echo changed > /root/work/a.txt; rm -rf /root/work/deep; echo new > /root/new")

    child = new_id()
    await node.manager.create(request(child, isolation), await snapshots.source("t", record.id, isolation))
    assert await sh(node, child, LISTING) == before
    assert "No such file" in await sh(node, child, "cat /root/new 2>&1 || true")
    # The parent kept its own changes.
    assert (await sh(node, parent, "cat /root/work/a.txt")).strip() == "changed"
    assert record.kind == ("memory" if isolation == "gvisor" else "filesystem")


async def test_background_processes_go_on_after_a_snapshot(
    node: Node, snapshots: NodeSnapshots, isolation: str
) -> None:
    parent = await running(node, isolation)
    await node.manager.supervisor(parent).exec({"cmd": COUNTER, "background": True, "env": {}})
    await asyncio.sleep(0.5)
    await snapshots.take(parent)
    first = await counter(node, parent)
    await asyncio.sleep(0.3)
    assert await counter(node, parent) > first


async def test_gvisor_forks_carry_running_processes_and_diverge(node: Node, snapshots: NodeSnapshots) -> None:
    parent = await running(node, "gvisor")
    await node.manager.supervisor(parent).exec({"cmd": COUNTER, "background": True, "env": {}})
    await sh(node, parent, "echo parent > /tmp/in-memory")
    await asyncio.sleep(0.5)
    record = await snapshots.take(parent, purpose="fork")
    at_fork = await counter(node, parent)

    children = [new_id() for _ in range(3)]
    for child in children:
        await node.manager.create(request(child, "gvisor"), await snapshots.source("t", record.id, "gvisor"))
    for index, child in enumerate(children):
        # The counter came along and keeps counting from where the fork was taken.
        assert await counter(node, child) >= at_fork - 5
        assert (await sh(node, child, "cat /tmp/in-memory")).strip() == "parent"
        await sh(node, child, f"echo child-{index} > /tmp/in-memory")
    await asyncio.sleep(0.3)
    for index, child in enumerate(children):
        assert (await sh(node, child, "cat /tmp/in-memory")).strip() == f"child-{index}"
        processes = await node.manager.supervisor(child).processes()
        assert any(p.running and "count" in (p.cmd or "") for p in processes)
    assert (await sh(node, parent, "cat /tmp/in-memory")).strip() == "parent"


async def test_container_forks_are_isolated_from_each_other(node: Node, snapshots: NodeSnapshots) -> None:
    parent = await running(node, "container")
    await sh(node, parent, "echo base > /root/state")
    record = await snapshots.take(parent, purpose="fork")
    children = [new_id() for _ in range(4)]
    for child in children:
        await node.manager.create(request(child, "container"), await snapshots.source("t", record.id, "container"))
    for index, child in enumerate(children):
        await sh(node, child, f"echo {index} >> /root/state")
    for index, child in enumerate(children):
        assert (await sh(node, child, "cat /root/state")).split() == ["base", str(index)]
    assert (await sh(node, parent, "cat /root/state")).split() == ["base"]


async def test_pause_releases_the_sandbox_and_restore_brings_it_back(
    node: Node, snapshots: NodeSnapshots, isolation: str
) -> None:
    sandbox_id = await running(node, isolation)
    await sh(node, sandbox_id, "echo kept > /root/kept")
    await node.manager.supervisor(sandbox_id).exec({"cmd": COUNTER, "background": True, "env": {}})
    await asyncio.sleep(0.4)
    record = await snapshots.take(sandbox_id, purpose="pause", stop=True)
    with pytest.raises(errors.NotFound):
        node.manager.running(sandbox_id)
    assert not node.layout.sandbox(sandbox_id).dir.exists()

    await node.manager.create(request(sandbox_id, isolation), await snapshots.source("t", record.id, isolation))
    assert (await sh(node, sandbox_id, "cat /root/kept")).strip() == "kept"
    processes = await node.manager.supervisor(sandbox_id).processes()
    counting = [p for p in processes if p.running and "count" in (p.cmd or "")]
    # gVisor brings the process back from memory; a container gets its files back only.
    assert bool(counting) == (isolation == "gvisor")


async def test_a_memory_snapshot_cannot_start_a_container(node: Node, snapshots: NodeSnapshots) -> None:
    parent = await running(node, "gvisor")
    record = await snapshots.take(parent)
    with pytest.raises(errors.FailedPrecondition, match="gvisor"):
        await snapshots.source("t", record.id, "container")


async def test_another_tenants_snapshot_is_not_found(node: Node, snapshots: NodeSnapshots) -> None:
    parent = await running(node, "container")
    record = await snapshots.take(parent)
    with pytest.raises(errors.NotFound):
        await snapshots.source("someone-else", record.id, "container")


async def test_dropping_a_snapshot_a_sandbox_is_starting_from_waits_for_that_start(
    node: Node, snapshots: NodeSnapshots
) -> None:
    parent = await running(node, "container")
    await sh(node, parent, "echo kept > /root/kept")
    record = await snapshots.take(parent)
    child = new_id()
    async with snapshots.lease("t", record.id, "container") as source:
        await snapshots.forget(record.id)  # e.g. DropSnapshot arriving mid-start
        assert source.frozen_layer.is_dir()
        with pytest.raises(errors.NotFound):  # no new start may begin from it
            await snapshots.source("t", record.id, "container")
        await node.manager.create(request(child, "container"), source)
    assert snapshots.get(record.id) is None and not source.frozen_layer.exists()
    assert (await sh(node, child, "cat /root/kept")).strip() == "kept"


async def test_a_sleep_is_refused_for_a_sandbox_used_since_it_was_reported_idle(
    node: Node, snapshots: NodeSnapshots
) -> None:
    sandbox_id = new_id()
    await node.manager.create(replace(request(sandbox_id, "container"), auto_sleep_after_s=60))
    await sh(node, sandbox_id, "true")  # in use just now
    with pytest.raises(errors.FailedPrecondition, match="in use again"):
        await snapshots.take(sandbox_id, purpose="pause", stop=True, only_if_idle=True)
    assert node.manager.running(sandbox_id).status == "running"
    assert (await sh(node, sandbox_id, "echo still up")).strip() == "still up"
