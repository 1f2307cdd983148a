"""Import: a committed snapshot of another region's store, copied into this one under the same id.

Every step goes through this store's own write path (the functions behind Begin, FindMissing,
PutChunks and Commit), so a copy obeys the same rules as any writer:
1. the source's manifest (its Get, tenant-scoped); a copy already committed here is the answer;
2. a pending copy with the source's id, metadata and creation time;
3. the distinct chunk hashes in bounded batches, a few batches at once: FindMissing pins what this
   store already has, the source's GetChunks streams the rest (zstd frames, decrypted there), and
   PutChunks verifies each against its hash and encrypts it under this region's tenant key;
4. Commit with the source's streams.
A failed import aborts its pending copy; one that dies leaves it to expire like any writer's, or to be
resumed by the next import of the same snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from hutch.core import errors
from hutch_snapshot_store import convert
from hutch_snapshot_store.domain import validation
from hutch_snapshot_store.domain.model import CopyParams, IncomingChunk, Snapshot, State, Stream
from hutch_snapshot_store.peers import PeerStore, PeerStores
from hutch_snapshot_store.service import SnapshotService

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# One batch: a FindMissing, then one GetChunks stream for what is missing. Bounded in chunks and in
# plain bytes, so a slow link finishes a batch well within a peer call's timeout.
BATCH_CHUNKS = 64
BATCH_BYTES = 64 * MiB
# Batches copied at once; each streams its chunks through PutChunks a few at a time, so memory is
# bounded by a few chunks per batch whatever the snapshot's size.
BATCHES_IN_FLIGHT = 4


@dataclass(frozen=True)
class ImportReport:
    snapshot: Snapshot
    # Chunks (and their compressed bytes) that travelled from the source; 0 when it was here already.
    chunks_copied: int = 0
    bytes_copied: int = 0
    already_here: bool = False


def batches(streams: Sequence[Stream]) -> Iterator[list[str]]:
    """The snapshot's distinct chunk hashes, in order, cut into batches of bounded count and bytes."""
    batch: list[str] = []
    size = 0
    seen: set[str] = set()
    for chunk in (c for s in streams for c in s.chunks):
        if chunk.hash in seen:
            continue
        seen.add(chunk.hash)
        if batch and (len(batch) >= BATCH_CHUNKS or size + chunk.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(chunk.hash)
        size += chunk.size
    if batch:
        yield batch


async def in_parallel(items: Iterable[list[str]], work: Callable[[list[str]], Awaitable[None]], limit: int) -> None:
    """Runs `work` on each item, at most `limit` at once; the first failure cancels the rest."""
    running: set[asyncio.Task[None]] = set()
    try:
        for item in items:
            if len(running) >= limit:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            running.add(asyncio.ensure_future(work(item)))
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class Importer:
    def __init__(self, service: SnapshotService, peers: PeerStores, batches_in_flight: int = BATCHES_IN_FLIGHT) -> None:
        self._service = service
        self._peers = peers
        self._batches_in_flight = batches_in_flight
        # One import of a snapshot at a time in this process; a second waits and finds it committed.
        self._importing: dict[tuple[str, str], asyncio.Lock] = {}

    async def import_snapshot(self, tenant_id: str, id_or_name: str, source_region: str) -> ImportReport:
        peer = self._peers.get(source_region)
        if validation.is_snapshot_id(id_or_name):
            # Already here: answered without asking the source, which may be away.
            local = await self._service.find(tenant_id, id_or_name)
            if local is not None:
                return ImportReport(local, already_here=True)
        manifest = await peer.manifest(tenant_id, id_or_name)
        copy = convert.copy_params(manifest, tenant_id, peer.region)
        streams = convert.streams(manifest)
        key = (tenant_id, copy.snapshot_id)
        lock = self._importing.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._import_once(peer, copy, streams)
        finally:
            if not lock.locked() and self._importing.get(key) is lock:
                del self._importing[key]

    async def _import_once(self, peer: PeerStore, copy: CopyParams, streams: Sequence[Stream]) -> ImportReport:
        pending = await self._service.begin_copy(copy)
        if pending.state == State.COMMITTED:
            return ImportReport(pending, already_here=True)
        tenant_id, snapshot_id = copy.params.tenant_id, copy.snapshot_id
        try:
            chunks, size = await self._copy_chunks(peer, tenant_id, snapshot_id, streams)
            committed = await self._service.commit(tenant_id, snapshot_id, streams)
        except BaseException:
            await asyncio.shield(self._abort_quietly(tenant_id, snapshot_id))
            raise
        log.info(
            "imported snapshot %s of tenant %s from region %s: %d chunks (%d bytes) travelled, %d bytes stored",
            snapshot_id,
            tenant_id,
            peer.region,
            chunks,
            size,
            committed.new_stored_bytes,
        )
        return ImportReport(committed, chunks_copied=chunks, bytes_copied=size)

    async def _copy_chunks(
        self, peer: PeerStore, tenant_id: str, snapshot_id: str, streams: Sequence[Stream]
    ) -> tuple[int, int]:
        """Stores the chunks this store lacks; returns how many travelled and their compressed bytes."""
        travelled = [0, 0]

        async def copy_batch(hashes: list[str]) -> None:
            missing = await self._service.find_missing(tenant_id, snapshot_id, hashes)
            if missing:
                await self._service.put_chunks(tenant_id, snapshot_id, received(missing))

        async def received(missing: list[str]) -> AsyncIterator[IncomingChunk]:
            wanted = set(missing)
            async for chunk in peer.chunks(tenant_id, missing):
                if chunk.hash not in wanted:
                    raise errors.Internal(f"region {peer.region} sent chunk {chunk.hash}, which was not asked for")
                travelled[0] += 1
                travelled[1] += len(chunk.compressed)
                yield validation.incoming_chunk(chunk.hash, chunk.size, chunk.compressed)

        await in_parallel(batches(streams), copy_batch, self._batches_in_flight)
        return travelled[0], travelled[1]

    async def _abort_quietly(self, tenant_id: str, snapshot_id: str) -> None:
        try:
            await self._service.abort(tenant_id, snapshot_id)
        except Exception as exc:  # the pending copy then expires with its lease
            log.warning("could not abort the failed import of %s: %s", snapshot_id, exc)
