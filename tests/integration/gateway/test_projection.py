"""The gateway's projection and change feed against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import db, events, outbox
from hutch.core.bus import Bus, node_command_stream
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_gateway import store, tenants
from hutch_gateway.changes import ChangeFeed
from hutch_gateway.domain import CreateRequest, State
from hutch_gateway.projection import SandboxProjection

pytestmark = pytest.mark.integration


@dataclass
class Gateway:
    pool: asyncpg.Pool
    bus: Bus
    projection: SandboxProjection
    relay: outbox.OutboxRelay
    feed: ChangeFeed
    tenant: str


@pytest.fixture
async def gateway(nats_server: Any, postgres_dsn: str) -> AsyncIterator[Gateway]:
    region = "g" + uuid.uuid4().hex[:10]
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with db.pool(settings, "gateway") as pool, Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus:
        await db.migrate(pool, "gateway", [*outbox.MIGRATIONS, *db.load_migrations("hutch_gateway", "gateway")])
        tenant = await tenants.ensure_tenant_with_key(pool, "acme", "hk_" + uuid.uuid4().hex)
        relay = outbox.OutboxRelay(pool, bus)
        feed = ChangeFeed(postgres_dsn)
        stop = asyncio.Event()
        listening = asyncio.create_task(feed.run(stop))
        await asyncio.sleep(0.2)  # let the feed start listening
        yield Gateway(pool, bus, SandboxProjection(pool, relay, region), relay, feed, tenant)
        stop.set()
        await asyncio.wait_for(listening, 5)


async def new_sandbox(g: Gateway, name: str = "") -> str:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    async with g.pool.acquire() as conn:
        await store.insert_sandbox(conn, sandbox_id, g.tenant, CreateRequest("base", name, 1000, 512), "r")
    return sandbox_id


def started(sandbox_id: str) -> events.Envelope[Any]:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    payload = ev.SandboxStarted(sandbox_id=sandbox_id, node_id="n1", started_at=stamp)
    return events.Envelope(kind=events.SANDBOX_STARTED, payload=payload, sandbox=sandbox_id)


def stopped(sandbox_id: str, reason: str = "killed") -> events.Envelope[Any]:
    payload = ev.SandboxStopped(sandbox_id=sandbox_id, node_id="n1", reason=reason)
    return events.Envelope(kind=events.SANDBOX_STOPPED, payload=payload, sandbox=sandbox_id)


async def state_of(g: Gateway, sandbox_id: str) -> State:
    record = await store.get(g.pool, sandbox_id)
    assert record is not None
    return record.state


async def test_events_move_records_forward_only(gateway: Gateway) -> None:
    sandbox_id = await new_sandbox(gateway)
    await gateway.projection(started(sandbox_id))
    assert await state_of(gateway, sandbox_id) == State.RUNNING
    await gateway.projection(stopped(sandbox_id, "timeout"))
    record = await store.get(gateway.pool, sandbox_id)
    assert record is not None and record.state == State.KILLED and record.state_reason == "its timeout expired"
    # A replayed `started` must not bring a killed sandbox back to life.
    await gateway.projection(started(sandbox_id))
    assert await state_of(gateway, sandbox_id) == State.KILLED


async def test_a_failed_event_carries_its_error_to_the_record(gateway: Gateway) -> None:
    sandbox_id = await new_sandbox(gateway)
    failed = events.Envelope(
        kind=events.SANDBOX_FAILED,
        payload=ev.SandboxFailed(sandbox_id=sandbox_id, code="resource_exhausted", message="no room"),
        sandbox=sandbox_id,
    )
    await gateway.projection(failed)
    record = await store.get(gateway.pool, sandbox_id)
    assert record is not None and record.state == State.FAILED
    assert type(record.error()).__name__ == "ResourceExhausted" and record.error().message == "no room"


async def test_a_sandbox_that_starts_after_it_was_killed_is_killed_on_its_node(gateway: Gateway) -> None:
    sandbox_id = await new_sandbox(gateway)
    async with gateway.pool.acquire() as conn:
        await store.set_state(conn, sandbox_id, State.FAILED, (State.PENDING,), error_code="internal", reason="gave up")
    await gateway.projection(started(sandbox_id))
    while await gateway.relay.drain_once():
        pass
    stream = node_command_stream(gateway.bus.region).name
    message = await gateway.bus.js.get_msg(stream, 1)
    command = events.decode(message.data or b"", message.headers)
    assert command.payload.kill.sandbox_id == sandbox_id
    assert await state_of(gateway, sandbox_id) == State.FAILED


async def test_waiters_wake_on_the_committed_change(gateway: Gateway) -> None:
    sandbox_id = await new_sandbox(gateway)

    async def read() -> Any:
        record = await store.get(gateway.pool, sandbox_id)
        assert record is not None
        return record

    waiter = asyncio.create_task(
        gateway.feed.wait_until(sandbox_id, read, lambda r: r.state == State.RUNNING, 10, "test")
    )
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await gateway.projection(started(sandbox_id))
    record = await asyncio.wait_for(waiter, 5)
    assert record.state == State.RUNNING


async def test_names_are_unique_among_live_sandboxes_of_a_tenant(gateway: Gateway) -> None:
    first = await new_sandbox(gateway, name="agent")
    with pytest.raises(Exception, match="already named 'agent'"):
        await new_sandbox(gateway, name="agent")
    await gateway.projection(started(first))
    await gateway.projection(stopped(first))
    second = await new_sandbox(gateway, name="agent")  # the name is free again once the first ended
    found = await store.find(gateway.pool, gateway.tenant, "agent")
    assert found is not None and found.id == second
    assert await store.find(gateway.pool, "tn-other", "agent") is None
