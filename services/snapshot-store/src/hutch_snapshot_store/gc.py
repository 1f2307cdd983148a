"""Garbage collection: expired pending snapshots, then unreferenced chunks, then their objects.

Each step works in batches, each batch one transaction, so a crash anywhere loses at most the work
of one batch and never leaves a chunk row without its object: rows go first (queuing their objects
in the same transaction), objects after, and a queued object is forgotten only once it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from hutch.core import errors
from hutch_snapshot_store import store
from hutch_snapshot_store.chunks import ChunkStore
from hutch_snapshot_store.domain.model import GcReport
from hutch_snapshot_store.objects import ObjectStore, chunk_object_key

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(
        self, db: asyncpg.Pool, objects: ObjectStore, chunks: ChunkStore, grace_s: float, batch: int = 500
    ) -> None:
        self._db = db
        self._objects = objects
        self._chunks = chunks
        self.grace_s = grace_s
        self._batch = batch
        self._lock = asyncio.Lock()

    async def run_once(self) -> GcReport:
        async with self._lock:
            expired = await self._expire_pending()
            deleted, freed = await self._collect_chunks()
            orphans = await self._delete_objects()
        report = GcReport(chunks_deleted=deleted, bytes_freed=freed, pending_expired=expired, orphans_deleted=orphans)
        if deleted or expired or orphans:
            log.info(
                "garbage collection: %d pending snapshots expired, %d chunks (%d bytes) deleted, %d orphan objects",
                expired,
                deleted,
                freed,
                orphans,
            )
        return report

    async def _expire_pending(self) -> int:
        total = 0
        while True:
            count = await store.expire_pending(self._db, self._batch)
            total += count
            if count < self._batch:
                return total

    async def _collect_chunks(self) -> tuple[int, int]:
        deleted = freed = 0
        while True:
            async with self._db.acquire() as conn, conn.transaction():
                rows = await store.collect_chunks(conn, self.grace_s, self._batch)
                await store.queue_deletions(
                    conn,
                    [
                        (chunk_object_key(tenant, chunk_hash, generation), tenant)
                        for tenant, chunk_hash, generation, _ in rows
                    ],
                )
            for tenant, chunk_hash, _, _ in rows:
                self._chunks.forget(tenant, chunk_hash)
            deleted += len(rows)
            freed += sum(stored for *_, stored in rows)
            if len(rows) < self._batch:
                return deleted, freed

    async def _delete_objects(self) -> int:
        """Deletes queued objects that are due; returns how many were uploads that never completed."""
        orphans = 0
        while True:
            # The entries stay locked while their objects are deleted (see store.due_deletions).
            async with self._db.acquire() as conn, conn.transaction():
                due = await store.due_deletions(conn, self._batch)
                await asyncio.gather(*(self._objects.delete(key) for key, _ in due))
                await store.forget_deletions(conn, [key for key, _ in due])
            orphans += sum(1 for _, reason in due if reason == "upload")
            if len(due) < self._batch:
                return orphans

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Runs a pass every `interval_s` until `stop` is set; a failed pass is retried next time."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                return
            try:
                await self.run_once()
            except (errors.HutchError, OSError, asyncpg.PostgresError) as exc:
                log.warning("garbage collection pass failed, will retry: %s", exc)
