"""Migrations against real PostgreSQL: applied once, in order, safely from concurrent starters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hutch.core import db
from hutch.core.config import PostgresSettings

pytestmark = pytest.mark.integration

MIGRATIONS = [
    db.Migration("svc", 1, "create_t", "CREATE TABLE t (id int PRIMARY KEY)"),
    db.Migration("svc", 2, "add_col", "ALTER TABLE t ADD COLUMN name text"),
]


async def test_migrations_apply_once_even_when_raced(postgres_dsn: str) -> None:
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    async with db.pool(settings, "svc") as pool:
        results = await asyncio.gather(*(db.migrate(pool, "svc", MIGRATIONS) for _ in range(4)))
        assert sorted(len(r) for r in results) == [0, 0, 0, 2]
        await pool.execute("INSERT INTO t (id, name) VALUES (1, 'x')")
        assert await db.migrate(pool, "svc", MIGRATIONS) == []
        assert await pool.fetchval("SELECT name FROM svc.t") == "x"


async def test_a_failing_migration_leaves_no_trace(postgres_dsn: str) -> None:
    settings = PostgresSettings(dsn=postgres_dsn)  # type: ignore[arg-type]
    broken = [*MIGRATIONS, db.Migration("svc", 3, "broken", "ALTER TABLE t ADD COLUMN x int; SELECT 1/0")]
    async with db.pool(settings, "svc") as pool:
        with pytest.raises(Exception, match="division by zero"):
            await db.migrate(pool, "svc", broken)
        columns: Any = await pool.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 't'")
        assert {c["column_name"] for c in columns} == {"id", "name"}
        assert await pool.fetchval("SELECT max(version) FROM schema_migrations") == 2


def test_service_migration_files_load_in_order() -> None:
    for package in ("hutch_gateway", "hutch_scheduler"):
        loaded = db.load_migrations(package, package)
        assert loaded and [m.version for m in loaded] == sorted(m.version for m in loaded)
