"""A chunk is used only when its bytes are exactly what its hash names."""

from __future__ import annotations

import os

import pytest
import zstandard

from hutch.snapshots.codec import ChunkCorrupted, chunk_hash, is_chunk_hash, open_verified, seal


def test_seal_and_open_round_trip() -> None:
    plain = os.urandom(100_000) + bytes(100_000)
    sealed = seal(plain)
    assert sealed.hash == chunk_hash(plain) and is_chunk_hash(sealed.hash)
    assert sealed.size == len(plain) and len(sealed.compressed) < len(plain)
    assert open_verified(sealed.hash, sealed.size, sealed.compressed) == plain


def test_mismatches_are_errors() -> None:
    sealed = seal(b"hello world" * 100)
    with pytest.raises(ChunkCorrupted, match="BLAKE3"):
        open_verified(chunk_hash(b"other"), sealed.size, sealed.compressed)
    with pytest.raises(ChunkCorrupted):
        open_verified(sealed.hash, sealed.size - 1, sealed.compressed)
    with pytest.raises(ChunkCorrupted, match="zstd"):
        open_verified(sealed.hash, sealed.size, b"not a frame at all")


def test_a_frame_claiming_more_than_announced_is_refused_before_decompressing() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(50_000_000))
    with pytest.raises(ChunkCorrupted, match="declares"):
        open_verified(chunk_hash(b""), 1000, bomb)


def test_hash_format() -> None:
    assert is_chunk_hash("a" * 64)
    assert not is_chunk_hash("A" * 64)
    assert not is_chunk_hash("a" * 63)
