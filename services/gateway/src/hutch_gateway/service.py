"""The gateway's use cases: create (also from a snapshot), get, list and kill sandboxes, and find the
node that runs one. Snapshots, pauses, resumes and forks are in sandbox_snapshots.py.

Every method takes the caller's tenant id first; a sandbox of another tenant is simply not found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from hutch.core import errors, events, outbox
from hutch.core.nodes import NodeDirectory, NodeInfo
from hutch.core.outbox import OutboxRelay
from hutch.internal.v1 import snapshot_store_pb2
from hutch_gateway import events_out, quotas, store, templates
from hutch_gateway.changes import ChangeFeed
from hutch_gateway.domain import (
    LIVE_STATES,
    MAX_TIMEOUT_S,
    SANDBOX_ID_PREFIX,
    CreateRequest,
    Limits,
    SandboxNotFound,
    SandboxRecord,
    State,
    new_id,
)
from hutch_gateway.isolation import choose_isolation
from hutch_gateway.janitor import SnapshotJanitor
from hutch_gateway.preview import DEFAULT_LIFETIME_S, MAX_LIFETIME_S, Grant, PreviewSite, sign
from hutch_gateway.region_index import SandboxIndex
from hutch_gateway.region_placement import Placement, check_room
from hutch_gateway.routes import RouteCache
from hutch_gateway.settings import GatewayOptions
from hutch_gateway.snapshot_rules import not_running, parse_spec, restore_request
from hutch_gateway.snapshot_store import SnapshotStoreChannel
from hutch_gateway.warm_pool import WarmPools

# Resumes a sleeping sandbox and returns it once it runs: (tenant id, sandbox id) -> record.
Waker = Callable[[str, str], Awaitable[SandboxRecord]]

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Restore:
    """A create from a snapshot, resolved: the request completed from the snapshot's spec."""

    request: CreateRequest
    snapshot_id: str
    template_key: str
    # The node that most likely still holds a copy: where the snapshot's sandbox ran.
    prefer_node: str


@dataclass(frozen=True)
class PreviewLink:
    url: str
    host: str
    token: str
    expires_at: datetime


