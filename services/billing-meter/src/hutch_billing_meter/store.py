"""The ledger in PostgreSQL (schema `billing`): minute rows per region, processed event ids, sandbox labels."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from hutch_billing_meter.domain.buckets import Granularity, Window
from hutch_billing_meter.domain.pricing import UsageRow
from hutch_billing_meter.domain.quantities import Usage

_LEDGER_COLUMNS = (
    "running_ms",
    "cpu_active_ns",
    "cpu_allocated_ns",
    "memory_provisioned_mib_ms",
    "memory_used_mib_ms",
    "memory_peak_bytes",
    "storage_byte_seconds",
    "egress_bytes",
)


@dataclass(frozen=True)
class LedgerEntry:
    """One event's share of one minute row."""

    tenant_id: str
    sandbox_id: str
    minute: datetime
    usage: Usage
    # The region whose stream the event came from ("" when not known).
    region: str = ""


@dataclass(frozen=True)
class Selection:
    """Which rows a query reads: always one tenant's."""

    tenant_id: str
    window: Window
    sandbox_id: str = ""
    labels: Mapping[str, str] | None = None


async def record_events(conn: asyncpg.Connection, event_ids: Sequence[str], region: str = "") -> set[str]:
    """Marks events as processed; returns those that were not already (inside the caller's transaction).

    Ids are inserted in sorted order, so two transactions that share ids (a redelivery to a second
    replica) wait for each other instead of deadlocking; the later one then finds them taken.
    """
    rows = await conn.fetch(
        "INSERT INTO processed_events (event_id, region) SELECT unnest($1::text[]), $2 "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        sorted(set(event_ids)),
        region,
    )
    return {row["event_id"] for row in rows}


async def add_usage(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> None:
    """Adds entries to their minute rows (summing, and keeping the larger peak), in one statement."""
    merged: dict[tuple[str, str, str, datetime], Usage] = {}
    for entry in entries:
        key = (entry.tenant_id, entry.sandbox_id, entry.region, entry.minute)
        seen = merged.get(key)
        merged[key] = entry.usage if seen is None else seen + entry.usage
    if not merged:
        return
    keys = sorted(merged)
    columns = [[getattr(merged[key], name) for key in keys] for name in _LEDGER_COLUMNS]
    updates = ", ".join(
        f"{name} = GREATEST(usage_minutes.{name}, EXCLUDED.{name})"
        if name == "memory_peak_bytes"
        else f"{name} = usage_minutes.{name} + EXCLUDED.{name}"
        for name in _LEDGER_COLUMNS
    )
    await conn.execute(
        f"""INSERT INTO usage_minutes (tenant_id, sandbox_id, region, minute, {", ".join(_LEDGER_COLUMNS)})
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                                 {", ".join(f"${i}::bigint[]" for i in range(5, 5 + len(_LEDGER_COLUMNS)))})
            ON CONFLICT (tenant_id, sandbox_id, region, minute) DO UPDATE SET {updates}""",
        *([key[i] for key in keys] for i in range(4)),
        *columns,
    )


async def prune_processed(db: asyncpg.Pool, older_than: datetime) -> int:
    result: str = await db.execute("DELETE FROM processed_events WHERE processed_at < $1", older_than)
    return int(result.split()[-1])


async def record_sandbox(
    db: asyncpg.Pool,
    *,
    sandbox_id: str,
    tenant_id: str,
    name: str,
    template: str,
    cpu_millis: int,
    memory_mb: int,
    metadata: Mapping[str, str],
    requested_at: datetime,
) -> None:
    await db.execute(
        "INSERT INTO sandboxes (sandbox_id, tenant_id, name, template, cpu_millis, memory_mb, metadata, requested_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) ON CONFLICT (sandbox_id) DO NOTHING",
        sandbox_id,
        tenant_id,
        name,
        template,
        cpu_millis,
        memory_mb,
        json.dumps(dict(metadata)),
        requested_at,
    )


def _rows_query(granularity: Granularity) -> str:
    sums = ", ".join(
        f"max(u.{name}) AS {name}" if name == "memory_peak_bytes" else f"sum(u.{name}) AS {name}"
        for name in _LEDGER_COLUMNS
    )
    return f"""
        SELECT date_trunc('{granularity.value}', u.minute, 'UTC') AS bucket, u.sandbox_id,
               coalesce(s.metadata, '{{}}'::jsonb)::text AS labels, {sums}
        FROM usage_minutes u
        LEFT JOIN sandboxes s ON s.sandbox_id = u.sandbox_id AND s.tenant_id = u.tenant_id
        WHERE u.tenant_id = $1 AND u.minute >= $2 AND u.minute < $3
          AND ($4 = '' OR u.sandbox_id = $4)
          AND ($5::jsonb = '{{}}'::jsonb OR s.metadata @> $5::jsonb)
        GROUP BY 1, 2, 3
        ORDER BY 1, 2"""


def _arguments(selection: Selection) -> tuple[object, ...]:
    return (
        selection.tenant_id,
        selection.window.start,
        selection.window.end,
        selection.sandbox_id,
        json.dumps(dict(selection.labels or {})),
    )


def _row(record: asyncpg.Record) -> UsageRow:
    usage = Usage(**{name: int(record[name]) for name in _LEDGER_COLUMNS})
    return UsageRow(
        start=record["bucket"], sandbox_id=record["sandbox_id"], usage=usage, labels=json.loads(record["labels"])
    )


async def usage_rows(db: asyncpg.Pool, selection: Selection, granularity: Granularity) -> list[UsageRow]:
    """One row per sandbox and bucket of the selection, in time order."""
    records = await db.fetch(_rows_query(granularity), *_arguments(selection))
    return [_row(record) for record in records]


async def stream_usage_rows(
    db: asyncpg.Pool, selection: Selection, granularity: Granularity, batch: int = 2000
) -> AsyncIterator[list[UsageRow]]:
    """The same rows as `usage_rows`, read through a cursor a batch at a time (for large exports)."""
    async with db.acquire() as conn, conn.transaction(readonly=True):
        chunk: list[UsageRow] = []
        async for record in conn.cursor(_rows_query(granularity), *_arguments(selection), prefetch=batch):
            chunk.append(_row(record))
            if len(chunk) >= batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
