"""Automatic memory on a full node: a gVisor sandbox asks to be moved (and may use the size it asked
for until then), and is capped where it is if no move comes; a container is capped at once."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import node_options, running_node

from hutch.testing.node import run_command
from hutch_node_agent.cgroup_limits import CgroupLimits
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.memory_autoscaler import MOVE_WAIT_S, MemoryAutoscaler
from hutch_node_agent.node import Node

pytestmark = pytest.mark.integration

NODE_MEMORY_MB = 600


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Told:
    needs_room: list[tuple[str, int, int]] = field(default_factory=list)
    capped: list[tuple[str, str]] = field(default_factory=list)
    asked: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_grown(self, sandbox: LocalSandbox, previous_mb: int) -> None:
        return None

    async def on_capped(self, sandbox: LocalSandbox, reason: str) -> None:
        self.capped.append((sandbox.id, reason))

    async def on_needs_room(self, sandbox: LocalSandbox, wanted_mb: int) -> None:
        self.needs_room.append((sandbox.id, sandbox.request.memory_mb, wanted_mb))
        self.asked.set()


@dataclass
class Lab:
    node: Node
    scaler: MemoryAutoscaler
    clock: Clock
    told: Told


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    templates = Path(os.environ.get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
    if not (templates / "base").is_dir():
        pytest.skip(f"the base template is not installed in {templates}: run `make base-template`")
    options = node_options(tmp_path, templates_dir=templates, memory_mb=NODE_MEMORY_MB)
    async with running_node(options) as node:
        told, clock = Told(), Clock()
        limits = CgroupLimits(node.options.cgroup_parent)
        scaler = MemoryAutoscaler(node.manager, limits, told.on_grown, told.on_capped, told.on_needs_room, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(scaler.run(stop))
        try:
            yield Lab(node, scaler, clock, told)
        finally:
            stop.set()
            await task


async def run(node: Node, sandbox_id: str, cmd: str) -> tuple[int, str]:
    return await run_command(node, sandbox_id, cmd)


async def create(node: Node, isolation: str) -> str:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    request = SandboxRequest(
        sandbox_id=sandbox_id, tenant_id="t", template="base", cpu_millis=500, memory_mb=128,
        isolation=isolation, memory_ceiling_mb=2048,
    )  # fmt: skip
    await node.manager.create(request)
    return sandbox_id


# Holds 500 MiB (more than the node can reserve once its first steps are taken) for a while.
HOLD = "python3 -c 'import time; b = bytearray(500 * 2**20); print(\"held\", flush=True); time.sleep({s})' 2>&1"


async def asked_to_move(lab: Lab, sandbox_id: str) -> tuple[int, int]:
    await asyncio.wait_for(lab.told.asked.wait(), 30)
    asked_by, reserved_mb, wanted_mb = lab.told.needs_room[0]
    assert asked_by == sandbox_id
    return reserved_mb, wanted_mb


def limit_mb(lab: Lab, sandbox_id: str) -> int:
    return CgroupLimits(lab.node.options.cgroup_parent).read(sandbox_id).memory_bytes >> 20


async def test_a_gvisor_sandbox_on_a_full_node_asks_to_move_and_is_lent_what_it_asked_for(lab: Lab) -> None:
    sandbox_id = await create(lab.node, "gvisor")
    holding = asyncio.create_task(run(lab.node, sandbox_id, HOLD.format(s=30)))
    reserved_mb, wanted_mb = await asked_to_move(lab, sandbox_id)
    assert wanted_mb > NODE_MEMORY_MB >= reserved_mb  # growing here would take more than the node has
    # Never held at the limit: it gets its 500 MiB at once, from the loan.
    await asyncio.sleep(2)
    assert not holding.done() and lab.told.capped == []
    # The loan is in the cgroup only: the node's reservations still add up to what it has. Each
    # time it needed more it asked again, for more.
    asks = [wanted for _, _, wanted in lab.told.needs_room]
    assert asks == sorted(set(asks)) and limit_mb(lab, sandbox_id) == asks[-1]
    assert lab.node.manager.running(sandbox_id).request.memory_mb == reserved_mb
    assert lab.node.manager.allocated()[1] <= NODE_MEMORY_MB

    # No move came: once its wait is over it is capped where it is, holding what it was lent.
    lab.clock.now += MOVE_WAIT_S + 1
    await lab.scaler.check()
    [(capped, reason)] = lab.told.capped
    assert capped == sandbox_id and "no move came" in reason
    assert [wanted for _, _, wanted in lab.told.needs_room] == asks  # nothing more asked meanwhile
    holding.cancel()


async def test_a_container_on_a_full_node_is_capped_at_once(lab: Lab) -> None:
    sandbox_id = await create(lab.node, "container")
    await run(lab.node, sandbox_id, HOLD.format(s=1))
    assert lab.told.needs_room == []
    [(capped, reason)] = lab.told.capped
    assert capped == sandbox_id and "no memory left" in reason