class SandboxService:
    def __init__(
        self,
        db: asyncpg.Pool,
        relay: OutboxRelay,
        feed: ChangeFeed,
        nodes: NodeDirectory,
        options: GatewayOptions,
        region: str,
        preview: PreviewSite,
        *,
        snapshots: SnapshotStoreChannel | None = None,
        janitor: SnapshotJanitor | None = None,
        pools: WarmPools | None = None,
        index: SandboxIndex | None = None,
    ) -> None:
        self._index = index
        self._pools = pools
        self._preview = preview
        self._snapshots = snapshots
        self._janitor = janitor
        self._db = db
        self._relay = relay
        self._feed = feed
        self._nodes = nodes
        self._options = options
        self._region = region
        self._routes = RouteCache()
        feed.on_change(self._routes.forget)
        self._wake: Waker | None = None

    @property
    def region(self) -> str:
        return self._region

    async def create(
        self, tenant_id: str, request: CreateRequest, placement: Placement = Placement.HERE
    ) -> SandboxRecord:
        """Creates a sandbox and waits until it runs; `placement` says what to do when this region has
        no room for it (see `region_placement`)."""
        restore = await self._restore(tenant_id, request) if request.snapshot else None
        if restore is not None:
            request = restore.request
        sandbox_id = new_id(SANDBOX_ID_PREFIX)
        async with self._db.acquire() as conn, conn.transaction():
            if restore is not None:
                template_key = restore.template_key
            else:
                template_key = await templates.resolve(conn, tenant_id, request.template)
                self._check_template(request.template, template_key)
            policy = await store.isolation_policy(conn, tenant_id)
            isolation = choose_isolation(request.isolation, request.trust, policy)
            self._check_isolation(isolation)
            await quotas.enforce(conn, tenant_id, self._options.default_quota, 1, request.cpu_millis, request.memory_mb)
            warm = None
            if restore is None and self._pools is not None:
                warm = await self._pools.hand_over(conn, tenant_id, request, isolation, template_key)
            if warm is None:
                if restore is None:
                    check_room(placement, self._nodes.alive(), self._region, isolation, request.memory_mb)
                record = await store.insert_sandbox(
                    conn,
                    sandbox_id,
                    tenant_id,
                    request,
                    self._region,
                    isolation,
                    source_snapshot=restore.snapshot_id if restore else "",
                )
                prefer = restore.prefer_node if restore else ""
                await outbox.stage(
                    conn,
                    events.SANDBOX_REQUESTED.subject(self._region),
                    events_out.requested(record, request, template_key, prefer_node=prefer),
                )
        self._relay.kick()
        if warm is not None and self._pools is not None:
            self._pools.kick()  # the member taken is replaced at once
            await self.remember(warm)
            return warm  # running already: nothing to place or wait for
        record = await self._feed.wait_until(
            sandbox_id,
            lambda: self.reread(sandbox_id),
            lambda r: r.state != State.PENDING,
            self._options.create_timeout_s,
            "a node to start it",
        )
        if record.state == State.FAILED:
            raise record.error()
        await self.remember(record)
        return record

    async def remember(self, record: SandboxRecord) -> None:
        """Puts a new sandbox in the cross-region index, so other regions' gateways find it at once."""
        if self._index is not None:
            await self._index.record(record)

    async def _restore(self, tenant_id: str, request: CreateRequest) -> Restore:
        """Looks the snapshot up (NOT_FOUND for another tenant's) and completes the request from it."""
        if self._snapshots is None:
            raise errors.Unavailable("snapshots are not set up here")
        try:
            manifest = await self._snapshots.get(tenant_id, request.snapshot)
        except errors.NotFound as exc:
            if self._index is None or not self._index.peers:
                raise
            # Snapshots are stored per region: one taken elsewhere has to be copied here first.
            raise errors.NotFound(
                f"{exc.message} in region {self._region!r}; a snapshot of another region is copied here "
                f"first (Snapshots.Copy, `hutch snapshot copy SNAPSHOT --to {self._region}`)"
            ) from exc
        memory = manifest.kind == snapshot_store_pb2.SNAPSHOT_KIND_MEMORY
        spec = parse_spec(manifest.spec, memory=memory, snapshot_id=manifest.id)
        limits = Limits(self._options.max_cpu_millis, self._options.max_memory_mb)
        source = await store.get(self._db, manifest.sandbox_id) if manifest.sandbox_id else None
        prefer = ""
        if source is not None and source.tenant_id == tenant_id:
            prefer = (source.paused_node if source.paused_snapshot == manifest.id else source.node_id) or ""
        return Restore(restore_request(request, spec, manifest.id, limits), manifest.id, spec.template_key, prefer)

    def _check_template(self, template: str, key: str) -> None:
        if key != template:
            return  # the tenant's own template, which the database vouches for
        # Nodes report their templates; an unknown one is refused here, at once. With no node alive
        # the scheduler gives the answer (no capacity), so the request is not refused for the wrong reason.
        known = set().union(*(n.templates for n in self._nodes.alive()))
        if known and key not in known:
            builtin = sorted(k for k in known if "/" not in k)
            raise errors.NotFound(
                f"template {template!r} does not exist; built-in: {', '.join(builtin)} "
                "(`hutch template list` shows yours)"
            )

    def _check_isolation(self, isolation: str) -> None:
        offered = set().union(*(n.isolation_classes for n in self._nodes.alive()))
        if offered and isolation not in offered:
            raise errors.FailedPrecondition(
                f"no node in region {self._region!r} runs the {isolation!r} isolation class "
                f"(offered: {', '.join(sorted(offered))})"
            )

    async def get(self, tenant_id: str, ref: str) -> SandboxRecord:
        record = await store.find(self._db, tenant_id, ref) if ref else None
        if record is None:
            raise SandboxNotFound(ref)
        return record

    async def list(
        self, tenant_id: str, metadata: dict[str, str], states: list[State], page_size: int, page_token: str
    ) -> tuple[list[SandboxRecord], str]:
        if page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"page_size may be at most {MAX_PAGE_SIZE}")
        wanted = states or list(LIVE_STATES)
        return await store.list_for_tenant(
            self._db, tenant_id, metadata, wanted, page_size or DEFAULT_PAGE_SIZE, page_token
        )

    async def kill(self, tenant_id: str, ref: str) -> SandboxRecord:
        record = await self.get(tenant_id, ref)
        if record.state == State.PAUSED:
            killed = await self._kill_paused(record)
            if killed is not None:
                return killed
            record = await self.get(tenant_id, record.id)  # resumed meanwhile: kill it as it is now
        if record.state.ended:
            raise errors.FailedPrecondition(f"sandbox {record.id} is already {record.state.value}")
        async with self._db.acquire() as conn, conn.transaction():
            updated = await store.set_state(conn, record.id, State.STOPPING, (State.PENDING, State.RUNNING))
            if updated is not None and record.state == State.RUNNING and record.node_id:
                subject = events.node_command_subject(self._region, record.node_id)
                await outbox.stage(conn, subject, events_out.kill_command(record))
            elif updated is not None:
                # Not started yet: the scheduler knows where (or whether) it was placed.
                await outbox.stage(
                    conn, events.SANDBOX_KILL_REQUESTED.subject(self._region), events_out.kill_requested(record)
                )
        self._relay.kick()
        return await self._feed.wait_until(
            record.id,
            lambda: self.reread(record.id),
            lambda r: r.state.ended,
            self._options.kill_timeout_s,
            "its node to stop it",
        )

    async def _kill_paused(self, record: SandboxRecord) -> SandboxRecord | None:
        """A paused sandbox is on no node: it ends here and now, and its pause snapshot with it."""
        async with self._db.acquire() as conn, conn.transaction():
            killed = await store.set_state(conn, record.id, State.KILLED, (State.PAUSED,), reason="killed on request")
        if killed is not None and killed.paused_snapshot and self._janitor is not None:
            self._janitor.forget(killed.tenant_id, killed.paused_snapshot)
        return killed

    async def set_timeout(self, tenant_id: str, ref: str, timeout_seconds: int) -> SandboxRecord:
        """Gives a running sandbox `timeout_seconds` more to live (0: until killed)."""
        if timeout_seconds > MAX_TIMEOUT_S:
            raise errors.InvalidArgument(f"timeout must be at most {MAX_TIMEOUT_S} seconds; use 0 for no timeout")
        record = await self.get(tenant_id, ref)
        async with self._db.acquire() as conn, conn.transaction():
            updated = await store.set_expiry(conn, record.id, timeout_seconds)
            if updated is None or not updated.node_id:
                raise not_running(await self.reread(record.id))
            subject = events.node_command_subject(self._region, updated.node_id)
            await outbox.stage(conn, subject, events_out.deadline_command(updated))
        self._relay.kick()
        return updated

    async def preview_url(self, tenant_id: str, ref: str, port: int, expires_in_s: int) -> PreviewLink:
        if not 1 <= port <= 65535:
            raise errors.InvalidArgument(f"port must be between 1 and 65535 (got {port})")
        lifetime = expires_in_s or DEFAULT_LIFETIME_S
        if lifetime > MAX_LIFETIME_S:
            raise errors.InvalidArgument(f"a preview URL may live at most {MAX_LIFETIME_S} seconds")
        record = await self.get(tenant_id, ref)
        expires_at = int(time.time()) + lifetime
        token = (
            ""
            if port in record.public_ports
            else sign(self._preview.secret, Grant(tenant_id, record.id, port, expires_at))
        )
        return PreviewLink(
            url=self._preview.url(port, record.id, token),
            host=self._preview.host(port, record.id),
            token=token,
            expires_at=datetime.fromtimestamp(expires_at, UTC),
        )

    async def set_port_visibility(self, tenant_id: str, ref: str, port: int, public: bool) -> SandboxRecord:
        if not 1 <= port <= 65535:
            raise errors.InvalidArgument(f"port must be between 1 and 65535 (got {port})")
        record = await self.get(tenant_id, ref)
        return await store.set_port_visibility(self._db, record.id, port, public)

    def wake_with(self, wake: Waker) -> None:
        """How a sleeping sandbox is woken (a resume) when a data-plane call asks for it."""
        self._wake = wake

    async def running(self, tenant_id: str, ref: str) -> tuple[SandboxRecord, NodeInfo]:
        """The sandbox and its node, for data-plane calls; refuses sandboxes that do not run.

        A sandbox that went to sleep is woken first, and the call goes on once it runs: concurrent
        calls wait for the same wake (see SandboxSnapshots.resume).
        """
        record = self._routes.get(tenant_id, ref)
        if record is None:
            record = await self.get(tenant_id, ref)
            waking = (record.state == State.PAUSED and record.asleep) or record.resuming
            if waking and self._wake is not None:
                record = await self._wake(tenant_id, record.id)
            if record.state == State.RUNNING:
                self._routes.put(tenant_id, ref, record)
        if record.state != State.RUNNING or not record.node_id:
            raise not_running(record)
        return record, self.node(record)

    def room_elsewhere(self, record: SandboxRecord, memory_mb: int) -> bool:
        """Whether a live node other than the sandbox's own has `memory_mb` unreserved for it, as the
        heartbeats tell (the scheduler, which also counts what it placed since, decides)."""
        return any(
            node.node_id != record.node_id
            and record.isolation in node.isolation_classes
            and node.memory_mb_total - node.memory_mb_allocated >= memory_mb
            and node.cpu_millis_total - node.cpu_millis_allocated >= record.cpu_millis
            for node in self._nodes.alive()
        )

    def idle_since(self, record: SandboxRecord) -> datetime | None:
        """When a running sandbox was last in use, as its node last said; None when not known."""
        node = self._nodes.get(record.node_id) if record.state == State.RUNNING and record.node_id else None
        if node is None or not self._nodes.is_alive(node):
            return None  # a silent node's last word would age without it
        return node.idle_since.get(record.id)

    def node(self, record: SandboxRecord) -> NodeInfo:
        """The live node a running sandbox is on."""
        node = self._nodes.get(record.node_id) if record.node_id else None
        if node is None or not self._nodes.is_alive(node):
            raise errors.Unavailable(f"node {record.node_id}, which runs sandbox {record.id}, is not answering")
        return node

    async def reread(self, sandbox_id: str) -> SandboxRecord:
        record = await store.get(self._db, sandbox_id)
        if record is None:
            raise errors.Internal(f"sandbox {sandbox_id} disappeared from the database")
        return record
