"""Reacts to sandbox lifecycle events: places requested sandboxes, frees what stopped or paused ones held.

A sandbox may be placed more than once: each start from a snapshot (a resume) is an incarnation of
its own, named by the snapshot, with its own placement and its own event ids.
"""

from __future__ import annotations

import functools
import logging
from typing import cast

import asyncpg
from google.protobuf.message import Message

from hutch.core import errors, events, outbox
from hutch.core.events import Envelope
from hutch.core.nodes import NodeDirectory
from hutch.core.outbox import OutboxRelay
from hutch.core.warm_pool import is_pool_member
from hutch.events.v1 import node_pb2
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_scheduler import store
from hutch_scheduler.placement import Candidate, Demand, choose_node
from hutch_scheduler.settings import SchedulerOptions

log = logging.getLogger(__name__)


class SchedulerHandler:
    def __init__(
        self,
        db: asyncpg.Pool,
        nodes: NodeDirectory,
        relay: OutboxRelay,
        region: str,
        options: SchedulerOptions | None = None,
    ) -> None:
        self._db = db
        self._nodes = nodes
        self._relay = relay
        self._region = region
        self._options = options or SchedulerOptions()

    async def __call__(self, envelope: Envelope[Message]) -> None:
        kind = envelope.kind
        if kind is events.SANDBOX_REQUESTED:
            await self._place(cast(ev.SandboxRequested, envelope.payload).spec)
        elif kind is events.SANDBOX_KILL_REQUESTED:
            await self._forward_kill(cast(ev.SandboxKillRequested, envelope.payload), envelope.tenant)
        elif kind is events.SANDBOX_FAILED:
            # Only the incarnation that failed: a stale failure must not free a later start's node.
            incarnation = events.incarnation_of(envelope.id, envelope.sandbox)
            await store.release(self._db, envelope.sandbox, incarnation)
        elif kind in (events.SANDBOX_STOPPED, events.SANDBOX_PAUSED):
            await store.release(self._db, envelope.sandbox)
        elif kind is events.SANDBOX_RESIZED:
            # A live resize on its node: the placement holds the new size from now on.
            resized = cast(ev.SandboxResized, envelope.payload)
            await store.resize(self._db, resized.sandbox_id, resized.resources.cpu_millis, resized.resources.memory_mb)

    def _candidates(self, used: dict[str, tuple[int, int]], tenant_counts: dict[str, int]) -> list[Candidate]:
        result = []
        for node in self._nodes.alive():
            ledger_cpu, ledger_memory = used.get(node.node_id, (0, 0))
            # The node's own count also covers sandboxes this ledger does not know about.
            result.append(
                Candidate(
                    node_id=node.node_id,
                    cpu_millis_total=node.cpu_millis_total,
                    memory_mb_total=int(node.memory_mb_total * self._options.memory_overcommit),
                    cpu_millis_used=max(ledger_cpu, node.cpu_millis_allocated),
                    memory_mb_used=max(ledger_memory, node.memory_mb_allocated),
                    templates=node.templates,
                    isolation_classes=node.isolation_classes,
                    tenant_sandboxes=tenant_counts.get(node.node_id, 0),
                )
            )
        return result

    async def _place(self, spec: ev.SandboxSpec) -> None:
        demand = Demand(
            spec.resources.cpu_millis, spec.resources.memory_mb, spec.template, spec.isolation or "container"
        )
        sandbox, tenant, incarnation = spec.sandbox_id, spec.tenant_id, spec.incarnation or spec.snapshot_id
        event_id = functools.partial(events.sandbox_event_id, sandbox, incarnation=incarnation)
        async with self._db.acquire() as conn, conn.transaction():
            await store.lock_region(conn, self._region)
            if await store.exists(conn, sandbox, incarnation):
                # Redelivered (the decision and its events are committed already), or a warm pool
                # member claimed by a tenant: from now on it counts as that tenant's.
                if not is_pool_member(tenant):
                    await store.claim_for_tenant(conn, sandbox, incarnation, tenant)
                return
            try:
                candidates = self._candidates(
                    await store.usage_by_node(conn), await store.tenant_sandboxes_by_node(conn, tenant)
                )
                node_id = choose_node(
                    demand, candidates, self._region, prefer=spec.prefer_node, strategy=self._options.strategy
                )
            except errors.HutchError as exc:
                log.info("cannot place %s: %s", sandbox, exc.message)
                await store.record(conn, sandbox, incarnation, tenant, None, demand)
                failed = ev.SandboxFailed(sandbox_id=sandbox, code=exc.code, message=exc.message)
                await self._stage(conn, events.SANDBOX_FAILED, failed, tenant, sandbox, event_id("unplaced"))
            else:
                await store.record(conn, sandbox, incarnation, tenant, node_id, demand)
                command = node_pb2.NodeCommand(create=node_pb2.CreateSandbox(spec=spec))
                await outbox.stage(
                    conn,
                    events.node_command_subject(self._region, node_id),
                    Envelope(
                        kind=events.NODE_COMMAND,
                        payload=command,
                        tenant=tenant,
                        sandbox=sandbox,
                        id=event_id("create"),
                    ),
                )
                placed = ev.SandboxPlaced(sandbox_id=sandbox, node_id=node_id)
                await self._stage(conn, events.SANDBOX_PLACED, placed, tenant, sandbox, event_id("placed"))
        self._relay.kick()

    async def _forward_kill(self, request: ev.SandboxKillRequested, tenant: str) -> None:
        sandbox = request.sandbox_id
        async with self._db.acquire() as conn, conn.transaction():
            node_id = await store.active_node(conn, sandbox)
            if node_id is None:
                return  # never placed or already stopped: its failed/stopped event settles it
            command = node_pb2.NodeCommand(kill=node_pb2.KillSandbox(sandbox_id=sandbox, reason="killed"))
            await outbox.stage(
                conn,
                events.node_command_subject(self._region, node_id),
                Envelope(
                    kind=events.NODE_COMMAND, payload=command, tenant=tenant, sandbox=sandbox, id=f"{sandbox}.kill"
                ),
            )
        self._relay.kick()

    async def _stage(
        self,
        conn: asyncpg.Connection,
        kind: events.EventKind[events.M],
        payload: events.M,
        tenant: str,
        sandbox: str,
        event_id: str,
    ) -> None:
        envelope = Envelope(kind=kind, payload=payload, tenant=tenant, sandbox=sandbox, id=event_id)
        await outbox.stage(conn, kind.subject(self._region), envelope)
