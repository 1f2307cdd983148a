"""The transactional outbox: a state change and its event commit together.

A service writes its rows and calls `stage()` on the same connection inside one transaction; the
relay publishes staged events to JetStream afterwards and deletes them. A crash between commit and
publish only delays the event (the relay finds it at the next start); a crash after publish but
before the delete publishes it again with the same Nats-Msg-Id, which JetStream drops as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg

from hutch.core import telemetry
from hutch.core.bus import Bus
from hutch.core.db import Migration
from hutch.core.events import Envelope

log = logging.getLogger(__name__)

MIGRATIONS = [
    Migration(
        "outbox",
        1,
        "create_outbox",
        """CREATE TABLE outbox (
               seq bigserial PRIMARY KEY,
               event_id text NOT NULL UNIQUE,
               subject text NOT NULL,
               headers jsonb NOT NULL,
               body bytea NOT NULL,
               created_at timestamptz NOT NULL DEFAULT now())""",
    )
]


async def stage(conn: asyncpg.Connection, subject: str, envelope: Envelope[Any]) -> None:
    """Adds an event to the outbox as part of the caller's open transaction."""
    headers = envelope.headers()
    telemetry.inject(headers)
    await conn.execute(
        "INSERT INTO outbox (event_id, subject, headers, body) VALUES ($1, $2, $3::jsonb, $4)",
        envelope.id,
        subject,
        json.dumps(headers),
        envelope.body(),
    )


class OutboxRelay:
    """Publishes staged events in commit order. `kick()` after a commit makes it run at once."""

    def __init__(self, db: asyncpg.Pool, bus: Bus, batch: int = 100, idle_poll_s: float = 1.0) -> None:
        self._db = db
        self._bus = bus
        self._batch = batch
        self._idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def kick(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.drain_once():
                    pass
            except Exception as exc:  # NATS or PostgreSQL away: retry on the next round
                log.warning("outbox relay: %r", exc)
                await asyncio.sleep(0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_poll_s)
            self._wake.clear()

    async def drain_once(self) -> int:
        """Publishes up to one batch; returns how many events it published."""
        async with self._lock, self._db.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, subject, headers, body FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
            )
            for row in rows:
                await self._bus.publish_raw(row["subject"], bytes(row["body"]), json.loads(row["headers"]))
            if rows:
                await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [r["seq"] for r in rows])
            return len(rows)
