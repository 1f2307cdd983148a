"""What a chunk is on the wire: BLAKE3 of its plain bytes names it, a zstd frame carries it.

Both libraries release the GIL on large buffers, so `seal` and `open_verified` are meant to run in a
thread pool, several chunks at once.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import blake3
import zstandard

from hutch.core import errors

HASH_HEX_CHARS = 64
_HASH = re.compile(r"^[0-9a-f]{64}$")
# The level trades upload bytes for CPU; 3 compresses ~50% on typical root filesystems at hundreds of
# MB/s per core.
ZSTD_LEVEL = 3
# A limit every service and writer agrees on: larger chunks are refused (the chunker's maximum is far
# below it).
MAX_CHUNK_BYTES = 16 * 1024 * 1024

_local = threading.local()


class ChunkCorrupted(errors.Internal):
    """A chunk's bytes do not match its hash or size: never used, never stored."""


def is_chunk_hash(value: str) -> bool:
    """Whether `value` is a lowercase hex BLAKE3 digest."""
    return bool(_HASH.match(value))


def chunk_hash(plain: bytes | memoryview) -> str:
    return blake3.blake3(plain).hexdigest()


@dataclass(frozen=True)
class SealedChunk:
    """A chunk ready to upload: its name, plain size and zstd frame."""

    hash: str
    size: int
    compressed: bytes


def _compressor() -> zstandard.ZstdCompressor:
    # zstandard objects are not thread-safe; one per thread keeps their buffers warm.
    found: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if found is None:
        found = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.compressor = found
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = zstandard.ZstdDecompressor()
        _local.decompressor = found
    return found


def seal(plain: bytes) -> SealedChunk:
    """Hashes and compresses one chunk."""
    return SealedChunk(hash=chunk_hash(plain), size=len(plain), compressed=_compressor().compress(plain))


def decompress(compressed: bytes, size: int) -> bytes:
    """The plain bytes of a zstd frame that should hold `size` bytes; never more are produced."""
    try:
        # A frame that claims more than `size` is refused before anything is allocated for it.
        declared = zstandard.frame_content_size(compressed)
        if declared > size:
            raise ChunkCorrupted(f"chunk frame declares {declared} bytes, but {size} were announced")
        plain = _decompressor().decompress(compressed, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ChunkCorrupted(f"chunk is not a valid zstd frame: {exc}") from exc
    if len(plain) != size:
        raise ChunkCorrupted(f"chunk holds {len(plain)} bytes, but {size} were announced")
    return plain


def open_verified(expected_hash: str, size: int, compressed: bytes) -> bytes:
    """The plain bytes of a chunk, after checking they are exactly what `expected_hash` names."""
    if size > MAX_CHUNK_BYTES:
        raise ChunkCorrupted(f"chunk {expected_hash} announces {size} bytes, over the {MAX_CHUNK_BYTES} limit")
    plain = decompress(compressed, size)
    actual = chunk_hash(plain)
    if actual != expected_hash:
        raise ChunkCorrupted(f"chunk {expected_hash} holds bytes whose BLAKE3 is {actual}")
    return plain
