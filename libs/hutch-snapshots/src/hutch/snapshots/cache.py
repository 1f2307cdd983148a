"""A chunk cache on local disk: bounded in bytes, least recently used out first, safe to share between
concurrent readers, and still there after a restart.

Entries are files `<root>/<tenant>/<hash[:2]>/<hash>` holding the stored bytes (a zstd frame) and a
BLAKE3 trailer over them: a torn or damaged file is noticed on read and dropped, never served. Files
are written to `<root>/.tmp` and renamed into place, so a reader sees a whole entry or none. The index
(what is cached, how big, in which order it was used) lives in memory and is rebuilt from the files at
start, oldest modification time first; a hit touches the file so that order survives restarts.

Keys are (tenant, hash): a tenant can never be handed another tenant's entry, even for the same hash.
`get_or_fetch` fetches a missing chunk once however many callers want it at the same time.

One process owns a cache directory; the index is touched from the event loop thread only, and file
I/O runs in worker threads.

`observe(cache, tier)` reports a cache's counters as metrics: `hutch.chunk_cache.hits`,
`hutch.chunk_cache.misses` and `hutch.chunk_cache.hit_ratio` (hits over lookups since start), by tier
(`node` for a node-agent's cache, `regional` for the snapshot-store's).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
from opentelemetry.metrics import CallbackOptions, Observation

from hutch.core import telemetry
from hutch.snapshots.codec import is_chunk_hash

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TRAILER = 32
_TEMP = ".tmp"

Key = tuple[str, str]


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    # Callers that waited for a fetch another caller had started instead of fetching again.
    shared: int
    entries: int
    cached_bytes: int
    capacity_bytes: int


def _check_key(tenant: str, chunk_hash: str) -> None:
    if not _TENANT.match(tenant):
        raise ValueError(f"bad tenant id for the chunk cache: {tenant!r}")
    if not is_chunk_hash(chunk_hash):
        raise ValueError(f"bad chunk hash for the chunk cache: {chunk_hash!r}")


class ChunkCache:
    """See the module docstring. Create with `await ChunkCache.open(root, capacity_bytes)`."""

    def __init__(self, root: Path, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a chunk cache needs a positive capacity")
        self.root = root
        self.capacity_bytes = capacity_bytes
        self._index: OrderedDict[Key, int] = OrderedDict()
        self._tenant_bytes: dict[str, int] = {}
        self._bytes = 0
        self._inflight: dict[Key, asyncio.Future[bytes]] = {}
        self.hits = 0
        self.misses = 0
        self.shared = 0

    @classmethod
    async def open(cls, root: Path, capacity_bytes: int) -> ChunkCache:
        """The cache in `root` (created if missing), with its index rebuilt from the files there."""
        cache = cls(root, capacity_bytes)
        found = await asyncio.to_thread(cache._scan)
        for key, size in found:
            cache._add(key, size)
        await cache._evict()
        return cache

    def _path(self, key: Key) -> Path:
        tenant, chunk_hash = key
        return self.root / tenant / chunk_hash[:2] / chunk_hash

    def _scan(self) -> list[tuple[Key, int]]:
        shutil.rmtree(self.root / _TEMP, ignore_errors=True)
        (self.root / _TEMP).mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, Key, int]] = []
        for tenant_dir in self.root.iterdir():
            if tenant_dir.name == _TEMP or not tenant_dir.is_dir() or not _TENANT.match(tenant_dir.name):
                continue
            for entry in tenant_dir.glob("??/*"):
                if not is_chunk_hash(entry.name) or entry.parent.name != entry.name[:2]:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    if stat.st_size > _TRAILER:
                        found.append((stat.st_mtime, (tenant_dir.name, entry.name), stat.st_size - _TRAILER))
                    else:
                        entry.unlink()
        found.sort()
        return [(key, size) for _, key, size in found]

    # -- the index (event loop thread only) --------------------------------------------------------

    def _add(self, key: Key, size: int) -> None:
        previous = self._index.pop(key, None)
        if previous is not None:
            self._account(key[0], -previous)
        self._index[key] = size
        self._account(key[0], size)

    def _remove(self, key: Key) -> bool:
        size = self._index.pop(key, None)
        if size is None:
            return False
        self._account(key[0], -size)
        return True

    def _account(self, tenant: str, delta: int) -> None:
        self._bytes += delta
        remaining = self._tenant_bytes.get(tenant, 0) + delta
        if remaining:
            self._tenant_bytes[tenant] = remaining
        else:
            self._tenant_bytes.pop(tenant, None)

    async def _evict(self) -> None:
        victims = []
        while self._bytes > self.capacity_bytes and self._index:
            key, _ = next(iter(self._index.items()))
            self._remove(key)
            victims.append(self._path(key))
        if victims:
            await asyncio.to_thread(_unlink_all, victims)

    # -- public API --------------------------------------------------------------------------------

    def contains(self, tenant: str, chunk_hash: str) -> bool:
        return (tenant, chunk_hash) in self._index

    def tenant_bytes(self, tenant: str) -> int:
        """Bytes of `tenant`'s entries."""
        return self._tenant_bytes.get(tenant, 0)

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            shared=self.shared,
            entries=len(self._index),
            cached_bytes=self._bytes,
            capacity_bytes=self.capacity_bytes,
        )

    async def get(self, tenant: str, chunk_hash: str) -> bytes | None:
        """The cached bytes, or None (counted as a hit or a miss)."""
        _check_key(tenant, chunk_hash)
        data = await self._read((tenant, chunk_hash))
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    async def _read(self, key: Key) -> bytes | None:
        if key not in self._index:
            return None
        data = await asyncio.to_thread(_read_entry, self._path(key))
        if data is None:
            # Evicted meanwhile, or damaged: either way it is not in the cache any more.
            self._remove(key)
            return None
        if key in self._index:
            self._index.move_to_end(key)
        return data

    async def put(self, tenant: str, chunk_hash: str, data: bytes) -> None:
        """Stores an entry (replacing one with the same key); entries larger than the cache are skipped."""
        _check_key(tenant, chunk_hash)
        if len(data) > self.capacity_bytes:
            return
        key = (tenant, chunk_hash)
        await asyncio.to_thread(_write_entry, self.root / _TEMP, self._path(key), data)
        self._add(key, len(data))
        await self._evict()

    def discard(self, tenant: str, chunk_hash: str) -> None:
        """Forgets an entry (its file is removed)."""
        key = (tenant, chunk_hash)
        if self._remove(key):
            _unlink_all([self._path(key)])

    async def get_or_fetch(
        self, tenant: str, chunk_hash: str, fetch: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, bool]:
        """The entry and True when it was cached; else what `fetch()` returns (stored first) and False.

        Concurrent calls for the same missing key share one `fetch()`; if it fails, all of them see
        the error and nothing is stored.
        """
        _check_key(tenant, chunk_hash)
        key = (tenant, chunk_hash)
        data = await self._read(key)
        if data is not None:
            self.hits += 1
            return data, True
        self.misses += 1
        running = self._inflight.get(key)
        if running is not None:
            self.shared += 1
            return await asyncio.shield(running), False
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            data = await fetch()
            await self.put(tenant, chunk_hash, data)
        except BaseException as exc:
            future.set_exception(exc)
            # Marks the error as seen: followers may not exist, and the caller gets it anyway.
            future.exception()
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(data)
        return data, False


