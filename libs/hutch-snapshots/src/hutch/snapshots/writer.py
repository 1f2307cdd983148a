"""Writing a snapshot: cut, hash, compress, upload only what the store lacks, commit.

Each stream flows through a pipeline whose stages overlap:

    read blocks -> cut chunks -> seal (BLAKE3 + zstd, thread pool) -> FindMissing in batches
                -> several PutChunks streams at once for the missing chunks -> node cache

Every stage is bounded (queues of a few items, a byte budget for chunks waiting to upload), so a
stream of any size is written with a fixed amount of memory. A chunk seen earlier in the same snapshot
is neither asked about nor uploaded again. Any failure aborts the pending snapshot (when used as an
async context manager), so the store forgets it at once instead of at lease expiry.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.chunker import DEFAULT_PARAMS, Chunker, ChunkingParams, MiB
from hutch.snapshots.client import SnapshotStoreClient
from hutch.snapshots.codec import SealedChunk, seal

ByteSource = AsyncIterable[bytes] | Iterable[bytes]


@dataclass(frozen=True)
class WriterOptions:
    chunking: ChunkingParams = DEFAULT_PARAMS
    # Bytes read from a file at a time.
    read_block_bytes: int = 8 * MiB
    # Threads that hash and compress (both release the GIL).
    seal_workers: int = max(2, os.cpu_count() or 2)
    # Chunks asked about in one FindMissing call (also flushed at find_batch_bytes).
    find_batch_chunks: int = 64
    find_batch_bytes: int = 32 * MiB
    # PutChunks calls in flight at once, and the compressed bytes each carries at most.
    upload_streams: int = 4
    upload_batch_bytes: int = 8 * MiB
    # Compressed bytes waiting for an upload slot; the reader stalls when this is reached.
    max_pending_upload_bytes: int = 64 * MiB


@dataclass(frozen=True)
class Progress:
    stream: str
    # Plain bytes cut and sealed so far, over all streams of the snapshot.
    bytes_processed: int
    # Compressed bytes the store accepted so far.
    bytes_uploaded: int
    chunks_uploaded: int


@dataclass(frozen=True)
class WriteStats:
    logical_bytes: int
    chunks: int
    # Distinct chunks the store did not have (uploaded by this writer).
    new_chunks: int
    # Distinct chunks the store already had, or that appeared earlier in this snapshot.
    reused_chunks: int
    uploaded_bytes: int


@dataclass(frozen=True)
class WriteResult:
    manifest: pb.SnapshotManifest
    stats: WriteStats


class _ByteBudget:
    """A semaphore counted in bytes: at most `limit` bytes held, but always room for one item."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._changed = asyncio.Condition()

    async def acquire(self, amount: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._held == 0 or self._held + amount <= self._limit)
            self._held += amount

    async def release(self, amount: int) -> None:
        async with self._changed:
            self._held -= amount
            self._changed.notify_all()


