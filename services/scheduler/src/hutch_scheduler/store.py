"""The placements ledger in PostgreSQL."""

from __future__ import annotations

import hashlib

import asyncpg

from hutch.core.warm_pool import WARM_POOL_TENANT
from hutch_scheduler.placement import Demand


def region_lock_key(region: str) -> int:
    """Placements in one region are decided one at a time, also across scheduler replicas."""
    return int.from_bytes(hashlib.sha256(f"hutch-placement:{region}".encode()).digest()[:8], "big", signed=True)


async def lock_region(conn: asyncpg.Connection, region: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", region_lock_key(region))


async def exists(conn: asyncpg.Connection, sandbox_id: str, incarnation: str = "") -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM placements WHERE sandbox_id = $1 AND incarnation = $2", sandbox_id, incarnation
        )
    )


async def claim_for_tenant(conn: asyncpg.Connection, sandbox_id: str, incarnation: str, tenant_id: str) -> None:
    """A warm pool member's placement becomes its tenant's (never the other way round: a late
    redelivery of the member's own request must not hand it back to the pool)."""
    await conn.execute(
        "UPDATE placements SET tenant_id = $3 WHERE sandbox_id = $1 AND incarnation = $2 AND tenant_id = $4",
        sandbox_id,
        incarnation,
        tenant_id,
        WARM_POOL_TENANT,
    )


async def usage_by_node(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT node_id, sum(cpu_millis) AS cpu, sum(memory_mb) AS memory FROM placements WHERE active GROUP BY node_id"
    )
    return {r["node_id"]: (int(r["cpu"]), int(r["memory"])) for r in rows}


async def tenant_sandboxes_by_node(conn: asyncpg.Connection, tenant_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT node_id, count(*) AS n FROM placements WHERE active AND tenant_id = $1 GROUP BY node_id", tenant_id
    )
    return {r["node_id"]: int(r["n"]) for r in rows}


async def record(
    conn: asyncpg.Connection,
    sandbox_id: str,
    incarnation: str,
    tenant_id: str,
    node_id: str | None,
    demand: Demand,
) -> None:
    await conn.execute(
        "INSERT INTO placements (sandbox_id, incarnation, tenant_id, node_id, cpu_millis, memory_mb, active) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        sandbox_id,
        incarnation,
        tenant_id,
        node_id,
        demand.cpu_millis,
        demand.memory_mb,
        node_id is not None,
    )


async def release(conn: asyncpg.Connection | asyncpg.Pool, sandbox_id: str, incarnation: str | None = None) -> None:
    """Frees what the sandbox holds: every incarnation's placement, or only the one named."""
    await conn.execute(
        "UPDATE placements SET active = false, released_at = now() "
        "WHERE sandbox_id = $1 AND active AND ($2::text IS NULL OR incarnation = $2)",
        sandbox_id,
        incarnation,
    )


async def active_node(conn: asyncpg.Connection, sandbox_id: str) -> str | None:
    node: str | None = await conn.fetchval(
        "SELECT node_id FROM placements WHERE sandbox_id = $1 AND active", sandbox_id
    )
    return node


async def resize(conn: asyncpg.Connection | asyncpg.Pool, sandbox_id: str, cpu_millis: int, memory_mb: int) -> None:
    """The sandbox's active placement holds its new size (a live resize)."""
    await conn.execute(
        "UPDATE placements SET cpu_millis = $2, memory_mb = $3 WHERE sandbox_id = $1 AND active",
        sandbox_id,
        cpu_millis,
        memory_mb,
    )


async def nodes_with_active_placements(conn: asyncpg.Connection | asyncpg.Pool) -> set[str]:
    rows = await conn.fetch("SELECT DISTINCT node_id FROM placements WHERE active AND node_id IS NOT NULL")
    return {r["node_id"] for r in rows}


async def lose_node(conn: asyncpg.Connection, node_id: str) -> list[tuple[str, str, str]]:
    """Releases every active placement on a lost node; returns (sandbox, incarnation, tenant) of each."""
    rows = await conn.fetch(
        "UPDATE placements SET active = false, released_at = now() "
        "WHERE node_id = $1 AND active RETURNING sandbox_id, incarnation, tenant_id",
        node_id,
    )
    return [(r["sandbox_id"], r["incarnation"], r["tenant_id"]) for r in rows]
