"""The outbox against real PostgreSQL and NATS: events leave only after commit, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from hutch.core import db, events, outbox
from hutch.core.bus import Bus, sandbox_stream
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.events.v1 import sandbox_pb2

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(nats_server: Any, postgres_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, Bus]]:
    region = "o" + uuid.uuid4().hex[:10]
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with db.pool(settings, "svc") as pool, Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus:
        await db.migrate(pool, "svc", outbox.MIGRATIONS)
        yield pool, bus


def envelope(n: int) -> events.Envelope[sandbox_pb2.SandboxPlaced]:
    return events.Envelope(kind=events.SANDBOX_PLACED, payload=sandbox_pb2.SandboxPlaced(sandbox_id=f"sb-{n}"))


async def stream_count(bus: Bus) -> int:
    return int((await bus.js.stream_info(sandbox_stream(bus.region).name)).state.messages)


async def test_rolled_back_events_never_leave(env: tuple[asyncpg.Pool, Bus]) -> None:
    pool, bus = env
    subject = events.SANDBOX_PLACED.subject(bus.region)
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await outbox.stage(conn, subject, envelope(1))
            raise RuntimeError("the state change failed")
    async with pool.acquire() as conn, conn.transaction():
        await outbox.stage(conn, subject, envelope(2))
    relay = outbox.OutboxRelay(pool, bus)
    assert await relay.drain_once() == 1
    assert await relay.drain_once() == 0
    assert await stream_count(bus) == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_republishing_after_a_crash_is_deduplicated(env: tuple[asyncpg.Pool, Bus]) -> None:
    pool, bus = env
    subject = events.SANDBOX_PLACED.subject(bus.region)
    staged = envelope(3)
    async with pool.acquire() as conn, conn.transaction():
        await outbox.stage(conn, subject, staged)
    # A relay that published and died before deleting: the row is still there, the event is in the stream.
    await bus.publish(subject, staged)
    assert await outbox.OutboxRelay(pool, bus).drain_once() == 1
    assert await stream_count(bus) == 1


async def test_relay_loop_publishes_on_kick(env: tuple[asyncpg.Pool, Bus]) -> None:
    pool, bus = env
    relay = outbox.OutboxRelay(pool, bus, idle_poll_s=30)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with pool.acquire() as conn, conn.transaction():
            for n in range(10):
                await outbox.stage(conn, events.SANDBOX_PLACED.subject(bus.region), envelope(10 + n))
        relay.kick()
        for _ in range(200):
            if await stream_count(bus) == 10:
                break
            await asyncio.sleep(0.01)
        assert await stream_count(bus) == 10
    finally:
        stop.set()
        relay.kick()
        await asyncio.wait_for(task, 5)