def _read_entry(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as file:
            raw = file.read()
        os.utime(path)
    except FileNotFoundError:
        return None
    data, trailer = raw[:-_TRAILER], raw[-_TRAILER:]
    if len(raw) <= _TRAILER or blake3.blake3(data).digest() != trailer:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    return data


def _write_entry(temp_dir: Path, path: Path, data: bytes) -> None:
    temp = temp_dir / uuid.uuid4().hex
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(temp, "wb") as file:
        file.write(data)
        file.write(blake3.blake3(data).digest())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, path)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# tier -> the cache whose counters the metrics report (one per process and tier).
_observed: dict[str, ChunkCache] = {}


def observe(cache: ChunkCache, tier: str) -> None:
    """Reports `cache`'s hits, misses and hit ratio as metrics labelled `hutch.cache_tier=tier`."""
    if not _observed:
        meter = telemetry.meter("hutch.snapshots.cache")
        meter.create_observable_counter(
            "hutch.chunk_cache.hits", callbacks=[_hits], unit="{lookup}", description="Chunk lookups the cache answered"
        )
        meter.create_observable_counter(
            "hutch.chunk_cache.misses", callbacks=[_misses], unit="{lookup}", description="Chunk lookups it did not"
        )
        meter.create_observable_gauge(
            "hutch.chunk_cache.hit_ratio", callbacks=[_ratio], unit="1", description="Hits over lookups since start"
        )
    _observed[tier] = cache


def _hits(options: CallbackOptions) -> list[Observation]:
    return [Observation(cache.hits, {"hutch.cache_tier": tier}) for tier, cache in list(_observed.items())]


def _misses(options: CallbackOptions) -> list[Observation]:
    return [Observation(cache.misses, {"hutch.cache_tier": tier}) for tier, cache in list(_observed.items())]


def _ratio(options: CallbackOptions) -> list[Observation]:
    return [
        Observation(cache.hits / (cache.hits + cache.misses), {"hutch.cache_tier": tier})
        for tier, cache in list(_observed.items())
        if cache.hits + cache.misses
    ]
