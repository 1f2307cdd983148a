"""Manifests, chunk rows, pins and pending deletions in PostgreSQL (schema `snapshots`).

Locking, which the safety of garbage collection rests on (see docs/services/snapshot-store.md):
* a reader of "is this chunk present" that will rely on it (FindMissing, PutChunks of a known chunk)
  takes FOR SHARE on the chunk rows, in hash order, and pins them in the same transaction;
* Commit and Delete change `refs` under FOR NO KEY UPDATE, in hash order;
* garbage collection takes FOR UPDATE SKIP LOCKED (it never waits, so it never deadlocks with
  writers, and skips rows a writer holds) and then, in a new statement that sees every pin committed
  so far, deletes only rows still unreferenced and unpinned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg

from hutch.core import errors
from hutch_snapshot_store.domain.model import (
    BeginParams,
    ChunkRef,
    CopyParams,
    Kind,
    ListQuery,
    Purpose,
    Snapshot,
    State,
    Stream,
    TenantUsage,
)
from hutch_snapshot_store.domain.validation import is_snapshot_id

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

_SNAPSHOT_COLUMNS = (
    "id, tenant_id, name, sandbox_id, kind, purpose, parent_id, spec, labels, state, created_at, "
    "lease_expires_at, logical_bytes, new_stored_bytes, copied_from_region"
)


def packed(hashes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


def _snapshot(row: asyncpg.Record, streams: tuple[Stream, ...] = ()) -> Snapshot:
    labels = row["labels"]
    return Snapshot(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"] or "",
        sandbox_id=row["sandbox_id"],
        kind=Kind(row["kind"]),
        purpose=Purpose(row["purpose"]),
        parent_id=row["parent_id"],
        spec=bytes(row["spec"]),
        labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
        state=State(row["state"]),
        created_at=row["created_at"],
        lease_expires_at=row["lease_expires_at"],
        logical_bytes=int(row["logical_bytes"]),
        new_stored_bytes=int(row["new_stored_bytes"]),
        streams=streams,
        copied_from_region=row["copied_from_region"] or "",
    )


# -- tenant keys -------------------------------------------------------------------------------------


async def tenant_key(conn: Conn, tenant_id: str) -> tuple[bytes, str] | None:
    row = await conn.fetchrow("SELECT wrapped_key, master_key_id FROM tenant_keys WHERE tenant_id = $1", tenant_id)
    return None if row is None else (bytes(row["wrapped_key"]), row["master_key_id"])


async def add_tenant_key(conn: Conn, tenant_id: str, wrapped: bytes, master_key_id: str) -> None:
    """Stores a tenant's first key; a concurrent first key wins and this one is dropped."""
    await conn.execute(
        "INSERT INTO tenant_keys (tenant_id, wrapped_key, master_key_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (tenant_id) DO NOTHING",
        tenant_id,
        wrapped,
        master_key_id,
    )


async def keys_wrapped_by_others(conn: asyncpg.Connection, master_key_id: str) -> list[tuple[str, bytes, str]]:
    rows = await conn.fetch(
        "SELECT tenant_id, wrapped_key, master_key_id FROM tenant_keys WHERE master_key_id <> $1 "
        "ORDER BY tenant_id FOR UPDATE",
        master_key_id,
    )
    return [(r["tenant_id"], bytes(r["wrapped_key"]), r["master_key_id"]) for r in rows]


async def rewrap_key(conn: asyncpg.Connection, tenant_id: str, wrapped: bytes, master_key_id: str) -> None:
    await conn.execute(
        "UPDATE tenant_keys SET wrapped_key = $2, master_key_id = $3, rewrapped_at = now() WHERE tenant_id = $1",
        tenant_id,
        wrapped,
        master_key_id,
    )


# -- snapshots ---------------------------------------------------------------------------------------


