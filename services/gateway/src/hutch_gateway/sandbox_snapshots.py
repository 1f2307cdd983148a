"""Snapshots of running sandboxes, pauses, resumes and forks.

The node that runs a sandbox takes its snapshot (NodeAgent.Snapshot) and the snapshot-store keeps
it; the gateway decides what the snapshot is for and moves its records:

* Snapshot: a USER snapshot, stored before the call answers; the sandbox runs on.
* Pause: a PAUSE snapshot, after which the node releases the sandbox. The record turns PAUSED and
  `sandbox.paused` (staged in the same transaction) tells the scheduler to free its placement.
* Resume: the record turns PENDING as a new incarnation (the pause snapshot's id) and
  `sandbox.requested` starts it again, preferably on the node it was paused on.
* Fork: a FORK snapshot and N new records, each started from it, preferably on the parent's node.
* Move: a gVisor sandbox whose automatic memory needs more than its node has free is paused and
  resumed at the larger size, which places it on a node with room (`sandbox.needs_room`, moves.py).

Paused time does not count against a sandbox's timeout: what was left of it applies again from the
moment it runs once more.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import asyncpg

from hutch.core import errors, events, outbox
from hutch.core.nodes import NodeInfo
from hutch.core.outbox import OutboxRelay
from hutch.events.v1 import sandbox_pb2 as ev
from hutch.internal.v1 import snapshot_store_pb2
from hutch_gateway import events_out, quotas, store, templates
from hutch_gateway.changes import ChangeFeed
from hutch_gateway.domain import (
    SANDBOX_ID_PREFIX,
    CreateRequest,
    SandboxRecord,
    State,
    new_id,
    next_incarnation,
    restart_request,
)
from hutch_gateway.isolation import GVISOR
from hutch_gateway.janitor import SnapshotJanitor
from hutch_gateway.node_snapshots import NodeSnapshotCalls, SnapshotRequest
from hutch_gateway.service import SandboxService
from hutch_gateway.settings import GatewayOptions
from hutch_gateway.snapshot_rules import (
    Step,
    check_labels,
    check_snapshot_name,
    fork_count,
    fork_metadata,
    pause_step,
    resume_step,
)
from hutch_gateway.snapshot_store import SnapshotStoreChannel

log = logging.getLogger(__name__)


class SandboxSnapshots:
    def __init__(
        self,
        db: asyncpg.Pool,
        relay: OutboxRelay,
        feed: ChangeFeed,
        sandboxes: SandboxService,
        node_calls: NodeSnapshotCalls,
        snapshot_store: SnapshotStoreChannel,
        janitor: SnapshotJanitor,
        options: GatewayOptions,
        region: str,
    ) -> None:
        self._db = db
        self._relay = relay
        self._feed = feed
        self._sandboxes = sandboxes
        self._node_calls = node_calls
        self._store = snapshot_store
        self._janitor = janitor
        self._options = options
        self._region = region

    async def snapshot(
        self, tenant_id: str, ref: str, name: str, labels: dict[str, str]
    ) -> snapshot_store_pb2.SnapshotManifest:
        """Captures a running sandbox and returns once the store holds the snapshot."""
        check_snapshot_name(name)
        check_labels(labels)
        self._store.require()
        record, node = await self._sandboxes.running(tenant_id, ref)
        taken = await self._node_calls.take(
            node, record.id, SnapshotRequest("user", name=name, labels=labels, wait_stored=True)
        )
        return await self._store.get(tenant_id, taken.snapshot_id)

    async def pause(self, tenant_id: str, ref: str) -> SandboxRecord:
        record = await self._sandboxes.get(tenant_id, ref)
        if pause_step(record) is Step.DONE:
            return record
        record, node = await self._sandboxes.running(tenant_id, record.id)
        return await self._pause(record, node, asleep=False)

    async def sleep(self, idle: ev.SandboxIdle) -> SandboxRecord | None:
        """Puts a sandbox its node reported idle to sleep: a pause that any request undoes. Nothing
        happens when it is no longer that incarnation running there, or was used meanwhile."""
        record = await self._sandboxes.reread(idle.sandbox_id)
        if (
            record.state != State.RUNNING
            or not record.auto_sleep_after_s
            or record.node_id != idle.node_id
            or record.incarnation != idle.incarnation
        ):
            return None
        node = self._sandboxes.node(record)
        try:
            return await self._pause(record, node, asleep=True)
        except errors.FailedPrecondition as exc:
            log.info("sandbox %s stays awake: %s", record.id, exc.message)
            return None

    async def move(self, need: ev.SandboxNeedsRoom) -> SandboxRecord | None:
        """Moves a gVisor sandbox whose node has no room for its automatic memory to one that has:
        a pause (its memory and processes kept), then a resume at the size it needs, placed where
        that fits. None when it is no longer that sandbox running there, or no other node has the
        room (its node then caps it where it is)."""
        record = await self._sandboxes.reread(need.sandbox_id)
        if record.isolation != GVISOR or record.incarnation != need.incarnation:
            return None
        wanted = min(need.wanted_mb, record.memory_ceiling_mb or need.wanted_mb)
        if record.state == State.PAUSED and record.asleep and record.paused_node == need.node_id:
            await self._grow_paused(record.id, wanted)  # it asked for more while its move began
            return None
        if record.state != State.RUNNING or record.node_id != need.node_id:
            return None
        if not self._sandboxes.room_elsewhere(record, wanted):
            log.info("sandbox %s needs %d MB: no other node has room, it stays where it is", record.id, wanted)
            return None
        node = self._sandboxes.node(record)
        # Paused as asleep, so that a request meanwhile waits for the resume rather than failing;
        # without the idle check, since it is most likely busy; stored before the resume, which
        # lands on another node.
        await self._pause(record, node, asleep=True, only_if_idle=False, memory_mb=wanted, wait_stored=True)
        log.info(
            "sandbox %s moves off %s to grow from %d MB to %d MB", record.id, node.node_id, record.memory_mb, wanted
        )
        try:
            return await self._resume(record.tenant_id, record.id, prefer_paused_node=False)
        except errors.ResourceExhausted:
            # The room went meanwhile: back at the size it had, which fits where it was.
            async with self._db.acquire() as conn, conn.transaction():
                locked = await store.lock(conn, record.id)
                if locked is not None and locked.state == State.PAUSED:
                    await store.set_resources(conn, record.id, locked.cpu_millis, record.memory_mb)
            return await self._resume(record.tenant_id, record.id, prefer_paused_node=True)

    async def _grow_paused(self, sandbox_id: str, memory_mb: int) -> None:
        async with self._db.acquire() as conn, conn.transaction():
            locked = await store.lock(conn, sandbox_id)
            if locked is not None and locked.state == State.PAUSED and locked.memory_mb < memory_mb:
                await store.set_resources(conn, sandbox_id, locked.cpu_millis, memory_mb)

    async def _pause(
        self,
        record: SandboxRecord,
        node: NodeInfo,
        *,
        asleep: bool,
        only_if_idle: bool | None = None,
        memory_mb: int = 0,
        wait_stored: bool = False,
    ) -> SandboxRecord:
        """Pauses a running sandbox. `asleep`: a request wakes it; `only_if_idle` (by default what
        `asleep` says): its node takes the snapshot only if nothing used it since it reported it
        idle; `memory_mb`: the size it resumes with (0: the one it has); `wait_stored`: answer once
        the snapshot-store holds the snapshot."""
        tenant_id = record.tenant_id
        try:
            idle_check = asleep if only_if_idle is None else only_if_idle
            request = SnapshotRequest("pause", stop=True, only_if_idle=idle_check, wait_stored=wait_stored)
            taken = await self._node_calls.take(node, record.id, request)
        except errors.HutchError:
            now = await self._sandboxes.get(tenant_id, record.id)
            if now.state == State.PAUSED:
                return now  # a concurrent pause got there first
            raise
        async with self._db.acquire() as conn, conn.transaction():
            before = await store.lock(conn, record.id)
            paused = await store.mark_paused(conn, record.id, taken.snapshot_id, asleep=asleep)
            if paused is not None and memory_mb:
                paused = await store.set_resources(conn, record.id, paused.cpu_millis, memory_mb)
            if paused is not None:
                await outbox.stage(
                    conn,
                    events.SANDBOX_PAUSED.subject(self._region),
                    events_out.paused(paused, node.node_id, taken.snapshot_id),
                )
        self._relay.kick()
        if paused is None:
            # It stopped running meanwhile (killed, timed out): the snapshot holds nothing to keep.
            self._janitor.forget(tenant_id, taken.snapshot_id)
            now = await self._sandboxes.get(tenant_id, record.id)
            raise errors.FailedPrecondition(f"sandbox {record.id} was {now.state.value} before its pause completed")
        if before is not None and before.paused_snapshot and before.paused_snapshot != taken.snapshot_id:
            self._janitor.forget(tenant_id, before.paused_snapshot)  # the previous pause's, replaced now
        log.info("sandbox %s %s in %s", record.id, "went to sleep" if asleep else "paused", taken.snapshot_id)
        return paused

    async def resume(self, tenant_id: str, ref: str) -> SandboxRecord:
        """Starts a paused sandbox again and returns once it runs (a running one as it is)."""
        return await self._resume(tenant_id, ref, prefer_paused_node=True)

    async def _resume(self, tenant_id: str, ref: str, *, prefer_paused_node: bool) -> SandboxRecord:
        record = await self._sandboxes.get(tenant_id, ref)
        step = resume_step(record)
        if step is Step.DONE:
            return record
        if step is Step.ACT:
            await self._request_resume(tenant_id, record.id, prefer_paused_node)
        resumed = await self._feed.wait_until(
            record.id,
            lambda: self._sandboxes.reread(record.id),
            lambda r: r.state != State.PENDING,
            self._options.create_timeout_s,
            "a node to resume it",
        )
        if resumed.state in (State.PAUSED, State.FAILED) and resumed.error_code:
            raise resumed.error()  # the resume failed; a paused sandbox stays paused, its snapshot intact
        return resumed

    async def _request_resume(self, tenant_id: str, sandbox_id: str, prefer_paused_node: bool = True) -> None:
        # Under the row's lock only one of several concurrent resumes starts it; the others wait.
        async with self._db.acquire() as conn, conn.transaction():
            paused = await store.lock(conn, sandbox_id)
            if paused is None or paused.state != State.PAUSED:
                return
            template_key = await templates.resolve(conn, tenant_id, paused.template)
            await quotas.enforce(conn, tenant_id, self._options.default_quota, 1, paused.cpu_millis, paused.memory_mb)
            incarnation = next_incarnation(paused.incarnation, paused.paused_snapshot)
            resuming = await store.mark_resuming(conn, sandbox_id, incarnation)
            assert resuming is not None  # the row is locked and paused
            await outbox.stage(
                conn,
                events.SANDBOX_REQUESTED.subject(self._region),
                events_out.requested(
                    resuming,
                    restart_request(resuming),
                    template_key,
                    prefer_node=(paused.paused_node or "") if prefer_paused_node else "",
                ),
            )
        self._relay.kick()

    async def fork(
        self, tenant_id: str, ref: str, count: int, metadata: dict[str, str]
    ) -> tuple[list[SandboxRecord], str]:
        """New sandboxes started from a running sandbox's state; returns once they all run.

        All or nothing: when a child cannot start, the others are killed and the call fails with
        the first child's error.
        """
        count = fork_count(count)
        parent, node = await self._sandboxes.running(tenant_id, ref)
        request = replace(restart_request(parent), name="", metadata=fork_metadata(parent.metadata, metadata))
        taken = await self._node_calls.take(node, parent.id, SnapshotRequest("fork"))
        child_ids = [new_id(SANDBOX_ID_PREFIX) for _ in range(count)]
        try:
            await self._insert_children(tenant_id, parent, request, child_ids, taken.snapshot_id, node)
        except errors.ResourceExhausted:
            self._janitor.forget(tenant_id, taken.snapshot_id)  # no child will start from it
            raise
        self._relay.kick()
        children = await asyncio.gather(*(self._started(child_id) for child_id in child_ids))
        for child in children:
            await self._sandboxes.remember(child)
        failed = [child for child in children if child.state == State.FAILED]
        if failed:
            await self._kill_quietly(tenant_id, [c for c in children if not c.state.ended])
            self._janitor.forget(tenant_id, taken.snapshot_id)
            first = failed[0]
            raise errors.error_for_code(
                first.error_code or "internal",
                f"{len(failed)} of {count} forked sandboxes did not start ({first.state_reason}); none were kept",
            )
        self._janitor.forget(tenant_id, taken.snapshot_id)  # every child runs on its own copy now
        return children, taken.snapshot_id

    async def _insert_children(
        self,
        tenant_id: str,
        parent: SandboxRecord,
        request: CreateRequest,
        child_ids: list[str],
        snapshot_id: str,
        node: NodeInfo,
    ) -> None:
        """The fork's children as pending rows and their start requests, within the tenant's quota."""
        async with self._db.acquire() as conn, conn.transaction():
            await quotas.enforce(
                conn, tenant_id, self._options.default_quota, len(child_ids), request.cpu_millis, request.memory_mb
            )
            template_key = await templates.resolve(conn, tenant_id, parent.template)
            for child_id in child_ids:
                child = await store.insert_sandbox(
                    conn,
                    child_id,
                    tenant_id,
                    request,
                    self._region,
                    parent.isolation,
                    source_snapshot=snapshot_id,
                    forked_from=parent.id,
                )
                await outbox.stage(
                    conn,
                    events.SANDBOX_REQUESTED.subject(self._region),
                    events_out.requested(child, request, template_key, prefer_node=node.node_id),
                )

    async def _started(self, sandbox_id: str) -> SandboxRecord:
        return await self._feed.wait_until(
            sandbox_id,
            lambda: self._sandboxes.reread(sandbox_id),
            lambda r: r.state != State.PENDING,
            self._options.create_timeout_s,
            "a node to start it",
        )

    async def _kill_quietly(self, tenant_id: str, records: list[SandboxRecord]) -> None:
        async def kill(record: SandboxRecord) -> None:
            try:
                await self._sandboxes.kill(tenant_id, record.id)
            except errors.HutchError as exc:
                log.warning("forked sandbox %s was not killed: %s", record.id, exc.message)

        await asyncio.gather(*(kill(record) for record in records))
