"""The disk chunk cache: bounded, least recently used out first, rebuilt after a restart, tenants kept
apart, one fetch per missing chunk however many ask."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.codec import chunk_hash


def key(n: int) -> str:
    return chunk_hash(str(n).encode())


async def test_put_get_and_counts(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    assert await cache.get("t1", key(1)) is None
    await cache.put("t1", key(1), b"one")
    assert await cache.get("t1", key(1)) == b"one"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.cached_bytes) == (1, 1, 1, 3)


async def test_tenants_never_see_each_others_entries(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    await cache.put("alice", key(1), b"alice's")
    assert await cache.get("bob", key(1)) is None
    assert cache.tenant_bytes("alice") == 7 and cache.tenant_bytes("bob") == 0


async def test_least_recently_used_goes_first_and_the_bound_holds(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 3000)
    for n in range(3):
        await cache.put("t", key(n), bytes(1000))
    assert await cache.get("t", key(0)) is not None  # 0 is now the most recent
    await cache.put("t", key(3), bytes(1000))
    assert cache.contains("t", key(0)) and not cache.contains("t", key(1))
    assert cache.stats().cached_bytes <= 3000
    assert not (tmp_path / "t" / key(1)[:2] / key(1)).exists()
    await cache.put("t", key(9), bytes(5000))  # larger than the cache: skipped
    assert not cache.contains("t", key(9))


async def test_index_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    for n in range(4):
        await cache.put("t", key(n), bytes([n]) * 1000)
    (tmp_path / ".tmp" / "leftover").write_bytes(b"half-written")
    reopened = await ChunkCache.open(tmp_path, 10_000)
    assert reopened.stats().entries == 4 and reopened.stats().cached_bytes == 4000
    assert await reopened.get("t", key(2)) == bytes([2]) * 1000
    assert not (tmp_path / ".tmp" / "leftover").exists()
    smaller = await ChunkCache.open(tmp_path, 2500)
    assert smaller.stats().entries == 2


async def test_damaged_entries_are_dropped_not_served(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    await cache.put("t", key(1), b"precious bytes")
    path = tmp_path / "t" / key(1)[:2] / key(1)
    path.write_bytes(b"precious bytez" + path.read_bytes()[14:])
    assert await cache.get("t", key(1)) is None
    assert not cache.contains("t", key(1)) and not path.exists()


async def test_concurrent_misses_share_one_fetch(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    fetches = 0
    release = asyncio.Event()

    async def fetch() -> bytes:
        nonlocal fetches
        fetches += 1
        await release.wait()
        return b"fetched"

    waiters = [asyncio.create_task(cache.get_or_fetch("t", key(1), fetch)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*waiters)
    assert fetches == 1
    assert {data for data, _ in results} == {b"fetched"}
    assert cache.stats().shared == 4
    assert await cache.get_or_fetch("t", key(1), fetch) == (b"fetched", True)


async def test_a_failed_fetch_reaches_every_waiter_and_caches_nothing(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    release = asyncio.Event()

    async def fetch() -> bytes:
        await release.wait()
        raise OSError("S3 is away")

    waiters = [asyncio.create_task(cache.get_or_fetch("t", key(1), fetch)) for _ in range(3)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert not cache.contains("t", key(1))


async def test_bad_keys_are_refused(tmp_path: Path) -> None:
    cache = await ChunkCache.open(tmp_path, 10_000)
    with pytest.raises(ValueError, match="tenant"):
        await cache.put("../etc", key(1), b"x")
    with pytest.raises(ValueError, match="hash"):
        await cache.put("t", "../../x", b"x")
