"""Reading a snapshot back: chunks from the node cache first, then from the snapshot-store (whose
regional cache sits in front of S3), several batches in flight, bytes delivered in order.

Every chunk is checked against its BLAKE3 hash before use, wherever it came from: a damaged node-cache
entry is dropped and fetched again, a chunk from the store that does not match is an error. Nothing
is ever written from bytes that were not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.chunker import MiB
from hutch.snapshots.client import SnapshotStoreClient
from hutch.snapshots.codec import ChunkCorrupted, open_verified

TIER_NODE = "node"
TIER_REGIONAL = "cache"
TIER_S3 = "s3"


@dataclass(frozen=True)
class ReaderOptions:
    # Chunks asked for in one GetChunks call, bounded by count and by plain bytes.
    batch_chunks: int = 32
    batch_bytes: int = 16 * MiB
    # Batches being fetched at once (memory in use is about concurrency x batch_bytes).
    concurrency: int = 4
    verify_workers: int = max(2, os.cpu_count() or 2)


@dataclass
class ReadStats:
    """Chunks read per tier (a chunk repeated within one batch is fetched and counted once)."""

    chunks: int = 0
    bytes: int = 0
    node_cache: int = 0
    regional_cache: int = 0
    s3: int = 0


class SnapshotReader:
    """Reads `tenant_id`'s snapshots through `cache` (the node cache, optional) and the store."""

    def __init__(
        self,
        client: SnapshotStoreClient,
        tenant_id: str,
        *,
        cache: ChunkCache | None = None,
        options: ReaderOptions | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._client = client
        self.tenant_id = tenant_id
        self._cache = cache
        self.options = options or ReaderOptions()
        self._executor = executor
        self.stats = ReadStats()

    async def manifest(self, snapshot: str) -> pb.SnapshotManifest:
        """The committed snapshot with this id or name."""
        return await self._client.get(self.tenant_id, snapshot)

    async def iter_stream(
        self, stream: pb.SnapshotStream, progress: Callable[[int], None] | None = None
    ) -> AsyncIterator[bytes]:
        """The stream's bytes, chunk by chunk, in order. `progress` gets the bytes delivered so far."""
        own = None
        executor = self._executor
        if executor is None:
            own = executor = ThreadPoolExecutor(self.options.verify_workers, thread_name_prefix="snapshot-verify")
        window: deque[asyncio.Task[list[bytes]]] = deque()
        delivered = 0
        try:
            for batch in self._batches(stream.chunks):
                window.append(asyncio.create_task(self._fetch(batch, executor)))
                if len(window) >= self.options.concurrency:
                    for plain in await window.popleft():
                        delivered += len(plain)
                        yield plain
                    if progress is not None:
                        progress(delivered)
            while window:
                for plain in await window.popleft():
                    delivered += len(plain)
                    yield plain
                if progress is not None:
                    progress(delivered)
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)
            if own is not None:
                own.shutdown(wait=False, cancel_futures=True)
        if delivered != stream.size:
            raise errors.Internal(f"stream {stream.name!r} gave {delivered} bytes, its manifest says {stream.size}")

    async def read_stream(self, stream: pb.SnapshotStream) -> bytes:
        """The whole stream in memory (small streams and tests)."""
        return b"".join([piece async for piece in self.iter_stream(stream)])

    async def restore_stream(
        self, stream: pb.SnapshotStream, dest: Path | str, progress: Callable[[int], None] | None = None
    ) -> int:
        """Writes the stream to `dest` (replaced atomically when complete); returns its size."""
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".partial")
        try:
            with open(partial, "wb") as file:
                async for piece in self.iter_stream(stream, progress):
                    await asyncio.to_thread(file.write, piece)
            os.replace(partial, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
        return int(stream.size)

    def _batches(self, refs: Sequence[pb.ChunkRef]) -> list[list[pb.ChunkRef]]:
        batches: list[list[pb.ChunkRef]] = []
        current: list[pb.ChunkRef] = []
        size = 0
        for ref in refs:
            if current and (len(current) >= self.options.batch_chunks or size + ref.size > self.options.batch_bytes):
                batches.append(current)
                current, size = [], 0
            current.append(ref)
            size += ref.size
        if current:
            batches.append(current)
        return batches

    async def _fetch(self, batch: list[pb.ChunkRef], executor: Executor) -> list[bytes]:
        loop = asyncio.get_running_loop()
        sizes = {ref.hash: ref.size for ref in batch}
        plain: dict[str, bytes] = {}
        if self._cache is not None:
            cached = await asyncio.gather(*(self._cache.get(self.tenant_id, h) for h in sizes))
            checks = {
                h: loop.run_in_executor(executor, open_verified, h, sizes[h], data)
                for h, data in zip(sizes, cached, strict=True)
                if data is not None
            }
            for h, check in checks.items():
                try:
                    plain[h] = await check
                    self.stats.node_cache += 1
                except ChunkCorrupted:
                    self._cache.discard(self.tenant_id, h)
        missing = [h for h in sizes if h not in plain]
        if missing:
            await self._fetch_from_store(missing, sizes, plain, executor)
        self.stats.chunks += len(sizes)
        self.stats.bytes += sum(len(p) for p in plain.values())
        return [plain[ref.hash] for ref in batch]

    async def _fetch_from_store(
        self, missing: list[str], sizes: dict[str, int], plain: dict[str, bytes], executor: Executor
    ) -> None:
        loop = asyncio.get_running_loop()
        received = 0
        async for chunk in self._client.get_chunks(self.tenant_id, missing):
            expected = missing[received] if received < len(missing) else None
            if chunk.hash != expected:
                raise errors.Internal(f"the snapshot-store sent chunk {chunk.hash} where {expected} was due")
            received += 1
            if chunk.size != sizes[chunk.hash]:
                raise ChunkCorrupted(
                    f"chunk {chunk.hash} is {chunk.size} bytes in the store, {sizes[chunk.hash]} in the manifest"
                )
            plain[chunk.hash] = await loop.run_in_executor(
                executor, open_verified, chunk.hash, chunk.size, chunk.compressed
            )
            if chunk.tier == TIER_REGIONAL:
                self.stats.regional_cache += 1
            else:
                self.stats.s3 += 1
            if self._cache is not None:
                await self._cache.put(self.tenant_id, chunk.hash, chunk.compressed)
        if received != len(missing):
            raise errors.Internal(f"the snapshot-store sent {received} of {len(missing)} chunks asked for")
