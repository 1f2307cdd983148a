"""Chunk bytes: verified and encrypted on the way into S3, read back through the regional cache.

Writing a new chunk, in this order, so that no crash leaves a row without its object or an object
nobody will delete:
1. verify the upload (its zstd frame decompresses to exactly the bytes its hash names);
2. queue the object key for deletion after the orphan grace period (the upload's "intent");
3. write the encrypted object to S3 (a fresh key per upload: `<hash>.<generation>`);
4. in one transaction, claim the intent back and insert the chunk row and its pin.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import asyncpg

from hutch.core import errors
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.codec import ChunkCorrupted, open_verified
from hutch_snapshot_store import store
from hutch_snapshot_store.domain.model import IncomingChunk, StoredChunk
from hutch_snapshot_store.keys import Keyring
from hutch_snapshot_store.objects import ObjectStore, chunk_object_key

T = TypeVar("T")

TIER_CACHE = "cache"
TIER_S3 = "s3"
# Chunks of one GetChunks call fetched at once.
_READ_AHEAD = 8


class ChunkStore:
    def __init__(
        self,
        db: asyncpg.Pool,
        objects: ObjectStore,
        keys: Keyring,
        cache: ChunkCache,
        executor: Executor,
        orphan_grace_s: float,
    ) -> None:
        self._db = db
        self._objects = objects
        self._keys = keys
        self.cache = cache
        self._executor = executor
        self._orphan_grace_s = orphan_grace_s
        # One upload per chunk at a time in this process; a second caller waits and finds it stored.
        self._uploading: dict[tuple[str, str], asyncio.Lock] = {}

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def put(self, tenant_id: str, snapshot_id: str, chunk: IncomingChunk) -> int:
        """Stores a chunk for a pending snapshot; returns the bytes written to S3 (0 if it was there)."""
        try:
            await self._run(open_verified, chunk.hash, chunk.size, chunk.compressed)
        except ChunkCorrupted as exc:
            raise errors.InvalidArgument(f"refused a corrupt upload: {exc.message}") from None
        key = (tenant_id, chunk.hash)
        lock = self._uploading.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._put_once(tenant_id, snapshot_id, chunk)
        finally:
            if not lock.locked() and self._uploading.get(key) is lock:
                del self._uploading[key]

    async def _put_once(self, tenant_id: str, snapshot_id: str, chunk: IncomingChunk) -> int:
        try:
            async with self._db.acquire() as conn, conn.transaction():
                if await store.present_and_pin(conn, tenant_id, snapshot_id, [chunk.hash]):
                    return 0
            cipher = await self._keys.cipher(tenant_id)
            blob = await self._run(cipher.encrypt, chunk.hash, chunk.compressed)
            generation = secrets.token_hex(6)
            object_key = chunk_object_key(tenant_id, chunk.hash, generation)
            await store.queue_upload(self._db, object_key, tenant_id, self._orphan_grace_s)
            await self._objects.put(object_key, blob)
            async with self._db.acquire() as conn, conn.transaction():
                recorded = await store.record_chunk(
                    conn, tenant_id, snapshot_id, chunk.hash, generation, chunk.size, len(blob), object_key
                )
        except asyncpg.ForeignKeyViolationError:
            raise errors.NotFound(f"snapshot {snapshot_id} is no longer pending (aborted or expired)") from None
        # New chunks are the likeliest to be read soon (a fork or a move to another node).
        await self.cache.put(tenant_id, chunk.hash, chunk.compressed)
        return len(blob) if recorded else 0

    async def get_many(self, tenant_id: str, hashes: Sequence[str]) -> AsyncIterator[StoredChunk]:
        """The tenant's chunks in the order asked, a few fetched ahead. NotFound if any is not the tenant's."""
        locations = await store.chunk_locations(self._db, tenant_id, hashes)
        unknown = [h for h in hashes if h not in locations]
        if unknown:
            raise errors.NotFound(
                f"{len(unknown)} of the {len(hashes)} chunks asked for are not stored for this tenant "
                f"(first: {unknown[0]})"
            )
        window: deque[asyncio.Task[StoredChunk]] = deque()
        try:
            for chunk_hash in hashes:
                generation, size = locations[chunk_hash]
                window.append(asyncio.create_task(self._get(tenant_id, chunk_hash, generation, size)))
                if len(window) >= _READ_AHEAD:
                    yield await window.popleft()
            while window:
                yield await window.popleft()
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)

    async def _get(self, tenant_id: str, chunk_hash: str, generation: str, size: int) -> StoredChunk:
        async def from_s3() -> bytes:
            blob = await self._objects.get(chunk_object_key(tenant_id, chunk_hash, generation))
            cipher = await self._keys.cipher(tenant_id)
            return await self._run(cipher.decrypt, chunk_hash, blob)

        compressed, hit = await self.cache.get_or_fetch(tenant_id, chunk_hash, from_s3)
        return StoredChunk(chunk_hash, size, compressed, TIER_CACHE if hit else TIER_S3)

    def forget(self, tenant_id: str, chunk_hash: str) -> None:
        """Drops a collected chunk from the regional cache."""
        self.cache.discard(tenant_id, chunk_hash)
