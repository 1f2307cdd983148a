"""Tenants' data keys: created on a tenant's first chunk, kept wrapped in PostgreSQL, unwrapped once per
process and held in memory. Master key rotation re-wraps them (the objects stay as they are)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from hutch.core import errors
from hutch_snapshot_store import store
from hutch_snapshot_store.domain.crypto import (
    ObjectCipher,
    master_key_id,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)

log = logging.getLogger(__name__)


class Keyring:
    def __init__(self, db: asyncpg.Pool, master_key: bytes, previous_master_keys: Sequence[bytes] = ()) -> None:
        self._db = db
        self._master = master_key
        self._master_id = master_key_id(master_key)
        # Every key that may have wrapped a stored data key, by id.
        self._masters = {master_key_id(k): k for k in previous_master_keys} | {self._master_id: master_key}
        self._ciphers: dict[str, ObjectCipher] = {}
        self._lock = asyncio.Lock()

    async def cipher(self, tenant_id: str) -> ObjectCipher:
        found = self._ciphers.get(tenant_id)
        if found is not None:
            return found
        async with self._lock:
            found = self._ciphers.get(tenant_id)
            if found is None:
                found = ObjectCipher(tenant_id, await self._data_key(tenant_id))
                self._ciphers[tenant_id] = found
        return found

    async def _data_key(self, tenant_id: str) -> bytes:
        stored = await store.tenant_key(self._db, tenant_id)
        if stored is None:
            await store.add_tenant_key(
                self._db, tenant_id, wrap_data_key(self._master, tenant_id, new_data_key()), self._master_id
            )
            # Read back: a concurrent replica may have created the key first, and its key is the one.
            stored = await store.tenant_key(self._db, tenant_id)
            if stored is None:
                raise errors.Internal(f"the data key of tenant {tenant_id!r} vanished right after it was stored")
        wrapped, wrapped_by = stored
        master = self._masters.get(wrapped_by)
        if master is None:
            raise errors.FailedPrecondition(
                f"the data key of tenant {tenant_id!r} is wrapped by master key {wrapped_by}, which this store "
                "does not have: add it to HUTCH_SNAPSHOT_STORE__PREVIOUS_MASTER_KEYS"
            )
        return unwrap_data_key(master, tenant_id, wrapped)


async def rotate_master_key(db: asyncpg.Pool, master_key: bytes, previous_master_keys: Sequence[bytes]) -> int:
    """Re-wraps every data key not wrapped by `master_key` under it; returns how many.

    One transaction: either every key is re-wrapped or none. Keys wrapped by a master key that is
    neither current nor listed as previous stop the rotation with an error naming them.
    """
    current_id = master_key_id(master_key)
    masters = {master_key_id(k): k for k in previous_master_keys}
    async with db.acquire() as conn, conn.transaction():
        rows = await store.keys_wrapped_by_others(conn, current_id)
        unknown = sorted({wrapped_by for _, _, wrapped_by in rows if wrapped_by not in masters})
        if unknown:
            raise errors.FailedPrecondition(
                f"data keys are wrapped by master keys {', '.join(unknown)} that are not among the previous keys"
            )
        for tenant_id, wrapped, wrapped_by in rows:
            data_key = unwrap_data_key(masters[wrapped_by], tenant_id, wrapped)
            await store.rewrap_key(conn, tenant_id, wrap_data_key(master_key, tenant_id, data_key), current_id)
    log.info("re-wrapped %d tenant data keys under master key %s", len(rows), current_id)
    return len(rows)
