"""PostgreSQL access: a connection pool per service schema and versioned SQL migrations.

All services share one database; each owns a schema named after it and never touches another's.
Migrations are plain SQL files `NNNN_name.sql` shipped inside the service package; they are applied
in order at start, each in its own transaction, under an advisory lock so that two replicas starting
together never apply one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources

import asyncpg

from hutch.core import errors
from hutch.core.config import PostgresSettings

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str


def load_migrations(package: str, component: str) -> list[Migration]:
    """Reads `package/migrations/NNNN_name.sql` files in version order."""
    folder = resources.files(package) / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(component, int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"{package}: two migrations share a version: {versions}")
    return found


@contextlib.asynccontextmanager
async def pool(settings: PostgresSettings, schema: str, connect_timeout_s: float = 30.0) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections use `schema` first on their search path.

    Waits up to `connect_timeout_s` for the server, so services may start before PostgreSQL is up.
    """
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    dsn = settings.dsn.get_secret_value()
    deadline = asyncio.get_running_loop().time() + connect_timeout_s
    while True:
        try:
            await _ensure_schema(dsn, schema)
            created = await asyncpg.create_pool(
                dsn,
                min_size=settings.min_connections,
                max_size=settings.max_connections,
                server_settings={"search_path": f"{schema},public", "application_name": f"hutch-{schema}"},
            )
            break
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.InvalidCatalogNameError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise errors.Unavailable(f"cannot reach PostgreSQL: {exc}") from exc
            await asyncio.sleep(0.25)
    try:
        yield created
    finally:
        await created.close()


async def _ensure_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with contextlib.suppress(asyncpg.UniqueViolationError):
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    finally:
        await conn.close()


async def migrate(db: asyncpg.Pool, schema: str, migrations: Sequence[Migration]) -> list[str]:
    """Applies the migrations that have not run yet; returns the names it applied."""
    lock_key = int.from_bytes(hashlib.sha256(f"hutch-migrate:{schema}".encode()).digest()[:8], "big", signed=True)
    applied: list[str] = []
    async with db.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       component text NOT NULL,
                       version int NOT NULL,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            done = {
                (r["component"], r["version"])
                for r in await conn.fetch("SELECT component, version FROM schema_migrations")
            }
            for m in migrations:
                if (m.component, m.version) in done:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                        m.component,
                        m.version,
                        m.name,
                    )
                applied.append(f"{m.component}/{m.version:04d}_{m.name}")
                log.info("applied migration %s/%04d_%s in schema %s", m.component, m.version, m.name, schema)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied
