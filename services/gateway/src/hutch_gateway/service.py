"""The gateway's use cases: create, get, list and kill sandboxes, and find the node that runs one.

Every method takes the caller's tenant id first; a sandbox of another tenant is simply not found.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from hutch.core import errors, events, outbox
from hutch.core.nodes import NodeDirectory, NodeInfo
from hutch.core.outbox import OutboxRelay
from hutch_gateway import events_out, store, templates
from hutch_gateway.changes import ChangeFeed
from hutch_gateway.domain import MAX_TIMEOUT_S, SANDBOX_ID_PREFIX, CreateRequest, SandboxRecord, State, new_id
from hutch_gateway.isolation import choose_isolation
from hutch_gateway.preview import DEFAULT_LIFETIME_S, MAX_LIFETIME_S, Grant, PreviewSite, sign
from hutch_gateway.routes import RouteCache
from hutch_gateway.settings import GatewayOptions

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000


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
    ) -> None:
        self._preview = preview
        self._db = db
        self._relay = relay
        self._feed = feed
        self._nodes = nodes
        self._options = options
        self._region = region
        self._routes = RouteCache()
        feed.on_change(self._routes.forget)

    async def create(self, tenant_id: str, request: CreateRequest) -> SandboxRecord:
        sandbox_id = new_id(SANDBOX_ID_PREFIX)
        async with self._db.acquire() as conn, conn.transaction():
            template_key = await templates.resolve(conn, tenant_id, request.template)
            self._check_template(request.template, template_key)
            policy = await store.isolation_policy(conn, tenant_id)
            isolation = choose_isolation(request.isolation, request.trust, policy)
            self._check_isolation(isolation)
            record = await store.insert_sandbox(conn, sandbox_id, tenant_id, request, self._region, isolation)
            await outbox.stage(
                conn,
                events.SANDBOX_REQUESTED.subject(self._region),
                events_out.requested(record, request, template_key),
            )
        self._relay.kick()
        record = await self._feed.wait_until(
            sandbox_id,
            lambda: self._reread(sandbox_id),
            lambda r: r.state != State.PENDING,
            self._options.create_timeout_s,
            "a node to start it",
        )
        if record.state == State.FAILED:
            raise record.error()
        return record

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
            raise errors.NotFound(f"sandbox {ref!r} not found" if ref else "no sandbox given: pass its id or name")
        return record

    async def list(
        self, tenant_id: str, metadata: dict[str, str], states: list[State], page_size: int, page_token: str
    ) -> tuple[list[SandboxRecord], str]:
        if page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"page_size may be at most {MAX_PAGE_SIZE}")
        wanted = states or [State.PENDING, State.RUNNING, State.STOPPING]
        return await store.list_for_tenant(self._db, tenant_id, metadata, wanted, page_size or 100, page_token)

    async def kill(self, tenant_id: str, ref: str) -> SandboxRecord:
        record = await self.get(tenant_id, ref)
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
            lambda: self._reread(record.id),
            lambda r: r.state.ended,
            self._options.kill_timeout_s,
            "its node to stop it",
        )

    async def set_timeout(self, tenant_id: str, ref: str, timeout_seconds: int) -> SandboxRecord:
        """Gives a running sandbox `timeout_seconds` more to live (0: until killed)."""
        if timeout_seconds > MAX_TIMEOUT_S:
            raise errors.InvalidArgument(f"timeout must be at most {MAX_TIMEOUT_S} seconds; use 0 for no timeout")
        record = await self.get(tenant_id, ref)
        async with self._db.acquire() as conn, conn.transaction():
            updated = await store.set_expiry(conn, record.id, timeout_seconds)
            if updated is None or not updated.node_id:
                raise errors.FailedPrecondition(f"sandbox {record.id} is {record.state.value}, not running")
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

    async def running(self, tenant_id: str, ref: str) -> tuple[SandboxRecord, NodeInfo]:
        """The sandbox and its node, for data-plane calls; refuses sandboxes that do not run."""
        record = self._routes.get(tenant_id, ref)
        if record is None:
            record = await self.get(tenant_id, ref)
            if record.state == State.RUNNING:
                self._routes.put(tenant_id, ref, record)
        if record.state != State.RUNNING or not record.node_id:
            raise errors.FailedPrecondition(
                f"sandbox {record.id} is {record.state.value}, not running"
                + (f" ({record.state_reason})" if record.state_reason else "")
            )
        node = self._nodes.get(record.node_id)
        if node is None or not self._nodes.is_alive(node):
            raise errors.Unavailable(f"node {record.node_id}, which runs sandbox {record.id}, is not answering")
        return record, node

    async def _reread(self, sandbox_id: str) -> SandboxRecord:
        record = await store.get(self._db, sandbox_id)
        if record is None:
            raise errors.Internal(f"sandbox {sandbox_id} disappeared from the database")
        return record
