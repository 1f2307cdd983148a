"""Declares silent nodes lost: fences them, then reports their sandboxes lost.

A node whose last heartbeat is older than `node_lost_after_s` (or that holds placements but has no
heartbeat at all) is lost. Under the region's placement lock, so that one scheduler replica acts and
no placement races it, the scheduler

1. checks the node's heartbeat again in the bucket itself (a watcher may lag);
2. fences it: writes its key in the fenced bucket (`hutch.core.nodes.Fence`) before anything else,
   so the gateway stops routing to it and the node-agent, should it come back, stops what it still
   runs before it heartbeats again;
3. drops the node's queued commands (a create it never took must not start a sandbox on its return);
4. releases each active placement on it and, in the same transaction, stages `sandbox.stopped` with
   reason "lost" for it (event id `<sandbox>.lost[.<incarnation>]`), which the gateway turns into
   KILLED ("its node was lost").

Sandboxes are not restarted elsewhere: they are reported lost, never silently recreated empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from hutch.core import events, outbox
from hutch.core.events import Envelope
from hutch.core.nodes import Fence, NodeDirectory
from hutch.core.outbox import OutboxRelay
from hutch.events.v1 import node_pb2
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_scheduler import store

log = logging.getLogger(__name__)

LOST = "lost"


class NodeLossWatcher:
    def __init__(
        self,
        db: asyncpg.Pool,
        nodes: NodeDirectory,
        heartbeats: KeyValue,
        fences: KeyValue,
        relay: OutboxRelay,
        region: str,
        lost_after_s: float,
        drop_commands: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self._nodes = nodes
        self._heartbeats = heartbeats
        self._fences = fences
        self._relay = relay
        self._region = region
        self._lost_after = timedelta(seconds=lost_after_s)
        self._drop_commands = drop_commands

    async def run(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        with contextlib.suppress(TimeoutError):
            await self._nodes.loaded(timeout_s=10)  # judging before every heartbeat is read would be wrong
        while not stop.is_set():
            try:
                await self.check()
            except Exception:
                log.exception("checking for lost nodes failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def check(self) -> list[str]:
        """Declares every node silent past the limit lost; returns the nodes it acted on."""
        now = datetime.now(UTC)
        holding = await store.nodes_with_active_placements(self._db)
        known = {node.node_id: node for node in self._nodes.all()}
        suspects = set()
        for node_id, node in known.items():
            # A fenced node with nothing left to report needs nothing more.
            if now - node.sent_at > self._lost_after and (self._nodes.fence(node_id) is None or node_id in holding):
                suspects.add(node_id)
        suspects.update(node_id for node_id in holding if node_id not in known)
        acted = []
        for node_id in sorted(suspects):
            if await self.declare_lost(node_id):
                acted.append(node_id)
        return acted

    async def declare_lost(self, node_id: str) -> bool:
        """Fences the node and reports its sandboxes lost, unless it turns out to be alive."""
        reported: list[tuple[str, str, str]] = []
        async with self._db.acquire() as conn, conn.transaction():
            await store.lock_region(conn, self._region)
            beat = await self._heartbeat(node_id)
            now = datetime.now(UTC)
            last = beat.sent_at.ToDatetime(tzinfo=UTC) if beat is not None else None
            if last is not None and now - last <= self._lost_after:
                return False  # it spoke again meanwhile
            fence = await self._fence(node_id)
            if fence is None:
                epoch = (
                    beat.started_at.ToDatetime(tzinfo=UTC) if beat is not None and beat.HasField("started_at") else None
                )
                fence = Fence(node_id=node_id, fenced_at=now, epoch=epoch, last_heartbeat=last)
                # The fence comes first: from here on nothing is routed to the node, and on its return
                # it stops what it still runs before it heartbeats again.
                await self._fences.put(node_id, fence.encode())
                log.warning("node %s is lost (last heartbeat %s); fenced", node_id, last or "never")
                if self._drop_commands is not None:
                    await self._drop_commands(node_id)
            self._nodes.note_fence(fence)
            reported = await store.lose_node(conn, node_id)
            for sandbox_id, incarnation, tenant_id in reported:
                await self._stage_lost(conn, node_id, sandbox_id, incarnation, tenant_id, now)
        if reported:
            log.warning("reported %d sandbox(es) of lost node %s lost", len(reported), node_id)
            self._relay.kick()
        return True

    async def _heartbeat(self, node_id: str) -> node_pb2.NodeHeartbeat | None:
        try:
            entry = await self._heartbeats.get(node_id)
        except NotFoundError:
            return None
        if not entry.value:
            return None
        beat = node_pb2.NodeHeartbeat()
        try:
            beat.ParseFromString(entry.value)
        except DecodeError:
            return None
        return beat

    async def _fence(self, node_id: str) -> Fence | None:
        try:
            entry = await self._fences.get(node_id)
        except NotFoundError:
            return None
        return Fence.decode(node_id, entry.value) if entry.value else None

    async def _stage_lost(
        self,
        conn: asyncpg.Connection,
        node_id: str,
        sandbox_id: str,
        incarnation: str,
        tenant_id: str,
        when: datetime,
    ) -> None:
        stopped_at = Timestamp()
        stopped_at.FromDatetime(when)
        payload = ev.SandboxStopped(sandbox_id=sandbox_id, node_id=node_id, reason=LOST, stopped_at=stopped_at)
        envelope = Envelope(
            kind=events.SANDBOX_STOPPED,
            payload=payload,
            tenant=tenant_id,
            sandbox=sandbox_id,
            # Not `<sandbox>.stopped`: a node's own stop of a later start must not be taken for a repeat.
            id=events.sandbox_event_id(sandbox_id, LOST, incarnation),
        )
        await outbox.stage(conn, events.SANDBOX_STOPPED.subject(self._region), envelope)
