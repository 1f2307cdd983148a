"""Content-defined chunking: bounds, exact reconstruction, independence from how bytes arrive, and
boundaries that stay put when bytes are inserted or removed upstream."""

from __future__ import annotations

import random

import pytest

from hutch.snapshots.chunker import DEFAULT_PARAMS, Chunker, ChunkingParams, chunk_bytes

SMALL = ChunkingParams(min_size=8 * 1024, avg_size=32 * 1024, max_size=128 * 1024)


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_chunks_rebuild_the_input_and_respect_the_bounds() -> None:
    source = data(4 * 1024 * 1024)
    chunks = list(chunk_bytes(source, SMALL))
    assert b"".join(chunks) == source
    assert all(SMALL.min_size <= len(c) <= SMALL.max_size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= SMALL.max_size
    average = len(source) / len(chunks)
    assert SMALL.avg_size / 2 < average < SMALL.avg_size * 2


def test_default_sizes_average_about_one_mebibyte() -> None:
    source = data(48 * 1024 * 1024, 2)
    chunks = list(chunk_bytes(source))
    assert all(DEFAULT_PARAMS.min_size <= len(c) <= DEFAULT_PARAMS.max_size for c in chunks[:-1])
    assert 512 * 1024 < len(source) / len(chunks) < 2 * 1024 * 1024


@pytest.mark.parametrize("block", [1, 4095, 65536, 1_000_003])
def test_cuts_do_not_depend_on_how_the_stream_is_fed(block: int) -> None:
    source = data(1024 * 1024 if block > 1 else 64 * 1024, 3)
    expected = list(chunk_bytes(source, SMALL))
    chunker = Chunker(SMALL)
    got: list[bytes] = []
    for offset in range(0, len(source), block):
        got += chunker.feed(source[offset : offset + block])
    got += chunker.finish()
    assert got == expected


@pytest.mark.parametrize("edit", ["insert", "delete"])
def test_boundaries_resist_shifts(edit: str) -> None:
    source = data(8 * 1024 * 1024, 4)
    if edit == "insert":
        changed = source[:5000] + b"a few inserted bytes" + source[5000:]
    else:
        changed = source[:5000] + source[5777:]
    before, after = list(chunk_bytes(source, SMALL)), list(chunk_bytes(changed, SMALL))
    unchanged = set(before) & set(after)
    assert len(unchanged) >= len(before) - 3


def test_runs_of_one_byte_are_cut_at_a_bound() -> None:
    chunks = list(chunk_bytes(bytes(1024 * 1024), SMALL))
    assert b"".join(chunks) == bytes(1024 * 1024)
    assert {len(c) for c in chunks[:-1]} <= {SMALL.min_size, SMALL.max_size}


def test_empty_and_tiny_streams() -> None:
    assert list(chunk_bytes(b"", SMALL)) == []
    assert list(chunk_bytes(b"x", SMALL)) == [b"x"]


@pytest.mark.parametrize(("low", "avg", "high"), [(1024, 2048, 4096), (64 * 1024, 32 * 1024, 1024 * 1024)])
def test_bad_bounds_are_refused(low: int, avg: int, high: int) -> None:
    with pytest.raises(ValueError, match="chunk sizes"):
        ChunkingParams(min_size=low, avg_size=avg, max_size=high)
