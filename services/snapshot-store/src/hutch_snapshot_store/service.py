"""The snapshot-store's use cases: the write protocol, reads, deletes, usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import asyncpg

from hutch.core import errors
from hutch.snapshots.cache import CacheStats
from hutch_snapshot_store import store
from hutch_snapshot_store.chunks import ChunkStore
from hutch_snapshot_store.domain.model import (
    BeginParams,
    CopyParams,
    GcReport,
    IncomingChunk,
    ListQuery,
    Page,
    PutReport,
    Snapshot,
    State,
    StoredChunk,
    Stream,
    TenantUsage,
)
from hutch_snapshot_store.domain.validation import encode_page_token, new_snapshot_id
from hutch_snapshot_store.gc import GarbageCollector

# How often Get(wait_ms) looks again at a snapshot that is still being written.
PENDING_POLL_S = 0.1

# Chunks of one PutChunks call being verified, encrypted and written to S3 at once.
_PUTS_IN_FLIGHT = 4


def _distinct_hashes(streams: Sequence[Stream]) -> list[str]:
    return list(dict.fromkeys(c.hash for s in streams for c in s.chunks))


def _same_content(a: Sequence[Stream], b: Sequence[Stream]) -> bool:
    return [(s.name, s.chunks) for s in a] == [(s.name, s.chunks) for s in b]


class SnapshotService:
    def __init__(self, db: asyncpg.Pool, chunks: ChunkStore, gc: GarbageCollector, pending_lease_s: float) -> None:
        self._db = db
        self._chunks = chunks
        self._gc = gc
        self._lease_s = pending_lease_s

    # -- writing -----------------------------------------------------------------------------------

    async def begin(self, params: BeginParams) -> Snapshot:
        return await store.insert_snapshot(self._db, new_snapshot_id(), params, self._lease_s)

    async def begin_copy(self, copy: CopyParams) -> Snapshot:
        """The pending copy of another region's snapshot, under its own id. A copy left pending by an
        import that died is resumed (its lease extended); one already committed is returned as it is."""
        tenant_id = copy.params.tenant_id
        async with self._db.acquire() as conn, conn.transaction():
            inserted = await store.insert_copy(conn, copy, self._lease_s)
            if inserted is not None:
                return inserted
            existing = await store.lock_snapshot(conn, tenant_id, copy.snapshot_id)
            if existing is None:
                # Ids are random: only a collision with another tenant's snapshot gets here; say nothing of it.
                raise errors.AlreadyExists(f"snapshot id {copy.snapshot_id} is taken in this region")
            if existing.state == State.COMMITTED:
                return await store.with_streams(conn, existing)
            return await store.extend_pending(conn, tenant_id, copy.snapshot_id, self._lease_s)

    async def find_missing(self, tenant_id: str, snapshot_id: str, hashes: Sequence[str]) -> list[str]:
        """The hashes the tenant lacks, in the order asked, each once; the others are pinned."""
        async with self._db.acquire() as conn, conn.transaction():
            await store.extend_pending(conn, tenant_id, snapshot_id, self._lease_s)
            present = await store.present_and_pin(conn, tenant_id, snapshot_id, hashes)
        return [h for h in dict.fromkeys(hashes) if h not in present]

    async def touch_pending(self, tenant_id: str, snapshot_id: str) -> None:
        """Checks the snapshot is pending and the tenant's, and extends its lease."""
        await store.extend_pending(self._db, tenant_id, snapshot_id, self._lease_s)

    async def put_chunks(self, tenant_id: str, snapshot_id: str, chunks: AsyncIterator[IncomingChunk]) -> PutReport:
        """Stores the chunks of one PutChunks call, a few at a time (each waits mostly on S3)."""
        slots = asyncio.Semaphore(_PUTS_IN_FLIGHT)
        tasks: list[asyncio.Task[int]] = []

        async def put(chunk: IncomingChunk) -> int:
            try:
                return await self._chunks.put(tenant_id, snapshot_id, chunk)
            finally:
                slots.release()

        try:
            async for chunk in chunks:
                await slots.acquire()
                if any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks):
                    break  # gather below raises it
                tasks.append(asyncio.create_task(put(chunk)))
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        stored = [n for n in results if n]
        return PutReport(stored=len(stored), stored_bytes=sum(stored))

    async def commit(self, tenant_id: str, snapshot_id: str, streams: Sequence[Stream]) -> Snapshot:
        """Makes a pending snapshot visible with these streams, all in one transaction.

        Committing a committed snapshot again with the same streams returns it unchanged.
        """
        async with self._db.acquire() as conn, conn.transaction():
            snapshot = await store.lock_snapshot(conn, tenant_id, snapshot_id)
            if snapshot is None:
                raise errors.NotFound(
                    f"no snapshot {snapshot_id}: it was never begun, was aborted, or its lease expired; begin again"
                )
            if snapshot.state == State.COMMITTED:
                committed = await store.with_streams(conn, snapshot)
                if _same_content(committed.streams, streams):
                    return committed
                raise errors.FailedPrecondition(f"snapshot {snapshot_id} is already committed with other content")
            wanted = _distinct_hashes(streams)
            found = await store.reference_chunks(conn, tenant_id, wanted)
            if len(found) < len(wanted):
                missing = len(wanted) - len(found)
                raise errors.FailedPrecondition(
                    f"{missing} of the {len(wanted)} chunks this snapshot references are not stored: "
                    "upload them with PutChunks, then commit again"
                )
            sizes = {chunk_hash: size for chunk_hash, _, size, _ in found}
            for stream in streams:
                for chunk in stream.chunks:
                    if sizes[chunk.hash] != chunk.size:
                        raise errors.InvalidArgument(
                            f"stream {stream.name!r} gives chunk {chunk.hash} {chunk.size} bytes; it has "
                            f"{sizes[chunk.hash]}"
                        )
            # Bytes this snapshot adds to what the tenant keeps: chunks nothing referenced before it.
            new_stored = sum(stored for _, refs, _, stored in found if refs == 1)
            await store.insert_streams(conn, snapshot_id, streams)
            committed = await store.mark_committed(conn, snapshot_id, sum(s.size for s in streams), new_stored)
            await store.drop_pins(conn, snapshot_id)
        return replace(committed, streams=tuple(streams))

    async def abort(self, tenant_id: str, snapshot_id: str) -> None:
        """Drops a pending snapshot and its pins; unknown ids are fine (aborting twice is harmless)."""
        async with self._db.acquire() as conn, conn.transaction():
            snapshot = await store.lock_snapshot(conn, tenant_id, snapshot_id)
            if snapshot is None:
                return
            if snapshot.state == State.COMMITTED:
                raise errors.FailedPrecondition(f"snapshot {snapshot_id} is committed; delete it instead")
            await store.delete_snapshot(conn, snapshot_id)

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, tenant_id: str, id_or_name: str, wait_s: float = 0.0) -> Snapshot:
        """The committed snapshot; with `wait_s`, a snapshot still being written is waited for that
        long (a node restoring a fork whose upload is under way)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            snapshot = await store.find_committed(self._db, tenant_id, id_or_name)
            if snapshot is not None:
                return await store.with_streams(self._db, snapshot)
            if asyncio.get_running_loop().time() >= deadline or not await store.is_pending(
                self._db, tenant_id, id_or_name
            ):
                raise errors.NotFound(f"no snapshot {id_or_name!r}")
            await asyncio.sleep(PENDING_POLL_S)

    async def find(self, tenant_id: str, snapshot_id: str) -> Snapshot | None:
        """The tenant's committed snapshot with this id, with its streams, if this store has it."""
        snapshot = await store.find_committed(self._db, tenant_id, snapshot_id)
        return None if snapshot is None else await store.with_streams(self._db, snapshot)

    async def list(self, query: ListQuery) -> Page:
        found = await store.list_committed(self._db, query)
        page = found[: query.page_size]
        token = encode_page_token(page[-1].created_at, page[-1].id) if len(found) > query.page_size else ""
        return Page(tuple(page), token)

    def chunks(self, tenant_id: str, hashes: Sequence[str]) -> AsyncIterator[StoredChunk]:
        return self._chunks.get_many(tenant_id, hashes)

    # -- deleting and accounting -------------------------------------------------------------------

    async def delete(self, tenant_id: str, id_or_name: str) -> None:
        """Deletes a committed snapshot; chunks nothing else uses become garbage after the grace period."""
        async with self._db.acquire() as conn, conn.transaction():
            snapshot = await store.find_committed(conn, tenant_id, id_or_name, lock=True)
            if snapshot is None:
                raise errors.NotFound(f"no snapshot {id_or_name!r}")
            streams = await store.streams_of(conn, snapshot.id)
            await store.release_chunks(conn, tenant_id, _distinct_hashes(streams))
            await store.delete_snapshot(conn, snapshot.id)

    async def usage(self, tenant_id: str) -> TenantUsage:
        found = await store.usage(self._db, tenant_id)
        return replace(found, cached_bytes=self._chunks.cache.tenant_bytes(tenant_id))

    def cache_stats(self) -> CacheStats:
        return self._chunks.cache.stats()

    async def collect_garbage(self) -> GcReport:
        return await self._gc.run_once()
