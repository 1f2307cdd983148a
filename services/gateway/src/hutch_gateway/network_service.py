"""A sandbox's network: replace its policy while it runs, read it, and what it sent where.

A change is stored and, in the same transaction, staged as an `update_network` command for the
sandbox's node, which hands it to its egress-proxy; new connections follow it within a second.
"""

from __future__ import annotations

import asyncpg

from hutch.core import errors, events, outbox
from hutch.core.outbox import OutboxRelay
from hutch_gateway import egress_store, events_out, store
from hutch_gateway.domain import SandboxRecord, State
from hutch_gateway.egress_store import DestinationTotals
from hutch_gateway.network_rules import NetworkLists, check_network
from hutch_gateway.service import SandboxService


class NetworkService:
    def __init__(self, db: asyncpg.Pool, relay: OutboxRelay, sandboxes: SandboxService, region: str) -> None:
        self._db = db
        self._relay = relay
        self._sandboxes = sandboxes
        self._region = region

    async def update(self, tenant_id: str, ref: str, network: NetworkLists) -> SandboxRecord:
        checked = check_network(**network)
        record = await self._sandboxes.get(tenant_id, ref)
        if record.state.ended:
            raise errors.FailedPrecondition(f"sandbox {record.id} is {record.state.value}")
        async with self._db.acquire() as conn, conn.transaction():
            updated = await store.set_network(conn, record.id, checked)
            if updated is None:
                raise errors.FailedPrecondition(f"sandbox {record.id} has ended")
            if updated.state in (State.PENDING, State.STOPPING):
                # Its start request already went out with the old policy; a change now could be lost.
                # (Rolled back with the transaction.)
                raise errors.FailedPrecondition(
                    f"sandbox {record.id} is {updated.state.value}: change its network once it runs or is paused"
                )
            if updated.state == State.RUNNING and updated.node_id:
                subject = events.node_command_subject(self._region, updated.node_id)
                await outbox.stage(conn, subject, events_out.network_command(updated))
        self._relay.kick()
        # Paused: its resume carries the new policy in its spec.
        return updated

    async def get(self, tenant_id: str, ref: str) -> SandboxRecord:
        return await self._sandboxes.get(tenant_id, ref)

    async def egress(self, tenant_id: str, ref: str) -> tuple[SandboxRecord, list[DestinationTotals]]:
        record = await self._sandboxes.get(tenant_id, ref)
        return record, await egress_store.totals(self._db, tenant_id, record.id)
