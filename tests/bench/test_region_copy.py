"""Copying a snapshot between regions (printed, never asserted).

A 1 GiB snapshot (three quarters random bytes, a quarter compressible text) is written to store A
(region us-east), then imported by store B (region eu-west: its own database, bucket and master key)
through `Import`. A is restarted with an empty regional cache first, so every chunk is read from S3
and decrypted there, sent over gRPC, verified, re-encrypted and written to B's bucket.

Baseline, same run, same S3 server, the same objects: A's chunk objects copied to another bucket with
the minio SDK from as many threads as the store uses for S3, server-side (`copy_object`) and by get
and put. Also printed: a second Import (a no-op) and the peak growth of this process's memory during
the copy.
"""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from figures import report
from minio.commonconfig import CopySource

from hutch.core.grpc_runtime import error_from_rpc, internal_metadata
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.internal.v1.snapshot_store_pb2_grpc import SnapshotStoreStub
from hutch.snapshots.client import CHANNEL_OPTIONS
from hutch.snapshots.writer import SnapshotWriter
from hutch.testing.snapshot_store import TOKEN, Store, new_master_key, served, store_settings
from hutch_snapshot_store.settings import SnapshotStoreSettings

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
SIZE = 1024 * MiB
BLOCK = 8 * MiB
RANDOM_SHARE = 6 * MiB
TENANT = "tn-bench-copy"
# As many S3 calls at once as the store makes by default.
BASELINE_THREADS = 16


def blocks() -> Iterator[bytes]:
    """The 1 GiB stream, one block at a time: random bytes, then compressible text."""
    for n in range(SIZE // BLOCK):
        text = f"block {n:06d}: the quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet\n"
        compressible = (text.encode() * (BLOCK // len(text) + 1))[: BLOCK - RANDOM_SHARE]
        yield random.Random(n).randbytes(RANDOM_SHARE) + compressible


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class PeakMemory:
    """The highest resident size seen while the block runs, sampled from a thread."""

    def __init__(self) -> None:
        self.start = rss_bytes()
        self.peak = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def settings(
    region: str, dsn: str, s3: Any, bucket: str, cache: Path, key: str, **options: Any
) -> SnapshotStoreSettings:
    base: SnapshotStoreSettings = store_settings(dsn, s3, bucket, cache, master_key=key, s3_timeout_s=60, **options)
    return base.model_copy(update={"region": region})


async def import_into(store: Store, region: str, snapshot: str) -> pb.SnapshotManifest:
    async with grpc.aio.insecure_channel(store.address, options=list(CHANNEL_OPTIONS)) as channel:
        request = pb.ImportSnapshotRequest(tenant_id=TENANT, snapshot=snapshot, source_region=region)
        try:
            return await SnapshotStoreStub(channel).Import(request, metadata=internal_metadata(TOKEN), timeout=3600)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "the snapshot-store") from exc


def raw_copies(s3: Any, source_bucket: str, keys: list[str]) -> tuple[float, float]:
    """Seconds to copy `keys` to a fresh bucket server-side, then by get and put."""
    client = s3.client()
    target = f"bench-raw-{uuid.uuid4().hex[:12]}"
    s3.ensure_bucket(target)
    try:

        def server_side(key: str) -> None:
            client.copy_object(target, f"server-side/{key}", CopySource(source_bucket, key))

        def get_put(key: str) -> None:
            response = client.get_object(source_bucket, key)
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
            client.put_object(target, f"get-put/{key}", io.BytesIO(data), len(data))

        timings = []
        for copy in (server_side, get_put):
            with ThreadPoolExecutor(BASELINE_THREADS) as pool:
                start = time.perf_counter()
                list(pool.map(copy, keys))
                timings.append(time.perf_counter() - start)
        return timings[0], timings[1]
    finally:
        s3.remove_bucket(target)


def rate(size: int, seconds: float) -> str:
    return f"{size / MiB / seconds:7.1f} MB/s"


async def test_region_copy_throughput(
    postgres_dsn: str, postgres_server: Any, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    target_db = f"bench_target_{uuid.uuid4().hex[:12]}"
    target_dsn = postgres_server.create_database(target_db)
    target_bucket = f"bench-target-{uuid.uuid4().hex[:12]}"
    s3_server.ensure_bucket(target_bucket)
    source_key = new_master_key()
    lines = [f"snapshot: {SIZE // MiB} MiB, {RANDOM_SHARE * 100 // BLOCK}% random, the rest compressible text"]
    try:
        write_settings = settings("us-east", postgres_dsn, s3_server, s3_bucket, tmp_path / "a-1", source_key)
        async with served(write_settings) as writer_store:
            start = time.perf_counter()
            async with SnapshotWriter(writer_store.client, TENANT, name="big") as writer:
                await writer.add_stream("rootfs.tar", blocks())
                written = (await writer.commit()).manifest
            lines.append(f"{'write to A:':<40}{rate(SIZE, time.perf_counter() - start)}")

        keys = [o.object_name for o in s3_server.client().list_objects(s3_bucket, prefix="chunks/", recursive=True)]
        stored = sum(o.size for o in s3_server.client().list_objects(s3_bucket, prefix="chunks/", recursive=True))
        lines.append(f"A's objects: {len(keys)} chunks, {stored / MiB:.0f} MiB stored (compressed, encrypted)")

        # A fresh A: an empty regional cache, so the copy reads every chunk from S3.
        source_settings = settings("us-east", postgres_dsn, s3_server, s3_bucket, tmp_path / "a-2", source_key)
        async with served(source_settings) as source:
            target_settings = settings(
                "eu-west",
                target_dsn,
                s3_server,
                target_bucket,
                tmp_path / "b",
                new_master_key(),
                peer_stores={"us-east": source.address},
            )
            async with served(target_settings) as target:
                with PeakMemory() as memory:
                    start = time.perf_counter()
                    copied = await import_into(target, "us-east", written.id)
                    import_s = time.perf_counter() - start
                start = time.perf_counter()
                await import_into(target, "us-east", "big")
                again_s = time.perf_counter() - start
        assert copied.logical_bytes == SIZE

        server_side_s, get_put_s = await asyncio.to_thread(raw_copies, s3_server, s3_bucket, keys)
        lines += [
            f"{'Import A -> B:':<40}{rate(SIZE, import_s)} of the snapshot ({import_s:.1f} s; "
            f"{stored / MiB / import_s:.1f} MB/s of stored bytes)",
            f"{'raw S3 copy, server-side, 16 threads:':<40}{rate(stored, server_side_s)} ({server_side_s:.1f} s)",
            f"{'raw S3 copy, get + put, 16 threads:':<40}{rate(stored, get_put_s)} ({get_put_s:.1f} s)",
            f"{'Import time / server-side copy time:':<40}{import_s / server_side_s:7.2f}",
            f"{'Import time / get + put copy time:':<40}{import_s / get_put_s:7.2f}",
            f"{'Import again (already here):':<40}{again_s * 1000:7.1f} ms",
            f"{'memory during Import:':<40}+{(memory.peak - memory.start) / MiB:.0f} MiB peak RSS growth",
        ]
    finally:
        s3_server.remove_bucket(target_bucket)
        postgres_server.drop_database(target_db)
    report("snapshot copy between regions", lines)
