"""snapshot-store settings (env: HUTCH_SNAPSHOT_STORE__*, HUTCH_S3__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from hutch.core.config import GrpcSettings, RegionAddresses, S3Settings, ServiceSettings
from hutch.snapshots.client import MAX_MESSAGE_BYTES


def decode_master_key(value: str) -> bytes:
    """A master key as configured: base64 of exactly 32 bytes."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a master key must be base64 (e.g. `openssl rand -base64 32`)") from exc
    if len(key) != 32:
        raise ValueError(f"a master key must be 32 bytes (AES-256), this one has {len(key)}")
    return key


class SnapshotStoreOptions(BaseModel):
    # Wraps every tenant's data key. Base64 of 32 random bytes; required.
    master_key: SecretStr = SecretStr("")
    # Keys that wrapped data keys before the current one, comma-separated; only needed until
    # `hutch-snapshot-store admin rotate-master-key` has re-wrapped everything.
    previous_master_keys: SecretStr = SecretStr("")
    # A pending snapshot not committed (nor touched by its writer) for this long is dropped.
    pending_lease_s: float = Field(default=3600.0, gt=0)
    # Garbage collection: how often, and how long a chunk stays after nothing references it.
    gc_interval_s: float = Field(default=600.0, gt=0)
    gc_grace_s: float = Field(default=3600.0, ge=0)
    # An upload that never got its chunk row (a store that died mid-upload) has its object removed
    # after this long: longer than any upload can take.
    orphan_grace_s: float = Field(default=3600.0, ge=0)
    # Chunk rows removed per garbage-collection transaction.
    gc_batch: int = Field(default=500, ge=1, le=10_000)
    # The regional cache: decrypted (still compressed) chunks on local disk, in front of S3.
    cache_dir: Path = Path("/var/lib/hutch/snapshot-cache")
    cache_bytes: int = Field(default=20 * 1024**3, gt=0)
    # S3 calls running at once (the minio SDK is synchronous: each takes a thread).
    s3_concurrency: int = Field(default=16, ge=1, le=256)
    s3_timeout_s: float = Field(default=30.0, gt=0)
    # Requests: the largest FindMissing/GetChunks batch and List page.
    max_hashes_per_call: int = Field(default=4096, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    # Other regions' snapshot-stores, `region=host:port,...`: where Import copies snapshots from.
    # Called with this region's internal token, so every region of an installation shares one.
    peer_stores: RegionAddresses = Field(default_factory=dict)

    @field_validator("master_key")
    @classmethod
    def _valid_master_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            decode_master_key(value.get_secret_value())
        return value

    def master_key_bytes(self) -> bytes:
        return decode_master_key(self.master_key.get_secret_value())

    def previous_master_key_bytes(self) -> list[bytes]:
        raw = self.previous_master_keys.get_secret_value()
        return [decode_master_key(part) for part in raw.split(",") if part.strip()]


class SnapshotStoreSettings(ServiceSettings):
    snapshot_store: SnapshotStoreOptions = SnapshotStoreOptions()
    s3: S3Settings = S3Settings()
    # Chunks travel one per message: room for the largest allowed chunk.
    grpc: GrpcSettings = GrpcSettings(max_message_bytes=MAX_MESSAGE_BYTES)

    @model_validator(mode="after")
    def _peers_are_other_regions(self) -> SnapshotStoreSettings:
        if self.region in self.snapshot_store.peer_stores:
            raise ValueError(f"snapshot_store.peer_stores names this store's own region {self.region!r}")
        return self
