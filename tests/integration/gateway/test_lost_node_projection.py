"""The projection and node loss: a loss ends only the start it names, a stale node's stop ends nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import db, events, outbox
from hutch.core.bus import Bus
from hutch.core.config import NatsSettings, PostgresSettings
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_gateway import store, tenants
from hutch_gateway.domain import CreateRequest, State
from hutch_gateway.projection import SandboxProjection

pytestmark = pytest.mark.integration


@dataclass
class Gateway:
    pool: asyncpg.Pool
    projection: SandboxProjection
    tenant: str


@pytest.fixture
async def gateway(nats_server: Any, postgres_dsn: str) -> AsyncIterator[Gateway]:
    region = "g" + uuid.uuid4().hex[:10]
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with db.pool(settings, "gateway") as pool, Bus.connect(NatsSettings(url=nats_server.url), region, "t") as bus:
        await db.migrate(pool, "gateway", [*outbox.MIGRATIONS, *db.load_migrations("hutch_gateway", "gateway")])
        tenant = await tenants.ensure_tenant_with_key(pool, "acme", "hk_" + uuid.uuid4().hex)
        yield Gateway(pool, SandboxProjection(pool, outbox.OutboxRelay(pool, bus), region), tenant)


def stop(sandbox_id: str, node_id: str, reason: str, event_id: str) -> events.Envelope[Any]:
    payload = ev.SandboxStopped(sandbox_id=sandbox_id, node_id=node_id, reason=reason)
    return events.Envelope(kind=events.SANDBOX_STOPPED, payload=payload, sandbox=sandbox_id, id=event_id)


async def test_a_loss_ends_its_own_start_and_a_stale_node_ends_nothing(gateway: Gateway) -> None:
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    async with gateway.pool.acquire() as conn:
        await store.insert_sandbox(conn, sandbox_id, gateway.tenant, CreateRequest("base", "", 1000, 512), "r")
    placed = ev.SandboxPlaced(sandbox_id=sandbox_id, node_id="n2")
    await gateway.projection(
        events.Envelope(kind=events.SANDBOX_PLACED, payload=placed, sandbox=sandbox_id, id=f"{sandbox_id}.placed")
    )
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    started = ev.SandboxStarted(sandbox_id=sandbox_id, node_id="n2", started_at=stamp)
    await gateway.projection(
        events.Envelope(kind=events.SANDBOX_STARTED, payload=started, sandbox=sandbox_id, id=f"{sandbox_id}.started")
    )

    # The loss of an earlier start (another incarnation) and a stop from a node it no longer runs on.
    await gateway.projection(stop(sandbox_id, "n1", "lost", f"{sandbox_id}.lost.sn-earlier"))
    await gateway.projection(stop(sandbox_id, "n1", "exited", f"{sandbox_id}.stopped"))
    record = await store.get(gateway.pool, sandbox_id)
    assert record is not None and record.state is State.RUNNING

    await gateway.projection(stop(sandbox_id, "n2", "lost", f"{sandbox_id}.lost"))
    record = await store.get(gateway.pool, sandbox_id)
    assert record is not None and record.state is State.KILLED
    assert record.state_reason == "its node was lost"
