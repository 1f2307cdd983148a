"""What the snapshot-store deals in, free of transport and storage types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum


class Kind(IntEnum):
    # Values match hutch.internal.v1.SnapshotKind.
    FILESYSTEM = 1
    MEMORY = 2


class Purpose(IntEnum):
    # Values match hutch.internal.v1.SnapshotPurpose.
    USER = 1
    PAUSE = 2
    FORK = 3


class State(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"


@dataclass(frozen=True)
class ChunkRef:
    hash: str
    size: int


@dataclass(frozen=True)
class Stream:
    name: str
    chunks: tuple[ChunkRef, ...]

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)


@dataclass(frozen=True)
class BeginParams:
    tenant_id: str
    sandbox_id: str = ""
    name: str = ""
    kind: Kind = Kind.FILESYSTEM
    purpose: Purpose = Purpose.USER
    parent_id: str = ""
    spec: bytes = b""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    id: str
    tenant_id: str
    name: str
    sandbox_id: str
    kind: Kind
    purpose: Purpose
    parent_id: str
    spec: bytes
    labels: dict[str, str]
    state: State
    created_at: datetime
    lease_expires_at: datetime | None
    logical_bytes: int = 0
    new_stored_bytes: int = 0
    # Empty in listings.
    streams: tuple[Stream, ...] = ()
    # The region it was imported from; empty when it was written here.
    copied_from_region: str = ""


@dataclass(frozen=True)
class CopyParams:
    """A snapshot of another region as this store re-creates it: same id, metadata and creation time."""

    snapshot_id: str
    params: BeginParams
    created_at: datetime
    source_region: str


@dataclass(frozen=True)
class IncomingChunk:
    """A chunk as a writer sends it: name, plain size, zstd frame."""

    hash: str
    size: int
    compressed: bytes


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back for a client, and where it was found ("cache" or "s3")."""

    hash: str
    size: int
    compressed: bytes
    tier: str


@dataclass(frozen=True)
class PutReport:
    stored: int
    stored_bytes: int


@dataclass(frozen=True)
class ListQuery:
    tenant_id: str
    sandbox_id: str
    purposes: tuple[Purpose, ...]
    page_size: int
    # Keyset position: list strictly after this (created_at, id).
    after: tuple[datetime, str] | None


@dataclass(frozen=True)
class Page:
    snapshots: tuple[Snapshot, ...]
    next_token: str


@dataclass(frozen=True)
class TenantUsage:
    snapshots: int
    logical_bytes: int
    stored_bytes: int
    chunks: int
    cached_bytes: int


@dataclass(frozen=True)
class GcReport:
    chunks_deleted: int = 0
    bytes_freed: int = 0
    pending_expired: int = 0
    orphans_deleted: int = 0
