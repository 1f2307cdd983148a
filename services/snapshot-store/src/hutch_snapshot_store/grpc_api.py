"""hutch.internal.v1.SnapshotStore: validate, delegate, convert back. Internal: every call carries the
installation's internal token (checked by the server's interceptor) and names its tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.internal.v1 import snapshot_store_pb2_grpc
from hutch_snapshot_store import convert
from hutch_snapshot_store.domain import validation
from hutch_snapshot_store.domain.model import IncomingChunk, ListQuery
from hutch_snapshot_store.importer import Importer
from hutch_snapshot_store.service import SnapshotService

# The longest a Get may wait for a snapshot that is still being written.
MAX_WAIT_MS = 300_000


class SnapshotStoreServicer(snapshot_store_pb2_grpc.SnapshotStoreServicer):
    def __init__(
        self, service: SnapshotService, importer: Importer, max_hashes_per_call: int, max_page_size: int
    ) -> None:
        self._service = service
        self._importer = importer
        self._max_hashes = max_hashes_per_call
        self._max_page = max_page_size

    async def Begin(self, request: pb.BeginSnapshotRequest, context: Context) -> pb.BeginSnapshotResponse:
        params = validation.begin(
            request.tenant_id,
            request.sandbox_id,
            request.name,
            request.kind,
            request.purpose,
            request.parent_id,
            request.spec,
            request.labels,
        )
        snapshot = await self._service.begin(params)
        return pb.BeginSnapshotResponse(
            snapshot_id=snapshot.id, lease_expires_at=convert.timestamp(snapshot.lease_expires_at)
        )

    async def FindMissing(self, request: pb.FindMissingRequest, context: Context) -> pb.FindMissingResponse:
        tenant = validation.tenant(request.tenant_id)
        snapshot = validation.snapshot_id(request.snapshot_id)
        hashes = validation.hashes(request.hashes, self._max_hashes)
        return pb.FindMissingResponse(missing=await self._service.find_missing(tenant, snapshot, hashes))

    async def PutChunks(
        self, request_iterator: AsyncIterator[pb.PutChunkRequest], context: Context
    ) -> pb.PutChunksResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return pb.PutChunksResponse()
        tenant = validation.tenant(first.tenant_id)
        snapshot = validation.snapshot_id(first.snapshot_id)
        await self._service.touch_pending(tenant, snapshot)

        async def chunks() -> AsyncIterator[IncomingChunk]:
            request: pb.PutChunkRequest | None = first
            while request is not None:
                if (request.tenant_id, request.snapshot_id) != (tenant, snapshot):
                    raise errors.InvalidArgument(
                        "every chunk of one PutChunks call must name the same tenant and snapshot"
                    )
                yield validation.incoming_chunk(request.hash, request.size, request.compressed)
                request = await anext(aiter(request_iterator), None)

        report = await self._service.put_chunks(tenant, snapshot, chunks())
        return pb.PutChunksResponse(stored=report.stored, stored_bytes=report.stored_bytes)

    async def Commit(self, request: pb.CommitSnapshotRequest, context: Context) -> pb.SnapshotManifest:
        tenant = validation.tenant(request.tenant_id)
        snapshot = validation.snapshot_id(request.snapshot_id)
        streams = validation.streams((s.name, [(c.hash, c.size) for c in s.chunks], s.size) for s in request.streams)
        return convert.manifest(await self._service.commit(tenant, snapshot, streams))

    async def Abort(self, request: pb.AbortSnapshotRequest, context: Context) -> pb.AbortSnapshotResponse:
        await self._service.abort(validation.tenant(request.tenant_id), validation.snapshot_id(request.snapshot_id))
        return pb.AbortSnapshotResponse()

    async def Get(self, request: pb.GetSnapshotRequest, context: Context) -> pb.SnapshotManifest:
        tenant = validation.tenant(request.tenant_id)
        if request.wait_ms > MAX_WAIT_MS:
            raise errors.InvalidArgument(f"wait_ms may be at most {MAX_WAIT_MS}")
        snapshot = await self._service.get(tenant, validation.id_or_name(request.snapshot), request.wait_ms / 1000)
        return convert.manifest(snapshot)

    async def List(self, request: pb.ListSnapshotsRequest, context: Context) -> pb.ListSnapshotsResponse:
        query = ListQuery(
            tenant_id=validation.tenant(request.tenant_id),
            sandbox_id=request.sandbox_id,
            purposes=validation.purposes(request.purposes),
            page_size=validation.page_size(request.page_size, self._max_page),
            after=validation.decode_page_token(request.page_token),
        )
        page = await self._service.list(query)
        return pb.ListSnapshotsResponse(
            snapshots=[convert.manifest(s) for s in page.snapshots], next_page_token=page.next_token
        )

    async def Delete(self, request: pb.DeleteSnapshotRequest, context: Context) -> pb.DeleteSnapshotResponse:
        tenant = validation.tenant(request.tenant_id)
        await self._service.delete(tenant, validation.id_or_name(request.snapshot))
        return pb.DeleteSnapshotResponse()

    async def Import(self, request: pb.ImportSnapshotRequest, context: Context) -> pb.SnapshotManifest:
        tenant = validation.tenant(request.tenant_id)
        snapshot = validation.id_or_name(request.snapshot)
        report = await self._importer.import_snapshot(tenant, snapshot, request.source_region)
        return convert.manifest(report.snapshot)

    async def GetChunks(self, request: pb.GetChunksRequest, context: Context) -> AsyncIterator[pb.Chunk]:
        tenant = validation.tenant(request.tenant_id)
        hashes = validation.hashes(request.hashes, self._max_hashes)
        async for chunk in self._service.chunks(tenant, hashes):
            yield pb.Chunk(hash=chunk.hash, size=chunk.size, compressed=chunk.compressed, tier=chunk.tier)

    async def TenantUsage(self, request: pb.TenantUsageRequest, context: Context) -> pb.TenantUsageResponse:
        return convert.usage(await self._service.usage(validation.tenant(request.tenant_id)))

    async def CollectGarbage(self, request: pb.CollectGarbageRequest, context: Context) -> pb.CollectGarbageResponse:
        report = await self._service.collect_garbage()
        return pb.CollectGarbageResponse(
            chunks_deleted=report.chunks_deleted,
            bytes_freed=report.bytes_freed,
            pending_expired=report.pending_expired,
            orphans_deleted=report.orphans_deleted,
        )

    async def CacheStats(self, request: pb.CacheStatsRequest, context: Context) -> pb.CacheStatsResponse:
        stats = self._service.cache_stats()
        return pb.CacheStatsResponse(
            hits=stats.hits, misses=stats.misses, cached_bytes=stats.cached_bytes, capacity_bytes=stats.capacity_bytes
        )
