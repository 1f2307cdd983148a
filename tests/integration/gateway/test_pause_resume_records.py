"""Pause, resume and incarnations on the gateway's records, against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import db, events, outbox
from hutch.core.bus import Bus
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_gateway import events_out, store, tenants
from hutch_gateway.domain import CreateRequest, SandboxRecord, State, next_incarnation, restart_request
from hutch_gateway.janitor import SnapshotJanitor
from hutch_gateway.projection import SandboxProjection

pytestmark = pytest.mark.integration


@dataclass
class Forgotten:
    """Stands in for the janitor: records what it was asked to delete."""

    snapshots: list[str] = field(default_factory=list)

    def forget(self, tenant_id: str, snapshot_id: str) -> None:
        self.snapshots.append(snapshot_id)


@dataclass
class Gateway:
    pool: asyncpg.Pool
    projection: SandboxProjection
    tenant: str
    forgotten: Forgotten


@pytest.fixture
async def gateway(nats_server: Any, postgres_dsn: str) -> AsyncIterator[Gateway]:
    region = "p" + uuid.uuid4().hex[:10]
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with db.pool(settings, "gateway") as pool, Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus:
        await db.migrate(pool, "gateway", [*outbox.MIGRATIONS, *db.load_migrations("hutch_gateway", "gateway")])
        tenant = await tenants.ensure_tenant_with_key(pool, "acme", "hk_" + uuid.uuid4().hex)
        forgotten = Forgotten()
        projection = SandboxProjection(pool, outbox.OutboxRelay(pool, bus), region, cast(SnapshotJanitor, forgotten))
        yield Gateway(pool, projection, tenant, forgotten)


def stamp(when: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(when)
    return result


def started(sandbox_id: str, incarnation: str = "", node: str = "n1", when: datetime | None = None) -> Any:
    payload = ev.SandboxStarted(sandbox_id=sandbox_id, node_id=node, started_at=stamp(when or datetime.now(UTC)))
    event_id = events.sandbox_event_id(sandbox_id, "started", incarnation)
    return events.Envelope(kind=events.SANDBOX_STARTED, payload=payload, sandbox=sandbox_id, id=event_id)


def failed(sandbox_id: str, incarnation: str, code: str = "resource_exhausted") -> Any:
    payload = ev.SandboxFailed(sandbox_id=sandbox_id, code=code, message="no room")
    event_id = events.sandbox_event_id(sandbox_id, "unplaced", incarnation)
    return events.Envelope(kind=events.SANDBOX_FAILED, payload=payload, sandbox=sandbox_id, id=event_id)


def stopped(sandbox_id: str) -> Any:
    payload = ev.SandboxStopped(sandbox_id=sandbox_id, node_id="n1", reason="killed")
    return events.Envelope(kind=events.SANDBOX_STOPPED, payload=payload, sandbox=sandbox_id, id=f"{sandbox_id}.stopped")


async def running_sandbox(g: Gateway, timeout_seconds: int = 0) -> str:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    request = CreateRequest("base", "", 1000, 512, envs={"KEY": "v"}, timeout_seconds=timeout_seconds)
    async with g.pool.acquire() as conn:
        await store.insert_sandbox(conn, sandbox_id, g.tenant, request, "r")
    await g.projection(started(sandbox_id))
    return sandbox_id


async def pause(g: Gateway, sandbox_id: str, snapshot_id: str) -> SandboxRecord:
    async with g.pool.acquire() as conn, conn.transaction():
        paused = await store.mark_paused(conn, sandbox_id, snapshot_id)
    assert paused is not None
    return paused


async def resume(g: Gateway, sandbox_id: str) -> SandboxRecord:
    async with g.pool.acquire() as conn, conn.transaction():
        paused = await store.lock(conn, sandbox_id)
        assert paused is not None
        resuming = await store.mark_resuming(
            conn, sandbox_id, next_incarnation(paused.incarnation, paused.paused_snapshot)
        )
    assert resuming is not None
    return resuming


async def read(g: Gateway, sandbox_id: str) -> SandboxRecord:
    record = await store.get(g.pool, sandbox_id)
    assert record is not None
    return record


async def test_a_pause_keeps_what_is_left_of_the_timeout_for_the_resume(gateway: Gateway) -> None:
    sandbox_id = await running_sandbox(gateway, timeout_seconds=600)
    first = await read(gateway, sandbox_id)
    paused = await pause(gateway, sandbox_id, "snap-p1")
    assert paused.state == State.PAUSED and paused.expires_at is None and paused.paused_node == "n1"
    assert paused.timeout_left_s is not None and 590 <= paused.timeout_left_s <= 600
    resuming = await resume(gateway, sandbox_id)
    assert (resuming.state, resuming.incarnation, resuming.node_id) == (State.PENDING, "snap-p1", None)
    spec = events_out.requested(resuming, restart_request(resuming), "base", prefer_node="n1").payload.spec
    assert (spec.timeout_seconds, spec.snapshot_id, spec.prefer_node) == (paused.timeout_left_s, "snap-p1", "n1")
    assert dict(spec.envs) == {"KEY": "v"}
    later = datetime.now(UTC) + timedelta(hours=1)
    await gateway.projection(started(sandbox_id, "snap-p1", node="n2", when=later))
    running = await read(gateway, sandbox_id)
    assert (running.state, running.node_id, running.timeout_left_s) == (State.RUNNING, "n2", None)
    assert running.expires_at == later + timedelta(seconds=paused.timeout_left_s)
    assert running.started_at == first.started_at  # when it first ran


async def test_a_stale_start_of_an_earlier_incarnation_changes_nothing(gateway: Gateway) -> None:
    sandbox_id = await running_sandbox(gateway)
    await pause(gateway, sandbox_id, "snap-p1")
    await resume(gateway, sandbox_id)
    placed = events.Envelope(
        kind=events.SANDBOX_PLACED, payload=ev.SandboxPlaced(sandbox_id=sandbox_id, node_id="old"),
        sandbox=sandbox_id, id=events.sandbox_event_id(sandbox_id, "placed"),
    )  # fmt: skip
    await gateway.projection(placed)
    await gateway.projection(started(sandbox_id, node="old"))  # the first start's, delivered again
    record = await read(gateway, sandbox_id)
    assert (record.state, record.node_id) == (State.PENDING, None)
    await gateway.projection(started(sandbox_id, "snap-p1", node="n2"))
    assert (await read(gateway, sandbox_id)).state == State.RUNNING


async def test_a_failed_resume_leaves_the_sandbox_paused_and_says_why(gateway: Gateway) -> None:
    sandbox_id = await running_sandbox(gateway)
    await pause(gateway, sandbox_id, "snap-p1")
    await resume(gateway, sandbox_id)
    assert await store.held_by_snapshot(gateway.pool, gateway.tenant, "snap-p1") == sandbox_id
    await gateway.projection(failed(sandbox_id, "snap-p1"))
    record = await read(gateway, sandbox_id)
    assert (record.state, record.paused_snapshot) == (State.PAUSED, "snap-p1")
    assert record.error_code == "resource_exhausted" and "could not be resumed: no room" in record.state_reason
    assert await store.held_by_snapshot(gateway.pool, gateway.tenant, "snap-p1") == sandbox_id
    assert gateway.forgotten.snapshots == []  # the sandbox's state is still wanted


async def test_a_failed_resume_can_be_tried_again_as_a_start_of_its_own(gateway: Gateway) -> None:
    # Every event of a start carries its incarnation in its id: another try under the same name would
    # be taken for a repeat of the failed one (JetStream and the scheduler both drop repeats).
    sandbox_id = await running_sandbox(gateway)
    await pause(gateway, sandbox_id, "snap-p1")
    first = await resume(gateway, sandbox_id)
    await gateway.projection(failed(sandbox_id, "snap-p1"))

    again = await resume(gateway, sandbox_id)

    assert (again.state, again.incarnation, again.resuming) == (State.PENDING, "snap-p1~2", True)
    assert await store.held_by_snapshot(gateway.pool, gateway.tenant, "snap-p1") == sandbox_id
    ask = events_out.requested(again, restart_request(again), "base")
    assert (ask.payload.spec.snapshot_id, ask.payload.spec.incarnation) == ("snap-p1", "snap-p1~2")
    assert ask.id != events_out.requested(first, restart_request(first), "base").id
    await gateway.projection(failed(sandbox_id, "snap-p1~2"))  # and it may fail again, and say so
    assert (await read(gateway, sandbox_id)).state == State.PAUSED
    third = await resume(gateway, sandbox_id)
    assert third.incarnation == "snap-p1~3"
    await gateway.projection(started(sandbox_id, "snap-p1~3", node="n2"))
    record = await read(gateway, sandbox_id)
    assert (record.state, record.node_id) == (State.RUNNING, "n2")
    # Once it runs its own way again, a later pause starts afresh.
    await pause(gateway, sandbox_id, "snap-p2")
    assert (await resume(gateway, sandbox_id)).incarnation == "snap-p2"


async def test_a_stop_does_not_touch_a_paused_sandbox(gateway: Gateway) -> None:
    sandbox_id = await running_sandbox(gateway)
    await pause(gateway, sandbox_id, "snap-p1")
    await gateway.projection(stopped(sandbox_id))
    assert (await read(gateway, sandbox_id)).state == State.PAUSED


async def test_a_resumed_sandbox_that_ends_takes_its_pause_snapshot_with_it(gateway: Gateway) -> None:
    sandbox_id = await running_sandbox(gateway)
    await pause(gateway, sandbox_id, "snap-p1")
    await resume(gateway, sandbox_id)
    await gateway.projection(started(sandbox_id, "snap-p1"))
    assert await store.held_by_snapshot(gateway.pool, gateway.tenant, "snap-p1") is None  # runs on its own now
    await gateway.projection(stopped(sandbox_id))
    assert (await read(gateway, sandbox_id)).state == State.KILLED
    assert gateway.forgotten.snapshots == ["snap-p1"]


async def test_only_one_of_concurrent_resumes_starts_the_sandbox(gateway: Gateway) -> None:
    sandbox_id = await running_sandbox(gateway)
    await pause(gateway, sandbox_id, "snap-p1")

    async def attempt() -> SandboxRecord | None:
        async with gateway.pool.acquire() as conn, conn.transaction():
            return await store.mark_resuming(conn, sandbox_id, "snap-p1")

    outcomes = await asyncio.gather(*(attempt() for _ in range(5)))
    assert sum(outcome is not None for outcome in outcomes) == 1


async def test_a_paused_sandbox_keeps_its_name(gateway: Gateway) -> None:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    async with gateway.pool.acquire() as conn:
        await store.insert_sandbox(conn, sandbox_id, gateway.tenant, CreateRequest("base", "agent", 1000, 512), "r")
    await gateway.projection(started(sandbox_id))
    await pause(gateway, sandbox_id, "snap-p1")
    with pytest.raises(Exception, match="already named 'agent'"):
        async with gateway.pool.acquire() as conn:
            await store.insert_sandbox(conn, "sb-other", gateway.tenant, CreateRequest("base", "agent", 1000, 512), "r")
    found = await store.find(gateway.pool, gateway.tenant, "agent")
    assert found is not None and found.id == sandbox_id
