"""Warm pools: sandboxes started ahead of demand and handed to tenants on create.

An operator sizes a pool per region and kind (template, isolation class, vCPUs, memory) with
`hutch-gateway admin set-warm-pool`. The refill loop keeps each pool at its size: it requests
members, ordinary sandboxes owned by the pool tenant (hutch.core.warm_pool) that the scheduler
places like any other, and retires members of pools that shrank or went away. A kind whose members
failed to start lately is left alone for a while, so a missing template or a full region does not
turn into a stream of failing starts.

A create that asks for exactly a pool's kind (a built-in template, no snapshot, no automatic
memory) takes the oldest running member: its row is locked, its node adopts it for the tenant
(NodeAgent.Adopt: owner, environment, timeout, idle policy and network; metered from now) and the
row becomes the tenant's sandbox in the same transaction. No placement and no start: the create
answers as soon as the node has. Without a running member, or when the handover fails, the create
starts a sandbox as usual; a member whose handover failed is retired.

A handover interrupted between its node's adoption and the commit (the gateway died, the caller
went away, the answer timed out) leaves a member its node holds as a tenant's while the database
still lists it in the pool; the tenant never got it. Every RECONCILE_INTERVAL_S the members are
checked against their nodes (NodeAgent.ListLocal) and such a member is retired. Until then, seconds
at most, it is metered to that tenant: the one window in which a tenant is billed for a sandbox it
did not get. The tenant's row stays locked (its quota check) across the Adopt call, which takes
milliseconds; that tenant's other creates wait that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg
import grpc

from hutch.core import errors, events, outbox
from hutch.core.nodes import NodeDirectory
from hutch.core.outbox import OutboxRelay
from hutch.core.warm_pool import WARM_POOL_TENANT, is_pool_member
from hutch.internal.v1 import node_agent_pb2
from hutch_gateway import events_out, store
from hutch_gateway.dataplane import NodeChannels
from hutch_gateway.domain import SANDBOX_ID_PREFIX, CreateRequest, SandboxRecord, State, new_id

log = logging.getLogger(__name__)

REFILL_INTERVAL_S: Final = 2.0
# How often members are checked against their nodes (see `reconcile`).
RECONCILE_INTERVAL_S: Final = 10.0
# A kind with a member that failed to start this recently gets no new members yet.
FAILURE_BACKOFF_S: Final = 30.0
ADOPT_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True)
class PoolKind:
    """What a pool's members are: a create must ask for exactly this to be served from it."""

    template: str
    isolation: str
    cpu_millis: int
    memory_mb: int

    def __str__(self) -> str:
        return f"{self.template}/{self.isolation} {self.cpu_millis / 1000:g} vCPU {self.memory_mb} MB"


@dataclass(frozen=True)
class Pool:
    kind: PoolKind
    size: int


def kind_of(record: SandboxRecord) -> PoolKind:
    return PoolKind(record.template, record.isolation, record.cpu_millis, record.memory_mb)


def wanted_kind(request: CreateRequest, isolation: str, template_key: str) -> PoolKind | None:
    """The pool kind a create could be served from; None when only a fresh start will do (a
    snapshot, automatic memory, or a tenant's own template, which no pool member can hold)."""
    if request.snapshot or request.memory_ceiling_mb or template_key != request.template:
        return None
    return PoolKind(request.template, isolation, request.cpu_millis, request.memory_mb)


def refill_plan(
    pools: list[Pool], members: list[SandboxRecord], failing: set[PoolKind]
) -> tuple[dict[PoolKind, int], list[SandboxRecord]]:
    """How many members to request of each kind, and which running members to retire (beyond their
    pool's size, newest first, so the longest-warm ones stay). Pure logic."""
    by_kind: defaultdict[PoolKind, list[SandboxRecord]] = defaultdict(list)
    for member in members:
        by_kind[kind_of(member)].append(member)
    sizes = {pool.kind: pool.size for pool in pools}
    start = {
        pool.kind: pool.size - len(by_kind[pool.kind])
        for pool in pools
        if pool.size > len(by_kind[pool.kind]) and pool.kind not in failing
    }
    retire: list[SandboxRecord] = []
    for kind, group in by_kind.items():
        surplus = len(group) - sizes.get(kind, 0)
        running = [m for m in group if m.state == State.RUNNING]
        # Pending ones are left to start: the next round retires them if they are still too many.
        retire.extend(running[::-1][: max(0, surplus)])
    return start, retire


