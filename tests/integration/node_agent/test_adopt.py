"""Handing a warm pool member to a tenant on a real node (SandboxManager.adopt): only an unclaimed
member of the same kind is handed over, it runs on untouched with the tenant's environment and
timeout, and a restarted node-agent finds it as the tenant's."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import node_options, require_node_tools

from hutch.core import errors
from hutch.core.warm_pool import WARM_POOL_TENANT
from hutch_node_agent import host
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.node import Node, assemble
from hutch_node_agent.supervisor.client import Exited, Output

pytestmark = pytest.mark.integration


async def _ignore(sandbox: LocalSandbox, reason: str) -> None:
    return None


class Host:
    """The node under test; a restart replaces it."""

    def __init__(self, node: Node) -> None:
        self.node = node


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Host]:
    require_node_tools()
    host.release_hybrid_cgroup_controllers()
    state = Host(await assemble(node_options(tmp_path, cpu_millis=4000, memory_mb=2048), _ignore))
    try:
        yield state
    finally:
        await state.node.dismantle()


def member_request() -> SandboxRequest:
    return SandboxRequest(
        sandbox_id=f"sb-{uuid.uuid4().hex[:20]}", tenant_id=WARM_POOL_TENANT, template="busybox",
        cpu_millis=500, memory_mb=128,
    )  # fmt: skip


async def run(node: Node, sandbox_id: str, cmd: str) -> str:
    sandbox = node.manager.running(sandbox_id)
    out = []
    async with await node.manager.supervisor(sandbox_id).exec({"cmd": cmd, "env": sandbox.env}) as session:
        async for event in session:
            if isinstance(event, Output):
                out.append(event.data.decode())
            elif isinstance(event, Exited):
                break
    return "".join(out)


async def test_a_member_becomes_the_tenants_sandbox_and_stays_so_after_a_restart(machine: Host) -> None:
    node = machine.node
    pooled = await node.manager.create(member_request())
    await run(node, pooled.id, "echo before > /tmp/kept")
    wanted = dataclasses.replace(
        pooled.request, tenant_id="tn-owner", name="mine", envs={"GREETING": "hi"}, metadata={"team": "a"},
        timeout_seconds=600,
    )  # fmt: skip
    before = datetime.now(UTC)

    adopted = await node.manager.adopt(wanted)

    assert adopted is pooled and adopted.request == wanted
    assert adopted.started_at is not None and adopted.started_at >= before
    assert adopted.deadline is not None
    assert timedelta(seconds=599) < adopted.deadline - before < timedelta(seconds=602)
    assert await run(node, pooled.id, "echo $GREETING; cat /tmp/kept") == "hi\nbefore\n"
    # A second claim of the same sandbox finds it taken.
    with pytest.raises(errors.FailedPrecondition, match="not an unclaimed warm pool member"):
        await node.manager.adopt(dataclasses.replace(wanted, tenant_id="tn-thief"))

    await node.close()  # the process goes; the sandbox does not
    machine.node = await assemble(node.options, _ignore)
    assert await machine.node.manager.recover() == []
    found = machine.node.manager.running(pooled.id)
    assert (found.request.tenant_id, found.env["GREETING"], found.deadline) == ("tn-owner", "hi", adopted.deadline)
    assert found.metered_from_cpu_ns == adopted.metered_from_cpu_ns > 0


async def test_a_request_of_another_kind_or_for_the_pool_itself_is_refused(machine: Host) -> None:
    node = machine.node
    pooled = await node.manager.create(member_request())
    claim = dataclasses.replace(pooled.request, tenant_id="tn-owner")
    for other in (
        dataclasses.replace(claim, memory_mb=256),
        dataclasses.replace(claim, cpu_millis=1000),
        dataclasses.replace(claim, template="other"),
        dataclasses.replace(claim, memory_ceiling_mb=1024),
    ):
        with pytest.raises(errors.FailedPrecondition, match="cannot become"):
            await node.manager.adopt(other)
    with pytest.raises(errors.InvalidArgument, match="only be handed to a tenant"):
        await node.manager.adopt(pooled.request)
    assert node.manager.running(pooled.id).request.tenant_id == WARM_POOL_TENANT

    owned = await node.manager.create(dataclasses.replace(member_request(), tenant_id="tn-owner"))
    with pytest.raises(errors.FailedPrecondition, match="not an unclaimed warm pool member"):
        await node.manager.adopt(dataclasses.replace(owned.request, tenant_id="tn-thief"))
