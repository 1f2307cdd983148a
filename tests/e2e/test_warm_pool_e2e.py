"""Warm pools on the local stack: a create of a pooled kind gets a member started ahead of demand,
which becomes the tenant's own (its name, labels, environment, timeout and bill) and is replaced.

The pools here are of a kind no other test asks for (a quarter vCPU, 160 MB), so the rest of the
suite never gets a member by chance; each test removes its pool when it ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from hutch import AlreadyExistsError, NotFoundError, Sandbox, SandboxState, Usage
from hutch.core.grpc_runtime import internal_metadata
from hutch.events.v1 import sandbox_pb2 as sandbox_events
from hutch.internal.v1 import node_agent_pb2, node_agent_pb2_grpc
from hutch.testing import eventually_sync
from hutch.v1 import sandbox_pb2

pytestmark = pytest.mark.e2e

CPU, MEMORY_MB = 0.25, 160
SIZE = 2


def admin(local_stack: Any, *args: str) -> str:
    return str(local_stack.admin(*args))


def members(local_stack: Any, isolation: str) -> dict[str, str]:
    """The pool's live members of this test's kind: id -> state, from the gateway's database."""

    async def query() -> dict[str, str]:
        conn = await asyncpg.connect(local_stack.service_env("gateway")["HUTCH_POSTGRES__DSN"])
        try:
            rows = await conn.fetch(
                "SELECT id, state FROM gateway.sandboxes WHERE tenant_id = 'warm-pool' AND isolation = $1 "
                "AND cpu_millis = $2 AND memory_mb = $3 AND state IN ('pending', 'running')",
                isolation,
                round(CPU * 1000),
                MEMORY_MB,
            )
            return {r["id"]: r["state"] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(query())


def warm(local_stack: Any, isolation: str) -> dict[str, str]:
    found = members(local_stack, isolation)
    return found if len(found) == SIZE and set(found.values()) == {"running"} else {}


@pytest.fixture(params=["container", "gvisor"])
def pool(request: pytest.FixtureRequest, local_stack: Any) -> Iterator[str]:
    isolation: str = request.param
    kind = ("--isolation", isolation, "--cpu", str(CPU), "--memory-mb", str(MEMORY_MB))
    admin(local_stack, "set-warm-pool", *kind, "--size", str(SIZE))
    try:
        yield isolation
    finally:
        admin(local_stack, "set-warm-pool", *kind, "--size", "0")
        # Its members are retired: nothing of the pool is left holding the node's capacity.
        eventually_sync(lambda: not members(local_stack, isolation), timeout=60)


def test_a_create_of_a_pooled_kind_gets_a_warm_member_that_becomes_the_tenants_own(local_stack: Any, pool: str) -> None:
    tenant = f"warm-{uuid.uuid4().hex[:6]}"
    connection = {"api_key": local_stack.create_tenant(tenant), "endpoint": local_stack.endpoint}
    other = {"api_key": local_stack.create_tenant(f"{tenant}-x"), "endpoint": local_stack.endpoint}
    suite = uuid.uuid4().hex[:8]
    window_start = datetime.now(UTC) - timedelta(minutes=1)

    waiting = eventually_sync(lambda: warm(local_stack, pool), timeout=90)
    pool_tenant = [line for line in admin(local_stack, "list-tenants").splitlines() if line.startswith("warm-pool\t")]
    assert pool_tenant == ["warm-pool\t(warm pool)\t0 key(s)"]  # no API key reaches a member
    time.sleep(10)  # time the members spend in the pool is not billed to whoever takes one

    box = Sandbox.create(
        isolation=pool,
        cpu=CPU,
        memory_mb=MEMORY_MB,
        name=f"w-{suite}",
        metadata={"suite": suite},
        envs={"GREETING": "hello from the tenant"},
        timeout=300,
        **connection,
    )
    claimed_at = datetime.now(UTC)
    try:
        assert box.id in waiting  # a member, not a fresh start
        info = box.get_info()
        assert (info.state, info.name, info.metadata) == (SandboxState.RUNNING, f"w-{suite}", {"suite": suite})
        assert info.isolation == pool and info.cpu == CPU and info.memory_mb == MEMORY_MB
        assert info.expires_at is not None
        assert timedelta(seconds=290) < info.expires_at - claimed_at <= timedelta(seconds=301)
        assert box.commands.run("echo $GREETING").stdout == "hello from the tenant\n"
        assert [i.id for i in Sandbox.list(metadata={"suite": suite}, **connection)] == [box.id]
        with pytest.raises(NotFoundError):
            Sandbox.get_info(box.id, **other)
        # No one else sees the pool's members, or this one.
        listed = {i.id for i in Sandbox.list(**other)} | {i.id for i in Sandbox.list(**connection)}
        assert not listed & (set(waiting) - {box.id})

        # The member taken is replaced, and the one left waits for the next create.
        refilled = eventually_sync(lambda: warm(local_stack, pool), timeout=90)
        assert box.id not in refilled and set(waiting) - {box.id} <= set(refilled)

        # A create of another kind never gets a member.
        fresh = Sandbox.create(isolation=pool, cpu=CPU, memory_mb=MEMORY_MB + 32, **connection)
        try:
            assert fresh.id not in refilled
        finally:
            fresh.kill()
            fresh.close()
        time.sleep(2)
    finally:
        box.kill()
        box.close()
    lived = (datetime.now(UTC) - claimed_at).total_seconds()

    def billed() -> Any:
        usage = Usage.query(
            start=window_start, end=datetime.now(UTC) + timedelta(minutes=2), sandbox=box.id, **connection
        )
        return usage if usage.total.running_seconds > 0 else None

    usage = eventually_sync(billed, timeout=60)
    # Billed from the handover on: not the ten seconds and more it waited in the pool.
    assert 0 < usage.total.running_seconds <= lived + 1
    labelled = Usage.query(
        start=window_start, end=datetime.now(UTC) + timedelta(minutes=2), labels={"suite": suite}, **connection
    )
    assert labelled.total.running_seconds == pytest.approx(usage.total.running_seconds)


def test_a_taken_name_is_refused_and_the_member_stays_in_the_pool(local_stack: Any, pool: str) -> None:
    connection = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    name = f"dup-{uuid.uuid4().hex[:6]}"
    first = Sandbox.create(isolation="container", memory_mb=256, name=name, **connection)
    try:
        waiting = eventually_sync(lambda: warm(local_stack, pool), timeout=90)
        with pytest.raises(AlreadyExistsError, match="already named"):
            Sandbox.create(isolation=pool, cpu=CPU, memory_mb=MEMORY_MB, name=name, **connection)
        assert members(local_stack, pool) == waiting
    finally:
        first.kill()
        first.close()


def test_a_member_adopted_without_a_committed_handover_is_retired(local_stack: Any, pool: str) -> None:
    # What a gateway that died between its node's adoption and its commit leaves behind: the node
    # holds the member as a tenant's, the database still lists it in the pool.
    waiting = eventually_sync(lambda: warm(local_stack, pool), timeout=90)
    orphan = sorted(waiting)[0]
    address = next(c.address for c in local_stack.status() if c.name == "node-agent")
    port = int(address.rsplit(":", 1)[1].split("/")[0])
    spec = sandbox_events.SandboxSpec(
        sandbox_id=orphan,
        tenant_id="tn-neverhandedover",
        template="base",
        isolation=pool,
        resources=sandbox_pb2.Resources(cpu_millis=round(CPU * 1000), memory_mb=MEMORY_MB),
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        node_agent_pb2_grpc.NodeAgentStub(channel).Adopt(
            node_agent_pb2.AdoptSandboxRequest(spec=spec), metadata=internal_metadata(local_stack.internal_token)
        )

    # It is retired (not left running, billed to a tenant who never got it) and replaced.
    refilled = eventually_sync(lambda: (found := warm(local_stack, pool)) and orphan not in found and found, timeout=90)
    assert set(waiting) - {orphan} <= set(refilled)
