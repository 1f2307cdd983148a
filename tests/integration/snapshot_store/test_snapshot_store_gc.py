"""Garbage collection against real PostgreSQL and S3: only what nothing references goes, only after
the grace period, never a chunk a pending writer relies on, and never while a writer looks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from snapshot_store_support import (
    SMALL_CHUNKS,
    assert_every_row_has_its_object,
    chunk_objects,
    database,
    random_bytes,
    tenant_id,
    write_snapshot,
)

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.snapshots.chunker import chunk_bytes
from hutch.snapshots.codec import seal
from hutch.snapshots.reader import SnapshotReader
from hutch.testing.snapshot_store import Store
from hutch_snapshot_store import store as sql
from hutch_snapshot_store.objects import chunk_object_key

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def stream_of(name: str, chunks: list[Any]) -> pb.SnapshotStream:
    return pb.SnapshotStream(
        name=name, chunks=[pb.ChunkRef(hash=c.hash, size=c.size) for c in chunks], size=sum(c.size for c in chunks)
    )


async def test_delete_frees_unique_chunks_after_the_grace_period(
    store: Store, postgres_dsn: str, s3_server: Any, s3_bucket: str
) -> None:
    tenant = tenant_id()
    common, extra = random_bytes(2 * MiB, 20), random_bytes(MiB, 21)
    kept = await write_snapshot(store.client, tenant, {"rootfs": common})
    dropped = await write_snapshot(store.client, tenant, {"rootfs": common, "extra": extra})
    before = chunk_objects(s3_server, s3_bucket, tenant)
    unique = {c.hash for c in dropped.manifest.streams[1].chunks} - {c.hash for c in kept.manifest.streams[0].chunks}
    assert unique

    await store.client.delete(tenant, dropped.manifest.id)
    with pytest.raises(errors.NotFound):
        await store.client.get(tenant, dropped.manifest.id)
    store.running.gc.grace_s = 3600
    assert (await store.client.collect_garbage()).chunks_deleted == 0
    store.running.gc.grace_s = 0
    report = await store.client.collect_garbage()
    assert report.chunks_deleted == len(unique) and report.bytes_freed > 0

    after = chunk_objects(s3_server, s3_bucket, tenant)
    assert len(before) - len(after) == len(unique)
    assert not any(key.split("/")[-1].split(".")[0] in unique for key in after)
    await assert_every_row_has_its_object(postgres_dsn, s3_server, s3_bucket)
    reader = SnapshotReader(store.client, tenant)
    assert await reader.read_stream(kept.manifest.streams[0]) == common
    assert (await store.client.collect_garbage()).chunks_deleted == 0


async def test_pinned_chunks_survive_until_their_snapshot_commits(store: Store) -> None:
    tenant = tenant_id()
    data = random_bytes(MiB, 22)
    first = await write_snapshot(store.client, tenant, {"d": data})
    hashes = [c.hash for c in first.manifest.streams[0].chunks]
    await store.client.delete(tenant, first.manifest.id)
    begun = await store.client.begin(tenant)
    # Present now, so pinned: collection must leave them for this writer.
    assert await store.client.find_missing(tenant, begun.snapshot_id, hashes) == []
    assert (await store.client.collect_garbage()).chunks_deleted == 0
    committed = await store.client.commit(tenant, begun.snapshot_id, [first.manifest.streams[0]])
    assert (await store.client.collect_garbage()).chunks_deleted == 0
    assert await SnapshotReader(store.client, tenant).read_stream(committed.streams[0]) == data


async def test_find_missing_racing_collection_never_loses_a_committed_chunk(
    store: Store, postgres_dsn: str, s3_server: Any, s3_bucket: str
) -> None:
    tenant = tenant_id()
    for round_ in range(12):
        chunks = [seal(p) for p in chunk_bytes(random_bytes(512 * 1024, 100 + round_), SMALL_CHUNKS)]
        stream = stream_of("d", chunks)
        old = await store.client.begin(tenant)
        await store.client.put_chunks(tenant, old.snapshot_id, chunks)
        await store.client.commit(tenant, old.snapshot_id, [stream])
        await store.client.delete(tenant, old.snapshot_id)
        # Every chunk is now garbage, due at once; a writer asks about them while collection runs.
        writer = await store.client.begin(tenant)
        collected, missing = await asyncio.gather(
            store.client.collect_garbage(),
            store.client.find_missing(tenant, writer.snapshot_id, [c.hash for c in chunks]),
        )
        await store.client.put_chunks(tenant, writer.snapshot_id, [c for c in chunks if c.hash in set(missing)])
        committed = await store.client.commit(tenant, writer.snapshot_id, [stream])
        assert (await store.client.collect_garbage()).chunks_deleted == 0
        await assert_every_row_has_its_object(postgres_dsn, s3_server, s3_bucket)
        assert await SnapshotReader(store.client, tenant).read_stream(committed.streams[0]) == random_bytes(
            512 * 1024, 100 + round_
        )
        # Either order is fine: whatever collection took, the writer was told is missing.
        assert collected.chunks_deleted == len(missing)
        await store.client.delete(tenant, writer.snapshot_id)
        assert (await store.client.collect_garbage()).chunks_deleted == len(chunks)


async def test_expired_pending_snapshots_and_their_chunks_are_collected(
    store: Store, postgres_dsn: str, s3_server: Any, s3_bucket: str
) -> None:
    tenant = tenant_id()
    chunks = [seal(p) for p in chunk_bytes(random_bytes(256 * 1024, 23), SMALL_CHUNKS)]
    begun = await store.client.begin(tenant, name="abandoned")
    await store.client.put_chunks(tenant, begun.snapshot_id, chunks)
    assert (await store.client.collect_garbage()).chunks_deleted == 0
    async with database(postgres_dsn) as conn:
        await conn.execute("UPDATE snapshots SET lease_expires_at = now() - interval '1 second'")
    report = await store.client.collect_garbage()
    assert report.pending_expired == 1 and report.chunks_deleted == len(chunks)
    assert chunk_objects(s3_server, s3_bucket, tenant) == set()
    with pytest.raises(errors.NotFound):
        await store.client.find_missing(tenant, begun.snapshot_id, [chunks[0].hash])
    # Its name is free again.
    await store.client.begin(tenant, name="abandoned")


async def test_any_call_of_a_writer_extends_its_lease(store: Store, postgres_dsn: str) -> None:
    tenant = tenant_id()
    begun = await store.client.begin(tenant)
    async with database(postgres_dsn) as conn:
        await conn.execute("UPDATE snapshots SET lease_expires_at = now() - interval '1 second'")
        await store.client.find_missing(tenant, begun.snapshot_id, ["0" * 64])
        assert await conn.fetchval("SELECT lease_expires_at > now() FROM snapshots")
    assert (await store.client.collect_garbage()).pending_expired == 0


async def test_objects_of_uploads_that_never_finished_are_deleted(
    store: Store, postgres_dsn: str, s3_server: Any, s3_bucket: str
) -> None:
    tenant = tenant_id()
    chunk = seal(random_bytes(10_000, 24))
    key = chunk_object_key(tenant, chunk.hash, "deadbeef0001")
    # What a store that died between writing the object and recording its row leaves behind.
    async with database(postgres_dsn) as conn:
        await sql.queue_upload(conn, key, tenant, 0)
    s3_server.client().put_object(s3_bucket, key, __import__("io").BytesIO(b"x"), 1)
    report = await store.client.collect_garbage()
    assert report.orphans_deleted == 1
    assert chunk_objects(s3_server, s3_bucket, tenant) == set()
