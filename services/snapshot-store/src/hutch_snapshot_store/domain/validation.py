"""Checks on every request, with messages that say what to change. Pure: raises InvalidArgument."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from hutch.core import errors
from hutch.snapshots.codec import MAX_CHUNK_BYTES, is_chunk_hash
from hutch_snapshot_store.domain.model import BeginParams, ChunkRef, IncomingChunk, Kind, Purpose, Stream

SNAPSHOT_ID_PREFIX = "snap-"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_SNAPSHOT_ID = re.compile(r"^snap-[a-z2-7]{20}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SANDBOX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# The same rule as sandbox names.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,255}$")

MAX_LABELS = 64
MAX_LABEL_VALUE = 1024
MAX_SPEC_BYTES = 1024 * 1024
MAX_STREAMS = 64
# Per stream: 1 TiB of 1 MiB chunks.
MAX_CHUNKS_PER_STREAM = 1024 * 1024
DEFAULT_PAGE_SIZE = 100


def new_snapshot_id() -> str:
    return SNAPSHOT_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def is_snapshot_id(value: str) -> bool:
    return bool(_SNAPSHOT_ID.match(value))


def tenant(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("tenant_id is required")
    if not _TENANT.match(value):
        raise errors.InvalidArgument(
            f"tenant_id {value[:140]!r} is not valid: 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


def snapshot_id(value: str) -> str:
    if not is_snapshot_id(value):
        raise errors.InvalidArgument(
            f"snapshot_id {value[:80]!r} is not a snapshot id (snap- and 20 base32 characters)"
        )
    return value


def id_or_name(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("name a snapshot by its id or its name")
    if not is_snapshot_id(value) and not _NAME.match(value):
        raise errors.InvalidArgument(f"{value[:80]!r} is neither a snapshot id nor a valid snapshot name")
    return value


def _name(value: str) -> str:
    if value and not _NAME.match(value):
        raise errors.InvalidArgument(
            f"snapshot name {value[:80]!r} is not valid: 1-63 lowercase letters, digits or '-', not starting "
            "or ending with '-'"
        )
    return value


def _sandbox(value: str) -> str:
    if value and not _SANDBOX.match(value):
        raise errors.InvalidArgument(f"sandbox_id {value[:140]!r} is not valid")
    return value


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise errors.InvalidArgument(f"a snapshot has at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise errors.InvalidArgument(f"label key {key[:140]!r} must be 1-128 letters, digits, '.', '_', '/' or '-'")
        if len(value) > MAX_LABEL_VALUE:
            raise errors.InvalidArgument(f"label {key!r} is longer than {MAX_LABEL_VALUE} characters")
    return dict(labels)


def begin(
    tenant_id: str,
    sandbox_id: str,
    name: str,
    kind: int,
    purpose: int,
    parent_id: str,
    spec: bytes,
    labels: Mapping[str, str],
) -> BeginParams:
    """Unspecified kind and purpose mean a user's filesystem snapshot."""
    try:
        chosen_kind = Kind(kind) if kind else Kind.FILESYSTEM
    except ValueError:
        raise errors.InvalidArgument(f"unknown snapshot kind {kind}") from None
    try:
        chosen_purpose = Purpose(purpose) if purpose else Purpose.USER
    except ValueError:
        raise errors.InvalidArgument(f"unknown snapshot purpose {purpose}") from None
    if parent_id:
        snapshot_id(parent_id)
    if len(spec) > MAX_SPEC_BYTES:
        raise errors.InvalidArgument(f"spec is {len(spec)} bytes; at most {MAX_SPEC_BYTES} are kept with a snapshot")
    return BeginParams(
        tenant_id=tenant(tenant_id),
        sandbox_id=_sandbox(sandbox_id),
        name=_name(name),
        kind=chosen_kind,
        purpose=chosen_purpose,
        parent_id=parent_id,
        spec=bytes(spec),
        labels=_labels(labels),
    )


def hashes(values: Sequence[str], limit: int) -> list[str]:
    if not values:
        raise errors.InvalidArgument("name at least one chunk hash")
    if len(values) > limit:
        raise errors.InvalidArgument(f"at most {limit} chunk hashes per call, got {len(values)}: split the batch")
    for value in values:
        chunk_hash(value)
    return list(values)


def chunk_hash(value: str) -> str:
    if not is_chunk_hash(value):
        raise errors.InvalidArgument(f"{value[:80]!r} is not a chunk hash (64 lowercase hex characters of BLAKE3)")
    return value


def chunk_size(size: int, what: str) -> int:
    if not 0 < size <= MAX_CHUNK_BYTES:
        raise errors.InvalidArgument(f"{what}: chunk size {size} is outside 1..{MAX_CHUNK_BYTES} bytes")
    return size


def incoming_chunk(value: str, size: int, compressed: bytes) -> IncomingChunk:
    chunk_hash(value)
    chunk_size(size, value)
    if not compressed:
        raise errors.InvalidArgument(f"chunk {value}: no data (send its zstd frame in `compressed`)")
    # zstd never grows data by more than a small fraction.
    if len(compressed) > MAX_CHUNK_BYTES + MAX_CHUNK_BYTES // 64 + 1024:
        raise errors.InvalidArgument(f"chunk {value}: {len(compressed)} compressed bytes is over the limit")
    return IncomingChunk(value, size, bytes(compressed))


def streams(values: Iterable[tuple[str, Sequence[tuple[str, int]], int]]) -> tuple[Stream, ...]:
    """(name, [(hash, size)], declared size) triples into streams."""
    result: list[Stream] = []
    seen: set[str] = set()
    for name, refs, declared in values:
        if not _STREAM_NAME.match(name) or ".." in name.split("/"):
            raise errors.InvalidArgument(
                f"stream name {name[:80]!r} is not valid: 1-256 letters, digits, '.', '_', '-' or '/'"
            )
        if name in seen:
            raise errors.InvalidArgument(f"two streams are named {name!r}")
        seen.add(name)
        if len(refs) > MAX_CHUNKS_PER_STREAM:
            raise errors.InvalidArgument(f"stream {name!r} has {len(refs)} chunks; at most {MAX_CHUNKS_PER_STREAM}")
        chunks = tuple(ChunkRef(chunk_hash(h), chunk_size(size, f"stream {name!r}")) for h, size in refs)
        stream = Stream(name, chunks)
        if declared != stream.size:
            raise errors.InvalidArgument(
                f"stream {name!r} declares {declared} bytes but its chunks add up to {stream.size}"
            )
        result.append(stream)
    if len(result) > MAX_STREAMS:
        raise errors.InvalidArgument(f"a snapshot has at most {MAX_STREAMS} streams, got {len(result)}")
    return tuple(result)


def page_size(value: int, maximum: int) -> int:
    if value == 0:
        return min(DEFAULT_PAGE_SIZE, maximum)
    if value > maximum:
        raise errors.InvalidArgument(f"page_size {value} is over the maximum of {maximum}")
    return value


def purposes(values: Iterable[int]) -> tuple[Purpose, ...]:
    try:
        return tuple(Purpose(v) for v in values)
    except ValueError as exc:
        raise errors.InvalidArgument(f"unknown snapshot purpose: {exc}") from None


def encode_page_token(created_at: datetime, snapshot: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{snapshot}".encode()).decode()


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        moment, _, snapshot = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        return datetime.fromisoformat(moment), snapshot_id(snapshot)
    except (binascii.Error, UnicodeDecodeError, ValueError, errors.InvalidArgument):
        raise errors.InvalidArgument("page_token is not one this service handed out; start again without it") from None
