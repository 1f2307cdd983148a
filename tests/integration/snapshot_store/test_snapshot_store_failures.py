"""The snapshot-store when things break: S3 away, the service SIGKILLed in the middle of PutChunks, of
Commit and of garbage collection, the master key rotated. Each test runs its own S3 server (which it
stops or freezes) and, where it kills the service, runs the service as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

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
from hutch.local.servers import S3Server
from hutch.snapshots.chunker import chunk_bytes
from hutch.snapshots.codec import SealedChunk, seal
from hutch.snapshots.reader import SnapshotReader
from hutch.testing.snapshot_store import ServiceProcess, new_master_key, served, service_env, store_settings

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server these tests may stop and freeze."""
    base = tmp_path_factory.mktemp("own-s3")
    with S3Server(base / "data", access_key="own" + uuid.uuid4().hex[:8], secret_key=uuid.uuid4().hex) as server:
        yield server


@pytest.fixture
def own_bucket(own_s3: S3Server) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:20]}"
    own_s3.ensure_bucket(name)
    try:
        yield name
    finally:
        own_s3.remove_bucket(name)


class Frozen:
    """SIGSTOP on the S3 server for the block: every S3 call hangs, as on a stalled network."""

    def __init__(self, server: S3Server) -> None:
        assert server.pid is not None
        self._pid = server.pid

    def __enter__(self) -> None:
        os.kill(self._pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        os.kill(self._pid, signal.SIGCONT)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def sealed(size: int, seed: int) -> list[SealedChunk]:
    return [seal(piece) for piece in chunk_bytes(random_bytes(size, seed), SMALL_CHUNKS)]


def stream_of(name: str, chunks: list[SealedChunk]) -> pb.SnapshotStream:
    return pb.SnapshotStream(
        name=name, chunks=[pb.ChunkRef(hash=c.hash, size=c.size) for c in chunks], size=sum(c.size for c in chunks)
    )


async def test_with_s3_down_cached_reads_work_and_writes_are_unavailable(
    own_s3: S3Server, own_bucket: str, postgres_dsn: str, tmp_path: Path
) -> None:
    settings = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache", s3_timeout_s=2)
    tenant = tenant_id()
    data = random_bytes(2 * MiB, 30)
    async with served(settings) as store:
        written = await write_snapshot(store.client, tenant, {"rootfs": data}, name="before-outage")
        own_s3.stop()
        try:
            reader = SnapshotReader(store.client, tenant)
            assert await reader.read_stream(written.manifest.streams[0]) == data
            assert reader.stats.regional_cache == reader.stats.chunks
            assert (await store.client.get(tenant, "before-outage")).id == written.manifest.id
            with pytest.raises(errors.Unavailable, match="retry"):
                await write_snapshot(store.client, tenant, {"rootfs": random_bytes(MiB, 31)})
            assert [s.id for s in (await store.client.list(tenant)).snapshots] == [written.manifest.id]
        finally:
            own_s3.start()
        again = await write_snapshot(store.client, tenant, {"rootfs": random_bytes(MiB, 31)})
        assert again.stats.new_chunks > 0


async def test_killed_during_put_chunks_the_next_attempt_succeeds(
    own_s3: S3Server, own_bucket: str, postgres_dsn: str, tmp_path: Path
) -> None:
    settings = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache", orphan_grace_s=0)
    service = ServiceProcess(settings, tmp_path / "store.log")
    client = await service.start()
    tenant = tenant_id()
    chunks = sealed(MiB, 32)
    begun = await client.begin(tenant)

    async def uploads_started() -> bool:
        async with database(postgres_dsn) as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM object_deletions WHERE reason = 'upload'"))

    with Frozen(own_s3):
        put = asyncio.create_task(client.put_chunks(tenant, begun.snapshot_id, chunks))
        await eventually(uploads_started, "an upload to start")
        service.kill()
    with pytest.raises(errors.HutchError):
        await put
    await client.close()

    client = await service.start()
    try:
        # Nothing of the interrupted upload is visible: every chunk is still missing.
        hashes = [c.hash for c in chunks]
        assert await client.find_missing(tenant, begun.snapshot_id, hashes) == hashes
        await client.put_chunks(tenant, begun.snapshot_id, chunks)
        committed = await client.commit(tenant, begun.snapshot_id, [stream_of("d", chunks)])
        assert await SnapshotReader(client, tenant).read_stream(committed.streams[0]) == random_bytes(MiB, 32)
        # The object the dead upload may have left is found through its queued entry and removed.
        assert (await client.collect_garbage()).orphans_deleted >= 1
        assert len(chunk_objects(own_s3, own_bucket, tenant)) == len(set(hashes))
        await assert_every_row_has_its_object(postgres_dsn, own_s3, own_bucket)
    finally:
        await client.close()
        service.kill()


async def test_killed_during_commit_nothing_is_half_committed(
    own_s3: S3Server, own_bucket: str, postgres_dsn: str, tmp_path: Path
) -> None:
    settings = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache")
    service = ServiceProcess(settings, tmp_path / "store.log")
    client = await service.start()
    tenant = tenant_id()
    chunks = sealed(MiB, 33)
    begun = await client.begin(tenant, name="interrupted")
    await client.put_chunks(tenant, begun.snapshot_id, chunks)

    async def commit_waits_for_lock() -> bool:
        async with database(postgres_dsn) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name = 'hutch-snapshots' AND datname = current_database()"
                )
            )

    async with database(postgres_dsn) as locker:
        # Holding one chunk row stops Commit halfway through its transaction, where it is killed.
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("SELECT 1 FROM chunks WHERE tenant_id = $1 ORDER BY hash DESC LIMIT 1 FOR SHARE", tenant)
        commit = asyncio.create_task(client.commit(tenant, begun.snapshot_id, [stream_of("d", chunks)]))
        await eventually(commit_waits_for_lock, "Commit to wait for the chunk lock")
        service.kill()
        await transaction.rollback()
    with pytest.raises(errors.HutchError):
        await commit
    await client.close()

    async def commit_backend_gone() -> bool:
        return not await commit_waits_for_lock()

    await eventually(commit_backend_gone, "the killed Commit's transaction to end")
    async with database(postgres_dsn) as conn:
        assert await conn.fetchval("SELECT state FROM snapshots WHERE id = $1", begun.snapshot_id) == "pending"
        assert await conn.fetchval("SELECT count(*) FROM snapshot_streams") == 0
        assert await conn.fetchval("SELECT max(refs) FROM chunks WHERE tenant_id = $1", tenant) == 0

    client = await service.start()
    try:
        with pytest.raises(errors.NotFound):
            await client.get(tenant, "interrupted")
        committed = await client.commit(tenant, begun.snapshot_id, [stream_of("d", chunks)])
        assert (await client.get(tenant, "interrupted")).id == committed.id
        assert await SnapshotReader(client, tenant).read_stream(committed.streams[0]) == random_bytes(MiB, 33)
    finally:
        await client.close()
        service.kill()


