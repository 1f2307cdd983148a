"""Consumers: usage reports into the ledger (exactly once), sandbox requests into the label table."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
from google.protobuf.message import Message

from hutch.core import telemetry
from hutch.core.events import Envelope
from hutch.core.warm_pool import is_pool_member
from hutch.events.v1 import sandbox_pb2, usage_pb2
from hutch_billing_meter import store
from hutch_billing_meter.domain.buckets import split_by_minute
from hutch_billing_meter.domain.quantities import Usage
from hutch_billing_meter.store import LedgerEntry

log = logging.getLogger(__name__)

_ingested = telemetry.meter("hutch.billing").create_counter(
    "hutch.billing.usage_events",
    unit="{event}",
    description="Usage events taken from the stream, by outcome: recorded, duplicate (already in the ledger), dropped",
)


def _count(kinds: dict[str, str], ids: Iterable[str], outcome: str) -> None:
    for kind, n in Counter(kinds[event_id] for event_id in ids).items():
        _ingested.add(n, {"hutch.event": kind, "hutch.outcome": outcome})


def _usage(report: usage_pb2.UsageReport) -> Usage:
    return Usage(
        running_ms=report.running_ms,
        cpu_active_ns=report.cpu_active_ns,
        cpu_allocated_ns=report.cpu_allocated_ns,
        memory_provisioned_mib_ms=report.memory_provisioned_mib_ms,
        memory_used_mib_ms=report.memory_used_mib_ms,
        memory_peak_bytes=report.memory_peak_bytes,
        storage_byte_seconds=report.storage_byte_seconds,
        egress_bytes=report.egress_bytes,
    )


def ledger_entries(envelope: Envelope[Message], region: str = "") -> list[LedgerEntry]:
    """A usage event's shares of the minute rows its window covers, in the rows of `region`."""
    report = cast(usage_pb2.UsageReport, envelope.payload)
    tenant = report.tenant_id or envelope.tenant
    sandbox = report.sandbox_id or envelope.sandbox
    start = report.window_start.ToDatetime(tzinfo=UTC) if report.HasField("window_start") else envelope.time
    end = report.window_end.ToDatetime(tzinfo=UTC) if report.HasField("window_end") else start
    return [
        LedgerEntry(tenant, sandbox, minute, share, region)
        for minute, share in split_by_minute(start, end, _usage(report))
    ]


class UsageIngest:
    """Adds batches of usage events to the ledger, each event exactly once.

    The ids of the events a batch adds are recorded in the same transaction as the rows, so a
    batch redelivered after a crash (committed but not acked), a replayed stream, or a second
    publish of the same report adds nothing the second time. Events older than the retention of
    those ids cannot be told apart from duplicates any more and are dropped with a warning; the
    usage stream keeps events for far less than that.

    Ids are unique across the installation's regions, so one processed-events table serves the
    feeds of every region: a report that reaches the ledger through two streams is added once.
    `source_region` is the region whose stream the batches come from; rows keep it.
    """

    def __init__(
        self,
        db: asyncpg.Pool,
        retention: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        source_region: str = "",
    ) -> None:
        self._db = db
        self._retention = retention
        self._clock = clock
        self._region = source_region

    async def __call__(self, batch: list[Envelope[Message]]) -> None:
        oldest = self._clock() - self._retention
        entries: dict[str, list[LedgerEntry]] = {}
        kinds = {envelope.id: envelope.kind.name for envelope in batch}
        dropped = []
        for envelope in batch:
            if envelope.time < oldest:
                log.warning(
                    "dropping usage event %s from %s: older than the ledger remembers", envelope.id, envelope.time
                )
                dropped.append(envelope.id)
                continue
            found = ledger_entries(envelope, self._region)
            if not found or not found[0].tenant_id:
                log.warning("dropping usage event %s: it names no tenant", envelope.id)
                dropped.append(envelope.id)
                continue
            entries[envelope.id] = found
        _count(kinds, dropped, "dropped")
        if not entries:
            return
        async with self._db.acquire() as conn, conn.transaction():
            fresh = await store.record_events(conn, list(entries), self._region)
            await store.add_usage(conn, [entry for event_id in sorted(fresh) for entry in entries[event_id]])
        _count(kinds, fresh, "recorded")
        _count(kinds, set(entries) - set(fresh), "duplicate")
        if len(fresh) < len(entries):
            log.info("skipped %d usage events already in the ledger", len(entries) - len(fresh))


class SandboxCatalogue:
    """Keeps each sandbox's owner and metadata from `sandbox.requested`, for queries by label."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def __call__(self, envelope: Envelope[Message]) -> None:
        spec = cast(sandbox_pb2.SandboxRequested, envelope.payload).spec
        if is_pool_member(spec.tenant_id or envelope.tenant):
            return  # recorded once a create claims it, under its tenant (hutch.core.warm_pool)
        await store.record_sandbox(
            self._db,
            sandbox_id=spec.sandbox_id,
            tenant_id=spec.tenant_id or envelope.tenant,
            name=spec.name,
            template=spec.template,
            cpu_millis=spec.resources.cpu_millis,
            memory_mb=spec.resources.memory_mb,
            metadata=dict(spec.metadata),
            requested_at=envelope.time,
        )
