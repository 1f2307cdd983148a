"""Per-destination egress totals of each sandbox (table egress_destinations), added from the
egress-proxy's egress.traffic events exactly once (table egress_events)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class DestinationTotals:
    destination: str
    bytes_out: int
    bytes_in: int
    requests: int
    refused: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class TrafficRow:
    destination: str
    bytes_out: int
    bytes_in: int
    requests: int
    refused: int


async def add_traffic(
    db: asyncpg.Pool,
    event_id: str,
    tenant_id: str,
    sandbox_id: str,
    window_start: datetime,
    window_end: datetime,
    rows: list[TrafficRow],
) -> bool:
    """Adds one event's rows; False (and nothing added) when the event was added before."""
    async with db.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO egress_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING event_id", event_id
        )
        if fresh is None:
            return False
        for row in rows:
            await conn.execute(
                """INSERT INTO egress_destinations
                       (sandbox_id, tenant_id, destination, bytes_out, bytes_in, requests, refused,
                        first_seen, last_seen)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (sandbox_id, destination) DO UPDATE SET
                       bytes_out = egress_destinations.bytes_out + EXCLUDED.bytes_out,
                       bytes_in = egress_destinations.bytes_in + EXCLUDED.bytes_in,
                       requests = egress_destinations.requests + EXCLUDED.requests,
                       refused = egress_destinations.refused + EXCLUDED.refused,
                       first_seen = LEAST(egress_destinations.first_seen, EXCLUDED.first_seen),
                       last_seen = GREATEST(egress_destinations.last_seen, EXCLUDED.last_seen)""",
                sandbox_id,
                tenant_id,
                row.destination,
                row.bytes_out,
                row.bytes_in,
                row.requests,
                row.refused,
                window_start,
                window_end,
            )
    return True


async def totals(db: asyncpg.Pool, tenant_id: str, sandbox_id: str) -> list[DestinationTotals]:
    rows = await db.fetch(
        "SELECT destination, bytes_out, bytes_in, requests, refused, first_seen, last_seen FROM egress_destinations "
        "WHERE tenant_id = $1 AND sandbox_id = $2 ORDER BY bytes_out + bytes_in DESC, destination",
        tenant_id,
        sandbox_id,
    )
    return [DestinationTotals(**dict(r)) for r in rows]


async def prune_events(db: asyncpg.Pool, older_than_s: float) -> int:
    """Forgets ids of events received longer ago than the stream keeps messages (they cannot come
    again); returns how many."""
    result = await db.execute(
        "DELETE FROM egress_events WHERE received_at < now() - make_interval(secs => $1)", older_than_s
    )
    return int(result.split()[-1])