async def test_killed_during_garbage_collection_the_next_pass_finishes(
    own_s3: S3Server, own_bucket: str, postgres_dsn: str, tmp_path: Path
) -> None:
    settings = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache", gc_grace_s=0)
    service = ServiceProcess(settings, tmp_path / "store.log")
    client = await service.start()
    tenant = tenant_id()
    keep, drop = random_bytes(MiB, 34), random_bytes(2 * MiB, 35)
    kept = await write_snapshot(client, tenant, {"d": keep})
    dropped = await write_snapshot(client, tenant, {"d": drop})
    await client.delete(tenant, dropped.manifest.id)
    kept_chunks = len({c.hash for c in kept.manifest.streams[0].chunks})

    async def rows_collected() -> bool:
        async with database(postgres_dsn) as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM chunks WHERE tenant_id = $1", tenant) == kept_chunks)

    with Frozen(own_s3):
        collect = asyncio.create_task(client.collect_garbage())
        await eventually(rows_collected, "collection to drop the chunk rows")
        service.kill()
    with pytest.raises(errors.HutchError):
        await collect
    await client.close()

    async with database(postgres_dsn) as conn:
        queued = await conn.fetchval("SELECT count(*) FROM object_deletions WHERE reason = 'collected'")
    assert queued == dropped.stats.new_chunks
    await assert_every_row_has_its_object(postgres_dsn, own_s3, own_bucket)

    client = await service.start()
    try:
        await client.collect_garbage()
        async with database(postgres_dsn) as conn:
            assert await conn.fetchval("SELECT count(*) FROM object_deletions") == 0
        assert len(chunk_objects(own_s3, own_bucket, tenant)) == kept_chunks
        await assert_every_row_has_its_object(postgres_dsn, own_s3, own_bucket)
        assert await SnapshotReader(client, tenant).read_stream(kept.manifest.streams[0]) == keep
    finally:
        await client.close()
        service.kill()


async def test_master_key_rotation_rewraps_tenant_keys(
    own_s3: S3Server, own_bucket: str, postgres_dsn: str, tmp_path: Path
) -> None:
    old_key, new_key = new_master_key(), new_master_key()
    tenant = tenant_id()
    data = random_bytes(MiB, 36)
    before = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache-1", master_key=old_key)
    async with served(before) as store:
        written = await write_snapshot(store.client, tenant, {"d": data})

    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    env.update(service_env(before, 0))
    env["HUTCH_SNAPSHOT_STORE__MASTER_KEY"] = new_key
    env["HUTCH_SNAPSHOT_STORE__PREVIOUS_MASTER_KEYS"] = old_key
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hutch_snapshot_store", "admin", "rotate-master-key"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "re-wrapped 1 tenant data keys" in done.stdout

    # Only the new key now; a fresh regional cache, so the chunks are decrypted from S3.
    after = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache-2", master_key=new_key)
    async with served(after) as store:
        reader = SnapshotReader(store.client, tenant)
        assert await reader.read_stream(written.manifest.streams[0]) == data
        assert reader.stats.s3 == reader.stats.chunks
    stale = store_settings(postgres_dsn, own_s3, own_bucket, tmp_path / "cache-3", master_key=old_key)
    async with served(stale) as store:
        with pytest.raises(errors.FailedPrecondition, match="PREVIOUS_MASTER_KEYS"):
            await SnapshotReader(store.client, tenant).read_stream(written.manifest.streams[0])