class SnapshotWriter:
    """Writes one snapshot for `tenant_id`.

        async with SnapshotWriter(client, tenant, sandbox_id=..., cache=node_cache) as writer:
            await writer.add_file("rootfs.tar", path)
            result = await writer.commit()

    Leaving the block without a commit (an exception included) aborts the pending snapshot.
    """

    def __init__(
        self,
        client: SnapshotStoreClient,
        tenant_id: str,
        *,
        sandbox_id: str = "",
        name: str = "",
        kind: pb.SnapshotKind.ValueType = pb.SNAPSHOT_KIND_FILESYSTEM,
        purpose: pb.SnapshotPurpose.ValueType = pb.SNAPSHOT_PURPOSE_USER,
        parent_id: str = "",
        spec: bytes = b"",
        labels: Mapping[str, str] | None = None,
        cache: ChunkCache | None = None,
        options: WriterOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        executor: Executor | None = None,
        snapshot_id: str = "",
    ) -> None:
        """`snapshot_id`: a snapshot already begun (Begin called elsewhere) that this writer fills."""
        self._client = client
        self.tenant_id = tenant_id
        self._sandbox_id = sandbox_id
        self._name = name
        self._kind = kind
        self._purpose = purpose
        self._parent_id = parent_id
        self._spec = spec
        self._labels = dict(labels or {})
        self._cache = cache
        self.options = options or WriterOptions()
        self._progress = progress
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self.snapshot_id = snapshot_id
        self._streams: list[pb.SnapshotStream] = []
        # Hashes already asked about (or uploaded) for this snapshot.
        self._known: set[str] = set()
        self._lock = asyncio.Lock()
        self._committed = False
        self._failed = False
        self._processed = 0
        self._uploaded_bytes = 0
        self._uploaded_chunks = 0
        self._chunks = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def begin(self) -> str:
        """Starts the pending snapshot; returns its id."""
        if not self.snapshot_id:
            response = await self._client.begin(
                self.tenant_id,
                sandbox_id=self._sandbox_id,
                name=self._name,
                kind=self._kind,
                purpose=self._purpose,
                parent_id=self._parent_id,
                spec=self._spec,
                labels=self._labels,
            )
            self.snapshot_id = response.snapshot_id
        return self.snapshot_id

    async def __aenter__(self) -> SnapshotWriter:
        await self.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._committed:
                await self.abort()
        finally:
            self._shutdown_executor()

    async def abort(self) -> None:
        """Drops the pending snapshot (best effort: an unreachable store lets its lease expire)."""
        if not self.snapshot_id or self._committed:
            return
        try:
            await self._client.abort(self.tenant_id, self.snapshot_id)
        except errors.HutchError:
            pass

    def _shutdown_executor(self) -> None:
        if self._own_executor is not None:
            self._own_executor.shutdown(wait=False, cancel_futures=True)
            self._own_executor = None

    def _pool(self) -> Executor:
        if self._executor is not None:
            return self._executor
        if self._own_executor is None:
            self._own_executor = ThreadPoolExecutor(self.options.seal_workers, thread_name_prefix="snapshot-seal")
        return self._own_executor

    # -- streams -----------------------------------------------------------------------------------

    async def add_file(self, name: str, path: Path | str) -> pb.SnapshotStream:
        """Adds the file at `path` as stream `name`."""
        return await self.add_stream(name, _file_blocks(Path(path), self.options.read_block_bytes))

    async def add_bytes(self, name: str, data: bytes) -> pb.SnapshotStream:
        block = self.options.read_block_bytes
        return await self.add_stream(name, (data[i : i + block] for i in range(0, len(data), block)))

    async def add_stream(self, name: str, source: ByteSource) -> pb.SnapshotStream:
        """Adds the bytes `source` yields (async or plain iterable) as stream `name`."""
        if not name:
            raise errors.InvalidArgument("a snapshot stream needs a name")
        async with self._lock:
            if self._committed or self._failed:
                raise errors.FailedPrecondition("this snapshot writer is finished; start a new one")
            if any(s.name == name for s in self._streams):
                raise errors.InvalidArgument(f"the snapshot already has a stream named {name!r}")
            await self.begin()
            try:
                stream = await self._write(name, _as_async(source))
            except BaseException:
                self._failed = True
                raise
            self._streams.append(stream)
            return stream

    async def commit(self) -> WriteResult:
        """Makes the snapshot visible; returns its manifest and what writing it cost."""
        async with self._lock:
            if self._failed:
                raise errors.FailedPrecondition("a stream of this snapshot failed; it cannot be committed")
            await self.begin()
            manifest = await self._client.commit(self.tenant_id, self.snapshot_id, self._streams)
            self._committed = True
        self._shutdown_executor()
        return WriteResult(manifest=manifest, stats=self.stats())

    def stats(self) -> WriteStats:
        return WriteStats(
            logical_bytes=self._processed,
            chunks=self._chunks,
            new_chunks=self._uploaded_chunks,
            reused_chunks=len(self._known) - self._uploaded_chunks,
            uploaded_bytes=self._uploaded_bytes,
        )

    # -- the pipeline ------------------------------------------------------------------------------

    async def _write(self, name: str, blocks: AsyncIterator[bytes]) -> pb.SnapshotStream:
        options = self.options
        loop = asyncio.get_running_loop()
        pool = self._pool()
        sealing: asyncio.Queue[asyncio.Future[SealedChunk] | None] = asyncio.Queue(options.seal_workers * 2)
        uploads: asyncio.Queue[SealedChunk | None] = asyncio.Queue()
        budget = _ByteBudget(options.max_pending_upload_bytes)
        refs: list[pb.ChunkRef] = []

        async def cut() -> None:
            chunker = Chunker(options.chunking)
            async for block in blocks:
                for plain in await loop.run_in_executor(pool, chunker.feed, block):
                    await sealing.put(loop.run_in_executor(pool, seal, plain))
            for plain in chunker.finish():
                await sealing.put(loop.run_in_executor(pool, seal, plain))
            await sealing.put(None)

        async def batch() -> None:
            pending: list[SealedChunk] = []
            pending_bytes = 0
            while (future := await sealing.get()) is not None:
                chunk = await future
                refs.append(pb.ChunkRef(hash=chunk.hash, size=chunk.size))
                pending.append(chunk)
                pending_bytes += len(chunk.compressed)
                if len(pending) >= options.find_batch_chunks or pending_bytes >= options.find_batch_bytes:
                    await self._dispatch(name, pending, uploads, budget)
                    pending, pending_bytes = [], 0
            await self._dispatch(name, pending, uploads, budget)
            for _ in range(options.upload_streams):
                await uploads.put(None)

        async def upload() -> None:
            while (first := await uploads.get()) is not None:
                group = [first]
                size = len(first.compressed)
                finished = False
                while size < options.upload_batch_bytes and not uploads.empty():
                    more = uploads.get_nowait()
                    if more is None:
                        finished = True
                        break
                    group.append(more)
                    size += len(more.compressed)
                try:
                    await self._client.put_chunks(self.tenant_id, self.snapshot_id, group)
                finally:
                    await budget.release(size)
                self._uploaded_bytes += size
                self._uploaded_chunks += len(group)
                self._report(name)
                if finished:
                    return

        await _run_all([cut(), batch(), *(upload() for _ in range(options.upload_streams))])
        return pb.SnapshotStream(name=name, chunks=refs, size=sum(r.size for r in refs))

    async def _dispatch(
        self,
        name: str,
        batch: list[SealedChunk],
        uploads: asyncio.Queue[SealedChunk | None],
        budget: _ByteBudget,
    ) -> None:
        if not batch:
            return
        fresh: dict[str, SealedChunk] = {}
        for chunk in batch:
            if chunk.hash not in self._known and chunk.hash not in fresh:
                fresh[chunk.hash] = chunk
        missing: set[str] = set()
        if fresh:
            missing = set(await self._client.find_missing(self.tenant_id, self.snapshot_id, list(fresh)))
            self._known.update(fresh)
        if self._cache is not None:
            cache = self._cache
            await asyncio.gather(*(cache.put(self.tenant_id, c.hash, c.compressed) for c in fresh.values()))
        for chunk in fresh.values():
            if chunk.hash in missing:
                await budget.acquire(len(chunk.compressed))
                await uploads.put(chunk)
        self._chunks += len(batch)
        self._processed += sum(c.size for c in batch)
        self._report(name)

    def _report(self, name: str) -> None:
        if self._progress is not None:
            self._progress(
                Progress(
                    stream=name,
                    bytes_processed=self._processed,
                    bytes_uploaded=self._uploaded_bytes,
                    chunks_uploaded=self._uploaded_chunks,
                )
            )


async def _run_all(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Runs the jobs together; the first failure cancels the others and is raised as it is."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _file_blocks(path: Path, block_bytes: int) -> AsyncIterator[bytes]:
    with open(path, "rb", buffering=0) as file:
        while block := await asyncio.to_thread(file.read, block_bytes):
            yield block


async def _as_async(source: ByteSource) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        async for piece in source:
            yield piece
        return
    iterator = iter(source)
    while True:
        block = await asyncio.to_thread(_next_block, iterator)
        if block is None:
            return
        yield block


def _next_block(iterator: Iterator[bytes]) -> bytes | None:
    return next(iterator, None)