async def insert_snapshot(conn: Conn, snapshot_id: str, params: BeginParams, lease_s: float) -> Snapshot:
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO snapshots (id, tenant_id, name, sandbox_id, kind, purpose, parent_id, spec, labels,
                                       state, lease_expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, 'pending', now() + make_interval(secs => $10))
                RETURNING {_SNAPSHOT_COLUMNS}""",
            snapshot_id,
            params.tenant_id,
            params.name or None,
            params.sandbox_id,
            int(params.kind),
            int(params.purpose),
            params.parent_id,
            params.spec,
            json.dumps(params.labels),
            lease_s,
        )
    except asyncpg.UniqueViolationError:
        raise errors.AlreadyExists(
            f"a snapshot named {params.name!r} already exists (or is being written): choose another name"
        ) from None
    return _snapshot(row)


async def insert_copy(conn: Conn, copy: CopyParams, lease_s: float) -> Snapshot | None:
    """The pending copy of another region's snapshot; None when a snapshot with its id is here already."""
    params = copy.params
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO snapshots (id, tenant_id, name, sandbox_id, kind, purpose, parent_id, spec, labels,
                                       state, lease_expires_at, created_at, copied_from_region)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, 'pending', now() + make_interval(secs => $10),
                        $11, $12)
                ON CONFLICT (id) DO NOTHING
                RETURNING {_SNAPSHOT_COLUMNS}""",
            copy.snapshot_id,
            params.tenant_id,
            params.name or None,
            params.sandbox_id,
            int(params.kind),
            int(params.purpose),
            params.parent_id,
            params.spec,
            json.dumps(params.labels),
            lease_s,
            copy.created_at,
            copy.source_region,
        )
    except asyncpg.UniqueViolationError:
        raise errors.AlreadyExists(
            f"a snapshot named {params.name!r} already exists in this region (or is being written): "
            "rename or delete it, then import again"
        ) from None
    return None if row is None else _snapshot(row)


async def extend_pending(conn: Conn, tenant_id: str, snapshot_id: str, lease_s: float) -> Snapshot:
    """The pending snapshot, its lease extended and its row locked (within a transaction).

    NotFound for an unknown id or another tenant's; FailedPrecondition when it is already committed.
    """
    row = await conn.fetchrow(
        f"""UPDATE snapshots SET lease_expires_at = now() + make_interval(secs => $3)
            WHERE id = $1 AND tenant_id = $2 AND state = 'pending' RETURNING {_SNAPSHOT_COLUMNS}""",
        snapshot_id,
        tenant_id,
        lease_s,
    )
    if row is not None:
        return _snapshot(row)
    state = await conn.fetchval("SELECT state FROM snapshots WHERE id = $1 AND tenant_id = $2", snapshot_id, tenant_id)
    if state == State.COMMITTED:
        raise errors.FailedPrecondition(f"snapshot {snapshot_id} is already committed; begin a new one")
    raise errors.NotFound(
        f"no pending snapshot {snapshot_id}: it was never begun, was aborted, or its lease expired; begin again"
    )


async def lock_snapshot(conn: asyncpg.Connection, tenant_id: str, snapshot_id: str) -> Snapshot | None:
    row = await conn.fetchrow(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
        snapshot_id,
        tenant_id,
    )
    return None if row is None else _snapshot(row)


async def find_committed(conn: Conn, tenant_id: str, id_or_name: str, *, lock: bool = False) -> Snapshot | None:
    column = "id" if is_snapshot_id(id_or_name) else "name"
    row = await conn.fetchrow(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE {column} = $1 AND tenant_id = $2 AND state = 'committed'"
        + (" FOR UPDATE" if lock else ""),
        id_or_name,
        tenant_id,
    )
    return None if row is None else _snapshot(row)


async def is_pending(conn: Conn, tenant_id: str, snapshot_id: str) -> bool:
    """Whether the tenant has a snapshot with this id that is still being written."""
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM snapshots WHERE id = $1 AND tenant_id = $2 AND state = 'pending'", snapshot_id, tenant_id
        )
    )


async def streams_of(conn: Conn, snapshot_id: str) -> tuple[Stream, ...]:
    rows = await conn.fetch(
        "SELECT name, hashes, sizes FROM snapshot_streams WHERE snapshot_id = $1 ORDER BY position", snapshot_id
    )
    result = []
    for row in rows:
        digests: bytes = row["hashes"]
        sizes: list[int] = row["sizes"]
        chunks = tuple(ChunkRef(digests[i * 32 : (i + 1) * 32].hex(), size) for i, size in enumerate(sizes))
        result.append(Stream(row["name"], chunks))
    return tuple(result)


async def with_streams(conn: Conn, snapshot: Snapshot) -> Snapshot:
    streams = await streams_of(conn, snapshot.id)
    return Snapshot(**{**snapshot.__dict__, "streams": streams})


async def insert_streams(conn: asyncpg.Connection, snapshot_id: str, streams: Sequence[Stream]) -> None:
    await conn.executemany(
        "INSERT INTO snapshot_streams (snapshot_id, position, name, size, hashes, sizes) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (
                snapshot_id,
                position,
                stream.name,
                stream.size,
                b"".join(bytes.fromhex(c.hash) for c in stream.chunks),
                [c.size for c in stream.chunks],
            )
            for position, stream in enumerate(streams)
        ],
    )


async def mark_committed(
    conn: asyncpg.Connection, snapshot_id: str, logical_bytes: int, new_stored_bytes: int
) -> Snapshot:
    row = await conn.fetchrow(
        f"""UPDATE snapshots SET state = 'committed', lease_expires_at = NULL, committed_at = now(),
                                 logical_bytes = $2, new_stored_bytes = $3
            WHERE id = $1 RETURNING {_SNAPSHOT_COLUMNS}""",
        snapshot_id,
        logical_bytes,
        new_stored_bytes,
    )
    return _snapshot(row)


async def delete_snapshot(conn: Conn, snapshot_id: str) -> None:
    # Streams and pins go with it (ON DELETE CASCADE).
    await conn.execute("DELETE FROM snapshots WHERE id = $1", snapshot_id)


async def list_committed(conn: Conn, query: ListQuery) -> list[Snapshot]:
    conditions = ["tenant_id = $1", "state = 'committed'"]
    args: list[Any] = [query.tenant_id]
    if query.sandbox_id:
        args.append(query.sandbox_id)
        conditions.append(f"sandbox_id = ${len(args)}")
    if query.purposes:
        args.append([int(p) for p in query.purposes])
        conditions.append(f"purpose = ANY(${len(args)}::smallint[])")
    if query.after is not None:
        args.extend(query.after)
        conditions.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
    args.append(query.page_size + 1)
    rows = await conn.fetch(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE {' AND '.join(conditions)} "
        f"ORDER BY created_at, id LIMIT ${len(args)}",
        *args,
    )
    return [_snapshot(r) for r in rows]


# -- chunks ------------------------------------------------------------------------------------------


async def present_and_pin(
    conn: asyncpg.Connection, tenant_id: str, snapshot_id: str, hashes: Sequence[str]
) -> set[str]:
    """Which of `hashes` the tenant has; those are pinned to the pending snapshot (within a transaction)."""
    rows = await conn.fetch(
        "SELECT hash FROM chunks WHERE tenant_id = $1 AND hash = ANY($2::bytea[]) ORDER BY hash FOR SHARE",
        tenant_id,
        packed(sorted(set(hashes))),
    )
    present = [bytes(r["hash"]) for r in rows]
    if present:
        await conn.execute(
            "INSERT INTO pins (snapshot_id, tenant_id, hash) SELECT $1, $2, h FROM unnest($3::bytea[]) AS h "
            "ON CONFLICT DO NOTHING",
            snapshot_id,
            tenant_id,
            present,
        )
    return {h.hex() for h in present}


async def queue_upload(conn: Conn, object_key: str, tenant_id: str, orphan_grace_s: float) -> None:
    """Records an upload about to start: if its chunk row never comes, the object is deleted later."""
    await conn.execute(
        "INSERT INTO object_deletions (object_key, tenant_id, reason, delete_after) "
        "VALUES ($1, $2, 'upload', now() + make_interval(secs => $3))",
        object_key,
        tenant_id,
        orphan_grace_s,
    )


async def record_chunk(
    conn: asyncpg.Connection,
    tenant_id: str,
    snapshot_id: str,
    chunk_hash: str,
    generation: str,
    size: int,
    stored_size: int,
    object_key: str,
) -> bool:
    """Adds the chunk row for an uploaded object and pins it (within a transaction).

    False when a concurrent upload of the same chunk recorded its row first: this object is then
    surplus and is queued for deletion at once.
    """
    digest = bytes.fromhex(chunk_hash)
    # Claiming the upload's entry waits for a collection pass that holds it, and finds it gone if that
    # pass deleted the object: then this upload took longer than the orphan grace period and failed.
    claimed = await conn.fetchval(
        "DELETE FROM object_deletions WHERE object_key = $1 AND reason = 'upload' RETURNING true", object_key
    )
    if not claimed:
        raise errors.Unavailable(
            f"the upload of chunk {chunk_hash} outlasted the orphan grace period and was discarded; send it again"
        )
    inserted = await conn.fetchval(
        "INSERT INTO chunks (tenant_id, hash, generation, size, stored_size) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (tenant_id, hash) DO NOTHING RETURNING true",
        tenant_id,
        digest,
        generation,
        size,
        stored_size,
    )
    if not inserted:
        await queue_deletions(conn, [(object_key, tenant_id)])
    await conn.execute(
        "INSERT INTO pins (snapshot_id, tenant_id, hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        snapshot_id,
        tenant_id,
        digest,
    )
    return bool(inserted)


async def chunk_locations(conn: Conn, tenant_id: str, hashes: Sequence[str]) -> dict[str, tuple[str, int]]:
    """hash -> (generation, plain size) for the tenant's chunks among `hashes`."""
    rows = await conn.fetch(
        "SELECT hash, generation, size FROM chunks WHERE tenant_id = $1 AND hash = ANY($2::bytea[])",
        tenant_id,
        packed(sorted(set(hashes))),
    )
    return {bytes(r["hash"]).hex(): (r["generation"], int(r["size"])) for r in rows}


