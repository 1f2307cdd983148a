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
from hutch.core.warm_pool import WARM_POOL_TENANT
from hutch_gateway.domain import CreateRequest, SandboxRecord, State
from hutch_gateway.isolation import IsolationPolicy
from hutch_gateway.network_rules import lists_from

CHANNEL = "hutch_sandbox"

_COLUMNS = (
    "id, tenant_id, name, template, state, cpu_millis, memory_mb, metadata, timeout_seconds, region, "
    "node_id, error_code, state_reason, created_at, started_at, ended_at, isolation, expires_at, public_ports, "
    "source_snapshot, forked_from, paused_snapshot, paused_node, incarnation, timeout_left_s, envs, network, "
    "auto_sleep_after_s, asleep, memory_ceiling_mb"
)


def _json_object(value: str | dict[str, str]) -> dict[str, str]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def _record(row: asyncpg.Record) -> SandboxRecord:
    return SandboxRecord(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        template=row["template"],
        state=State(row["state"]),
        cpu_millis=row["cpu_millis"],
        memory_mb=row["memory_mb"],
        metadata=_json_object(row["metadata"]),
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
        source_snapshot=row["source_snapshot"],
        forked_from=row["forked_from"],
        paused_snapshot=row["paused_snapshot"],
        paused_node=row["paused_node"],
        incarnation=row["incarnation"],
        timeout_left_s=row["timeout_left_s"],
        envs=_json_object(row["envs"]),
        network=lists_from(row["network"]),
        auto_sleep_after_s=row["auto_sleep_after_s"],
        asleep=row["asleep"],
        memory_ceiling_mb=row["memory_ceiling_mb"],
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
    *,
    source_snapshot: str = "",
    forked_from: str = "",
) -> SandboxRecord:
    """A new pending sandbox; one made from a snapshot starts its life as that snapshot's incarnation."""
    try:
        row = await conn.fetchrow(
            f"INSERT INTO sandboxes (id, tenant_id, name, template, state, cpu_millis, memory_mb, metadata, "
            f"timeout_seconds, region, isolation, envs, source_snapshot, forked_from, incarnation, network, "
            f"auto_sleep_after_s, memory_ceiling_mb) "
            f"VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7::jsonb, $8, $9, $10, $11::jsonb, $12, $13, $12, "
            f"$14::jsonb, $15, $16) "
            f"RETURNING {_COLUMNS}",
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
            json.dumps(request.envs),
            source_snapshot,
            forked_from,
            json.dumps(request.network),
            request.auto_sleep_after_s,
            request.memory_ceiling_mb,
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
    return page_token(record.created_at, record.id)


def page_token(created_at: datetime, sandbox_id: str) -> str:
    """The token of the page after the sandbox created at `created_at` with this id. Pages are in one
    order in every region (newest first, then by id), so a token goes on in any region."""
    raw = json.dumps({"t": created_at.isoformat(), "id": sandbox_id}).encode()
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
    incarnation: str | None = None,
) -> SandboxRecord | None:
    """Moves the sandbox to `new` if it is in one of `only_from` (and, when `incarnation` is given, its
    current start is that one); returns the updated record or None."""
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
           WHERE id = $1 AND state = ANY($3::text[]) AND ($8::text IS NULL OR incarnation = $8)
           RETURNING {_COLUMNS}""",
        sandbox_id,
        new.value,
        [s.value for s in only_from],
        node_id,
        error_code,
        reason,
        started_at,
        incarnation,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def set_node(conn: asyncpg.Connection, sandbox_id: str, node_id: str, incarnation: str | None = None) -> None:
    """Records where the scheduler placed the sandbox's current start (None: whichever start)."""
    await conn.execute(
        "UPDATE sandboxes SET node_id = $2 "
        "WHERE id = $1 AND node_id IS NULL AND ($3::text IS NULL OR incarnation = $3)",
        sandbox_id,
        node_id,
        incarnation,
    )


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


# -- starts, pauses and resumes ------------------------------------------------------------------


