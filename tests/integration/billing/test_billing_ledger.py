"""The billing-meter's ledger against real NATS and PostgreSQL: what goes in comes out, exactly once,
through duplicate publishes, redeliveries, consumer restarts and a full replay of the stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import db, events
from hutch.core.bus import Bus, ConsumerSpec, usage_stream
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.core.events import Envelope
from hutch.events.v1 import sandbox_pb2, usage_pb2
from hutch.v1 import sandbox_pb2 as api
from hutch_billing_meter.app import SCHEMA, consumers
from hutch_billing_meter.domain.buckets import Granularity
from hutch_billing_meter.domain.catalogue import PriceBooks
from hutch_billing_meter.domain.presets import PRESETS
from hutch_billing_meter.handlers import SandboxCatalogue, UsageIngest
from hutch_billing_meter.service import UsageFilter, UsageService

pytestmark = pytest.mark.integration

S = 1_000_000_000
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)


@dataclass
class Meter:
    pool: asyncpg.Pool
    bus: Bus
    service: UsageService

    async def publish(self, envelope: Envelope[Any]) -> None:
        await self.bus.publish(envelope.kind.subject(self.bus.region), envelope)

    async def consume_until(
        self, done: Callable[[], Awaitable[bool]], handler: Any = None, timeout: float = 60
    ) -> None:
        """Runs the usage consumer (as the service wires it) until `done()` holds, then stops it."""
        usage, _ = consumers(self.bus.region)
        stop = asyncio.Event()
        ingest = handler or UsageIngest(self.pool, timedelta(days=30))
        task = asyncio.create_task(self.bus.consume_batches(usage, ingest, stop, batch_size=50))
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not await done():
                assert asyncio.get_running_loop().time() < deadline, "the ledger did not catch up in time"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    async def active_ns(self, tenant: str = "tn-1") -> int:
        value = await self.pool.fetchval(
            "SELECT coalesce(sum(cpu_active_ns), 0) FROM usage_minutes WHERE tenant_id = $1", tenant
        )
        return int(value)

    async def processed(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM processed_events"))


@pytest.fixture
async def meter(nats_server: Any, postgres_dsn: str) -> AsyncIterator[Meter]:
    region = "b" + uuid.uuid4().hex[:10]
    async with (
        db.pool(PostgresSettings(dsn=postgres_dsn), SCHEMA) as pool,  # type: ignore[arg-type]
        Bus.connect(NatsSettings(url=nats_server.url), region, "test") as bus,
    ):
        await db.migrate(pool, SCHEMA, db.load_migrations("hutch_billing_meter", SCHEMA))
        yield Meter(pool, bus, UsageService(pool, PriceBooks(PRESETS, "cloudflare"), region))


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def report(
    sandbox: str, sequence: int, start: datetime, seconds: int, cpu_s: float, tenant: str = "tn-1"
) -> Envelope[usage_pb2.UsageReport]:
    end = start + timedelta(seconds=seconds)
    payload = usage_pb2.UsageReport(
        tenant_id=tenant,
        sandbox_id=sandbox,
        source="hutch://test/node/n1",
        sequence=sequence,
        window_start=stamp(start),
        window_end=stamp(end),
        running_ms=seconds * 1000,
        cpu_active_ns=int(cpu_s * S),
        cpu_allocated_ns=2 * seconds * S,
        memory_provisioned_mib_ms=512 * seconds * 1000,
        memory_used_mib_ms=100 * seconds * 1000,
        memory_peak_bytes=sequence * 2**20,
        cpu_millis=2000,
        memory_mb=512,
    )
    return Envelope(
        kind=events.USAGE_COMPUTE,
        payload=payload,
        tenant=tenant,
        sandbox=sandbox,
        id=f"{sandbox}.compute.{sequence}",
        time=end,
    )


def run_of(sandbox: str, count: int, tenant: str = "tn-1") -> list[Envelope[usage_pb2.UsageReport]]:
    """`count` consecutive 25 s reports (so some cross minute boundaries), 1.5 vCPU-s each."""
    return [report(sandbox, n + 1, T0 + timedelta(seconds=25 * n), 25, 1.5, tenant) for n in range(count)]


async def test_usage_lands_in_minute_rows_with_exact_totals(meter: Meter) -> None:
    reports = run_of("sb-one", 12)
    for envelope in reports:
        await meter.publish(envelope)

    async def all_in() -> bool:
        return await meter.processed() == 12

    await meter.consume_until(all_in)
    assert await meter.active_ns() == 12 * int(1.5 * S)
    rows = await meter.pool.fetch("SELECT minute, running_ms FROM usage_minutes ORDER BY minute")
    assert [r["minute"] for r in rows] == [T0 + timedelta(minutes=m) for m in range(5)]
    assert sum(r["running_ms"] for r in rows) == 300_000
    assert [r["running_ms"] for r in rows] == [60_000] * 5

    result = await meter.service.query("tn-1", UsageFilter(T0, T0 + timedelta(hours=1)), Granularity.HOUR)
    assert result.totals.usage.cpu_active_seconds == 18
    assert result.totals.usage.cpu_allocated_seconds == 600
    assert result.totals.usage.memory_peak_bytes == 12 * 2**20
    by_minute = await meter.service.query(
        "tn-1", UsageFilter(T0, T0 + timedelta(hours=1)), Granularity.MINUTE, by_sandbox=True
    )
    assert len(by_minute.buckets) == 5 and {b.sandbox_id for b in by_minute.buckets} == {"sb-one"}


async def test_duplicates_redeliveries_restarts_and_a_replay_add_nothing(meter: Meter) -> None:
    reports = run_of("sb-two", 20)
    # Every report twice: JetStream drops the second copy of each id within its duplicate window.
    for envelope in reports + reports:
        await meter.publish(envelope)
    info = await meter.bus.js.stream_info(usage_stream(meter.bus.region).name)
    assert info.state.messages == 20

    # A handler that commits and then dies before the ack: every batch is delivered again.
    failed_once: set[str] = set()
    ingest = UsageIngest(meter.pool, timedelta(days=30))

    async def crash_after_commit(batch: list[Envelope[Message]]) -> None:
        await ingest(batch)
        fresh = {e.id for e in batch} - failed_once
        if fresh:
            failed_once.update(fresh)
            raise ConnectionError("died between commit and ack")

    async def first_ten() -> bool:
        return await meter.processed() >= 10

    await meter.consume_until(first_ten, crash_after_commit)  # stopped part-way: a restart follows

    async def all_acked() -> bool:
        pending = await meter.bus.js.consumer_info(usage_stream(meter.bus.region).name, "billing-meter")
        return await meter.processed() == 20 and pending.num_pending == 0 and pending.num_ack_pending == 0

    # Messages the stopped consumer had fetched come back only after their ack wait (60 s).
    await meter.consume_until(all_acked, crash_after_commit, timeout=150)
    assert await meter.active_ns() == 20 * int(1.5 * S)

    # The whole stream again, through a brand-new durable consumer: the ledger does not move.
    replay = ConsumerSpec(
        stream=usage_stream(meter.bus.region), durable="replay", filter_subjects=(f"hutch.{meter.bus.region}.usage.>",)
    )
    seen: list[str] = []
    stop = asyncio.Event()

    async def counting(batch: list[Envelope[Message]]) -> None:
        seen.extend(e.id for e in batch)
        await ingest(batch)
        if len(seen) >= 20:
            stop.set()

    await asyncio.wait_for(meter.bus.consume_batches(replay, counting, stop), 60)
    assert await meter.active_ns() == 20 * int(1.5 * S)
    assert await meter.processed() == 20


async def test_storage_and_egress_reports_join_the_same_ledger(meter: Meter) -> None:
    storage = report("sb-three", 1, T0, 60, 0)
    storage.payload.Clear()
    storage.payload.tenant_id = "tn-1"
    storage.payload.window_start.CopyFrom(stamp(T0))
    storage.payload.window_end.CopyFrom(stamp(T0 + timedelta(hours=1)))
    storage.payload.storage_byte_seconds = 2 * 10**9 * 3600
    egress = report("sb-three", 1, T0, 0, 0)
    egress.payload.Clear()
    egress.payload.tenant_id = "tn-1"
    egress.payload.sandbox_id = "sb-three"
    egress.payload.egress_bytes = 3 * 10**9
    await meter.publish(Envelope(kind=events.USAGE_STORAGE, payload=storage.payload, tenant="tn-1", id="snap-1.h0"))
    await meter.publish(
        Envelope(kind=events.USAGE_EGRESS, payload=egress.payload, tenant="tn-1", id="sb-three.egress.1")
    )

    async def both() -> bool:
        return await meter.processed() == 2

    await meter.consume_until(both)
    result = await meter.service.query(
        "tn-1", UsageFilter(T0 - timedelta(hours=1), T0 + timedelta(hours=2)), Granularity.DAY, "cloudflare"
    )
    assert result.totals.usage.storage_gb_hours == 2
    assert result.totals.usage.egress_gb == 3


async def test_labels_come_from_sandbox_requests_and_tenants_see_only_their_own(meter: Meter) -> None:
    for sandbox, tenant, team in (("sb-red", "tn-1", "red"), ("sb-blue", "tn-1", "blue"), ("sb-other", "tn-2", "red")):
        spec = sandbox_pb2.SandboxSpec(
            sandbox_id=sandbox, tenant_id=tenant, template="base", metadata={"team": team},
            resources=api.Resources(cpu_millis=2000, memory_mb=512),
        )  # fmt: skip
        await SandboxCatalogue(meter.pool)(
            Envelope(kind=events.SANDBOX_REQUESTED, payload=sandbox_pb2.SandboxRequested(spec=spec), tenant=tenant)
        )
        for envelope in run_of(sandbox, 2, tenant):
            await meter.publish(envelope)

    async def all_in() -> bool:
        return await meter.processed() == 6

    await meter.consume_until(all_in)
    window = UsageFilter(T0, T0 + timedelta(hours=1))
    red = await meter.service.query(
        "tn-1", UsageFilter(T0, T0 + timedelta(hours=1), labels={"team": "red"}), Granularity.HOUR, by_sandbox=True
    )
    assert {b.sandbox_id for b in red.buckets} == {"sb-red"}
    assert red.totals.usage.cpu_active_seconds == 3
    mine = await meter.service.query("tn-1", window, Granularity.HOUR)
    assert mine.totals.usage.cpu_active_seconds == 6
    # Another tenant's sandbox reads as one without usage.
    theirs = await meter.service.query(
        "tn-2", UsageFilter(T0, T0 + timedelta(hours=1), sandbox_id="sb-red"), Granularity.HOUR
    )
    assert theirs.totals.usage.cpu_active_seconds == 0 and theirs.buckets == []