async def reference_chunks(
    conn: asyncpg.Connection, tenant_id: str, hashes: Sequence[str]
) -> list[tuple[str, int, int, int]]:
    """Adds one reference to each of the tenant's chunks among `hashes` (distinct);
    returns (hash, refs after, plain size, stored size) for those that exist."""
    rows = await conn.fetch(
        """WITH locked AS (
               SELECT hash FROM chunks WHERE tenant_id = $1 AND hash = ANY($2::bytea[])
               ORDER BY hash FOR NO KEY UPDATE)
           UPDATE chunks c SET refs = c.refs + 1 FROM locked
           WHERE c.tenant_id = $1 AND c.hash = locked.hash
           RETURNING c.hash, c.refs, c.size, c.stored_size""",
        tenant_id,
        packed(sorted(set(hashes))),
    )
    return [(bytes(r["hash"]).hex(), int(r["refs"]), int(r["size"]), int(r["stored_size"])) for r in rows]


async def release_chunks(conn: asyncpg.Connection, tenant_id: str, hashes: Sequence[str]) -> None:
    """Drops one reference from each of `hashes` (distinct); the grace period starts for those at 0."""
    await conn.execute(
        """WITH locked AS (
               SELECT hash FROM chunks WHERE tenant_id = $1 AND hash = ANY($2::bytea[])
               ORDER BY hash FOR NO KEY UPDATE)
           UPDATE chunks c SET refs = c.refs - 1,
                               unreferenced_since = CASE WHEN c.refs = 1 THEN now() ELSE c.unreferenced_since END
           FROM locked WHERE c.tenant_id = $1 AND c.hash = locked.hash""",
        tenant_id,
        packed(sorted(set(hashes))),
    )


