"""Billing figures (printed, never asserted):

* ingest: usage events into the ledger per second, through NATS and the batched consumer, exactly
  once (target: at least 5,000 events/s);
* metering: the node-agent's CPU for sampling 200 sandboxes every second, on 200 real cgroups made
  for the purpose without containers, plus cutting and publishing their reports every 10 s
  (target: under 2% of one core).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from figures import report
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import db, events
from hutch.core.bus import Bus, usage_stream
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.events.v1 import usage_pb2
from hutch_billing_meter.app import SCHEMA, consumers
from hutch_billing_meter.handlers import UsageIngest
from hutch_node_agent.cgroup_stats import CGROUP_ROOT, CgroupStats
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.metering import Metering
from hutch_node_agent.usage_journal import UsageJournal

pytestmark = pytest.mark.bench

EVENTS = 20_000
SANDBOXES = 200
ROUNDS = 30


def usage_event(sandbox: int, sequence: int, start: datetime) -> events.Envelope[usage_pb2.UsageReport]:
    begin, end = Timestamp(), Timestamp()
    begin.FromDatetime(start)
    end.FromDatetime(start + timedelta(seconds=10))
    payload = usage_pb2.UsageReport(
        tenant_id=f"tn-{sandbox % 10}",
        sandbox_id=f"sb-bench{sandbox:05d}",
        sequence=sequence,
        window_start=begin,
        window_end=end,
        running_ms=10_000,
        cpu_active_ns=1_234_567_890,
        cpu_allocated_ns=10_000_000_000,
        memory_provisioned_mib_ms=512 * 10_000,
        memory_used_mib_ms=100 * 10_000,
        memory_peak_bytes=200 * 2**20,
    )
    return events.Envelope(
        kind=events.USAGE_COMPUTE,
        payload=payload,
        tenant=payload.tenant_id,
        sandbox=payload.sandbox_id,
        id=f"{payload.sandbox_id}.compute.{sequence}",
        time=start + timedelta(seconds=10),
    )


async def test_ledger_ingest_rate(nats_server: Any, postgres_dsn: str) -> None:
    region = "bench" + uuid.uuid4().hex[:6]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    async with (
        db.pool(PostgresSettings(dsn=postgres_dsn), SCHEMA) as pool,  # type: ignore[arg-type]
        Bus.connect(NatsSettings(url=nats_server.url), region, "bench") as bus,
    ):
        await db.migrate(pool, SCHEMA, db.load_migrations("hutch_billing_meter", SCHEMA))
        subject = events.USAGE_COMPUTE.subject(region)
        envelopes = [
            usage_event(n % 500, n // 500 + 1, start + timedelta(seconds=10 * (n // 500))) for n in range(EVENTS)
        ]
        published = time.perf_counter()
        for offset in range(0, EVENTS, 500):
            await asyncio.gather(*(bus.publish(subject, e) for e in envelopes[offset : offset + 500]))
        publish_s = time.perf_counter() - published

        usage, _ = consumers(region)
        ingest = UsageIngest(pool, timedelta(days=30))
        stop = asyncio.Event()
        handled = 0

        async def counted(batch: list[Any]) -> None:
            nonlocal handled
            await ingest(batch)
            handled += len(batch)
            if handled >= EVENTS:
                stop.set()

        began = time.perf_counter()
        await bus.consume_batches(usage, counted, stop, 500)
        ingest_s = time.perf_counter() - began
        info = await bus.js.stream_info(usage_stream(region).name)
        total = await pool.fetchval("SELECT sum(cpu_active_ns) FROM usage_minutes")
    assert int(total) == EVENTS * 1_234_567_890
    report(
        "billing: usage events into the ledger",
        [
            f"{'events':<48} {EVENTS} ({info.state.messages} in the stream)",
            f"{'published (500 in flight)':<48} {EVENTS / publish_s:10.0f} events/s",
            f"{'ingested exactly once (batches of 500)':<48} {EVENTS / ingest_s:10.0f} events/s   target >= 5000",
        ],
    )


def bench_cgroups(parent: str) -> None:
    for controller in ("cpuacct", "memory"):
        for n in range(SANDBOXES):
            (CGROUP_ROOT / controller / parent / f"sb-bench{n:05d}").mkdir(parents=True)


def remove_cgroups(parent: str) -> None:
    for controller in ("cpuacct", "memory"):
        base = CGROUP_ROOT / controller / parent
        for n in range(SANDBOXES):
            folder = base / f"sb-bench{n:05d}"
            if folder.exists():
                folder.rmdir()
        if base.exists():
            base.rmdir()


def fake_sandboxes() -> list[LocalSandbox]:
    started = datetime.now(UTC)
    return [
        LocalSandbox(
            request=SandboxRequest(f"sb-bench{n:05d}", "tn-1", "base", 1000, 512),
            status="running",
            env={},
            default_user="root",
            workdir="/",
            started_at=started,
        )
        for n in range(SANDBOXES)
    ]


async def test_metering_cpu_for_200_sandboxes(tmp_path: Path, nats_server: Any) -> None:
    if os.geteuid() != 0 or (CGROUP_ROOT / "cgroup.controllers").exists():
        pytest.skip("needs root on a cgroup v1 host to make cgroups")
    parent = f"hutch-bench-{uuid.uuid4().hex[:8]}"
    region = "bench" + uuid.uuid4().hex[:6]
    bench_cgroups(parent)
    try:
        async with Bus.connect(NatsSettings(url=nats_server.url), region, "bench") as bus:
            subject = events.USAGE_COMPUTE.subject(region)

            async def publish(envelope: events.Envelope[usage_pb2.UsageReport]) -> None:
                await bus.publish(subject, envelope)

            journal = UsageJournal(tmp_path / "usage-journal.json")
            metering = Metering(CgroupStats(parent), journal, publish, "hutch://bench/node/n1")
            sandboxes = fake_sandboxes()
            sampling: list[float] = []
            reporting: list[float] = []
            for round_ in range(ROUNDS):
                cut = round_ % 10 == 9
                before = time.process_time()
                metering.sample(sandboxes, time.time_ns(), report=cut)
                journal.save(metering.meters())
                if cut:
                    await metering.publish_pending()
                    journal.save(metering.meters())
                spent = time.process_time() - before
                (reporting if cut else sampling).append(spent)
                await asyncio.sleep(max(0.0, 1.0 - spent))
    finally:
        remove_cgroups(parent)
    sample_s = sum(sampling) / len(sampling)
    report_s = sum(reporting) / len(reporting)
    per_second = (9 * sample_s + report_s) / 10
    report(
        f"billing: node-agent metering of {SANDBOXES} sandboxes (1 s samples, reports every 10 s)",
        [
            f"{'a sampling round (reads + journal)':<48} {sample_s * 1000:8.2f} ms CPU",
            f"{'a reporting round (+ cut and publish 200)':<48} {report_s * 1000:8.2f} ms CPU",
            f"{'CPU share of one core, averaged':<48} {per_second * 100:8.2f} %   target < 2 %",
        ],
    )
