"""Creating tenants and API keys (bootstrap at start, and the `admin` command)."""

from __future__ import annotations

import asyncpg

from hutch_gateway import store
from hutch_gateway.auth import hash_key, new_api_key
from hutch_gateway.domain import new_id


async def ensure_tenant_with_key(db: asyncpg.Pool, tenant_name: str, api_key: str) -> str:
    """Makes sure the tenant exists and accepts `api_key`; returns the tenant id."""
    async with db.acquire() as conn, conn.transaction():
        tenant_id = await store.ensure_tenant(conn, new_id("tn-"), tenant_name)
        await store.add_key(conn, new_id("key-"), tenant_id, hash_key(api_key), api_key[:7])
    return tenant_id


async def create_key(db: asyncpg.Pool, tenant_name: str) -> str:
    """Creates the tenant if needed and a new API key for it; returns the key (shown only once)."""
    key = new_api_key()
    await ensure_tenant_with_key(db, tenant_name, key)
    return key