async def drop_pins(conn: Conn, snapshot_id: str) -> None:
    await conn.execute("DELETE FROM pins WHERE snapshot_id = $1", snapshot_id)


async def usage(conn: Conn, tenant_id: str) -> TenantUsage:
    snapshots = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(logical_bytes), 0) AS logical FROM snapshots "
        "WHERE tenant_id = $1 AND state = 'committed'",
        tenant_id,
    )
    chunks = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(stored_size), 0) AS stored FROM chunks WHERE tenant_id = $1", tenant_id
    )
    return TenantUsage(
        snapshots=int(snapshots["n"]),
        logical_bytes=int(snapshots["logical"]),
        stored_bytes=int(chunks["stored"]),
        chunks=int(chunks["n"]),
        cached_bytes=0,
    )


# -- garbage collection ------------------------------------------------------------------------------


async def expire_pending(conn: Conn, limit: int) -> int:
    """Deletes pending snapshots whose lease has passed (skipping any a writer is using right now)."""
    rows = await conn.fetch(
        """DELETE FROM snapshots WHERE id IN (
               SELECT id FROM snapshots WHERE state = 'pending' AND lease_expires_at < now()
               ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           AND state = 'pending' AND lease_expires_at < now()
           RETURNING id""",
        limit,
    )
    return len(rows)


