"""The node's line to the snapshot-store: begin, upload (only the chunks the store lacks), read back.

Chunks the node cuts or fetches also go into its own chunk cache, so reading a snapshot back on the
node that took it (after its frozen copy was evicted) costs no transfer.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.cache import observe as observe_cache
from hutch.snapshots.client import SnapshotStoreClient
from hutch.snapshots.reader import SnapshotReader
from hutch.snapshots.writer import SnapshotWriter
from hutch_node_agent.snapshots import Kind, Purpose, StoredSnapshot, Stream

_KINDS: dict[Kind, pb.SnapshotKind.ValueType] = {
    "filesystem": pb.SNAPSHOT_KIND_FILESYSTEM,
    "memory": pb.SNAPSHOT_KIND_MEMORY,
}
_PURPOSES: dict[Purpose, pb.SnapshotPurpose.ValueType] = {
    "user": pb.SNAPSHOT_PURPOSE_USER,
    "pause": pb.SNAPSHOT_PURPOSE_PAUSE,
    "fork": pb.SNAPSHOT_PURPOSE_FORK,
}
# Manifests kept for reading streams right after get(); a restore reads a handful of streams.
_MANIFESTS_KEPT = 64


class StoreLink:
    def __init__(self, client: SnapshotStoreClient, cache: ChunkCache | None) -> None:
        self._client = client
        self._cache = cache
        self._manifests: OrderedDict[tuple[str, str], pb.SnapshotManifest] = OrderedDict()

    @classmethod
    async def open(cls, address: str, internal_token: str, cache_dir: Path, cache_bytes: int) -> StoreLink:
        cache = await ChunkCache.open(cache_dir, cache_bytes) if cache_bytes > 0 else None
        if cache is not None:
            observe_cache(cache, "node")
        return cls(SnapshotStoreClient.connect(address, internal_token), cache)

    async def close(self) -> None:
        await self._client.close()

    async def begin(
        self,
        tenant_id: str,
        sandbox_id: str,
        name: str,
        kind: Kind,
        purpose: Purpose,
        spec: dict[str, object],
        labels: dict[str, str],
    ) -> str:
        response = await self._client.begin(
            tenant_id,
            sandbox_id=sandbox_id,
            name=name,
            kind=_KINDS[kind],
            purpose=_PURPOSES[purpose],
            spec=json.dumps(spec).encode(),
            labels=labels,
        )
        return response.snapshot_id

    async def upload(self, tenant_id: str, snapshot_id: str, streams: list[Stream]) -> tuple[int, int]:
        async with SnapshotWriter(self._client, tenant_id, snapshot_id=snapshot_id, cache=self._cache) as writer:
            for stream in streams:
                await writer.add_stream(stream.name, stream.chunks)
            result = await writer.commit()
        return result.stats.logical_bytes, result.stats.uploaded_bytes

    async def abort(self, tenant_id: str, snapshot_id: str) -> None:
        await self._client.abort(tenant_id, snapshot_id)

    async def get(self, tenant_id: str, snapshot: str, wait_ms: int = 0) -> StoredSnapshot:
        manifest = await self._client.get(tenant_id, snapshot, wait_ms=wait_ms)
        self._manifests[(tenant_id, manifest.id)] = manifest
        while len(self._manifests) > _MANIFESTS_KEPT:
            self._manifests.popitem(last=False)
        try:
            spec = json.loads(manifest.spec or b"{}")
        except ValueError:
            spec = {}
        kind: Kind = "memory" if manifest.kind == pb.SNAPSHOT_KIND_MEMORY else "filesystem"
        return StoredSnapshot(
            id=manifest.id,
            tenant_id=tenant_id,
            sandbox_id=manifest.sandbox_id,
            kind=kind,
            spec=spec if isinstance(spec, dict) else {},
            streams=[s.name for s in manifest.streams],
            logical_bytes=manifest.logical_bytes,
        )

    async def read(self, tenant_id: str, snapshot_id: str, stream: str) -> AsyncIterator[bytes]:
        manifest = self._manifests.get((tenant_id, snapshot_id))
        if manifest is None:
            await self.get(tenant_id, snapshot_id)
            manifest = self._manifests[(tenant_id, snapshot_id)]
        for candidate in manifest.streams:
            if candidate.name == stream:
                reader = SnapshotReader(self._client, tenant_id, cache=self._cache)
                async for piece in reader.iter_stream(candidate):
                    yield piece
                return
        raise errors.NotFound(f"snapshot {snapshot_id} has no stream {stream!r}")
