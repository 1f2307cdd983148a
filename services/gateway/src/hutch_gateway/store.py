"""The gateway's tables: tenants, API keys and sandbox records.

Every change to a sandbox row also sends `NOTIFY hutch_sandbox, '<id>'` in the same transaction, so
any gateway replica waiting on that sandbox wakes only once the change is committed.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import asyncpg

from hutch.core import errors
from hutch_gateway.domain import CreateRequest, SandboxRecord, State
from hutch_gateway.isolation import IsolationPolicy

CHANNEL = "hutch_sandbox"

_COLUMNS = (
    "id, tenant_id, name, template, state, cpu_millis, memory_mb, metadata, timeout_seconds, region, "
    "node_id, error_code, state_reason, created_at, started_at, ended_at, isolation, expires_at, public_ports"
)


def _record(row: asyncpg.Record) -> SandboxRecord:
    metadata = row["metadata"]
    return SandboxRecord(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        template=row["template"],
        state=State(row["state"]),
        cpu_millis=row["cpu_millis"],
        memory_mb=row["memory_mb"],
        metadata=json.loads(metadata) if isinstance(metadata, str) else dict(metadata),
        timeout_seconds=row["timeout_seconds"],
        region=row["region"],
        node_id=row["node_id"],
        error_code=row["error_code"],
        state_reason=row["state_reason"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        isolation=row["isolation"],
        expires_at=row["expires_at"],
        public_ports=tuple(row["public_ports"]),
    )


async def notify(conn: asyncpg.Connection | asyncpg.Pool, sandbox_id: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, sandbox_id)


# -- tenants and keys ------------------------------------------------------------------------


async def tenant_for_key_hash(db: asyncpg.Pool, key_hash: str) -> str | None:
    tenant: str | None = await db.fetchval(
        "SELECT tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
    return tenant


async def ensure_tenant(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, name: str) -> str:
    """Creates the tenant unless one with this name exists; returns the tenant's id."""
    existing: str | None = await conn.fetchval("SELECT id FROM tenants WHERE name = $1", name)
    if existing:
        return existing
    await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", tenant_id, name)
    found: str = await conn.fetchval("SELECT id FROM tenants WHERE name = $1", name)
    return found


async def add_key(
    conn: asyncpg.Connection | asyncpg.Pool, key_id: str, tenant_id: str, key_hash: str, prefix: str
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, tenant_id, key_hash, prefix) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (key_hash) DO NOTHING",
        key_id,
        tenant_id,
        key_hash,
        prefix,
    )


async def isolation_policy(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str) -> IsolationPolicy:
    row = await conn.fetchrow("SELECT allowed_isolation, default_trust FROM tenants WHERE id = $1", tenant_id)
    if row is None:
        raise errors.NotFound(f"tenant {tenant_id} does not exist")
    return IsolationPolicy(frozenset(row["allowed_isolation"]), row["default_trust"])


async def set_isolation_policy(db: asyncpg.Pool, tenant_name: str, policy: IsolationPolicy) -> bool:
    result: str = await db.execute(
        "UPDATE tenants SET allowed_isolation = $2, default_trust = $3 WHERE name = $1",
        tenant_name,
        sorted(policy.allowed),
        policy.default_trust,
    )
    return result.endswith(" 1")


async def list_tenants(db: asyncpg.Pool) -> list[tuple[str, str, int]]:
    rows = await db.fetch(
        "SELECT t.id, t.name, count(k.id) AS keys FROM tenants t "
        "LEFT JOIN api_keys k ON k.tenant_id = t.id AND k.revoked_at IS NULL GROUP BY t.id ORDER BY t.name"
    )
    return [(r["id"], r["name"], r["keys"]) for r in rows]


# -- sandboxes -------------------------------------------------------------------------------


async def insert_sandbox(
    conn: asyncpg.Connection,
    sandbox_id: str,
    tenant_id: str,
    request: CreateRequest,
    region: str,
    isolation: str = "container",
) -> SandboxRecord:
    try:
        row = await conn.fetchrow(
            f"INSERT INTO sandboxes (id, tenant_id, name, template, state, cpu_millis, memory_mb, metadata, "
            f"timeout_seconds, region, isolation) "
            f"VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7::jsonb, $8, $9, $10) RETURNING {_COLUMNS}",
            sandbox_id,
            tenant_id,
            request.name,
            request.template,
            request.cpu_millis,
            request.memory_mb,
            json.dumps(request.metadata),
            request.timeout_seconds,
            region,
            isolation,
        )
    except asyncpg.UniqueViolationError:
        raise errors.AlreadyExists(
            f"a live sandbox is already named {request.name!r}; kill it or choose another name"
        ) from None
    return _record(row)


