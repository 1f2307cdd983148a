"""The scheduler with pauses and resumes: a pause frees the node, a resume is placed again (once)."""

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
    region = "i" + uuid.uuid4().hex[:10]
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with (
        db.pool(settings, "scheduler") as pool,
        Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus,
    ):
        await db.migrate(pool, "scheduler", [*outbox.MIGRATIONS, *db.load_migrations("hutch_scheduler", "scheduler")])
        nodes = NodeDirectory(await bus.kv(nodes_bucket(region)), grace_s=30)
        stop = asyncio.Event()
        watcher = asyncio.create_task(nodes.run(stop))
        relay = outbox.OutboxRelay(pool, bus)
        yield Scheduler(pool, bus, SchedulerHandler(pool, nodes, relay, region), relay, nodes)
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def heartbeat(s: Scheduler, node_id: str, memory: int) -> None:
    sent = Timestamp()
    sent.FromDatetime(datetime.now(UTC))
    beat = node_pb2.NodeHeartbeat(
        node_id=node_id, address="127.0.0.1:1", cpu_millis_total=8000, memory_mb_total=memory,
        templates=["base"], isolation_classes=["container", "gvisor"], sent_at=sent,
    )  # fmt: skip
    await (await s.bus.kv(nodes_bucket(s.bus.region))).put(node_id, beat.SerializeToString())
    for _ in range(100):
        if s.nodes.get(node_id) is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("heartbeat not seen")


def requested(
    sandbox_id: str, snapshot_id: str = "", prefer_node: str = "", incarnation: str = ""
) -> events.Envelope[Any]:
    spec = ev.SandboxSpec(
        sandbox_id=sandbox_id, tenant_id="tn-1", template="base",
        resources=sandbox_pb2.Resources(cpu_millis=1000, memory_mb=1024),
        snapshot_id=snapshot_id, prefer_node=prefer_node, incarnation=incarnation,
    )  # fmt: skip
    event_id = events.sandbox_event_id(sandbox_id, "requested", incarnation or snapshot_id)
    return events.Envelope(
        kind=events.SANDBOX_REQUESTED, payload=ev.SandboxRequested(spec=spec), sandbox=sandbox_id, id=event_id
    )


def paused(sandbox_id: str, snapshot_id: str) -> events.Envelope[Any]:
    payload = ev.SandboxPaused(sandbox_id=sandbox_id, node_id="n1", snapshot_id=snapshot_id)
    event_id = events.sandbox_event_id(sandbox_id, "paused", snapshot_id)
    return events.Envelope(kind=events.SANDBOX_PAUSED, payload=payload, sandbox=sandbox_id, id=event_id)


def failed(sandbox_id: str, incarnation: str) -> events.Envelope[Any]:
    payload = ev.SandboxFailed(sandbox_id=sandbox_id, code="internal", message="x")
    event_id = events.sandbox_event_id(sandbox_id, "failed", incarnation)
    return events.Envelope(kind=events.SANDBOX_FAILED, payload=payload, sandbox=sandbox_id, id=event_id)


async def published(s: Scheduler) -> tuple[list[events.Envelope[Any]], list[events.Envelope[Any]]]:
    """Drains the outbox and returns (sandbox events, node commands) now in the streams."""
    while await s.relay.drain_once():
        pass
    found: list[list[events.Envelope[Any]]] = []
    for stream in (sandbox_stream(s.bus.region), node_command_stream(s.bus.region)):
        info = await s.bus.js.stream_info(stream.name)
        found.append([])
        if info.state.messages == 0:
            continue
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await s.bus.js.get_msg(stream.name, seq)
            found[-1].append(events.decode(msg.data or b"", msg.headers))
    return found[0], found[1]


async def test_a_pause_frees_the_node_and_a_resume_is_placed_again_once(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1", memory=1024)
    await scheduler.handler(requested("sb-a"))
    await scheduler.handler(paused("sb-a", "snap-p1"))
    await scheduler.handler(requested("sb-b"))  # fits only because sb-a's memory was given back
    await scheduler.handler(paused("sb-b", "snap-p2"))
    for _ in range(2):  # the second time is a redelivery
        await scheduler.handler(requested("sb-a", "snap-p1", prefer_node="n1"))
    sandbox_events, commands = await published(scheduler)
    assert [e.id for e in sandbox_events if e.kind is events.SANDBOX_PLACED] == [
        "sb-a.placed", "sb-b.placed", "sb-a.placed.snap-p1",
    ]  # fmt: skip
    assert [c.id for c in commands] == ["sb-a.create", "sb-b.create", "sb-a.create.snap-p1"]
    assert commands[-1].payload.create.spec.snapshot_id == "snap-p1"


async def test_a_resume_goes_to_the_node_it_was_paused_on_when_that_has_room(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1", memory=2048)
    await heartbeat(scheduler, "n2", memory=8192)
    await scheduler.handler(requested("sb-a", "snap-p1", prefer_node="n1"))
    await scheduler.handler(requested("sb-b", "snap-p2", prefer_node="n1"))
    await scheduler.handler(requested("sb-c", "snap-p3", prefer_node="n1"))  # n1 is full by now
    sandbox_events, _ = await published(scheduler)
    nodes = {e.sandbox: e.payload.node_id for e in sandbox_events if e.kind is events.SANDBOX_PLACED}
    assert nodes == {"sb-a": "n1", "sb-b": "n1", "sb-c": "n2"}


async def test_a_stale_failure_of_an_earlier_start_keeps_the_current_placement(scheduler: Scheduler) -> None:
    await heartbeat(scheduler, "n1", memory=1024)
    await scheduler.handler(requested("sb-a"))
    await scheduler.handler(paused("sb-a", "snap-p1"))
    await scheduler.handler(requested("sb-a", "snap-p1"))
    await scheduler.handler(failed("sb-a", ""))  # the first start's, delivered again
    await scheduler.handler(requested("sb-b"))
    sandbox_events, _ = await published(scheduler)
    assert [e.kind for e in sandbox_events if e.sandbox == "sb-b"] == [events.SANDBOX_FAILED]
    await scheduler.handler(failed("sb-a", "snap-p1"))
    await scheduler.handler(requested("sb-c"))
    sandbox_events, _ = await published(scheduler)
    assert [e.kind for e in sandbox_events if e.sandbox == "sb-c"] == [events.SANDBOX_PLACED]


async def test_another_try_at_a_resume_that_found_no_room_is_placed_as_a_start_of_its_own(
    scheduler: Scheduler,
) -> None:
    await heartbeat(scheduler, "n1", memory=1024)
    await scheduler.handler(requested("sb-a"))
    await scheduler.handler(paused("sb-a", "snap-p1"))
    await scheduler.handler(requested("sb-b"))  # takes the room sb-a gave back
    await scheduler.handler(requested("sb-a", "snap-p1"))  # no room: unplaced
    await scheduler.handler(failed("sb-b", ""))  # sb-b goes; the room is back
    await scheduler.handler(requested("sb-a", "snap-p1", incarnation="snap-p1~2"))
    sandbox_events, commands = await published(scheduler)
    outcomes = [(e.kind.name, e.id) for e in sandbox_events if e.sandbox == "sb-a"]
    assert outcomes == [
        ("sandbox.placed", "sb-a.placed"),
        ("sandbox.failed", "sb-a.unplaced.snap-p1"),
        ("sandbox.placed", "sb-a.placed.snap-p1~2"),
    ]
    create = commands[-1]
    assert create.id == "sb-a.create.snap-p1~2"
    assert (create.payload.create.spec.snapshot_id, create.payload.create.spec.incarnation) == ("snap-p1", "snap-p1~2")
