"""Writing and reading snapshots through the real service, PostgreSQL and S3: bytes come back exactly,
increments cost what changed, tenants never see each other's snapshots or chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
from snapshot_store_support import (
    SMALL_CHUNKS,
    WRITER_OPTIONS,
    change_percent,
    random_bytes,
    tenant_id,
    write_snapshot,
)

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.chunker import chunk_bytes
from hutch.snapshots.codec import SealedChunk, chunk_hash, seal
from hutch.snapshots.reader import SnapshotReader
from hutch.snapshots.writer import Progress, SnapshotWriter
from hutch.testing.snapshot_store import Store

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


async def test_round_trip_is_byte_for_byte(store: Store, tmp_path: Path) -> None:
    tenant = tenant_id()
    rootfs, memory = random_bytes(6 * MiB, 1), random_bytes(2 * MiB + 123, 2)
    source = tmp_path / "rootfs.tar"
    source.write_bytes(rootfs)
    seen: list[Progress] = []
    async with SnapshotWriter(
        store.client, tenant, name="first", sandbox_id="sb-1", options=WRITER_OPTIONS, progress=seen.append
    ) as writer:
        await writer.add_file("rootfs.tar", source)
        await writer.add_bytes("memory/checkpoint.img", memory)
        result = await writer.commit()

    assert result.stats.logical_bytes == len(rootfs) + len(memory)
    assert result.manifest.logical_bytes == len(rootfs) + len(memory)
    assert seen[-1].bytes_processed == len(rootfs) + len(memory)
    assert seen[-1].bytes_uploaded == result.stats.uploaded_bytes > 0

    reader = SnapshotReader(store.client, tenant)
    manifest = await reader.manifest("first")
    assert manifest.id == result.manifest.id and manifest.sandbox_id == "sb-1"
    assert [s.name for s in manifest.streams] == ["rootfs.tar", "memory/checkpoint.img"]
    restored = tmp_path / "restored.tar"
    assert await reader.restore_stream(manifest.streams[0], restored) == len(rootfs)
    assert restored.read_bytes() == rootfs
    assert await reader.read_stream(manifest.streams[1]) == memory
    assert reader.stats.s3 + reader.stats.regional_cache == reader.stats.chunks > 0


async def test_incremental_snapshot_uploads_what_changed(store: Store) -> None:
    tenant = tenant_id()
    base = random_bytes(8 * MiB, 3)
    first = await write_snapshot(store.client, tenant, {"rootfs": base})
    second = await write_snapshot(store.client, tenant, {"rootfs": change_percent(base, 1, 4)})

    assert first.stats.uploaded_bytes > 0
    # 1% changed in 4 places: a handful of 64 KiB chunks per place.
    assert second.stats.uploaded_bytes < 0.08 * first.stats.uploaded_bytes
    assert second.manifest.new_stored_bytes < 0.08 * first.manifest.new_stored_bytes
    assert second.stats.reused_chunks > 10 * second.stats.new_chunks


async def test_same_tenant_deduplicates_across_snapshots(store: Store) -> None:
    tenant = tenant_id()
    data = random_bytes(2 * MiB, 5)
    first = await write_snapshot(store.client, tenant, {"a": data})
    again = await write_snapshot(store.client, tenant, {"a": data, "b": data})
    assert first.stats.new_chunks > 0
    assert again.stats.new_chunks == 0 and again.stats.uploaded_bytes == 0
    assert again.manifest.new_stored_bytes == 0
    usage = await store.client.tenant_usage(tenant)
    assert usage.snapshots == 2
    assert usage.chunks == first.stats.new_chunks
    assert usage.logical_bytes == 3 * len(data)


async def test_tenants_never_share_chunks_or_snapshots(store: Store) -> None:
    alice, bob = tenant_id(), tenant_id()
    data = random_bytes(2 * MiB, 6)
    mine = await write_snapshot(store.client, alice, {"rootfs": data}, name="shared-name")
    theirs = await write_snapshot(store.client, bob, {"rootfs": data}, name="shared-name")
    # Bob stores his own copy: dedupe never crosses tenants.
    assert theirs.stats.new_chunks == mine.stats.new_chunks > 0

    hashes = [c.hash for c in mine.manifest.streams[0].chunks]
    stranger = tenant_id()
    with pytest.raises(errors.NotFound):
        async for _ in store.client.get_chunks(stranger, hashes[:3]):
            pass
    for call in (store.client.get, store.client.delete):
        with pytest.raises(errors.NotFound):
            await call(bob, mine.manifest.id)
    with pytest.raises(errors.NotFound):
        await store.client.get(stranger, "shared-name")
    assert (await store.client.get(bob, "shared-name")).id == theirs.manifest.id
    assert (await store.client.list(stranger)).snapshots == []
    # A stranger asking about Alice's chunks learns they are missing (for him).
    begun = await store.client.begin(stranger)
    assert await store.client.find_missing(stranger, begun.snapshot_id, hashes[:5]) == hashes[:5]
    with pytest.raises(errors.NotFound):
        await store.client.find_missing(bob, begun.snapshot_id, hashes[:1])


async def test_pending_snapshots_are_invisible(store: Store) -> None:
    tenant = tenant_id()
    begun = await store.client.begin(tenant, name="in-progress")
    with pytest.raises(errors.NotFound):
        await store.client.get(tenant, begun.snapshot_id)
    with pytest.raises(errors.NotFound):
        await store.client.get(tenant, "in-progress")
    assert (await store.client.list(tenant)).snapshots == []
    # The name is taken while the writer works.
    with pytest.raises(errors.AlreadyExists):
        await store.client.begin(tenant, name="in-progress")
    await store.client.abort(tenant, begun.snapshot_id)
    await store.client.begin(tenant, name="in-progress")


async def test_commit_refuses_missing_chunks_and_is_idempotent(store: Store) -> None:
    tenant = tenant_id()
    chunks = [seal(piece) for piece in chunk_bytes(random_bytes(MiB, 7), SMALL_CHUNKS)]
    begun = await store.client.begin(tenant)
    await store.client.put_chunks(tenant, begun.snapshot_id, chunks[:-2])
    stream = pb.SnapshotStream(
        name="disk", chunks=[pb.ChunkRef(hash=c.hash, size=c.size) for c in chunks], size=sum(c.size for c in chunks)
    )
    with pytest.raises(errors.FailedPrecondition, match=r"^2 of the \d+ chunks"):
        await store.client.commit(tenant, begun.snapshot_id, [stream])
    with pytest.raises(errors.NotFound):
        await store.client.get(tenant, begun.snapshot_id)

    await store.client.put_chunks(tenant, begun.snapshot_id, chunks[-2:])
    committed = await store.client.commit(tenant, begun.snapshot_id, [stream])
    assert await store.client.commit(tenant, begun.snapshot_id, [stream]) == committed
    other = pb.SnapshotStream(name="other", chunks=stream.chunks, size=stream.size)
    with pytest.raises(errors.FailedPrecondition, match="other content"):
        await store.client.commit(tenant, begun.snapshot_id, [other])


async def test_corrupt_uploads_are_refused(store: Store) -> None:
    tenant = tenant_id()
    plain = random_bytes(100_000, 8)
    good = seal(plain)
    begun = await store.client.begin(tenant)
    lying_hash = SealedChunk(hash=chunk_hash(b"something else"), size=good.size, compressed=good.compressed)
    lying_size = SealedChunk(hash=good.hash, size=good.size - 1, compressed=good.compressed)
    garbage = SealedChunk(hash=good.hash, size=good.size, compressed=b"\x28\xb5\x2f\xfd not zstd")
    for bad in (lying_hash, lying_size, garbage):
        with pytest.raises(errors.InvalidArgument, match="corrupt"):
            await store.client.put_chunks(tenant, begun.snapshot_id, [bad])
    assert await store.client.find_missing(tenant, begun.snapshot_id, [good.hash, lying_hash.hash]) == [
        good.hash,
        lying_hash.hash,
    ]
    assert (await store.client.put_chunks(tenant, begun.snapshot_id, [good])).stored == 1
    # The same chunk again is a no-op.
    assert (await store.client.put_chunks(tenant, begun.snapshot_id, [good])).stored == 0


async def test_requests_are_validated(store: Store) -> None:
    tenant = tenant_id()
    begun = await store.client.begin(tenant)
    with pytest.raises(errors.InvalidArgument, match="tenant_id is required"):
        await store.client.begin("")
    with pytest.raises(errors.InvalidArgument, match="64 lowercase hex"):
        await store.client.find_missing(tenant, begun.snapshot_id, ["ABC"])
    with pytest.raises(errors.InvalidArgument, match="not a snapshot id"):
        await store.client.find_missing(tenant, "snap-nope", ["a" * 64])
    with pytest.raises(errors.InvalidArgument, match="snapshot name"):
        await store.client.begin(tenant, name="Not A Name")
    with pytest.raises(errors.InvalidArgument, match="page_size"):
        await store.client.list(tenant, page_size=10_000)
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        await store.client.list(tenant, page_token="bogus")


async def test_listing_pages_and_filters(store: Store) -> None:
    tenant = tenant_id()
    data = random_bytes(64 * 1024, 9)
    ids = []
    for n in range(5):
        purpose = pb.SNAPSHOT_PURPOSE_PAUSE if n == 4 else pb.SNAPSHOT_PURPOSE_USER
        result = await write_snapshot(store.client, tenant, {"d": data}, sandbox_id=f"sb-{n % 2}", purpose=purpose)
        ids.append(result.manifest.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await store.client.list(tenant, page_size=2, page_token=token)
        assert all(not s.streams for s in page.snapshots)
        seen += [s.id for s in page.snapshots]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    assert [s.id for s in (await store.client.list(tenant, sandbox_id="sb-1")).snapshots] == [ids[1], ids[3]]
    pauses = await store.client.list(tenant, purposes=[pb.SNAPSHOT_PURPOSE_PAUSE])
    assert [s.id for s in pauses.snapshots] == [ids[4]]


async def test_restore_on_the_same_node_is_served_by_the_node_cache(store: Store, tmp_path: Path) -> None:
    tenant = tenant_id()
    node_cache = await ChunkCache.open(tmp_path / "node-cache", 64 * MiB)
    data = random_bytes(3 * MiB, 10)
    written = await write_snapshot(store.client, tenant, {"rootfs": data}, cache=node_cache)
    reader = SnapshotReader(store.client, tenant, cache=node_cache)
    assert await reader.read_stream(written.manifest.streams[0]) == data
    assert reader.stats.node_cache == reader.stats.chunks and reader.stats.s3 == 0

    # A damaged node-cache entry is noticed, dropped and fetched again from the store.
    victim = written.manifest.streams[0].chunks[0].hash
    path = node_cache.root / tenant / victim[:2] / victim
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    again = SnapshotReader(store.client, tenant, cache=node_cache)
    assert await again.read_stream(written.manifest.streams[0]) == data
    assert again.stats.node_cache == again.stats.chunks - 1

    # Another node (no node cache) reads through the regional cache.
    remote = SnapshotReader(store.client, tenant)
    assert await remote.read_stream(written.manifest.streams[0]) == data
    assert remote.stats.regional_cache == remote.stats.chunks
    stats = await store.client.cache_stats()
    assert stats.hits >= remote.stats.chunks and stats.cached_bytes > 0
    assert (await store.client.tenant_usage(tenant)).cached_bytes > 0