async def find(db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, ref: str) -> SandboxRecord | None:
    """The tenant's sandbox with this id, or its live sandbox with this name (else its newest)."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM sandboxes WHERE tenant_id = $1 AND (id = $2 OR name = $2) "
        "ORDER BY (id = $2) DESC, (state IN ('killed', 'failed')) ASC, created_at DESC LIMIT 1",
        tenant_id,
        ref,
    )
    return _record(row) if row else None


async def get(db: asyncpg.Pool | asyncpg.Connection, sandbox_id: str) -> SandboxRecord | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = $1", sandbox_id)
    return _record(row) if row else None


async def list_for_tenant(
    db: asyncpg.Pool,
    tenant_id: str,
    metadata: dict[str, str],
    states: list[State],
    page_size: int,
    page_token: str,
) -> tuple[list[SandboxRecord], str]:
    args: list[Any] = [tenant_id, [s.value for s in states], json.dumps(metadata)]
    where = "tenant_id = $1 AND state = ANY($2::text[]) AND metadata @> $3::jsonb"
    if page_token:
        created_at, last_id = _decode_token(page_token)
        args += [created_at, last_id]
        where += " AND (created_at, id) < ($4, $5)"
    args.append(page_size + 1)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM sandboxes WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    records = [_record(r) for r in rows[:page_size]]
    token = _encode_token(records[-1]) if len(rows) > page_size else ""
    return records, token


def _encode_token(record: SandboxRecord) -> str:
    raw = json.dumps({"t": record.created_at.isoformat(), "id": record.id}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(data["t"]), str(data["id"])
    except (ValueError, KeyError, TypeError):
        raise errors.InvalidArgument("page_token is not one this API returned") from None


async def set_state(
    conn: asyncpg.Connection,
    sandbox_id: str,
    new: State,
    only_from: tuple[State, ...],
    *,
    node_id: str | None = None,
    error_code: str = "",
    reason: str = "",
    started_at: datetime | None = None,
) -> SandboxRecord | None:
    """Moves the sandbox to `new` if it is in one of `only_from`; returns the updated record or None."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET
               state = $2,
               node_id = COALESCE($4, node_id),
               error_code = CASE WHEN $5 <> '' THEN $5 ELSE error_code END,
               state_reason = CASE WHEN $6 <> '' THEN $6 ELSE state_reason END,
               started_at = COALESCE($7, started_at),
               expires_at = CASE
                   WHEN $7::timestamptz IS NOT NULL AND timeout_seconds > 0
                   THEN $7::timestamptz + make_interval(secs => timeout_seconds)
                   ELSE expires_at END,
               ended_at = CASE WHEN $2 IN ('killed', 'failed') THEN now() ELSE ended_at END
           WHERE id = $1 AND state = ANY($3::text[])
           RETURNING {_COLUMNS}""",
        sandbox_id,
        new.value,
        [s.value for s in only_from],
        node_id,
        error_code,
        reason,
        started_at,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def set_node(conn: asyncpg.Connection, sandbox_id: str, node_id: str) -> None:
    await conn.execute("UPDATE sandboxes SET node_id = $2 WHERE id = $1 AND node_id IS NULL", sandbox_id, node_id)


async def set_expiry(conn: asyncpg.Connection, sandbox_id: str, timeout_seconds: int) -> SandboxRecord | None:
    """Sets a running sandbox's timeout, counted from now (0: none); None if it is not running."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET
               timeout_seconds = $2,
               expires_at = CASE WHEN $2 > 0 THEN now() + make_interval(secs => $2) ELSE NULL END
           WHERE id = $1 AND state = 'running'
           RETURNING {_COLUMNS}""",
        sandbox_id,
        timeout_seconds,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def set_port_visibility(db: asyncpg.Pool, sandbox_id: str, port: int, public: bool) -> SandboxRecord:
    row = await db.fetchrow(
        f"""UPDATE sandboxes SET public_ports = CASE
               WHEN $3 THEN (SELECT array_agg(DISTINCT p ORDER BY p) FROM unnest(public_ports || $2::int) p)
               ELSE array_remove(public_ports, $2::int) END
           WHERE id = $1 RETURNING {_COLUMNS}""",
        sandbox_id,
        port,
        public,
    )
    await notify(db, sandbox_id)
    return _record(row)