def _lock_key(region: str) -> int:
    return int.from_bytes(hashlib.sha256(f"hutch-warm-pool:{region}".encode()).digest()[:8], "big", signed=True)


class WarmPools:
    def __init__(
        self, db: asyncpg.Pool, relay: OutboxRelay, nodes: NodeDirectory, channels: NodeChannels, region: str
    ) -> None:
        self._db = db
        self._relay = relay
        self._nodes = nodes
        self._channels = channels
        self._region = region
        self._wake = asyncio.Event()
        self._failing: set[PoolKind] = set()
        # The kinds pooled in this region, as the last refill read them: a create of another kind
        # (every create, where no pool is set up) costs no query.
        self._pooled: frozenset[PoolKind] = frozenset()

    def kick(self) -> None:
        """Refill soon: call once a transaction that took a member has committed."""
        self._wake.set()

    # -- handing members over --------------------------------------------------------------

    async def hand_over(
        self, conn: asyncpg.Connection, tenant_id: str, request: CreateRequest, isolation: str, template_key: str
    ) -> SandboxRecord | None:
        """Makes a running member the tenant's sandbox, inside the caller's transaction; None when
        none is free or its handover failed (the caller then starts one). AlreadyExists when the
        name is taken, as for any create."""
        kind = wanted_kind(request, isolation, template_key)
        if kind is None or kind not in self._pooled:
            return None
        member = await store.lock_pool_member(
            conn, WARM_POOL_TENANT, self._region, kind.template, kind.isolation, kind.cpu_millis, kind.memory_mb
        )
        if member is None:
            return None
        node = self._nodes.get(member.node_id) if member.node_id else None
        if node is None or not self._nodes.is_alive(node):
            await self._retire(conn, member, "its node is not answering")
            return None
        try:
            async with conn.transaction():  # a savepoint: a failed handover leaves the member as it was
                record = await store.hand_over(conn, member.id, tenant_id, request, datetime.now(UTC))
                requested = events_out.requested(record, request, template_key)
                await self._channels.stub(node.address).Adopt(
                    node_agent_pb2.AdoptSandboxRequest(spec=requested.payload.spec),
                    metadata=self._channels.metadata(),
                    timeout=ADOPT_TIMEOUT_S,
                )
                # For billing's catalogue of who owns what; the scheduler placed it long ago.
                claimed = dataclasses.replace(requested, id=f"{record.id}.claimed")
                await outbox.stage(conn, events.SANDBOX_REQUESTED.subject(self._region), claimed)
        except grpc.RpcError as exc:
            log.warning("warm pool member %s could not be handed over: %s", member.id, exc.details() or exc.code())
            await self._retire(conn, member, "its handover to a tenant failed")
            return None
        log.info("sandbox %s: warm pool member (%s) handed to tenant %s", record.id, kind, tenant_id)
        return record

    async def _retire(self, conn: asyncpg.Connection, member: SandboxRecord, why: str) -> None:
        stopping = await store.set_state(conn, member.id, State.STOPPING, (State.RUNNING,), reason=why)
        if stopping is not None and member.node_id:
            subject = events.node_command_subject(self._region, member.node_id)
            await outbox.stage(conn, subject, events_out.kill_command(member, reason=why))

    # -- keeping pools full ----------------------------------------------------------------

    async def refill(self) -> None:
        """One round: requests missing members and retires surplus ones."""
        async with self._db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(self._region))
            pools = [
                Pool(PoolKind(r["template"], r["isolation"], r["cpu_millis"], r["memory_mb"]), r["size"])
                for r in await store.warm_pools(conn, self._region)
            ]
            members = await store.pool_members(conn, self._region, WARM_POOL_TENANT)
            failures = await store.recent_pool_failures(conn, self._region, WARM_POOL_TENANT, FAILURE_BACKOFF_S)
            failing = {kind_of(f) for f in failures} & {p.kind for p in pools}
            for kind in failing - self._failing:
                reason = next(f.state_reason for f in failures if kind_of(f) == kind)
                log.warning("warm pool %s: members fail to start (%s); trying again later", kind, reason)
            self._failing = failing
            self._pooled = frozenset(p.kind for p in pools)
            start, retire = refill_plan(pools, members, failing)
            for kind, count in start.items():
                for _ in range(count):
                    await self._request_member(conn, kind)
            for member in retire:
                # A create may be handing it over right now (its row locked) or have done so since
                # the read above: only a member still unclaimed and free is retired.
                locked = await store.lock_if_free(conn, member.id)
                if locked is not None and is_pool_member(locked.tenant_id) and locked.state == State.RUNNING:
                    await self._retire(conn, locked, "its warm pool shrank")
        if start or retire:
            self._relay.kick()

    async def _request_member(self, conn: asyncpg.Connection, kind: PoolKind) -> None:
        request = CreateRequest(template=kind.template, name="", cpu_millis=kind.cpu_millis, memory_mb=kind.memory_mb)
        record = await store.insert_sandbox(
            conn, new_id(SANDBOX_ID_PREFIX), WARM_POOL_TENANT, request, self._region, kind.isolation
        )
        await outbox.stage(
            conn, events.SANDBOX_REQUESTED.subject(self._region), events_out.requested(record, request, kind.template)
        )

    async def reconcile(self) -> int:
        """Retires members whose node holds them as a tenant's (an interrupted handover); returns
        how many. A member a handover holds right now is left to it."""
        async with self._db.acquire() as conn:
            members = await store.pool_members(conn, self._region, WARM_POOL_TENANT)
        by_node: defaultdict[str, list[SandboxRecord]] = defaultdict(list)
        for member in members:
            if member.state == State.RUNNING and member.node_id:
                by_node[member.node_id].append(member)
        retired = 0
        for node_id, group in by_node.items():
            node = self._nodes.get(node_id)
            if node is None or not self._nodes.is_alive(node):
                continue
            try:
                local = await self._channels.stub(node.address).ListLocal(
                    node_agent_pb2.ListLocalRequest(), metadata=self._channels.metadata(), timeout=ADOPT_TIMEOUT_S
                )
            except grpc.RpcError as exc:
                log.info("cannot check warm pool members on %s: %s", node_id, exc.details() or exc.code())
                continue
            owners = {s.sandbox_id: s.tenant_id for s in local.sandboxes}
            for member in group:
                owner = owners.get(member.id)
                if owner is None or is_pool_member(owner):
                    continue
                async with self._db.acquire() as conn, conn.transaction():
                    locked = await store.lock_if_free(conn, member.id)
                    if locked is None or not is_pool_member(locked.tenant_id) or locked.state != State.RUNNING:
                        continue  # a handover holds it, or it is no longer a member
                    log.warning(
                        "warm pool member %s was adopted by %s but never handed over: retiring it", member.id, owner
                    )
                    await self._retire(conn, locked, "its handover to a tenant was interrupted")
                    retired += 1
        if retired:
            self._relay.kick()
        return retired

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time()
        while not stop.is_set():
            try:
                await self.refill()
                if loop.time() >= next_check:
                    next_check = loop.time() + RECONCILE_INTERVAL_S
                    await self.reconcile()
            except (OSError, asyncpg.PostgresError, errors.HutchError) as exc:
                log.warning("warm pool refill failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REFILL_INTERVAL_S)
            self._wake.clear()
