"""A region's billing-meter adds up the usage of every region of the installation, each report once.

Two regions, eu-west and us-east, run as the NATS supercluster of deploy/nats (two real
nats-server processes joined through their gateways). eu-west's billing-meter, with us-east as its
peer, runs in-process against a real PostgreSQL; usage reports are published in both regions as
node-agents publish them. The ledger must show both regions' usage exactly: through a report
published twice, a report seen in both regions' streams, a restart of the meter, and an outage of
us-east's NATS server, during which eu-west's own usage keeps coming in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import db, events
from hutch.core.bus import Bus, usage_stream
from hutch.core.config import GrpcSettings, NatsSettings, PostgresSettings
from hutch.core.events import Envelope
from hutch.events.v1 import sandbox_pb2, usage_pb2
from hutch.testing import eventually
from hutch.testing.nats_supercluster import Region, gateways_joined, jetstream_ready, supercluster, wait_for
from hutch.v1 import sandbox_pb2 as api
from hutch_billing_meter import app
from hutch_billing_meter.domain.buckets import Granularity
from hutch_billing_meter.service import UsageFilter, UsageService
from hutch_billing_meter.settings import BillingMeterSettings

pytestmark = pytest.mark.integration

WEST, EAST = "eu-west", "us-east"
TENANT = "tn-multi"
S = 1_000_000_000
CPU_NS = 1_500_000_000  # every report: 1.5 vCPU-s
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
# Long enough for a supercluster to elect its JetStream leader again after a server restarts, and
# for a batch fetched just before an outage to be redelivered after its ack wait (60 s).
CATCH_UP_S = 150.0


NATS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "nats"


async def joined(regions: dict[str, Region]) -> None:
    await wait_for("the regions did not join", gateways_joined((WEST, EAST)), regions)
    await wait_for("JetStream elected no meta leader", jetstream_ready, regions)


@pytest.fixture
async def regions(tmp_path: Path) -> AsyncIterator[dict[str, Region]]:
    with supercluster(NATS_DIR, (WEST, EAST), tmp_path) as started:
        await joined(started)
        yield started


class Meter:
    """eu-west's billing-meter, as `hutch-billing-meter` runs it, started and stopped in this process."""

    def __init__(self, settings: BillingMeterSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(app.run_until(self.settings, self._stop))

    async def halt(self) -> None:
        if self._task is not None:
            self._stop.set()
            task, self._task = self._task, None
            await asyncio.wait_for(task, 60)

    def check_running(self) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # raises what stopped it
            pytest.fail("the billing-meter stopped by itself")


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def report(sandbox: str, sequence: int) -> Envelope[usage_pb2.UsageReport]:
    """A node-agent's 10 s report, with its id (`<sandbox>.compute.<sequence>`)."""
    start = T0 + timedelta(seconds=10 * (sequence - 1))
    end = start + timedelta(seconds=10)
    payload = usage_pb2.UsageReport(
        tenant_id=TENANT,
        sandbox_id=sandbox,
        source="hutch://test/node/n1",
        sequence=sequence,
        window_start=stamp(start),
        window_end=stamp(end),
        running_ms=10_000,
        cpu_active_ns=CPU_NS,
        cpu_allocated_ns=10 * S,
        memory_provisioned_mib_ms=512 * 10_000,
        cpu_millis=1000,
        memory_mb=512,
    )
    return Envelope(
        kind=events.USAGE_COMPUTE, payload=payload, tenant=TENANT, sandbox=sandbox, id=f"{sandbox}.compute.{sequence}"
    )


async def publish(bus: Bus, region: str, envelope: Envelope[Any]) -> None:
    """As a node-agent of `region` does (the same subject and id), allowing for a server that just restarted."""
    await bus.publish(envelope.kind.subject(region), envelope, timeout_s=30)


async def ledger(pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
    """(sandbox, region) -> vCPU-ns in eu-west's ledger."""
    rows = await pool.fetch(
        "SELECT sandbox_id, region, sum(cpu_active_ns) AS ns FROM usage_minutes WHERE tenant_id = $1 GROUP BY 1, 2",
        TENANT,
    )
    return {(row["sandbox_id"], row["region"]): int(row["ns"]) for row in rows}


async def processed(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM processed_events"))


@pytest.fixture
async def meter(regions: dict[str, Region], postgres_dsn: str) -> AsyncIterator[Meter]:
    """eu-west's meter (not started yet), with us-east as its peer."""
    started = Meter(
        BillingMeterSettings(
            region=WEST,
            peer_regions=(EAST,),
            nats=NatsSettings(url=regions[WEST].url),
            postgres=PostgresSettings(dsn=postgres_dsn),  # type: ignore[arg-type]
            grpc=GrpcSettings(port=0),
            internal_token="test-token",  # type: ignore[arg-type]
        )
    )
    try:
        yield started
    finally:
        await started.halt()


async def test_each_region_bills_every_region_once(regions: dict[str, Region], meter: Meter) -> None:
    async def settles_at(expected: dict[tuple[str, str], int], events_in: int) -> None:
        async def holds() -> bool:
            meter.check_running()
            assert await ledger(pool) == expected
            assert await processed(pool) == events_in
            return True

        await eventually(holds, timeout=CATCH_UP_S)

    async with (
        db.pool(meter.settings.postgres, app.SCHEMA) as pool,
        Bus.connect(NatsSettings(url=regions[WEST].url), WEST, "west-node") as west,
    ):
        await db.migrate(pool, app.SCHEMA, db.load_migrations("hutch_billing_meter", app.SCHEMA))
        # us-east has no streams yet: its feed keeps trying while eu-west's own usage comes in.
        meter.start()
        await publish(west, WEST, report("sb-west", 1))
        await settles_at({("sb-west", WEST): CPU_NS}, 1)

        async with Bus.connect(NatsSettings(url=regions[EAST].url), EAST, "east-node") as east:
            spec = sandbox_pb2.SandboxSpec(
                sandbox_id="sb-east", tenant_id=TENANT, template="base", metadata={"team": "blue"},
                resources=api.Resources(cpu_millis=1000, memory_mb=512),
            )  # fmt: skip
            requested = Envelope(
                kind=events.SANDBOX_REQUESTED, payload=sandbox_pb2.SandboxRequested(spec=spec), tenant=TENANT
            )
            await publish(east, EAST, requested)
            for envelope in (report("sb-east", 1), report("sb-east", 2), report("sb-east", 1)):
                await publish(east, EAST, envelope)  # the repeat of report 1 is dropped by its id
            # One report in both regions' streams (a publisher that moved between regions): added once.
            await publish(east, EAST, report("sb-both", 1))
            await publish(west, WEST, report("sb-both", 1))

            async def both_paths_once() -> bool:
                meter.check_running()
                found = await ledger(pool)
                assert sum(ns for (sandbox, _), ns in found.items() if sandbox == "sb-both") == CPU_NS
                assert {key: ns for key, ns in found.items() if key[0] != "sb-both"} == {
                    ("sb-west", WEST): CPU_NS,
                    ("sb-east", EAST): 2 * CPU_NS,
                }
                assert await processed(pool) == 4
                return True

            await eventually(both_paths_once, timeout=CATCH_UP_S)
            first = {key: ns for key, ns in (await ledger(pool)).items() if key[0] == "sb-both"}

            def expect(west_reports: int, east_reports: int) -> dict[tuple[str, str], int]:
                return {("sb-west", WEST): west_reports * CPU_NS, ("sb-east", EAST): east_reports * CPU_NS, **first}

            books = app.price_books(meter.settings)
            usage = UsageService(pool, books, WEST)
            window = UsageFilter(T0, T0 + timedelta(hours=1))
            whole = await usage.query(TENANT, window, Granularity.HOUR)
            assert whole.totals.usage.cpu_active_seconds == 6  # 4 reports of 1.5 vCPU-s

            async def labelled_from_east() -> bool:
                blue = UsageFilter(T0, T0 + timedelta(hours=1), labels={"team": "blue"})
                return (await usage.query(TENANT, blue, Granularity.HOUR)).totals.usage.cpu_active_seconds == 3

            # us-east's sandbox request (its own feed) labels that sandbox's 2 reports.
            await eventually(labelled_from_east, timeout=CATCH_UP_S)

            # A restart of the meter: what was published while it was down comes in once.
            await meter.halt()
            await publish(west, WEST, report("sb-west", 2))
            await publish(east, EAST, report("sb-east", 3))
            meter.start()
            await settles_at(expect(2, 3), 6)

            # us-east's NATS server goes away: eu-west's own usage keeps coming in.
            regions[EAST].stop(timeout=30)
            await publish(west, WEST, report("sb-west", 3))
            await settles_at(expect(3, 3), 7)

            # It comes back with its store: what its nodes publish now, and anything the meter had
            # not acknowledged, arrives once.
            regions[EAST].start()
            await joined(regions)
            await publish(east, EAST, report("sb-east", 4))
            await publish(east, EAST, report("sb-east", 3))  # a node publishing its journal again
            await settles_at(expect(3, 4), 8)

            async def all_acknowledged() -> bool:
                info = await west.js.consumer_info(usage_stream(EAST).name, "billing-meter-eu-west")
                return info.num_pending == 0 and info.num_ack_pending == 0

            await eventually(all_acknowledged, timeout=CATCH_UP_S)
            assert await ledger(pool) == expect(3, 4)
            assert await processed(pool) == 8
            whole = await usage.query(TENANT, window, Granularity.HOUR)
            assert whole.totals.usage.cpu_active_seconds == 12  # 8 reports of 1.5 vCPU-s

            # eu-west's meter keeps a consumer of its own name on us-east's stream.
            assert [info.name for info in await west.js.consumers_info(usage_stream(EAST).name)] == [
                "billing-meter-eu-west"
            ]
