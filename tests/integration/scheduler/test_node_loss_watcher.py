"""Node loss against real PostgreSQL and NATS: a silent node is fenced, its sandboxes reported lost, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.kv import KeyValue

from hutch.core import db, events, outbox
from hutch.core.bus import Bus, fenced_bucket, nodes_bucket, sandbox_stream
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.core.nodes import Fence, NodeDirectory
from hutch.events.v1 import node_pb2
from hutch.events.v1 import sandbox_pb2 as ev
from hutch.v1 import sandbox_pb2
from hutch_scheduler.handlers import SchedulerHandler
from hutch_scheduler.node_loss import NodeLossWatcher

pytestmark = pytest.mark.integration

LOST_AFTER_S = 3.0


@dataclass
class Setup:
    pool: asyncpg.Pool
    bus: Bus
    heartbeats: KeyValue
    fences: KeyValue
    nodes: NodeDirectory
    relay: outbox.OutboxRelay
    handler: SchedulerHandler
    watcher: NodeLossWatcher
    dropped: list[str]


@pytest.fixture
async def setup(nats_server: Any, postgres_dsn: str) -> AsyncIterator[Setup]:
    region = "l" + uuid.uuid4().hex[:10]
    async with (
        db.pool(PostgresSettings(dsn=postgres_dsn), "scheduler") as pool,  # type: ignore[arg-type]
        Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus,
    ):
        await db.migrate(pool, "scheduler", [*outbox.MIGRATIONS, *db.load_migrations("hutch_scheduler", "scheduler")])
        heartbeats, fences = await bus.kv(nodes_bucket(region)), await bus.kv(fenced_bucket(region))
        nodes = NodeDirectory(heartbeats, grace_s=1.0, fenced=fences)
        stop = asyncio.Event()
        watching = asyncio.create_task(nodes.run(stop))
        relay = outbox.OutboxRelay(pool, bus)
        dropped: list[str] = []

        async def drop(node_id: str) -> None:
            dropped.append(node_id)

        watcher = NodeLossWatcher(pool, nodes, heartbeats, fences, relay, region, LOST_AFTER_S, drop)
        handler = SchedulerHandler(pool, nodes, relay, region)
        yield Setup(pool, bus, heartbeats, fences, nodes, relay, handler, watcher, dropped)
        stop.set()
        await asyncio.wait_for(watching, 5)


async def beat(s: Setup, node_id: str, age_s: float = 0.0) -> None:
    sent, started = Timestamp(), Timestamp()
    sent.FromDatetime(datetime.now(UTC) - timedelta(seconds=age_s))
    started.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    heartbeat = node_pb2.NodeHeartbeat(
        node_id=node_id,
        address="127.0.0.1:1",
        cpu_millis_total=8000,
        memory_mb_total=8192,
        templates=["base"],
        isolation_classes=["container"],
        sent_at=sent,
        started_at=started,
    )
    await s.heartbeats.put(node_id, heartbeat.SerializeToString())
    for _ in range(200):
        seen = s.nodes.get(node_id)
        if seen is not None and seen.sent_at == sent.ToDatetime(tzinfo=UTC):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("heartbeat not seen")


async def place(s: Setup, incarnation: str = "") -> str:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    spec = ev.SandboxSpec(
        sandbox_id=sandbox_id,
        tenant_id="tn-1",
        template="base",
        resources=sandbox_pb2.Resources(cpu_millis=500, memory_mb=256),
        snapshot_id=incarnation,
    )
    await s.handler(events.Envelope(kind=events.SANDBOX_REQUESTED, payload=ev.SandboxRequested(spec=spec)))
    return sandbox_id


async def sandbox_events(s: Setup) -> list[events.Envelope[Any]]:
    while await s.relay.drain_once():
        pass
    stream = sandbox_stream(s.bus.region).name
    info = await s.bus.js.stream_info(stream)
    found = []
    if info.state.messages:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await s.bus.js.get_msg(stream, seq)
            found.append(events.decode(msg.data or b"", msg.headers))
    return found


async def test_a_silent_node_is_fenced_and_its_sandboxes_reported_lost_once(setup: Setup) -> None:
    await beat(setup, "n1")
    first, resumed = await place(setup), await place(setup, incarnation="sn-1")
    await beat(setup, "n2")
    await beat(setup, "n1", age_s=LOST_AFTER_S + 1)

    assert await setup.watcher.check() == ["n1"]
    assert await setup.watcher.check() == []  # fenced and nothing left to report: nothing more

    stops = [e for e in await sandbox_events(setup) if e.kind is events.SANDBOX_STOPPED]
    assert {(e.sandbox, e.id, e.payload.reason, e.payload.node_id) for e in stops} == {
        (first, f"{first}.lost", "lost", "n1"),
        (resumed, f"{resumed}.lost.sn-1", "lost", "n1"),
    }
    entry = await setup.fences.get("n1")
    fence = Fence.decode("n1", entry.value or b"")
    assert fence.epoch == datetime(2024, 1, 1, tzinfo=UTC)
    assert setup.dropped == ["n1"]
    async with setup.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM placements WHERE active") == 0

    # Fenced means unreachable, even with a fresh heartbeat, until the node removes its fence.
    await beat(setup, "n1")
    node = setup.nodes.get("n1")
    assert node is not None and not setup.nodes.is_alive(node)
    await setup.fences.delete("n1")
    for _ in range(200):
        if setup.nodes.fence("n1") is None:
            break
        await asyncio.sleep(0.02)
    assert setup.nodes.is_alive(node)


async def test_a_node_that_speaks_again_in_time_is_not_lost(setup: Setup) -> None:
    await beat(setup, "n1")
    await place(setup)
    await beat(setup, "n1", age_s=LOST_AFTER_S + 1)
    # The bucket itself is read again under the lock: a fresh heartbeat there wins over the view.
    sent = Timestamp()
    sent.FromDatetime(datetime.now(UTC))
    await setup.heartbeats.put("n1", node_pb2.NodeHeartbeat(node_id="n1", sent_at=sent).SerializeToString())
    assert await setup.watcher.declare_lost("n1") is False
    assert [e for e in await sandbox_events(setup) if e.kind is events.SANDBOX_STOPPED] == []
    assert setup.nodes.fence("n1") is None


async def test_a_node_with_placements_but_no_heartbeat_is_lost(setup: Setup) -> None:
    await beat(setup, "n1")
    sandbox = await place(setup)
    await setup.heartbeats.delete("n1")
    for _ in range(200):
        if setup.nodes.get("n1") is None:
            break
        await asyncio.sleep(0.02)
    assert await setup.watcher.check() == ["n1"]
    stops = [e for e in await sandbox_events(setup) if e.kind is events.SANDBOX_STOPPED]
    assert [e.sandbox for e in stops] == [sandbox]