async def lock(conn: asyncpg.Connection, sandbox_id: str) -> SandboxRecord | None:
    """The sandbox's row, locked until the transaction ends: its state cannot change meanwhile."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = $1 FOR UPDATE", sandbox_id)
    return _record(row) if row else None


async def mark_started(
    conn: asyncpg.Connection, sandbox_id: str, node_id: str, started_at: datetime, incarnation: str | None
) -> SandboxRecord | None:
    """PENDING -> RUNNING for the sandbox's current start (None: whichever). Its timeout counts from
    now: all of it on the first start, what was left of it after a resume. `started_at` stays the
    first start's."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET
               state = 'running',
               node_id = $2,
               started_at = COALESCE(started_at, $3),
               expires_at = CASE
                   WHEN COALESCE(timeout_left_s, timeout_seconds) > 0
                   THEN $3::timestamptz + make_interval(secs => COALESCE(timeout_left_s, timeout_seconds))
                   ELSE NULL END,
               timeout_left_s = NULL,
               error_code = '',
               state_reason = ''
           WHERE id = $1 AND state = 'pending' AND ($4::text IS NULL OR incarnation = $4)
           RETURNING {_COLUMNS}""",
        sandbox_id,
        node_id,
        started_at,
        incarnation,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def mark_paused(
    conn: asyncpg.Connection, sandbox_id: str, snapshot_id: str, *, asleep: bool = False
) -> SandboxRecord | None:
    """RUNNING -> PAUSED, held by `snapshot_id`; what is left of its timeout is kept for the resume.
    `asleep`: paused by its idle policy, so that a request wakes it."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET
               state = 'paused',
               asleep = $3,
               paused_snapshot = $2,
               paused_node = node_id,
               timeout_left_s = CASE
                   WHEN expires_at IS NULL THEN NULL
                   ELSE greatest(1, ceil(extract(epoch FROM expires_at - now())))::integer END,
               expires_at = NULL
           WHERE id = $1 AND state = 'running'
           RETURNING {_COLUMNS}""",
        sandbox_id,
        snapshot_id,
        asleep,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def mark_resuming(conn: asyncpg.Connection, sandbox_id: str, incarnation: str) -> SandboxRecord | None:
    """PAUSED -> PENDING as a new start (named `incarnation`) from its pause snapshot, to be placed afresh."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET
               state = 'pending',
               asleep = false,
               incarnation = $2,
               node_id = NULL,
               error_code = '',
               state_reason = ''
           WHERE id = $1 AND state = 'paused'
           RETURNING {_COLUMNS}""",
        sandbox_id,
        incarnation,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def mark_restarting(
    conn: asyncpg.Connection, sandbox_id: str, lost_incarnation: str, snapshot_id: str, reason: str
) -> SandboxRecord | None:
    """A sandbox whose node was lost, PENDING again as a start from `snapshot_id`; None when the
    lost start is no longer its current one."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET
               state = 'pending',
               incarnation = $3,
               node_id = NULL,
               error_code = '',
               state_reason = $4
           WHERE id = $1 AND state IN ('pending', 'running') AND incarnation = $2
           RETURNING {_COLUMNS}""",
        sandbox_id,
        lost_incarnation,
        snapshot_id,
        reason,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def back_to_paused(
    conn: asyncpg.Connection, sandbox_id: str, incarnation: str, error_code: str, reason: str
) -> SandboxRecord | None:
    """A resume that failed leaves the sandbox paused (its snapshot still holds it), saying why."""
    row = await conn.fetchrow(
        f"""UPDATE sandboxes SET state = 'paused', error_code = $3, state_reason = $4
           WHERE id = $1 AND state = 'pending' AND incarnation = $2
             AND paused_snapshot = split_part($2, '~', 1)
           RETURNING {_COLUMNS}""",
        sandbox_id,
        incarnation,
        error_code,
        reason,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def held_by_snapshot(db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, snapshot_id: str) -> str | None:
    """The tenant's sandbox that a snapshot holds now: paused in it, or resuming from it."""
    held: str | None = await db.fetchval(
        "SELECT id FROM sandboxes WHERE tenant_id = $1 AND paused_snapshot = $2 "
        "AND (state = 'paused' OR (state = 'pending' AND split_part(incarnation, '~', 1) = $2)) LIMIT 1",
        tenant_id,
        snapshot_id,
    )
    return held


async def set_network(conn: asyncpg.Connection, sandbox_id: str, network: dict[str, list[str]]) -> SandboxRecord | None:
    """Replaces a live sandbox's network policy; None once it has ended."""
    row = await conn.fetchrow(
        f"UPDATE sandboxes SET network = $2::jsonb WHERE id = $1 AND state NOT IN ('killed', 'failed') "
        f"RETURNING {_COLUMNS}",
        sandbox_id,
        json.dumps(network),
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def set_resources(conn: asyncpg.Connection, sandbox_id: str, cpu_millis: int, memory_mb: int) -> SandboxRecord:
    """A running sandbox's new size (a live resize)."""
    row = await conn.fetchrow(
        f"UPDATE sandboxes SET cpu_millis = $2, memory_mb = $3 WHERE id = $1 RETURNING {_COLUMNS}",
        sandbox_id,
        cpu_millis,
        memory_mb,
    )
    await notify(conn, sandbox_id)
    return _record(row)


async def node_resized(
    conn: asyncpg.Connection, sandbox_id: str, node_id: str, cpu_millis: int, memory_mb: int
) -> SandboxRecord | None:
    """A size its node gave a running sandbox by itself (automatic memory); None when the sandbox
    no longer runs there."""
    row = await conn.fetchrow(
        f"UPDATE sandboxes SET cpu_millis = $3, memory_mb = $4 WHERE id = $1 AND node_id = $2 AND state = 'running' "
        f"RETURNING {_COLUMNS}",
        sandbox_id,
        node_id,
        cpu_millis,
        memory_mb,
    )
    if row is None:
        return None
    await notify(conn, sandbox_id)
    return _record(row)


async def own_sandboxes_by_node(db: asyncpg.Pool, tenant_id: str) -> dict[str, list[str]]:
    """The ids of the tenant's running sandboxes on each node."""
    rows = await db.fetch(
        "SELECT node_id, array_agg(id ORDER BY id) AS ids FROM sandboxes WHERE tenant_id = $1 "
        "AND state = 'running' AND node_id IS NOT NULL GROUP BY node_id",
        tenant_id,
    )
    return {row["node_id"]: list(row["ids"]) for row in rows}


# -- warm pools (see warm_pool.py) ---------------------------------------------------------------


async def live_in_region(db: asyncpg.Pool | asyncpg.Connection, region: str) -> list[SandboxRecord]:
    """Every live sandbox of the region (the warm pool's aside), for the cross-region index."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM sandboxes WHERE region = $1 AND tenant_id <> $2 "
        "AND state IN ('pending', 'running', 'stopping', 'paused')",
        region,
        WARM_POOL_TENANT,
    )
    return [_record(row) for row in rows]


async def pool_members(conn: asyncpg.Connection, region: str, tenant_id: str) -> list[SandboxRecord]:
    """The region's live (pending or running) warm pool members, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM sandboxes WHERE tenant_id = $1 AND region = $2 AND state IN ('pending', 'running') "
        "ORDER BY created_at, id",
        tenant_id,
        region,
    )
    return [_record(row) for row in rows]


