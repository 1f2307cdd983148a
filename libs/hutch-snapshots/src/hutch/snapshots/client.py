"""A typed client of the snapshot-store: every call carries the internal token, and a failed call
raises the domain error the store reported (`hutch.core.errors`), so callers never see grpc."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from hutch.core.grpc_runtime import error_from_rpc, internal_metadata
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.internal.v1 import snapshot_store_pb2_grpc
from hutch.snapshots.codec import MAX_CHUNK_BYTES, SealedChunk

if TYPE_CHECKING:
    from hutch.internal.v1.snapshot_store_pb2_grpc import SnapshotStoreAsyncStub

R = TypeVar("R", bound=Message)

# A chunk of the largest allowed size, incompressible, plus the message around it.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
)
_WHAT = "the snapshot-store"


class SnapshotStoreClient:
    """Calls to one snapshot-store. `connect` opens a channel that `close` closes; or wrap a stub."""

    def __init__(self, stub: SnapshotStoreAsyncStub, internal_token: str, *, timeout_s: float = 120.0) -> None:
        self._stub = stub
        self._token = internal_token
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    @classmethod
    def connect(cls, address: str, internal_token: str, *, timeout_s: float = 120.0) -> SnapshotStoreClient:
        channel = grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))
        client = cls(snapshot_store_pb2_grpc.SnapshotStoreStub(channel), internal_token, timeout_s=timeout_s)
        client._channel = channel
        return client

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    async def __aenter__(self) -> SnapshotStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return internal_metadata(self._token)

    async def _unary(self, call: Awaitable[R]) -> R:
        try:
            return await call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, _WHAT) from exc

    async def begin(
        self,
        tenant_id: str,
        *,
        sandbox_id: str = "",
        name: str = "",
        kind: pb.SnapshotKind.ValueType = pb.SNAPSHOT_KIND_FILESYSTEM,
        purpose: pb.SnapshotPurpose.ValueType = pb.SNAPSHOT_PURPOSE_USER,
        parent_id: str = "",
        spec: bytes = b"",
        labels: Mapping[str, str] | None = None,
    ) -> pb.BeginSnapshotResponse:
        request = pb.BeginSnapshotRequest(
            tenant_id=tenant_id,
            sandbox_id=sandbox_id,
            name=name,
            kind=kind,
            purpose=purpose,
            parent_id=parent_id,
            spec=spec,
            labels=dict(labels or {}),
        )
        return await self._unary(self._stub.Begin(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def find_missing(self, tenant_id: str, snapshot_id: str, hashes: Sequence[str]) -> list[str]:
        request = pb.FindMissingRequest(tenant_id=tenant_id, snapshot_id=snapshot_id, hashes=hashes)
        response = await self._unary(
            self._stub.FindMissing(request, metadata=self._metadata(), timeout=self._timeout_s)
        )
        return list(response.missing)

    async def put_chunks(self, tenant_id: str, snapshot_id: str, chunks: Iterable[SealedChunk]) -> pb.PutChunksResponse:
        messages = [
            pb.PutChunkRequest(
                tenant_id=tenant_id, snapshot_id=snapshot_id, hash=c.hash, size=c.size, compressed=c.compressed
            )
            for c in chunks
        ]
        return await self._unary(
            self._stub.PutChunks(iter(messages), metadata=self._metadata(), timeout=self._timeout_s)
        )

    async def commit(
        self, tenant_id: str, snapshot_id: str, streams: Sequence[pb.SnapshotStream]
    ) -> pb.SnapshotManifest:
        request = pb.CommitSnapshotRequest(tenant_id=tenant_id, snapshot_id=snapshot_id, streams=streams)
        return await self._unary(self._stub.Commit(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def abort(self, tenant_id: str, snapshot_id: str) -> None:
        request = pb.AbortSnapshotRequest(tenant_id=tenant_id, snapshot_id=snapshot_id)
        await self._unary(self._stub.Abort(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def get(self, tenant_id: str, snapshot: str, wait_ms: int = 0) -> pb.SnapshotManifest:
        """The committed snapshot; with `wait_ms`, one still being written is waited for that long."""
        request = pb.GetSnapshotRequest(tenant_id=tenant_id, snapshot=snapshot, wait_ms=wait_ms)
        timeout = self._timeout_s + wait_ms / 1000
        return await self._unary(self._stub.Get(request, metadata=self._metadata(), timeout=timeout))

    async def list(
        self,
        tenant_id: str,
        *,
        sandbox_id: str = "",
        purposes: Sequence[pb.SnapshotPurpose.ValueType] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListSnapshotsResponse:
        request = pb.ListSnapshotsRequest(
            tenant_id=tenant_id, sandbox_id=sandbox_id, purposes=purposes, page_size=page_size, page_token=page_token
        )
        return await self._unary(self._stub.List(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def delete(self, tenant_id: str, snapshot: str) -> None:
        request = pb.DeleteSnapshotRequest(tenant_id=tenant_id, snapshot=snapshot)
        await self._unary(self._stub.Delete(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def get_chunks(self, tenant_id: str, hashes: Sequence[str]) -> AsyncIterator[pb.Chunk]:
        """The chunks, in the order asked."""
        call = self._stub.GetChunks(
            pb.GetChunksRequest(tenant_id=tenant_id, hashes=hashes), metadata=self._metadata(), timeout=self._timeout_s
        )
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, _WHAT) from exc
        finally:
            call.cancel()

    async def tenant_usage(self, tenant_id: str) -> pb.TenantUsageResponse:
        request = pb.TenantUsageRequest(tenant_id=tenant_id)
        return await self._unary(self._stub.TenantUsage(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def collect_garbage(self) -> pb.CollectGarbageResponse:
        request = pb.CollectGarbageRequest()
        return await self._unary(self._stub.CollectGarbage(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def cache_stats(self) -> pb.CacheStatsResponse:
        return await self._unary(
            self._stub.CacheStats(pb.CacheStatsRequest(), metadata=self._metadata(), timeout=self._timeout_s)
        )
