"""Between protobuf messages and the domain model."""

from __future__ import annotations

from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch_snapshot_store.domain import validation
from hutch_snapshot_store.domain.model import CopyParams, Snapshot, Stream, TenantUsage


def timestamp(moment: object) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)  # type: ignore[arg-type]
    return result


def stream(value: Stream) -> pb.SnapshotStream:
    return pb.SnapshotStream(
        name=value.name, chunks=[pb.ChunkRef(hash=c.hash, size=c.size) for c in value.chunks], size=value.size
    )


def manifest(snapshot: Snapshot) -> pb.SnapshotManifest:
    return pb.SnapshotManifest(
        id=snapshot.id,
        tenant_id=snapshot.tenant_id,
        name=snapshot.name,
        sandbox_id=snapshot.sandbox_id,
        kind=int(snapshot.kind),  # type: ignore[arg-type]
        purpose=int(snapshot.purpose),  # type: ignore[arg-type]
        parent_id=snapshot.parent_id,
        spec=snapshot.spec,
        streams=[stream(s) for s in snapshot.streams],
        logical_bytes=snapshot.logical_bytes,
        new_stored_bytes=snapshot.new_stored_bytes,
        created_at=timestamp(snapshot.created_at),
        labels=snapshot.labels,
    )


def usage(value: TenantUsage) -> pb.TenantUsageResponse:
    return pb.TenantUsageResponse(
        snapshots=value.snapshots,
        logical_bytes=value.logical_bytes,
        stored_bytes=value.stored_bytes,
        chunks=value.chunks,
        cached_bytes=value.cached_bytes,
    )


def copy_params(source: pb.SnapshotManifest, tenant_id: str, source_region: str) -> CopyParams:
    """What a copy of another region's manifest keeps: id, metadata and creation time, checked as a
    Begin of this store would check them."""
    if source.tenant_id != tenant_id or not validation.is_snapshot_id(source.id):
        raise errors.Internal(f"region {source_region} answered with a manifest that is not the one asked for")
    params = validation.begin(
        tenant_id,
        source.sandbox_id,
        source.name,
        source.kind,
        source.purpose,
        source.parent_id,
        source.spec,
        source.labels,
    )
    return CopyParams(source.id, params, source.created_at.ToDatetime(tzinfo=UTC), source_region)


def streams(source: pb.SnapshotManifest) -> tuple[Stream, ...]:
    return validation.streams((s.name, [(c.hash, c.size) for c in s.chunks], s.size) for s in source.streams)
