"""The snapshot-store served in-process (or as a process) against the test's PostgreSQL and S3."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.chunker import ChunkingParams
from hutch.snapshots.client import SnapshotStoreClient
from hutch.snapshots.writer import SnapshotWriter, WriteResult, WriterOptions

# Small chunks: a few MiB of test data still make dozens of chunks.
SMALL_CHUNKS = ChunkingParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024)
WRITER_OPTIONS = WriterOptions(chunking=SMALL_CHUNKS, read_block_bytes=256 * 1024)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def change_percent(data: bytes, percent: float, seed: int) -> bytes:
    """`data` with `percent` of it overwritten in a few places spread over it."""
    rng = random.Random(seed)
    out = bytearray(data)
    spots = 4
    span = int(len(data) * percent / 100 / spots)
    for _ in range(spots):
        start = rng.randrange(0, len(data) - span)
        out[start : start + span] = rng.randbytes(span)
    return bytes(out)


async def write_snapshot(
    client: SnapshotStoreClient,
    tenant: str,
    streams: dict[str, bytes],
    *,
    cache: ChunkCache | None = None,
    name: str = "",
    **kwargs: Any,
) -> WriteResult:
    async with SnapshotWriter(client, tenant, name=name, cache=cache, options=WRITER_OPTIONS, **kwargs) as writer:
        for stream_name, data in streams.items():
            await writer.add_bytes(stream_name, data)
        return await writer.commit()


def tenant_id() -> str:
    return "tn-" + os.urandom(5).hex()


@asynccontextmanager
async def database(dsn: str) -> AsyncIterator[Any]:
    """A plain connection to the store's schema, to look at (or lock) its rows from the side."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "snapshots,public"})
    try:
        yield conn
    finally:
        await conn.close()


async def assert_every_row_has_its_object(dsn: str, s3: Any, bucket: str) -> None:
    """The store's invariants: every chunk row's object exists, every committed chunk has its row."""
    async with database(dsn) as conn:
        rows = await conn.fetch("SELECT tenant_id, hash, generation FROM chunks")
        missing_rows = await conn.fetchval(
            """SELECT count(*) FROM snapshots s JOIN snapshot_streams st ON st.snapshot_id = s.id
               CROSS JOIN LATERAL generate_series(0, length(st.hashes) / 32 - 1) AS i
               WHERE s.state = 'committed' AND NOT EXISTS (
                   SELECT 1 FROM chunks c WHERE c.tenant_id = s.tenant_id
                   AND c.hash = substring(st.hashes FROM i * 32 + 1 FOR 32))"""
        )
    objects = {o.object_name for o in s3.client().list_objects(bucket, prefix="chunks/", recursive=True)}
    for row in rows:
        digest = bytes(row["hash"]).hex()
        key = f"chunks/{row['tenant_id']}/{digest[:2]}/{digest}.{row['generation']}"
        assert key in objects, f"chunk row without its object: {key}"
    assert missing_rows == 0, f"{missing_rows} chunks of committed snapshots have no row"


def chunk_objects(s3: Any, bucket: str, tenant: str) -> set[str]:
    return {o.object_name for o in s3.client().list_objects(bucket, prefix=f"chunks/{tenant}/", recursive=True)}
