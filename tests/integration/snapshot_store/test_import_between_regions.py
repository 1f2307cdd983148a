"""Import: two snapshot-stores, each a region of its own (own database, bucket and master key), the
second copying snapshots from the first over gRPC. Bytes come back exactly, metadata is kept, only
missing chunks travel, a second import is a no-op, and failures name what to fix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from snapshot_store_support import change_percent, chunk_objects, database, random_bytes, tenant_id, write_snapshot

from hutch.core import errors
from hutch.core.grpc_runtime import error_from_rpc, internal_metadata
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.internal.v1.snapshot_store_pb2_grpc import SnapshotStoreStub
from hutch.snapshots.client import CHANNEL_OPTIONS
from hutch.snapshots.reader import SnapshotReader
from hutch.testing.snapshot_store import TOKEN, Store, served, store_settings
from hutch_snapshot_store import convert
from hutch_snapshot_store.peers import PeerStores

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SOURCE_REGION = "us-east"
TARGET_REGION = "eu-west"


@pytest.fixture
def target_dsn(postgres_server: Any) -> Iterator[str]:
    """The target region's own database."""
    name = f"test_target_{tenant_id().replace('-', '_')}"
    dsn: str = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def target_bucket(s3_server: Any) -> Iterator[str]:
    """The target region's own bucket."""
    name = f"test-target-{tenant_id()}"
    s3_server.ensure_bucket(name)
    try:
        yield name
    finally:
        s3_server.remove_bucket(name)


@asynccontextmanager
async def region_store(
    region: str, dsn: str, s3: Any, bucket: str, cache_dir: Path, peers: dict[str, str] | None = None
) -> AsyncIterator[Store]:
    """A store of its own region; each call draws a new master key."""
    settings = store_settings(dsn, s3, bucket, cache_dir, peer_stores=peers or {})
    async with served(settings.model_copy(update={"region": region})) as store:
        yield store


@pytest.fixture
async def source(postgres_dsn: str, s3_server: Any, s3_bucket: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with region_store(SOURCE_REGION, postgres_dsn, s3_server, s3_bucket, tmp_path / "source-cache") as store:
        yield store


@pytest.fixture
async def target(
    source: Store, target_dsn: str, s3_server: Any, target_bucket: str, tmp_path: Path
) -> AsyncIterator[Store]:
    peers = {SOURCE_REGION: source.address}
    async with region_store(TARGET_REGION, target_dsn, s3_server, target_bucket, tmp_path / "target-cache", peers) as s:
        yield s


async def import_into(store: Store, tenant: str, snapshot: str, region: str = SOURCE_REGION) -> pb.SnapshotManifest:
    async with grpc.aio.insecure_channel(store.address, options=list(CHANNEL_OPTIONS)) as channel:
        request = pb.ImportSnapshotRequest(tenant_id=tenant, snapshot=snapshot, source_region=region)
        try:
            return await SnapshotStoreStub(channel).Import(request, metadata=internal_metadata(TOKEN), timeout=120)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "the snapshot-store") from exc


def hashes_of(manifest: pb.SnapshotManifest) -> set[str]:
    return {c.hash for s in manifest.streams for c in s.chunks}


async def chunks_served(store: Store) -> int:
    """Chunks the store has answered GetChunks with: each is one lookup of its regional cache."""
    stats = await store.client.cache_stats()
    return stats.hits + stats.misses


async def pending_count(store: Store) -> int:
    async with database(store.settings.postgres.dsn.get_secret_value()) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM snapshots WHERE state = 'pending'"))


async def test_import_copies_bytes_and_metadata_and_twice_is_a_no_op(
    source: Store, target: Store, s3_server: Any, target_bucket: str
) -> None:
    tenant = tenant_id()
    rootfs, memory = random_bytes(3 * MiB, 11), b"compressible " * 40_000
    written = await write_snapshot(
        source.client,
        tenant,
        {"rootfs.tar": rootfs, "memory/checkpoint.img": memory},
        name="golden",
        sandbox_id="sb-origin",
        kind=pb.SNAPSHOT_KIND_MEMORY,
        purpose=pb.SNAPSHOT_PURPOSE_USER,
        spec=b'{"template": "base", "isolation": "gvisor"}',
        labels={"team": "infra"},
    )
    original = written.manifest

    copied = await import_into(target, tenant, "golden")

    for field in ("id", "tenant_id", "name", "sandbox_id", "kind", "purpose", "spec", "logical_bytes", "created_at"):
        assert getattr(copied, field) == getattr(original, field), field
    assert dict(copied.labels) == {"team": "infra"}
    assert list(copied.streams) == list(original.streams)
    assert copied.new_stored_bytes > 0
    reader = SnapshotReader(target.client, tenant)
    assert await reader.read_stream(copied.streams[0]) == rootfs
    assert await reader.read_stream(copied.streams[1]) == memory
    assert reader.stats.chunks > 0 and reader.stats.node_cache == 0
    # Every chunk is an object of the target's bucket, under the target's own tenant key.
    objects = chunk_objects(s3_server, target_bucket, tenant)
    assert len(objects) == len(hashes_of(original))
    async with database(target.settings.postgres.dsn.get_secret_value()) as conn:
        region = await conn.fetchval("SELECT copied_from_region FROM snapshots WHERE id = $1", original.id)
    assert region == SOURCE_REGION

    served = await chunks_served(source)
    again_by_id = await import_into(target, tenant, original.id)
    again_by_name = await import_into(target, tenant, "golden")
    assert again_by_id == copied and again_by_name == copied
    assert await chunks_served(source) == served
    assert chunk_objects(s3_server, target_bucket, tenant) == objects
    assert await pending_count(target) == 0
    assert (await target.client.tenant_usage(tenant)).snapshots == 1


