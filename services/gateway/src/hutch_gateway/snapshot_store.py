"""The gateway's calls to the snapshot-store: one channel, the internal token, the caller's tenant.

Every call names the tenant it acts for, which the gateway took from the caller's API key; the store
answers NOT_FOUND for another tenant's snapshot, exactly as for one that does not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from hutch.core import errors
from hutch.core.grpc_runtime import error_from_rpc, internal_metadata
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.internal.v1 import snapshot_store_pb2_grpc

if TYPE_CHECKING:
    from hutch.internal.v1.snapshot_store_pb2_grpc import SnapshotStoreAsyncStub

R = TypeVar("R", bound=Message)

_WHAT = "the snapshot-store"


class SnapshotStoreChannel:
    """Opened on first use; without an address every call answers UNAVAILABLE."""

    def __init__(self, address: str, internal_token: str, timeout_s: float = 30.0) -> None:
        self._address = address
        self._token = internal_token
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    @property
    def configured(self) -> bool:
        return bool(self._address)

    def require(self) -> None:
        """Raises UNAVAILABLE, saying what is missing, when no snapshot-store is configured."""
        if not self._address:
            raise errors.Unavailable(
                "snapshots are not set up here: HUTCH_GATEWAY__SNAPSHOT_STORE_ADDRESS (the snapshot-store) is empty"
            )

    def _stub(self) -> SnapshotStoreAsyncStub:
        self.require()
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address, options=[("grpc.keepalive_time_ms", 20_000)])
        return snapshot_store_pb2_grpc.SnapshotStoreStub(self._channel)

    async def _unary(self, call: Awaitable[R]) -> R:
        try:
            return await call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, _WHAT) from exc

    async def get(self, tenant_id: str, snapshot: str, wait_ms: int = 0) -> pb.SnapshotManifest:
        """By id or name; with `wait_ms`, waits that long for one still being written."""
        request = pb.GetSnapshotRequest(tenant_id=tenant_id, snapshot=snapshot, wait_ms=wait_ms)
        timeout = self._timeout_s + wait_ms / 1000
        return await self._unary(self._stub().Get(request, metadata=self._metadata(), timeout=timeout))

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
        return await self._unary(self._stub().List(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def import_from(self, tenant_id: str, snapshot: str, source_region: str) -> pb.SnapshotManifest:
        """Copies the tenant's snapshot from `source_region`'s store into this region's; no timeout:
        it takes as long as its bytes take to travel."""
        request = pb.ImportSnapshotRequest(tenant_id=tenant_id, snapshot=snapshot, source_region=source_region)
        return await self._unary(self._stub().Import(request, metadata=self._metadata()))

    async def delete(self, tenant_id: str, snapshot: str) -> None:
        request = pb.DeleteSnapshotRequest(tenant_id=tenant_id, snapshot=snapshot)
        await self._unary(self._stub().Delete(request, metadata=self._metadata(), timeout=self._timeout_s))

    async def usage(self, tenant_id: str) -> pb.TenantUsageResponse:
        request = pb.TenantUsageRequest(tenant_id=tenant_id)
        return await self._unary(self._stub().TenantUsage(request, metadata=self._metadata(), timeout=self._timeout_s))

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return internal_metadata(self._token)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
