"""Creating tenants and API keys (bootstrap at start, and the `admin` command)."""

from __future__ import annotations

import re

import asyncpg

from hutch.core import errors
from hutch_gateway import store
from hutch_gateway.auth import KEY_PREFIX, hash_key, new_api_key
from hutch_gateway.domain import new_id, tenant_id_for

# What new_api_key makes: the prefix and 32 URL-safe characters.
_KEY = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9_-]{{32}}$")


async def ensure_tenant_with_key(db: asyncpg.Pool, tenant_name: str, api_key: str) -> str:
    """Makes sure the tenant exists and accepts `api_key`; returns the tenant id."""
    async with db.acquire() as conn, conn.transaction():
        tenant_id = await store.ensure_tenant(conn, tenant_id_for(tenant_name), tenant_name)
        await store.add_key(conn, new_id("key-"), tenant_id, hash_key(api_key), api_key[:7])
    return tenant_id


async def create_key(db: asyncpg.Pool, tenant_name: str) -> str:
    """Creates the tenant if needed and a new API key for it; returns the key (shown only once)."""
    key = new_api_key()
    await ensure_tenant_with_key(db, tenant_name, key)
    return key


async def add_existing_key(db: asyncpg.Pool, tenant_name: str, api_key: str) -> str:
    """Makes a key made elsewhere (another region's `create-key`) work here too; returns the tenant id."""
    if not _KEY.match(api_key):
        raise errors.InvalidArgument(f"that is not an API key: keys are {KEY_PREFIX} and 32 characters")
    return await ensure_tenant_with_key(db, tenant_name, api_key)