async def recent_pool_failures(
    conn: asyncpg.Connection, region: str, tenant_id: str, within_s: float
) -> list[SandboxRecord]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM sandboxes WHERE tenant_id = $1 AND region = $2 AND state = 'failed' "
        "AND ended_at > now() - make_interval(secs => $3)",
        tenant_id,
        region,
        within_s,
    )
    return [_record(row) for row in rows]


async def lock_pool_member(
    conn: asyncpg.Connection,
    pool_tenant: str,
    region: str,
    template: str,
    isolation: str,
    cpu_millis: int,
    memory_mb: int,
) -> SandboxRecord | None:
    """The oldest running member of this kind, locked; members another claim holds are skipped."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM sandboxes WHERE tenant_id = $1 AND region = $2 AND state = 'running' "
        "AND template = $3 AND isolation = $4 AND cpu_millis = $5 AND memory_mb = $6 "
        "ORDER BY started_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        pool_tenant,
        region,
        template,
        isolation,
        cpu_millis,
        memory_mb,
    )
    return _record(row) if row else None


async def lock_if_free(conn: asyncpg.Connection, sandbox_id: str) -> SandboxRecord | None:
    """The sandbox's row, locked; None when another transaction holds it (or it does not exist)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = $1 FOR UPDATE SKIP LOCKED", sandbox_id)
    return _record(row) if row else None


async def hand_over(
    conn: asyncpg.Connection, sandbox_id: str, tenant_id: str, request: CreateRequest, started_at: datetime
) -> SandboxRecord:
    """A pool member becomes the tenant's sandbox as `request` describes it, started (and its timeout
    counting) from `started_at`."""
    try:
        row = await conn.fetchrow(
            f"""UPDATE sandboxes SET
                   tenant_id = $2, name = $3, metadata = $4::jsonb, envs = $5::jsonb, timeout_seconds = $6,
                   network = $7::jsonb, auto_sleep_after_s = $8, created_at = $9, started_at = $9,
                   expires_at = CASE WHEN $6 > 0 THEN $9::timestamptz + make_interval(secs => $6) ELSE NULL END
               WHERE id = $1
               RETURNING {_COLUMNS}""",
            sandbox_id,
            tenant_id,
            request.name,
            json.dumps(request.metadata),
            json.dumps(request.envs),
            request.timeout_seconds,
            json.dumps(request.network),
            request.auto_sleep_after_s,
            started_at,
        )
    except asyncpg.UniqueViolationError:
        raise errors.AlreadyExists(
            f"a live sandbox is already named {request.name!r}; kill it or choose another name"
        ) from None
    await notify(conn, sandbox_id)
    return _record(row)


async def warm_pools(db: asyncpg.Pool | asyncpg.Connection, region: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT template, isolation, cpu_millis, memory_mb, size FROM warm_pools WHERE region = $1 "
            "ORDER BY template, isolation, cpu_millis, memory_mb",
            region,
        )
    )


async def set_warm_pool(
    db: asyncpg.Pool, region: str, template: str, isolation: str, cpu_millis: int, memory_mb: int, size: int
) -> None:
    """Sets how many of this kind the region keeps warm; 0 removes the pool (its members are retired)."""
    if size == 0:
        await db.execute(
            "DELETE FROM warm_pools WHERE region = $1 AND template = $2 AND isolation = $3 AND cpu_millis = $4 "
            "AND memory_mb = $5",
            region, template, isolation, cpu_millis, memory_mb,
        )  # fmt: skip
        return
    await db.execute(
        "INSERT INTO warm_pools (region, template, isolation, cpu_millis, memory_mb, size) "
        "VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (region, template, isolation, cpu_millis, memory_mb) DO UPDATE SET size = EXCLUDED.size",
        region, template, isolation, cpu_millis, memory_mb, size,
    )  # fmt: skip
