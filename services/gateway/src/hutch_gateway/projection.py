"""Keeps sandbox records in step with what the scheduler and the nodes report.

Each event moves a record only forward from the states it may come from, so replays and
redeliveries change nothing the second time. A sandbox that was paused starts again under the same
id; the ids of `placed`, `started` and `failed` name the start they belong to (its incarnation, see
`hutch.core.events.sandbox_event_id`), and one that belongs to an earlier start changes nothing.
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
from hutch_gateway import events_out, store, templates
from hutch_gateway.domain import SandboxRecord, State, restart_request
from hutch_gateway.janitor import SnapshotJanitor
from hutch_gateway.lost_recovery import LostRecovery

log = logging.getLogger(__name__)

STOP_REASONS = {
    "killed": "killed on request",
    "timeout": "its timeout expired",
    "exited": "its init process exited",
    "lost": "its node was lost",
}


class SandboxProjection:
    def __init__(
        self,
        db: asyncpg.Pool,
        relay: OutboxRelay,
        region: str,
        janitor: SnapshotJanitor | None = None,
        recovery: LostRecovery | None = None,
    ) -> None:
        self._db = db
        self._relay = relay
        self._region = region
        self._janitor = janitor
        self._recovery = recovery

    async def __call__(self, envelope: Envelope[Message]) -> None:
        kind = envelope.kind
        ended: SandboxRecord | None = None
        # Looked up before the transaction: it asks the snapshot-store.
        restart_from = await self._restart_point(envelope) if kind is events.SANDBOX_STOPPED else None
        async with self._db.acquire() as conn, conn.transaction():
            if kind is events.SANDBOX_PLACED:
                placed = cast(ev.SandboxPlaced, envelope.payload)
                incarnation = events.incarnation_of(envelope.id, placed.sandbox_id)
                await store.set_node(conn, placed.sandbox_id, placed.node_id, incarnation)
            elif kind is events.SANDBOX_STARTED:
                started = cast(ev.SandboxStarted, envelope.payload)
                await self._started(conn, started, events.incarnation_of(envelope.id, started.sandbox_id))
            elif kind is events.SANDBOX_FAILED:
                failed = cast(ev.SandboxFailed, envelope.payload)
                ended = await self._failed(conn, failed, events.incarnation_of(envelope.id, failed.sandbox_id))
            elif kind is events.SANDBOX_RESIZED:
                # Also the gateway's own resizes, whose row already holds the size: a no-op then.
                resized = cast(ev.SandboxResized, envelope.payload)
                await store.node_resized(
                    conn,
                    resized.sandbox_id,
                    resized.node_id,
                    resized.resources.cpu_millis,
                    resized.resources.memory_mb,
                )
            elif kind is events.SANDBOX_STOPPED:
                stopped = cast(ev.SandboxStopped, envelope.payload)
                if restart_from is None or not await self._restart(conn, stopped, envelope.id, restart_from):
                    ended = await self._stopped(conn, stopped, envelope.id)
        if restart_from is not None:
            self._relay.kick()
        if ended is not None and ended.state.ended and ended.paused_snapshot and self._janitor is not None:
            self._janitor.forget(ended.tenant_id, ended.paused_snapshot)  # its last pause's state is not needed

    async def _restart_point(self, envelope: Envelope[Message]) -> str | None:
        """For a sandbox whose node was lost: the snapshot to start it again from, if any."""
        stopped = cast(ev.SandboxStopped, envelope.payload)
        if self._recovery is None or stopped.reason != "lost":
            return None
        record = await store.get(self._db, stopped.sandbox_id)
        lost = events.incarnation_of(envelope.id, stopped.sandbox_id)
        if record is None or record.state not in (State.PENDING, State.RUNNING) or record.incarnation != lost:
            return None
        return await self._recovery.snapshot_to_restart_from(record)

    async def _restart(
        self, conn: asyncpg.Connection, stopped: ev.SandboxStopped, event_id: str, snapshot_id: str
    ) -> bool:
        """Starts a sandbox whose node was lost again from `snapshot_id`, on whichever node the
        scheduler picks (never the fenced one); False when the lost start is no longer current."""
        lost = events.incarnation_of(event_id, stopped.sandbox_id) or ""
        reason = f"its node was lost; restarting it from snapshot {snapshot_id}"
        record = await store.mark_restarting(conn, stopped.sandbox_id, lost, snapshot_id, reason)
        if record is None:
            return False
        template_key = await templates.resolve(conn, record.tenant_id, record.template)
        await outbox.stage(
            conn,
            events.SANDBOX_REQUESTED.subject(self._region),
            events_out.requested(record, restart_request(record), template_key),
        )
        log.info("sandbox %s lost its node; restarting it from %s", record.id, snapshot_id)
        return True

    async def _stopped(
        self, conn: asyncpg.Connection, stopped: ev.SandboxStopped, event_id: str
    ) -> SandboxRecord | None:
        # A loss names the start it ended (`<sandbox>.lost[.<incarnation>]`); a node's own stop names
        # the node, and a node's stop of a sandbox now recorded on another node is stale (e.g. a fenced
        # node stopping what was restarted elsewhere).
        incarnation = events.incarnation_of(event_id, stopped.sandbox_id) if stopped.reason == "lost" else None
        if stopped.node_id and stopped.reason != "lost":
            record = await store.get(conn, stopped.sandbox_id)
            if record is not None and record.node_id and record.node_id != stopped.node_id:
                log.info("ignoring a stop of %s from %s: it runs on %s", record.id, stopped.node_id, record.node_id)
                return None
        # A paused sandbox is on no node, so a stop cannot be its own: PAUSED is not among these.
        return await store.set_state(
            conn,
            stopped.sandbox_id,
            State.KILLED,
            (State.PENDING, State.RUNNING, State.STOPPING),
            reason=STOP_REASONS.get(stopped.reason, stopped.reason or "stopped"),
            incarnation=incarnation,
        )

    async def _failed(
        self, conn: asyncpg.Connection, failed: ev.SandboxFailed, incarnation: str | None
    ) -> SandboxRecord | None:
        code = failed.code or "internal"
        if incarnation:
            # A resume that failed leaves the sandbox paused: its snapshot still holds it.
            reason = f"it could not be resumed: {failed.message or 'the node failed to start it'}"
            if await store.back_to_paused(conn, failed.sandbox_id, incarnation, code, reason) is not None:
                return None
        return await store.set_state(
            conn,
            failed.sandbox_id,
            State.FAILED,
            (State.PENDING, State.STOPPING),
            error_code=code,
            reason=failed.message or "the sandbox failed to start",
            incarnation=incarnation,
        )

    async def _started(self, conn: asyncpg.Connection, started: ev.SandboxStarted, incarnation: str | None) -> None:
        when = started.started_at.ToDatetime(tzinfo=UTC)
        updated = await store.mark_started(conn, started.sandbox_id, started.node_id, when, incarnation)
        if updated is not None:
            return
        record = await store.get(conn, started.sandbox_id)
        if record is not None and record.state.ended:
            # It started after it was given up on (e.g. killed while pending): stop it on its node.
            log.info("sandbox %s started after it ended; killing it on %s", record.id, started.node_id)
            subject = events.node_command_subject(self._region, started.node_id)
            await outbox.stage(conn, subject, events_out.kill_command(record))
            self._relay.kick()
