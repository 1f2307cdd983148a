"""The broker's tables (schema `secrets`): secrets, sealed versions, grants, the audit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

from hutch_secrets_broker.crypto import Sealed
from hutch_secrets_broker.domain import Grant, SecretInfo, Selector

_SECRET = "tenant_id, name, description, version, created_at, updated_at"
_GRANT = "id, tenant_id, secret_name, sandbox_ids, sandbox_names, labels, hosts, header, placeholder, created_at"
_SEALED = "ciphertext, nonce, wrapped_key, wrap_nonce, key_id"

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


def _secret(row: asyncpg.Record) -> SecretInfo:
    return SecretInfo(
        row["tenant_id"], row["name"], row["description"], row["version"], row["created_at"], row["updated_at"]
    )


def _sealed(row: asyncpg.Record) -> Sealed:
    return Sealed(
        bytes(row["ciphertext"]),
        bytes(row["nonce"]),
        bytes(row["wrapped_key"]),
        bytes(row["wrap_nonce"]),
        row["key_id"],
    )


def _grant(row: asyncpg.Record) -> Grant:
    labels = row["labels"]
    return Grant(
        id=row["id"],
        tenant_id=row["tenant_id"],
        secret=row["secret_name"],
        selector=Selector(
            tuple(row["sandbox_ids"]),
            tuple(row["sandbox_names"]),
            json.loads(labels) if isinstance(labels, str) else dict(labels),
        ),
        hosts=tuple(row["hosts"]),
        header=row["header"],
        placeholder=row["placeholder"],
        created_at=row["created_at"],
    )


async def count_secrets(db: Db, tenant_id: str) -> int:
    found: int = await db.fetchval("SELECT count(*) FROM secrets WHERE tenant_id = $1", tenant_id)
    return found


async def insert_secret(conn: asyncpg.Connection, tenant_id: str, name: str, description: str) -> SecretInfo | None:
    """None when the tenant already has a secret of that name."""
    row = await conn.fetchrow(
        f"INSERT INTO secrets (tenant_id, name, description, version) VALUES ($1, $2, $3, 1) "
        f"ON CONFLICT DO NOTHING RETURNING {_SECRET}",
        tenant_id,
        name,
        description,
    )
    return _secret(row) if row else None


async def insert_version(conn: asyncpg.Connection, tenant_id: str, name: str, version: int, sealed: Sealed) -> None:
    await conn.execute(
        f"INSERT INTO secret_versions (tenant_id, name, version, {_SEALED}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        tenant_id,
        name,
        version,
        sealed.ciphertext,
        sealed.nonce,
        sealed.wrapped_key,
        sealed.wrap_nonce,
        sealed.key_id,
    )


async def bump_version(conn: asyncpg.Connection, tenant_id: str, name: str) -> SecretInfo | None:
    row = await conn.fetchrow(
        f"UPDATE secrets SET version = version + 1, updated_at = now() WHERE tenant_id = $1 AND name = $2 "
        f"RETURNING {_SECRET}",
        tenant_id,
        name,
    )
    return _secret(row) if row else None


async def prune_versions(conn: asyncpg.Connection, tenant_id: str, name: str, keep_from: int) -> None:
    await conn.execute(
        "DELETE FROM secret_versions WHERE tenant_id = $1 AND name = $2 AND version < $3", tenant_id, name, keep_from
    )


async def get_secret(db: Db, tenant_id: str, name: str) -> SecretInfo | None:
    row = await db.fetchrow(f"SELECT {_SECRET} FROM secrets WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    return _secret(row) if row else None


async def list_secrets(db: Db, tenant_id: str) -> list[SecretInfo]:
    rows = await db.fetch(f"SELECT {_SECRET} FROM secrets WHERE tenant_id = $1 ORDER BY name", tenant_id)
    return [_secret(r) for r in rows]


async def delete_secret(db: Db, tenant_id: str, name: str) -> bool:
    result: str = await db.execute("DELETE FROM secrets WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    return result.endswith(" 1")


async def current_value(db: Db, tenant_id: str, name: str) -> tuple[int, Sealed] | None:
    row = await db.fetchrow(
        f"SELECT v.version, {', '.join('v.' + c.strip() for c in _SEALED.split(','))} "
        "FROM secrets s JOIN secret_versions v ON v.tenant_id = s.tenant_id AND v.name = s.name "
        "AND v.version = s.version WHERE s.tenant_id = $1 AND s.name = $2",
        tenant_id,
        name,
    )
    return (row["version"], _sealed(row)) if row else None


@dataclass(frozen=True)
class StaleVersion:
    tenant_id: str
    name: str
    version: int
    sealed: Sealed


async def stale_versions(db: Db, active_key: str, limit: int) -> list[StaleVersion]:
    rows = await db.fetch(
        f"SELECT tenant_id, name, version, {_SEALED} FROM secret_versions WHERE key_id <> $1 LIMIT $2",
        active_key,
        limit,
    )
    return [StaleVersion(r["tenant_id"], r["name"], r["version"], _sealed(r)) for r in rows]


async def replace_wrapping(db: Db, stale: StaleVersion, sealed: Sealed) -> None:
    """Swaps in the re-wrapped data key, unless the row changed meanwhile."""
    await db.execute(
        "UPDATE secret_versions SET wrapped_key = $5, wrap_nonce = $6, key_id = $7 "
        "WHERE tenant_id = $1 AND name = $2 AND version = $3 AND key_id = $4",
        stale.tenant_id,
        stale.name,
        stale.version,
        stale.sealed.key_id,
        sealed.wrapped_key,
        sealed.wrap_nonce,
        sealed.key_id,
    )


async def count_grants(db: Db, tenant_id: str) -> int:
    found: int = await db.fetchval("SELECT count(*) FROM grants WHERE tenant_id = $1", tenant_id)
    return found


async def insert_grant(db: Db, grant: Grant) -> Grant:
    row = await db.fetchrow(
        f"INSERT INTO grants ({_GRANT}) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, now()) RETURNING {_GRANT}",
        grant.id,
        grant.tenant_id,
        grant.secret,
        list(grant.selector.sandbox_ids),
        list(grant.selector.sandbox_names),
        json.dumps(dict(grant.selector.labels)),
        list(grant.hosts),
        grant.header,
        grant.placeholder,
    )
    return _grant(row)


async def list_grants(db: Db, tenant_id: str, secret: str = "") -> list[Grant]:
    if secret:
        rows = await db.fetch(
            f"SELECT {_GRANT} FROM grants WHERE tenant_id = $1 AND secret_name = $2 ORDER BY created_at, id",
            tenant_id,
            secret,
        )
    else:
        rows = await db.fetch(f"SELECT {_GRANT} FROM grants WHERE tenant_id = $1 ORDER BY created_at, id", tenant_id)
    return [_grant(r) for r in rows]


async def delete_grant(db: Db, tenant_id: str, grant_id: str) -> bool:
    result: str = await db.execute("DELETE FROM grants WHERE tenant_id = $1 AND id = $2", tenant_id, grant_id)
    return result.endswith(" 1")


@dataclass(frozen=True)
class AuditEntry:
    secret: str
    version: int
    sandbox_id: str
    host: str
    resolver: str
    at: datetime


async def add_audit(
    db: Db, tenant_id: str, secret: str, version: int, sandbox_id: str, host: str, resolver: str
) -> None:
    await db.execute(
        "INSERT INTO audit (tenant_id, secret_name, version, sandbox_id, host, resolver) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        tenant_id,
        secret,
        version,
        sandbox_id,
        host,
        resolver,
    )


async def list_audit(db: Db, tenant_id: str, secret: str, limit: int) -> list[AuditEntry]:
    rows = await db.fetch(
        "SELECT secret_name, version, sandbox_id, host, resolver, at FROM audit "
        "WHERE tenant_id = $1 AND ($2 = '' OR secret_name = $2) ORDER BY seq DESC LIMIT $3",
        tenant_id,
        secret,
        limit,
    )
    return [
        AuditEntry(r["secret_name"], r["version"], r["sandbox_id"], r["host"], r["resolver"], r["at"]) for r in rows
    ]