async def test_a_second_snapshot_transfers_only_the_chunks_the_target_lacks(
    source: Store, target: Store, s3_server: Any, target_bucket: str
) -> None:
    tenant = tenant_id()
    base = random_bytes(6 * MiB, 12)
    first = (await write_snapshot(source.client, tenant, {"rootfs": base}, name="v1")).manifest
    second = (await write_snapshot(source.client, tenant, {"rootfs": change_percent(base, 5, 13)}, name="v2")).manifest
    await import_into(target, tenant, "v1")
    before = chunk_objects(s3_server, target_bucket, tenant)
    served = await chunks_served(source)

    copied = await import_into(target, tenant, "v2")

    new_chunks = hashes_of(second) - hashes_of(first)
    assert 0 < len(new_chunks) < len(hashes_of(second)) // 2
    # Only those travelled: the source served exactly them, and the target stored exactly them.
    assert await chunks_served(source) - served == len(new_chunks)
    received = chunk_objects(s3_server, target_bucket, tenant) - before
    assert len(received) == len(new_chunks)
    assert {key.rsplit("/", 1)[1].split(".")[0] for key in received} == new_chunks
    assert 0 < copied.new_stored_bytes < 0.5 * (await target.client.get(tenant, "v1")).new_stored_bytes
    restored = await SnapshotReader(target.client, tenant).read_stream(copied.streams[0])
    assert restored == change_percent(base, 5, 13)


async def test_a_copy_left_pending_by_a_dead_import_is_resumed(source: Store, target: Store) -> None:
    tenant = tenant_id()
    data = random_bytes(2 * MiB, 14)
    original = (await write_snapshot(source.client, tenant, {"rootfs": data}, name="half")).manifest
    # What an import that died after Begin leaves: the pending copy, under the source's id.
    await target.running.service.begin_copy(convert.copy_params(original, tenant, SOURCE_REGION))
    assert await pending_count(target) == 1

    copied = await import_into(target, tenant, "half")

    assert copied.id == original.id and await pending_count(target) == 0
    assert await SnapshotReader(target.client, tenant).read_stream(copied.streams[0]) == data


async def test_refusals_name_what_to_fix_and_never_leak_another_tenants_snapshot(
    source: Store, target: Store, s3_server: Any, target_bucket: str
) -> None:
    owner, stranger = tenant_id(), tenant_id()
    original = (await write_snapshot(source.client, owner, {"rootfs": random_bytes(MiB, 15)}, name="mine")).manifest

    for snapshot in (original.id, "mine"):
        with pytest.raises(errors.NotFound):
            await import_into(target, stranger, snapshot)
    with pytest.raises(errors.NotFound, match="no-such-snapshot"):
        await import_into(target, owner, "no-such-snapshot")
    with pytest.raises(errors.InvalidArgument, match=f"ap-south.*configured: {SOURCE_REGION}"):
        await import_into(target, owner, "mine", region="ap-south")
    with pytest.raises(errors.InvalidArgument, match="source_region"):
        await import_into(target, owner, "mine", region="")

    assert chunk_objects(s3_server, target_bucket, stranger) == set()
    assert await pending_count(target) == 0
    # A region configured with another internal token is refused by its peers, and told why.
    misconfigured = PeerStores({SOURCE_REGION: source.address}, "another-token")
    try:
        with pytest.raises(errors.FailedPrecondition, match="HUTCH_INTERNAL_TOKEN"):
            await misconfigured.get(SOURCE_REGION).manifest(owner, "mine")
    finally:
        await misconfigured.close()
    # The owner's own import still works after all that.
    assert (await import_into(target, owner, "mine")).id == original.id


async def test_a_name_taken_in_the_target_is_already_exists(source: Store, target: Store) -> None:
    tenant = tenant_id()
    await write_snapshot(source.client, tenant, {"rootfs": random_bytes(MiB, 16)}, name="taken")
    await write_snapshot(target.client, tenant, {"rootfs": random_bytes(MiB, 17)}, name="taken")
    with pytest.raises(errors.AlreadyExists, match="taken"):
        await import_into(target, tenant, "taken")
    assert await pending_count(target) == 0


async def test_a_stopped_source_is_unavailable_naming_its_region(
    postgres_dsn: str, s3_server: Any, s3_bucket: str, target_dsn: str, target_bucket: str, tmp_path: Path
) -> None:
    tenant = tenant_id()
    async with region_store(SOURCE_REGION, postgres_dsn, s3_server, s3_bucket, tmp_path / "a") as source:
        peers = {SOURCE_REGION: source.address}
        async with region_store(TARGET_REGION, target_dsn, s3_server, target_bucket, tmp_path / "b", peers) as target:
            first = (await write_snapshot(source.client, tenant, {"rootfs": random_bytes(MiB, 18)})).manifest
            await write_snapshot(source.client, tenant, {"rootfs": random_bytes(MiB, 19)}, name="later")
            await import_into(target, tenant, first.id)
            await source.running.server.stop()

            with pytest.raises(errors.Unavailable, match=f"region {SOURCE_REGION}"):
                await import_into(target, tenant, "later")
            # A snapshot already copied is answered here, without the source.
            assert (await import_into(target, tenant, first.id)).id == first.id
            assert await pending_count(target) == 0