async def collect_chunks(conn: asyncpg.Connection, grace_s: float, limit: int) -> list[tuple[str, str, str, int]]:
    """Deletes up to `limit` chunk rows that nothing references or pins and whose grace period has
    passed, and queues their objects for deletion; returns (tenant, hash, generation, stored size).
    Must run in a transaction."""
    candidates = await conn.fetch(
        """SELECT tenant_id, hash FROM chunks
           WHERE refs = 0 AND unreferenced_since < now() - make_interval(secs => $1)
           ORDER BY unreferenced_since LIMIT $2 FOR UPDATE SKIP LOCKED""",
        grace_s,
        limit,
    )
    if not candidates:
        return []
    # A new statement, so a new snapshot: it sees every pin committed before the rows were locked.
    rows = await conn.fetch(
        """DELETE FROM chunks c USING unnest($1::text[], $2::bytea[]) AS victim(tenant_id, hash)
           WHERE c.tenant_id = victim.tenant_id AND c.hash = victim.hash AND c.refs = 0
             AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.tenant_id = c.tenant_id AND p.hash = c.hash)
           RETURNING c.tenant_id, c.hash, c.generation, c.stored_size""",
        [r["tenant_id"] for r in candidates],
        [bytes(r["hash"]) for r in candidates],
    )
    return [(r["tenant_id"], bytes(r["hash"]).hex(), r["generation"], int(r["stored_size"])) for r in rows]


async def queue_deletions(conn: Conn, objects: Sequence[tuple[str, str]]) -> None:
    """(object key, tenant) pairs to delete from S3 as soon as possible."""
    await conn.executemany(
        "INSERT INTO object_deletions (object_key, tenant_id, reason, delete_after) "
        "VALUES ($1, $2, 'collected', now()) "
        "ON CONFLICT (object_key) DO UPDATE SET reason = 'collected', delete_after = now()",
        objects,
    )


async def due_deletions(conn: asyncpg.Connection, limit: int) -> list[tuple[str, str]]:
    """(object key, reason) of objects whose deletion is due, locked until the transaction ends, so
    that an upload finishing late cannot record a row for an object being deleted."""
    rows = await conn.fetch(
        "SELECT object_key, reason FROM object_deletions WHERE delete_after <= now() "
        "ORDER BY delete_after LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [(r["object_key"], r["reason"]) for r in rows]


async def forget_deletions(conn: asyncpg.Connection, object_keys: Sequence[str]) -> None:
    await conn.execute("DELETE FROM object_deletions WHERE object_key = ANY($1::text[])", list(object_keys))
