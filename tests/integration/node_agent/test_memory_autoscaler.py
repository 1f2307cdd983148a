"""Automatic memory on a real node, under both isolation classes: a sandbox that needs more than it
started with grows up to its ceiling instead of being OOM-killed; one that reaches its ceiling is
capped (and its owner told), after which the kernel's usual OOM handling applies."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import node_options, running_node

from hutch.core import errors
from hutch.testing.node import run_command
from hutch_node_agent.cgroup_limits import CgroupLimits
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.memory_autoscaler import MemoryAutoscaler
from hutch_node_agent.node import Node

pytestmark = pytest.mark.integration


@dataclass
class Told:
    grown: list[tuple[str, int, int]] = field(default_factory=list)
    capped: list[tuple[str, str]] = field(default_factory=list)

    async def on_grown(self, sandbox: LocalSandbox, previous_mb: int) -> None:
        self.grown.append((sandbox.id, previous_mb, sandbox.request.memory_mb))

    async def on_capped(self, sandbox: LocalSandbox, reason: str) -> None:
        self.capped.append((sandbox.id, reason))


@dataclass
class Lab:
    node: Node
    told: Told


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    # The base template (python3), as the local stack installs it.
    templates = Path(os.environ.get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
    if not (templates / "base").is_dir():
        pytest.skip(f"the base template is not installed in {templates}: run `make base-template`")
    options = node_options(tmp_path_factory.mktemp("autoscale"), templates_dir=templates)
    async with running_node(options) as node:
        told = Told()
        scaler = MemoryAutoscaler(node.manager, CgroupLimits(node.options.cgroup_parent), told.on_grown, told.on_capped)
        stop = asyncio.Event()
        task = asyncio.create_task(scaler.run(stop))
        try:
            yield Lab(node, told)
        finally:
            stop.set()
            await task


async def run(node: Node, sandbox_id: str, cmd: str) -> tuple[int, str]:
    return await run_command(node, sandbox_id, cmd)


async def sandbox(node: Node, isolation: str, memory_mb: int, ceiling_mb: int) -> str:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    request = SandboxRequest(
        sandbox_id=sandbox_id, tenant_id="t", template="base", cpu_millis=500, memory_mb=memory_mb,
        isolation=isolation, memory_ceiling_mb=ceiling_mb,
    )  # fmt: skip
    await node.manager.create(request)
    return sandbox_id


# Touches every page at once (anonymous memory: there is no swap, so it cannot be reclaimed).
FILL = 'python3 -c \'b = b"x" * ({mb} * 2**20); print("fil" + "led", len(b))\' 2>&1'


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
async def test_a_sandbox_grows_past_its_start_instead_of_being_oom_killed(lab: Lab, isolation: str) -> None:
    sandbox_id = await sandbox(lab.node, isolation, memory_mb=128, ceiling_mb=640)
    code, out = await run(lab.node, sandbox_id, FILL.format(mb=300))
    assert code == 0 and "filled" in out, out
    now = lab.node.manager.running(sandbox_id).request.memory_mb
    assert 300 < now <= 640
    steps = [(before, after) for sid, before, after in lab.told.grown if sid == sandbox_id]
    assert steps and steps[0][0] == 128 and steps[-1][1] == now
    assert all(after > before for before, after in steps)
    assert not [c for c in lab.told.capped if c[0] == sandbox_id]
    # Its processes are unharmed: it answers as before.
    assert (await run(lab.node, sandbox_id, "echo still here"))[1].strip() == "still here"


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
async def test_at_its_ceiling_a_sandbox_is_capped_and_its_owner_told(lab: Lab, isolation: str) -> None:
    sandbox_id = await sandbox(lab.node, isolation, memory_mb=128, ceiling_mb=256)
    try:
        code, out = await run(lab.node, sandbox_id, FILL.format(mb=600))
        assert "filled" not in out and code != 0, out
    except errors.Unavailable:
        # Under gVisor the kernel's OOM killer may pick the sandbox's own kernel (its largest
        # process), which ends the sandbox: what an OOM means there.
        assert isolation == "gvisor"
    still = [s for s in lab.node.manager.all() if s.id == sandbox_id]
    assert all(s.request.memory_mb == 256 for s in still)
    [(_, reason)] = [c for c in lab.told.capped if c[0] == sandbox_id]
    assert "ceiling of 256 MB" in reason


async def test_a_sandbox_without_a_ceiling_keeps_its_limit(lab: Lab) -> None:
    sandbox_id = await sandbox(lab.node, "container", memory_mb=128, ceiling_mb=0)
    code, out = await run(lab.node, sandbox_id, FILL.format(mb=300))
    assert "filled" not in out and code != 0
    assert lab.node.manager.running(sandbox_id).request.memory_mb == 128
    assert not [g for g in lab.told.grown if g[0] == sandbox_id]
