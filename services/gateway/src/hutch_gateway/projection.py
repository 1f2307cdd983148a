"""Keeps sandbox records in step with what the scheduler and the nodes report.

Each event moves a record only forward from the states it may come from, so replays and
redeliveries change nothing the second time.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import cast

import asyncpg
from google.protobuf.message import Message

from hutch.core import events, outbox
from hutch.core.events import Envelope
from hutch.core.outbox import OutboxRelay
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_gateway import events_out, store
from hutch_gateway.domain import State

log = logging.getLogger(__name__)

STOP_REASONS = {
    "killed": "killed on request",
    "timeout": "its timeout expired",
    "exited": "its init process exited",
    "lost": "its node was lost",
}


class SandboxProjection:
    def __init__(self, db: asyncpg.Pool, relay: OutboxRelay, region: str) -> None:
        self._db = db
        self._relay = relay
        self._region = region

    async def __call__(self, envelope: Envelope[Message]) -> None:
        kind = envelope.kind
        async with self._db.acquire() as conn, conn.transaction():
            if kind is events.SANDBOX_PLACED:
                placed = cast(ev.SandboxPlaced, envelope.payload)
                await store.set_node(conn, placed.sandbox_id, placed.node_id)
            elif kind is events.SANDBOX_STARTED:
                await self._started(conn, cast(ev.SandboxStarted, envelope.payload))
            elif kind is events.SANDBOX_FAILED:
                failed = cast(ev.SandboxFailed, envelope.payload)
                await store.set_state(
                    conn,
                    failed.sandbox_id,
                    State.FAILED,
                    (State.PENDING, State.STOPPING),
                    error_code=failed.code or "internal",
                    reason=failed.message or "the sandbox failed to start",
                )
            elif kind is events.SANDBOX_STOPPED:
                stopped = cast(ev.SandboxStopped, envelope.payload)
                await store.set_state(
                    conn,
                    stopped.sandbox_id,
                    State.KILLED,
                    (State.PENDING, State.RUNNING, State.STOPPING),
                    reason=STOP_REASONS.get(stopped.reason, stopped.reason or "stopped"),
                )

    async def _started(self, conn: asyncpg.Connection, started: ev.SandboxStarted) -> None:
        updated = await store.set_state(
            conn,
            started.sandbox_id,
            State.RUNNING,
            (State.PENDING,),
            node_id=started.node_id,
            started_at=started.started_at.ToDatetime(tzinfo=UTC),
        )
        if updated is not None:
            return
        record = await store.get(conn, started.sandbox_id)
        if record is not None and record.state.ended:
            # It started after it was given up on (e.g. killed while pending): stop it on its node.
            log.info("sandbox %s started after it ended; killing it on %s", record.id, started.node_id)
            subject = events.node_command_subject(self._region, started.node_id)
            await outbox.stage(conn, subject, events_out.kill_command(record))
            self._relay.kick()
