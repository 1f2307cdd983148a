"""The scheduler's handler against real PostgreSQL and NATS: placement, refusals, idempotency, capacity."""

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
from hutch.core.bus import Bus, node_command_stream, nodes_bucket, sandbox_stream
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.core.nodes import NodeDirectory
from hutch.events.v1 import node_pb2
from hutch.events.v1 import sandbox_pb2 as ev
from hutch.v1 import sandbox_pb2
from hutch_scheduler.handlers import SchedulerHandler

pytestmark = pytest.mark.integration


@dataclass
class Scheduler:
    pool: asyncpg.Pool
    bus: Bus
    handler: SchedulerHandler
    relay: outbox.OutboxRelay
    nodes: NodeDirectory


@pytest.fixture
async def scheduler(nats_server: Any, postgres_dsn: str) -> AsyncIterator[Scheduler]:
    region = "s" + uuid.uuid4().hex[:10]
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with (
        db.pool(settings, "scheduler") as pool,
        Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus,
    ):
        await db.migrate(pool, "scheduler", [*outbox.MIGRATIONS, *db.load_migrations("hutch_scheduler", "scheduler")])
        kv = await bus.kv(nodes_bucket(region))
        nodes = NodeDirectory(kv, grace_s=30)
        stop = asyncio.Event()
        watcher = asyncio.create_task(nodes.run(stop))
        relay = outbox.OutboxRelay(pool, bus)
        yield Scheduler(pool, bus, SchedulerHandler(pool, nodes, relay, region), relay, nodes)
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def heartbeat(
    s: Scheduler, node_id: str, cpu: int = 4000, memory: int = 4096, templates: tuple[str, ...] = ("base",)
) -> None:
    sent = Timestamp()
    sent.FromDatetime(datetime.now(UTC))
    beat = node_pb2.NodeHeartbeat(
        node_id=node_id,
        address="127.0.0.1:1",
        cpu_millis_total=cpu,
        memory_mb_total=memory,
        templates=list(templates),
        isolation_classes=["container", "gvisor"],
        sent_at=sent,
    )
    await (await s.bus.kv(nodes_bucket(s.bus.region))).put(node_id, beat.SerializeToString())
    for _ in range(100):
        if s.nodes.get(node_id) is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("heartbeat not seen")


def requested(cpu: int = 1000, memory: int = 1024, template: str = "base") -> events.Envelope[Any]:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    spec = ev.SandboxSpec(
        sandbox_id=sandbox_id,
        tenant_id="tn-1",
        template=template,
        resources=sandbox_pb2.Resources(cpu_millis=cpu, memory_mb=memory),
    )
    return events.Envelope(kind=events.SANDBOX_REQUESTED, payload=ev.SandboxRequested(spec=spec), sandbox=sandbox_id)


async def published(s: Scheduler) -> tuple[list[events.Envelope[Any]], list[events.Envelope[Any]]]:
    """Drains the outbox and returns (sandbox events, node commands) now in the streams."""
    while await s.relay.drain_once():
        pass
    found: dict[str, list[events.Envelope[Any]]] = {}
    for stream in (sandbox_stream(s.bus.region), node_command_stream(s.bus.region)):
        info = await s.bus.js.stream_info(stream.name)
        found[stream.name] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await s.bus.js.get_msg(stream.name, seq)
            found[stream.name].append(events.decode(msg.data or b"", msg.headers))
    return found[sandbox_stream(s.bus.region).name], found[node_command_stream(s.bus.region).name]


async def test_a_request_is_placed_and_its_node_gets_the_command(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1")
    request = requested()
    await scheduler.handler(request)
    sandbox_events, commands = await published(scheduler)
    assert [e.kind for e in sandbox_events] == [events.SANDBOX_PLACED]
    assert sandbox_events[0].payload.node_id == "n1"
    assert len(commands) == 1 and commands[0].payload.create.spec.sandbox_id == request.sandbox


async def test_a_redelivered_request_is_placed_once(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1")
    request = requested()
    for _ in range(3):
        await scheduler.handler(request)
    sandbox_events, commands = await published(scheduler)
    assert len(sandbox_events) == 1 and len(commands) == 1


async def test_refusals_become_failed_events_with_the_right_code(scheduler: Scheduler) -> None:
    no_node = requested()
    await scheduler.handler(no_node)
    await heartbeat(scheduler, "n1", cpu=1000, memory=512)
    too_big, unknown = requested(memory=4096), requested(template="nope")
    await scheduler.handler(too_big)
    await scheduler.handler(unknown)
    sandbox_events, commands = await published(scheduler)
    codes = {e.sandbox: e.payload.code for e in sandbox_events if e.kind is events.SANDBOX_FAILED}
    assert codes == {
        no_node.sandbox: "unavailable",
        too_big.sandbox: "resource_exhausted",
        unknown.sandbox: "not_found",
    }
    assert commands == []


async def test_concurrent_requests_never_overcommit_a_node(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1", cpu=100_000, memory=4096)
    requests = [requested(cpu=100, memory=512) for _ in range(20)]
    await asyncio.gather(*(scheduler.handler(r) for r in requests))
    sandbox_events, commands = await published(scheduler)
    placed = [e for e in sandbox_events if e.kind is events.SANDBOX_PLACED]
    failed = [e for e in sandbox_events if e.kind is events.SANDBOX_FAILED]
    assert len(placed) == 8 and len(commands) == 8  # 8 x 512 MB = 4096 MB
    assert len(failed) == 12 and {e.payload.code for e in failed} == {"resource_exhausted"}


async def test_a_stopped_sandbox_frees_its_capacity(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1", memory=1024)
    first, second = requested(), requested()
    await scheduler.handler(first)
    await scheduler.handler(second)
    stopped = events.Envelope(
        kind=events.SANDBOX_STOPPED,
        payload=ev.SandboxStopped(sandbox_id=first.sandbox, reason="killed"),
        sandbox=first.sandbox,
    )
    await scheduler.handler(stopped)
    third = requested()
    await scheduler.handler(third)
    sandbox_events, _ = await published(scheduler)
    outcome = {e.sandbox: e.kind.name for e in sandbox_events}
    assert outcome == {
        first.sandbox: "sandbox.placed",
        second.sandbox: "sandbox.failed",
        third.sandbox: "sandbox.placed",
    }
